"""MultiScaleVQModel: the quirks of VAR's quantizer that a port can easily get wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from var_clip import MultiScaleVQModel
from var_clip.models.multiscale_vq import MultiScaleQuantizer

from .conftest import make_tiny_vqvae


@pytest.mark.parametrize(
    "num_scales,num_phis,expected",
    [
        (10, 4, (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)),  # VAR's default; scales 2 and 7 tie between two ticks (K == 4 rule)
        (4, 4, (0, 1, 2, 3)),
        (10, 1, (0,) * 10),
        (10, 10, tuple(range(10))),
        (10, 2, (0, 0, 0, 0, 0, 1, 1, 1, 1, 1)),  # K != 4: ticks at 1/4, 3/4; scale 4/9 < 1/2 → lower
        (5, 3, (0, 0, 1, 2, 2)),
        (3, 4, (0, 2, 3)),  # the middle scale is a tie that linspace's rounding sends up
    ],
)
def test_phi_tick_rule(num_scales, num_phis, expected):
    assert MultiScaleQuantizer._phi_indices(num_scales, num_phis) == expected


def test_phi_tick_rule_matches_numpy_argmin():
    import numpy as np

    for K in range(1, 12):
        ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
        for S in range(2, 14):
            ref = tuple(int(np.argmin(np.abs(ticks - si / (S - 1)))) for si in range(S))
            assert MultiScaleQuantizer._phi_indices(S, K) == ref, (S, K)


def test_share_quant_resi_variants_build_the_right_number_of_phis():
    for share, n in ((0, 4), (1, 1), (2, 2), (4, 4)):
        m = MultiScaleVQModel(vocab_size=16, latent_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                              patch_nums=(1, 2, 3, 4), share_quant_resi=share)
        assert len(m.quantize.phis) == n
    no_phi = MultiScaleVQModel(vocab_size=16, latent_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                               patch_nums=(1, 2), quant_resi=0.0)
    assert all(isinstance(p, torch.nn.Identity) for p in no_phi.quantize.phis)


def test_indices_to_latent_uses_bicubic_up_and_takes_the_last_scale_as_is():
    torch.manual_seed(0)
    vq = make_tiny_vqvae()
    q = vq.quantize
    idx = [torch.randint(0, 64, (2, pn * pn)) for pn in vq.config.patch_nums]
    expected = torch.zeros(2, 8, 4, 4)
    for si, (i, pn) in enumerate(zip(idx, vq.config.patch_nums)):
        h = q.embedding(i).transpose(1, 2).reshape(2, 8, pn, pn)
        if si < len(idx) - 1:
            h = F.interpolate(h, size=(4, 4), mode="bicubic")
        expected += q.phis[q.phi_index_per_scale[si]](h)
    torch.testing.assert_close(q.indices_to_latent(idx), expected)


def test_encode_uses_area_downsampling_of_the_residual():
    """The first-scale token is the codebook entry nearest to the *mean* of the latent (area pooling to 1×1)."""
    torch.manual_seed(0)
    vq = make_tiny_vqvae()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    f = vq.encode(images)
    mean = f.mean(dim=(2, 3))
    nearest = torch.cdist(mean, vq.quantize.embedding.weight).argmin(dim=1)
    assert torch.equal(vq.encode_indices(images)[0][:, 0], nearest)


def test_next_scale_input_is_the_teacher_input():
    torch.manual_seed(0)
    vq = make_tiny_vqvae()
    idx = vq.encode_indices(torch.rand(2, 3, 16, 16) * 2 - 1)
    teacher = vq.indices_to_teacher_input(idx)
    f_hat = torch.zeros(2, 8, 4, 4)
    inputs = []
    for si in range(len(idx)):
        f_hat, nxt = vq.next_scale_input(si, f_hat, vq.quantize.indices_to_embedding(idx[si]))
        if nxt is not None:
            inputs.append(nxt.flatten(2).transpose(1, 2))
    torch.testing.assert_close(torch.cat(inputs, 1), teacher)
    torch.testing.assert_close(f_hat, vq.quantize.indices_to_latent(idx))


def test_training_forward_gives_losses_usage_and_gradients():
    torch.manual_seed(0)
    vq = make_tiny_vqvae().train()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = vq(images)
    assert out.sample.shape == images.shape
    assert out.vq_loss.ndim == 0 and out.vq_loss > 0
    assert out.codebook_usage.shape == (4,) and (out.codebook_usage > 0).all()
    (F.mse_loss(out.sample, images) + out.vq_loss).backward()
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    assert vq.quantize.embedding.weight.grad.abs().sum() > 0  # codebook learns through the VQ loss
    assert vq.quantize.ema_vocab_hit_SV.sum() > 0


def test_eight_times_downsampling_config():
    vq = MultiScaleVQModel(vocab_size=32, latent_channels=4, ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1,
                           patch_nums=(1, 2, 4, 8))
    assert vq.downsample_factor == 8 and vq.sample_size == 64
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    idx = vq.encode_indices(images)
    assert [i.shape[1] for i in idx] == [1, 4, 16, 64]
    assert vq.decode_indices(idx).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(ch_mult=()), "`ch_mult`"),
        (dict(ch=20), "multiple of 32"),
        (dict(patch_nums=(2, 1)), "`patch_nums`"),
        (dict(vocab_size=0), "`vocab_size`"),
        (dict(share_quant_resi=-1), "`share_quant_resi`"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleVQModel(**{**dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, patch_nums=(1, 2)), **kwargs})


def test_bad_images_and_indices():
    vq = make_tiny_vqvae()
    with pytest.raises(ValueError, match="must be 16×16"):
        vq.encode_indices(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vq.encode_indices(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="one per scale"):
        vq.decode_indices([torch.zeros(1, 1, dtype=torch.long)])
    bad = [torch.zeros(1, pn * pn, dtype=torch.long) for pn in vq.config.patch_nums]
    bad[2] = bad[2] + 64
    with pytest.raises(ValueError, match=r"in \[0, 64\)"):
        vq.decode_indices(bad)


def test_embed_tokens_is_the_scale_latent_a_sampler_accumulates():
    torch.manual_seed(0)
    vq = make_tiny_vqvae()
    idx_per_scale = vq.encode_indices(torch.rand(2, 3, 16, 16) * 2 - 1)
    f_hat = torch.zeros_like(vq.quantize.indices_to_latent(idx_per_scale))
    for si, idx_Bl in enumerate(idx_per_scale):
        h_BChw = vq.embed_tokens(idx_Bl)
        pn = vq.config.patch_nums[si]
        assert h_BChw.shape == (2, vq.config.latent_channels, pn, pn) and h_BChw.dtype == torch.float32
        # a one-hot mix is the token's own vector
        one_hot = F.one_hot(idx_Bl, vq.config.vocab_size).float()
        assert torch.equal(vq.embed_tokens(probs_BlV=one_hot), h_BChw)
        f_hat, _ = vq.next_scale_input(si, f_hat, h_BChw)
    assert torch.allclose(f_hat, vq.quantize.indices_to_latent(idx_per_scale), atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        vq.embed_tokens()
