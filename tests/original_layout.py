"""Test tooling: write this package's models back in the original code's checkpoint layout.

Used to build original-format checkpoints of any configuration (class-conditional, shared AdaLN, plain attention)
so that the loader can be tested beyond the one parity checkpoint.
"""

from __future__ import annotations

import re

import torch

from var_clip import MultiScaleVQModel, VARTransformer2DModel

_INVERSE = (
    (r"^pos_embed$", "pos_1LC"),
    (r"^level_embed\.weight$", "lvl_embed.weight"),
    (r"^null_text_embed$", "noise.weight"),
    (r"^text_proj\.(weight|bias)$", r"cond_proj.\1"),
    (r"^class_embed\.weight$", "class_emb.weight"),
    (r"^shared_ada_lin\.(weight|bias)$", r"shared_ada_lin.1.\1"),
    (r"^blocks\.(\d+)\.ada_lin\.(weight|bias)$", r"blocks.\1.ada_lin.1.\2"),
    (r"^head_ada_lin\.(weight|bias)$", r"head_nm.ada_lin.1.\1"),
)


def transformer_to_original(model: VARTransformer2DModel) -> dict[str, torch.Tensor]:
    sd = {}
    for key, value in model.state_dict().items():
        for pattern, repl in _INVERSE:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        sd[key] = value.clone()
    for i in range(model.config.depth):
        sd[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(model.config.embed_dim)
    sd["lvl_1L"] = model.level_L.view(1, -1).clone()
    sd["attn_bias_for_masking"] = model.attn_bias_LL.view(1, 1, *model.attn_bias_LL.shape).clone()
    return sd


def vqvae_to_original(model: MultiScaleVQModel) -> dict[str, torch.Tensor]:
    share = model.config.share_quant_resi
    sd = {}
    for key, value in model.state_dict().items():
        m = re.match(r"^quantize\.phis\.(\d+)\.(weight|bias)$", key)
        if m:
            key = {0: f"quantize.quant_resi.{m[1]}.{m[2]}", 1: f"quantize.quant_resi.qresi.{m[2]}"}.get(
                share, f"quantize.quant_resi.qresi_ls.{m[1]}.{m[2]}")
        sd[key] = value.clone()
    return sd
