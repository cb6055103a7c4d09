"""Token sampling: the fast top-k/top-p path keeps exactly the tokens the original's full sort keeps."""

from __future__ import annotations

import pytest
import torch

from var_clip.sampling import filter_logits, guidance_weight, sample_tokens


def reference_filter(logits, top_k, top_p):
    """The original rule, written plainly: top-k by threshold, then a full ascending sort for top-p."""
    logits = logits.clone()
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values.amin(dim=-1, keepdim=True)
        logits[logits < kth] = -torch.inf
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        logits[drop.scatter(-1, sorted_idx, drop)] = -torch.inf
    return logits


@pytest.mark.parametrize("top_k,top_p", [(0, 0.0), (5, 0.0), (0, 0.9), (20, 0.95), (900, 0.95), (64, 0.5), (1, 0.95), (3, 1.0)])
def test_filter_matches_reference(top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 64) * 3
    fast, ref = filter_logits(logits, top_k, top_p), reference_filter(logits, top_k, top_p)
    assert torch.equal(torch.isinf(fast), torch.isinf(ref))
    torch.testing.assert_close(fast[torch.isfinite(fast)], logits[torch.isfinite(fast)])


def test_ties_at_the_kth_logit_are_kept():
    logits = torch.tensor([[[3.0, 2.0, 2.0, 1.0]]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 3
    assert torch.equal(torch.isinf(filter_logits(logits, 2, 0.99)), torch.isinf(reference_filter(logits, 2, 0.99)))


def test_top1_is_argmax_and_the_input_is_untouched():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 32)
    before = logits.clone()
    idx, _ = sample_tokens(logits, top_k=1, top_p=0.95, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, logits.argmax(-1)) and torch.equal(logits, before)


def test_sampling_follows_the_filtered_distribution():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]])).expand(1, 20000, 4).contiguous()
    idx, _ = sample_tokens(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(idx.flatten(), minlength=4).float() / idx.numel()
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)


def test_guidance_ramps_linearly():
    assert [guidance_weight(4.0, k, 5) for k in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert guidance_weight(4.0, 0, 1) == 0.0
