"""Load checkpoints of the original VAR and VAR-CLIP code into this package's models, and write them back.

Supported files: VAR-CLIP's ``ar-ckpt-last.pth`` (weights under ``['trainer']['var_wo_ddp']``) or a bare transformer
state dict, VAR's class-conditional ``var_d{16,20,24,30}.pth``, and VAR's VQ-VAE ``vae_ch160v4096z32.pth``.
Every original key is consumed and every shape checked: a leftover or a missing key is an error that lists them.
Files are read with ``torch.load(weights_only=True)``, so a checkpoint can never run code while it is loaded.

The format itself lives in :mod:`var_clip.models.original_checkpoints`, below the model classes (whose
``from_single_file`` uses it); this module fills in the classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .models.multiscale_vq import MultiScaleVQModel
from .models.original_checkpoints import (
    DEFAULT_PATCH_NUMS,
    OriginalCheckpointError,
    build_transformer,
    build_vqvae,
    infer_transformer_config,
    infer_vqvae_config,
    load_original_state_dict,
    looks_like_transformer,
    looks_like_vqvae,
    read_transformer_file,
    read_vqvae_file,
    save_original_checkpoints,
    transformer_to_original,
    vqvae_to_original,
)
from .models.var_transformer import VARTransformer2DModel

__all__ = [
    "DEFAULT_PATCH_NUMS",
    "OriginalCheckpointError",
    "load_original_state_dict",
    "looks_like_transformer",
    "looks_like_vqvae",
    "vqvae_from_original",
    "transformer_from_original",
    "infer_vqvae_config",
    "infer_transformer_config",
    "vqvae_from_single_file",
    "transformer_from_single_file",
    "transformer_to_original",
    "vqvae_to_original",
    "save_original_checkpoints",
]


def vqvae_from_original(state_dict: Mapping[str, torch.Tensor], patch_nums=DEFAULT_PATCH_NUMS, quant_resi: float = 0.5,
                        **config_overrides) -> MultiScaleVQModel:
    """Build a :class:`MultiScaleVQModel` from VAR's VQ-VAE state dict (``vae_ch160v4096z32.pth``)."""
    return build_vqvae(MultiScaleVQModel, state_dict, patch_nums=patch_nums, quant_resi=quant_resi, **config_overrides)


def transformer_from_original(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None, patch_nums=None,
                              **config_overrides) -> VARTransformer2DModel:
    """Build a :class:`VARTransformer2DModel` from a VAR-CLIP or VAR transformer state dict."""
    return build_transformer(VARTransformer2DModel, state_dict, num_heads=num_heads, patch_nums=patch_nums,
                             **config_overrides)


def vqvae_from_single_file(checkpoint: str | os.PathLike, patch_nums=DEFAULT_PATCH_NUMS, quant_resi: float = 0.5,
                           dtype: torch.dtype | None = None, **config_overrides) -> MultiScaleVQModel:
    """:meth:`MultiScaleVQModel.from_single_file`."""
    return read_vqvae_file(MultiScaleVQModel, checkpoint, patch_nums=patch_nums, quant_resi=quant_resi, dtype=dtype,
                           **config_overrides)


def transformer_from_single_file(checkpoint: str | os.PathLike, num_heads: int | None = None, patch_nums=None,
                                 dtype: torch.dtype | None = None, **config_overrides) -> VARTransformer2DModel:
    """:meth:`VARTransformer2DModel.from_single_file`."""
    return read_transformer_file(VARTransformer2DModel, checkpoint, num_heads=num_heads, patch_nums=patch_nums,
                                 dtype=dtype, **config_overrides)
