"""VARTransformer2DModel: block-causal training forward, KV-cached sampling steps, conditioning variants."""

from __future__ import annotations

import pytest
import torch

from var_clip import VARTransformer2DModel

from .conftest import TEXT_DIM, make_tiny_transformer, make_tiny_vqvae


def teacher_batch(B=3, seed=0):
    torch.manual_seed(seed)
    vq = make_tiny_vqvae()
    idx = vq.encode_indices(torch.rand(B, 3, 16, 16) * 2 - 1)
    return vq, idx, vq.indices_to_teacher_input(idx)


@pytest.mark.parametrize("variant", [dict(), dict(shared_aln=True), dict(attn_l2_norm=False), dict(condition_type="class")])
def test_kv_cached_steps_equal_teacher_forcing(variant):
    """Sampling scale by scale with the cache gives the same logits as one block-causal pass."""
    tr = make_tiny_transformer(**variant)
    vq, idx, x = teacher_batch()
    B = x.shape[0]
    if tr.config.condition_type == "text":
        cond_kwargs = dict(text_embeds=torch.nn.functional.normalize(torch.randn(B, TEXT_DIM), dim=-1))
    else:
        cond_kwargs = dict(class_labels=torch.tensor([0, 3, 9]))
    with torch.no_grad():
        full = tr(x, **cond_kwargs).logits
        cache = tr.new_kv_cache(B)
        f_hat, step_in = torch.zeros(B, 8, 4, 4), None
        for si, pn in enumerate(tr.config.patch_nums):
            logits = tr(step_in, **(cond_kwargs if si == 0 else {}), kv_cache=cache).logits
            torch.testing.assert_close(logits, full[:, tr.scale_slice(si)], atol=1e-5, rtol=1e-5)
            f_hat, step_in = vq.next_scale_input(si, f_hat, vq.quantize.indices_to_embedding(idx[si]))


def test_block_causal_mask_future_scales_do_not_change_the_past():
    tr = make_tiny_transformer()
    _, _, x = teacher_batch()
    text = torch.randn(3, TEXT_DIM)
    with torch.no_grad():
        a = tr(x, text_embeds=text).logits
        x2 = x.clone()
        x2[:, -16:] += 1.0  # perturb the last scale's input only
        b = tr(x2, text_embeds=text).logits
    last = tr.scale_slice(3)
    torch.testing.assert_close(a[:, : last.start], b[:, : last.start])
    assert not torch.allclose(a[:, last], b[:, last])


def test_mask_sees_its_own_scale_and_coarser():
    tr = make_tiny_transformer()
    allowed = tr.attn_bias_LL == 0
    assert allowed[0, 0] and not allowed[0, 1]
    s1 = tr.scale_slice(1)
    assert allowed[s1, : s1.stop].all() and not allowed[s1, s1.stop :].any()


def test_condition_dropout():
    tr = make_tiny_transformer(cond_drop_rate=0.25)
    mask = tr.condition_dropout_mask(8, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and int(mask.sum()) == 2  # text: exactly floor(B · rate), as VAR-CLIP
    again = tr.condition_dropout_mask(8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    _, _, x = teacher_batch(B=8)
    text = torch.randn(8, TEXT_DIM)
    with torch.no_grad():
        dropped = tr(x, text_embeds=text, cond_drop_mask=mask).logits
        null = tr(x, text_embeds=tr.null_condition(8)).logits
        kept = tr(x, text_embeds=text).logits
    torch.testing.assert_close(dropped[mask], null[mask])
    torch.testing.assert_close(dropped[~mask], kept[~mask])
    class_tr = make_tiny_transformer("class", cond_drop_rate=0.5)
    m = class_tr.condition_dropout_mask(1000, generator=torch.Generator().manual_seed(0))
    assert 400 < int(m.sum()) < 600  # class: Bernoulli per sample, as VAR


def test_training_forward_backward_and_dropout_layers():
    tr = make_tiny_transformer(drop_path_rate=0.1, drop_rate=0.1).train()
    _, idx, x = teacher_batch()
    logits = tr(x, text_embeds=torch.randn(3, TEXT_DIM)).logits
    target = torch.cat(idx, dim=1)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), target.reshape(-1))
    loss.backward()
    assert tr.null_text_embed.grad is None  # no dropout mask: null embedding unused
    assert tr.text_proj.weight.grad.abs().sum() > 0 and tr.pos_start.grad.abs().sum() > 0


def test_save_load_keeps_derived_buffers_out(tmp_path):
    tr = make_tiny_transformer()
    tr.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "diffusion_pytorch_model.safetensors").keys()
    assert "attn_bias_LL" not in keys and "level_L" not in keys
    assert not any("zero_k_bias" in k for k in keys)
    loaded = VARTransformer2DModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.attn_bias_LL, tr.attn_bias_LL)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(condition_type="image"), "`condition_type` must be one of"),
        (dict(embed_dim=30, num_heads=4), "must divide `embed_dim`"),
        (dict(patch_nums=(1, 1, 2)), "`patch_nums`"),
        (dict(cond_drop_rate=1.5), "`cond_drop_rate`"),
        (dict(conditional_adaln="no"), "`conditional_adaln`"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VARTransformer2DModel(**{**dict(depth=1, embed_dim=32, num_heads=2, patch_nums=(1, 2)), **kwargs})


def test_wrong_teacher_input_and_condition():
    tr = make_tiny_transformer()
    with pytest.raises(ValueError, match="hidden_states"):
        tr(torch.zeros(1, 5, 8), text_embeds=torch.zeros(1, TEXT_DIM))
    with pytest.raises(ValueError, match="text-conditioned"):
        tr(torch.zeros(1, 29, 8))
