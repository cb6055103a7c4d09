"""Test tooling: full-size original-format checkpoints with random weights (VAR-CLIP d16 and VAR's VQ-VAE).

The released files cannot be downloaded here; these have the same keys, shapes and file layout, so converting
them measures the conversion's time and memory at real size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from var_clip import MultiScaleVQModel, VARTransformer2DModel

from .original_layout import transformer_to_original, vqvae_to_original

D16_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def write_var_clip_d16_pair(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``ar-ckpt-last.pth`` (VAR-CLIP d16, in its training-checkpoint layout) and ``vae_ch160v4096z32.pth``.

    VAR-CLIP d16: depth 16, width 1024, 16 heads, 768-d CLIP text embeddings, 4096 codes × 32 channels,
    patch_nums 1..16; VQ-VAE: ch 160, ch_mult (1, 1, 2, 2, 4), 256 px. Returns (var path, vae path).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    transformer = VARTransformer2DModel(vocab_size=4096, latent_channels=32, patch_nums=D16_PATCH_NUMS, depth=16,
                                        embed_dim=1024, num_heads=16, condition_type="text", text_embed_dim=768)
    var_path = directory / "ar-ckpt-last.pth"
    # VAR-CLIP's trainer saves {'epoch', 'iter', 'trainer': {'config', 'var_wo_ddp', ...}, 'args'}.
    torch.save({"epoch": 1000, "iter": 0,
                "trainer": {"config": {"depth": 16}, "var_wo_ddp": transformer_to_original(transformer)},
                "args": {"depth": 16, "pn": "1_2_3_4_5_6_8_10_13_16", "bs": 2304}}, var_path)
    del transformer
    vqvae = MultiScaleVQModel(vocab_size=4096, latent_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                              share_quant_resi=4, patch_nums=D16_PATCH_NUMS)
    vae_path = directory / "vae_ch160v4096z32.pth"
    torch.save(vqvae_to_original(vqvae), vae_path)
    return var_path, vae_path
