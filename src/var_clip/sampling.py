"""Token sampling for next-scale prediction: top-k / top-p filtering, multinomial draws and Gumbel smoothing.

Every random draw takes the caller's generator: one ``torch.Generator`` for the whole batch (one draw over all
rows, as the original sampler does), or a list with one generator per image (each image drawn on its own, so a
batch reproduces single-image runs).

Legend: B batch · l tokens of one scale · V codebook size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Generators = torch.Generator | list[torch.Generator] | None

__all__ = ["filter_logits", "sample_tokens", "gumbel_smooth_probs", "guidance_weight"]


def guidance_weight(guidance_scale: float, si: int, num_scales: int) -> float:
    """Classifier-free guidance weight at scale ``si``: ramps linearly from 0 to ``guidance_scale``, as in VAR."""
    return guidance_scale * si / (num_scales - 1) if num_scales > 1 else 0.0


def filter_logits(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask (to -inf) the logits outside the top-k and outside the top-p nucleus; returns a new tensor.

    ``top_k`` ≤ 0 or ≥ V and ``top_p`` ≤ 0 disable the respective filter. Ties with the k-th largest logit are
    kept, and the nucleus always keeps the most likely token: the original sampler's rules. When top-k bounds the
    candidates, the nucleus is computed on the k survivors only (a partial sort of k, not a sort of all V): the
    masked tokens have probability 0 and cannot change the cumulative sums.
    """
    V = logits_BlV.shape[-1]
    use_top_k = 0 < top_k < V
    if use_top_k:
        top_vals, top_idx = logits_BlV.topk(top_k, dim=-1, sorted=top_p > 0)  # descending when sorted
        keep = logits_BlV >= top_vals[..., -1:] if top_p > 0 else logits_BlV >= top_vals.amin(dim=-1, keepdim=True)
        ties = int(keep.sum(dim=-1).max()) > top_k  # a logit equal to the k-th one survives too
        logits_BlV = logits_BlV.masked_fill(~keep, -torch.inf)
        if top_p <= 0:
            return logits_BlV
        if not ties:
            # ascending order, as the original sorts: cumulative probability of the low tail within the top k
            asc_vals, asc_idx = top_vals.flip(-1), top_idx.flip(-1)
            drop_k = asc_vals.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
            drop_k[..., -1:] = False
            return logits_BlV.scatter(-1, asc_idx, asc_vals.masked_fill(drop_k, -torch.inf))
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        # drop the low tail whose cumulative probability stays within 1 - top_p; never the top token
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits_BlV = logits_BlV.masked_fill(drop_sorted.scatter(-1, sorted_idx, drop_sorted), -torch.inf)
    return logits_BlV


def _per_image(generator: Generators, batch_size: int):
    if isinstance(generator, list):
        return generator
    return None


def sample_tokens(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0, generator: Generators = None) -> tuple[torch.LongTensor, torch.Tensor]:
    """Draw one token per position. Returns the indices (B, l) and the filtered logits (for Gumbel smoothing)."""
    B, l, V = logits_BlV.shape
    filtered = filter_logits(logits_BlV, top_k, top_p)
    probs_BlV = filtered.softmax(dim=-1)
    generators = _per_image(generator, B)
    if generators is None:
        idx = torch.multinomial(probs_BlV.view(-1, V), num_samples=1, generator=generator).view(B, l)
    else:
        idx = torch.stack([torch.multinomial(probs_BlV[b], num_samples=1, generator=g).view(l) for b, g in enumerate(generators)])
    return idx, filtered


def gumbel_smooth_probs(filtered_logits_BlV: torch.Tensor, ratio: float, generator: Generators = None) -> torch.Tensor:
    """Soft token weights for ``more_smooth`` sampling: a Gumbel-softmax of the filtered logits.

    The logits are sharpened by ``1 + ratio`` and the temperature anneals from 0.27 to 0.005 over the scales
    (the original's visual-quality trick, borrowed from MaskGIT; not used for FID).
    """
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    logits = filtered_logits_BlV.mul(1 + ratio)
    generators = _per_image(generator, logits.shape[0])
    if generators is None:
        noise = torch.empty_like(logits).exponential_(generator=generator)
    else:
        noise = torch.stack([torch.empty_like(logits[b]).exponential_(generator=g) for b, g in enumerate(generators)])
    return F.softmax((logits - noise.log()) / tau, dim=-1)
