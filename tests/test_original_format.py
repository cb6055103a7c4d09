"""Loading original checkpoints: every key consumed, every shape checked, nothing executed."""

from __future__ import annotations

import pickle

import pytest
import torch

from var_clip.original_format import (
    OriginalCheckpointError,
    load_original_state_dict,
    transformer_from_original,
    transformer_to_original,
    vqvae_from_original,
    vqvae_to_original,
)

from .conftest import make_tiny_transformer, make_tiny_vqvae


@pytest.mark.parametrize(
    "variant",
    [dict(), dict(condition_type="class"), dict(shared_aln=True), dict(attn_l2_norm=False, num_heads=2, depth=2),
     dict(patch_nums=(1, 2, 4), mlp_ratio=2.0)],
)
def test_transformer_roundtrip_through_original_layout(variant, tmp_path):
    model = make_tiny_transformer(**variant)
    path = tmp_path / "ar-ckpt-last.pth"
    torch.save({"trainer": {"var_wo_ddp": transformer_to_original(model)}, "args": {"depth": 2}}, path)
    loaded = transformer_from_original(load_original_state_dict(path))
    for key in ("condition_type", "shared_aln", "attn_l2_norm", "depth", "embed_dim", "num_heads", "vocab_size", "mlp_ratio"):
        assert loaded.config[key] == model.config[key], key
    assert tuple(loaded.config.patch_nums) == tuple(model.config.patch_nums)
    for (k, a), (_, b) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("share", [0, 1, 2, 4])
def test_vqvae_roundtrip_through_original_layout(share, tmp_path):
    from var_clip import MultiScaleVQModel

    model = MultiScaleVQModel(vocab_size=32, latent_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                              patch_nums=(1, 2, 3), share_quant_resi=share)
    torch.save(vqvae_to_original(model), tmp_path / "vae.pth")
    loaded = vqvae_from_original(load_original_state_dict(tmp_path / "vae.pth"), patch_nums=(1, 2, 3))
    assert loaded.config.share_quant_resi == share and tuple(loaded.config.ch_mult) == (1, 2)
    for (k, a), (_, b) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k


def test_leftover_and_missing_keys_are_listed():
    sd = transformer_to_original(make_tiny_transformer())
    sd["extra.weight"] = torch.zeros(1)
    del sd["head.bias"]
    with pytest.raises(OriginalCheckpointError, match=r"missing keys: \['head.bias'\].*unexpected keys: \['extra.weight'\]"):
        transformer_from_original(sd)


def test_shape_mismatch_is_reported():
    sd = vqvae_to_original(make_tiny_vqvae())
    sd["post_quant_conv.weight"] = torch.zeros(8, 8, 1, 1)
    with pytest.raises(OriginalCheckpointError, match="shape mismatches: .*post_quant_conv.weight"):
        vqvae_from_original(sd, patch_nums=(1, 2, 3, 4))


def test_swapped_checkpoints_are_named():
    vae_sd, var_sd = vqvae_to_original(make_tiny_vqvae()), transformer_to_original(make_tiny_transformer())
    with pytest.raises(OriginalCheckpointError, match="VQ-VAE checkpoint, not a VAR transformer"):
        transformer_from_original(vae_sd)
    with pytest.raises(OriginalCheckpointError, match="transformer checkpoint, not a VQ-VAE"):
        vqvae_from_original(var_sd)


def test_heads_contradicting_the_checkpoint_are_refused():
    sd = transformer_to_original(make_tiny_transformer())
    with pytest.raises(OriginalCheckpointError, match="`num_heads`=4 contradicts"):
        transformer_from_original(sd, num_heads=4)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML page"),
        (b"", "empty"),
        (b"hello, not a checkpoint", "not a PyTorch checkpoint"),
    ],
)
def test_wrong_files_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "var.pth"
    path.write_bytes(content)
    with pytest.raises(OriginalCheckpointError, match=message):
        load_original_state_dict(path, what="--var_checkpoint")


def test_truncated_file(tmp_path):
    path = tmp_path / "vae.pth"
    torch.save(vqvae_to_original(make_tiny_vqvae()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OriginalCheckpointError, match="damaged or truncated"):
        load_original_state_dict(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"trainer": {"var_wo_ddp": {"x": _Payload(str(marker))}}}, path)
    with pytest.raises(OriginalCheckpointError, match="needs code to unpickle"):
        load_original_state_dict(path)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    with pytest.raises(OriginalCheckpointError):
        load_original_state_dict(legacy)
    assert not marker.exists()
