"""Test tooling: full-size original-format checkpoints with random weights (VAR-CLIP d16 and VAR's VQ-VAE).

The released files cannot be downloaded here; these have the same keys, shapes and file layout, so converting
them measures the conversion's time and memory at real size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from var_clip import MultiScaleVQModel, VARTransformer2DModel
from var_clip.original_format import save_original_checkpoints

D16_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def write_var_clip_d16_pair(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``ar-ckpt-last.pth`` (VAR-CLIP d16, in its training-checkpoint layout) and ``vae_ch160v4096z32.pth``.

    VAR-CLIP d16: depth 16, width 1024, 16 heads, 768-d CLIP text embeddings, 4096 codes × 32 channels,
    patch_nums 1..16; VQ-VAE: ch 160, ch_mult (1, 1, 2, 2, 4), 256 px. Returns (var path, vae path).
    """
    torch.manual_seed(seed)
    transformer = VARTransformer2DModel(vocab_size=4096, latent_channels=32, patch_nums=D16_PATCH_NUMS, depth=16,
                                        embed_dim=1024, num_heads=16, condition_type="text", text_embed_dim=768)
    vqvae = MultiScaleVQModel(vocab_size=4096, latent_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                              share_quant_resi=4, patch_nums=D16_PATCH_NUMS)
    return tuple(map(Path, save_original_checkpoints(transformer, vqvae, directory)))
