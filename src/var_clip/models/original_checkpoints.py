"""The original VAR and VAR-CLIP checkpoint format, below the model classes: reading files, the key renames, the
configuration a state dict implies, building a given model class from it, and writing models back.

The model classes' ``from_single_file`` build themselves through this module; :mod:`var_clip.original_format` is
the public face, with the classes filled in.

Supported files: VAR-CLIP's ``ar-ckpt-last.pth`` (weights under ``['trainer']['var_wo_ddp']``) or a bare transformer
state dict, VAR's class-conditional ``var_d{16,20,24,30}.pth``, and VAR's VQ-VAE ``vae_ch160v4096z32.pth``.
Every original key is consumed and every shape checked: a leftover or a missing key is an error that lists them.
Files are read with ``torch.load(weights_only=True)``, so a checkpoint can never run code while it is loaded.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import TypeVar

import torch
from accelerate import init_empty_weights

from ..utils.dtypes import cast_keeping_fp32_modules

# the model classes are passed in (this module sits below them): a builder returns an instance of the class it got
VQModel = TypeVar("VQModel", bound=torch.nn.Module)
Transformer = TypeVar("Transformer", bound=torch.nn.Module)

__all__ = [
    "DEFAULT_PATCH_NUMS",
    "OriginalCheckpointError",
    "load_original_state_dict",
    "looks_like_transformer",
    "looks_like_vqvae",
    "infer_vqvae_config",
    "infer_transformer_config",
    "build_vqvae",
    "build_transformer",
    "read_vqvae_file",
    "read_transformer_file",
    "transformer_to_original",
    "vqvae_to_original",
    "save_original_checkpoints",
]

DEFAULT_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


class OriginalCheckpointError(ValueError):
    """An original-format checkpoint that cannot be read or does not fit the model it is loaded into."""


# ----------------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------------


def _sniff(path: str) -> str | None:
    """Recognise the usual wrong files saved in place of weights, from their first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "it is empty"
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights (run `git lfs pull` or download the file itself)"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "it is an HTML page (a failed or login-walled download), not a checkpoint"
    if not (head[:2] == b"PK" or head[:1] == b"\x80"):  # zip (torch >= 1.6) or legacy pickle protocol 2+
        return "it is not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    return None


def load_original_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read an original ``.pth`` safely and return its flat tensor state dict.

    VAR-CLIP training checkpoints keep the transformer under ``['trainer']['var_wo_ddp']``; bare state dicts are
    returned as they are. Raises :class:`OriginalCheckpointError` naming ``what`` and the reason.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OriginalCheckpointError(f"{what} {path!r} does not exist or is not a file")
    problem = _sniff(path)
    if problem:
        raise OriginalCheckpointError(f"{what} {path!r} cannot be loaded: {problem}")
    try:
        with warnings.catch_warnings():  # files saved with pickle protocol 4 read fine; torch's note about it is noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the message below says what each failure means
        msg = str(e)
        if "Weights only load failed" in msg or "weights_only" in msg:
            raise OriginalCheckpointError(
                f"{what} {path!r} needs code to unpickle and was refused (only tensors and plain containers are "
                f"read; nothing from the file was run)"
            ) from None
        raise OriginalCheckpointError(f"{what} {path!r} is damaged or truncated: "
                                      f"{msg.splitlines()[0] if msg else type(e).__name__}") from None
    if isinstance(obj, Mapping) and "trainer" in obj:
        trainer = obj["trainer"]
        if not isinstance(trainer, Mapping) or "var_wo_ddp" not in trainer:
            raise OriginalCheckpointError(f"{what} {path!r} has a 'trainer' entry without 'var_wo_ddp' weights")
        obj = trainer["var_wo_ddp"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OriginalCheckpointError(f"{what} {path!r} does not hold a state dict of tensors")
    return dict(obj)


def looks_like_vqvae(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "quantize.embedding.weight" in state_dict and "encoder.conv_in.weight" in state_dict


def looks_like_transformer(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "pos_1LC" in state_dict and "head.weight" in state_dict


# ----------------------------------------------------------------------------------------------------------------------
# VQ-VAE
# ----------------------------------------------------------------------------------------------------------------------

_PHI_PATTERNS = (
    (re.compile(r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.(weight|bias)$"), r"quantize.phis.\1.\2"),  # partially shared
    (re.compile(r"^quantize\.quant_resi\.qresi\.(weight|bias)$"), r"quantize.phis.0.\1"),  # fully shared
    (re.compile(r"^quantize\.quant_resi\.(\d+)\.(weight|bias)$"), r"quantize.phis.\1.\2"),  # one per scale
)


def _vqvae_key(key: str) -> str:
    for pattern, repl in _PHI_PATTERNS:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def infer_vqvae_config(state_dict: Mapping[str, torch.Tensor], patch_nums=DEFAULT_PATCH_NUMS,
                       quant_resi: float = 0.5) -> dict:
    """Read every hyperparameter the VQ-VAE checkpoint determines; ``patch_nums`` and φ's ratio it cannot."""
    sd = state_dict
    try:
        vocab_size, latent_channels = sd["quantize.embedding.weight"].shape
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.down\.(\d+)\.", k))})
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in levels)
        num_res_blocks = len({int(m.group(1)) for k in sd if (m := re.match(r"^encoder\.down\.0\.block\.(\d+)\.", k))})
    except KeyError as e:
        raise OriginalCheckpointError(f"not a VAR VQ-VAE state dict: missing {e.args[0]!r}") from None
    phis = {int(m.group(1)) for k in sd if (m := re.match(r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.", k))}
    if phis:
        share_quant_resi = len(phis)
    elif any(k.startswith("quantize.quant_resi.qresi.") for k in sd):
        share_quant_resi = 1
    elif any(re.match(r"^quantize\.quant_resi\.\d+\.", k) for k in sd):
        share_quant_resi = 0
    else:  # no φ weights at all: φ is the identity
        share_quant_resi, quant_resi = 4, 0.0
    return dict(
        vocab_size=int(vocab_size), latent_channels=int(latent_channels), ch=int(ch), ch_mult=ch_mult,
        num_res_blocks=num_res_blocks, using_sa=f"encoder.down.{levels[-1]}.attn.0.qkv.weight" in sd,
        using_mid_sa="encoder.mid.attn_1.qkv.weight" in sd,
        in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
        quant_conv_kernel_size=int(sd["quant_conv.weight"].shape[-1]) if "quant_conv.weight" in sd else 3,
        quant_resi=quant_resi, share_quant_resi=share_quant_resi, patch_nums=tuple(int(p) for p in patch_nums),
    )


def build_vqvae(model_class: type[VQModel], state_dict: Mapping[str, torch.Tensor],
                patch_nums=DEFAULT_PATCH_NUMS, quant_resi: float = 0.5, **config_overrides) -> VQModel:
    """Build ``model_class`` (a :class:`MultiScaleVQModel`) from VAR's VQ-VAE state dict (``vae_ch160v4096z32.pth``)."""
    if looks_like_transformer(state_dict):
        raise OriginalCheckpointError("this is a VAR transformer checkpoint, not a VQ-VAE (were the files swapped?)")
    config = infer_vqvae_config(state_dict, patch_nums, quant_resi)
    config.update(config_overrides)
    with init_empty_weights():  # no random initialisation: every parameter comes from the checkpoint
        model = model_class(**config)
    mapped = {_vqvae_key(k): v for k, v in state_dict.items()}
    # The codebook-usage statistics are per scale: a VAE trained with other patch_nums keeps fresh ones (as VAR does).
    ema = mapped.get("quantize.ema_vocab_hit_SV")
    if ema is not None and ema.shape != model.quantize.ema_vocab_hit_SV.shape:
        mapped["quantize.ema_vocab_hit_SV"] = model.quantize.ema_vocab_hit_SV.clone()
    _load_exact(model, mapped, "VQ-VAE")
    return model


# ----------------------------------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------------------------------

_TRANSFORMER_RENAMES = (
    (re.compile(r"^pos_1LC$"), "pos_embed"),
    (re.compile(r"^lvl_embed\.weight$"), "level_embed.weight"),
    (re.compile(r"^noise\.weight$"), "null_text_embed"),
    (re.compile(r"^cond_proj\.(weight|bias)$"), r"text_proj.\1"),
    (re.compile(r"^class_emb\.weight$"), "class_embed.weight"),
    (re.compile(r"^shared_ada_lin\.1\.(weight|bias)$"), r"shared_ada_lin.\1"),
    (re.compile(r"^blocks\.(\d+)\.ada_lin\.1\.(weight|bias)$"), r"blocks.\1.ada_lin.\2"),
    (re.compile(r"^head_nm\.ada_lin\.1\.(weight|bias)$"), r"head_ada_lin.\1"),
)
# Buffers the original saved although they follow from the config: checked against ours, then dropped.
_DERIVED = ("lvl_1L", "attn_bias_for_masking")
_ZERO_K_BIAS = re.compile(r"^blocks\.\d+\.attn\.zero_k_bias$")


def _transformer_key(key: str) -> str:
    for pattern, repl in _TRANSFORMER_RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def infer_transformer_config(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None,
                             patch_nums=None) -> dict:
    """Read the transformer's hyperparameters from its checkpoint.

    The number of heads is stored only with L2-norm attention (in the per-head scale); otherwise it is
    ``num_heads`` or, by VAR's convention (heads = depth, width = 64·depth), the depth. ``patch_nums`` comes from
    the saved per-token scale index ``lvl_1L`` when present.
    """
    sd = state_dict
    if looks_like_vqvae(sd):
        raise OriginalCheckpointError("this is a VQ-VAE checkpoint, not a VAR transformer (were the files swapped?)")
    try:
        embed_dim = sd["pos_start"].shape[-1]
        L = sd["pos_1LC"].shape[1]
        vocab_size = sd["head.weight"].shape[0]
        latent_channels = sd["word_embed.weight"].shape[1]
        depth = len({int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))})
        mlp_hidden = sd["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as e:
        raise OriginalCheckpointError(f"not a VAR transformer state dict: missing {e.args[0]!r}") from None
    attn_l2_norm = "blocks.0.attn.scale_mul_1H11" in sd
    if attn_l2_norm:
        inferred_heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1]
        if num_heads is not None and num_heads != inferred_heads:
            raise OriginalCheckpointError(f"`num_heads`={num_heads} contradicts the checkpoint, which has "
                                          f"{inferred_heads}")
        num_heads = inferred_heads
    elif num_heads is None:
        num_heads = depth

    if "lvl_1L" in sd:
        counts = torch.bincount(sd["lvl_1L"].flatten().long()).tolist()
        from_ckpt = tuple(round(c**0.5) for c in counts)
        if any(p * p != c for p, c in zip(from_ckpt, counts)):
            raise OriginalCheckpointError(f"`lvl_1L` does not describe square scales: token counts {counts}")
        if patch_nums is not None and tuple(patch_nums) != from_ckpt:
            raise OriginalCheckpointError(f"`patch_nums`={tuple(patch_nums)} contradicts the checkpoint's {from_ckpt}")
        patch_nums = from_ckpt
    patch_nums = tuple(int(p) for p in (patch_nums or DEFAULT_PATCH_NUMS))
    if sum(p * p for p in patch_nums) != L:
        raise OriginalCheckpointError(f"`patch_nums` {patch_nums} give {sum(p * p for p in patch_nums)} tokens, "
                                      f"the checkpoint's position embedding has {L}")

    config = dict(
        vocab_size=int(vocab_size), latent_channels=int(latent_channels), patch_nums=patch_nums, depth=depth,
        embed_dim=int(embed_dim), num_heads=int(num_heads), mlp_ratio=mlp_hidden / embed_dim,
        shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=attn_l2_norm,
    )
    if "noise.weight" in sd:
        config.update(condition_type="text", text_embed_dim=int(sd["noise.weight"].shape[1]))
    elif "class_emb.weight" in sd:
        config.update(condition_type="class", num_classes=int(sd["class_emb.weight"].shape[0]) - 1)
    else:
        raise OriginalCheckpointError("the checkpoint has neither a text condition (`noise`, `cond_proj`) nor a class "
                                      "embedding (`class_emb`)")
    return config


def build_transformer(model_class: type[Transformer], state_dict: Mapping[str, torch.Tensor],
                      num_heads: int | None = None, patch_nums=None, **config_overrides) -> Transformer:
    """Build ``model_class`` (a :class:`VARTransformer2DModel`) from a VAR-CLIP or VAR transformer state dict."""
    config = infer_transformer_config(state_dict, num_heads=num_heads, patch_nums=patch_nums)
    config.update(config_overrides)
    with init_empty_weights():  # parameters on the meta device; buffers (derived from the config) are real
        model = model_class(**config)
    mapped = {}
    for key, value in state_dict.items():
        if key in _DERIVED:
            ours = (model.level_L.view(1, -1) if key == "lvl_1L"
                    else model.attn_bias_LL.view(1, 1, *model.attn_bias_LL.shape))
            if value.shape != ours.shape or not torch.equal(value.to(ours.dtype), ours):
                raise OriginalCheckpointError(f"checkpoint buffer {key!r} disagrees with the one derived from the "
                                              "config")
            continue
        if _ZERO_K_BIAS.match(key):
            if torch.count_nonzero(value):
                raise OriginalCheckpointError(f"checkpoint buffer {key!r} should be all zeros")
            continue
        mapped[_transformer_key(key)] = value
    _load_exact(model, mapped, "transformer")
    return model


# ----------------------------------------------------------------------------------------------------------------------
# One file, one model (``from_single_file``)
# ----------------------------------------------------------------------------------------------------------------------


def read_vqvae_file(model_class: type[VQModel], checkpoint: str | os.PathLike, patch_nums=DEFAULT_PATCH_NUMS,
                    quant_resi: float = 0.5, dtype: torch.dtype | None = None, **config_overrides) -> VQModel:
    """Read VAR's VQ-VAE file (``vae_ch160v4096z32.pth``) into a :class:`MultiScaleVQModel`, as the converter does.

    The file does not store ``patch_nums`` (VAR's 256-px schedule by default; the transformer's own when a pipeline
    is loaded) nor φ's ratio ``quant_resi``. ``dtype`` casts all but the float32 modules (the quantizer).
    """
    state_dict = _single_file_state_dict(checkpoint, looks_like_transformer, "a VAR transformer, not a VQ-VAE",
                                         "VARTransformer2DModel")
    return _cast(build_vqvae(model_class, state_dict, patch_nums=patch_nums, quant_resi=quant_resi, **config_overrides),
                 dtype)


def read_transformer_file(model_class: type[Transformer], checkpoint: str | os.PathLike,
                          num_heads: int | None = None, patch_nums=None, dtype: torch.dtype | None = None,
                          **config_overrides) -> Transformer:
    """Read a VAR-CLIP ``ar-ckpt-*.pth`` (or a bare transformer state dict) or VAR's ``var_d*.pth`` into a
    :class:`VARTransformer2DModel`, as the converter does. ``dtype`` casts all but the float32 logits head."""
    state_dict = _single_file_state_dict(checkpoint, looks_like_vqvae, "a VQ-VAE, not a VAR transformer",
                                         "MultiScaleVQModel")
    return _cast(build_transformer(model_class, state_dict, num_heads=num_heads, patch_nums=patch_nums,
                                   **config_overrides), dtype)


def _single_file_state_dict(checkpoint, is_other_model, holds: str, other_class: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, refused with the class that reads it when ``is_other_model`` says it is the other
    model's file."""
    state_dict = load_original_state_dict(checkpoint, "checkpoint")
    if is_other_model(state_dict):
        raise OriginalCheckpointError(f"checkpoint {os.fspath(checkpoint)!r} holds {holds}: load it with "
                                      f"{other_class}.from_single_file")
    return state_dict


def _cast(model, dtype: torch.dtype | None):
    if dtype is not None:
        cast_keeping_fp32_modules(model, dtype)
    return model


# ----------------------------------------------------------------------------------------------------------------------


def _load_exact(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load with every key consumed and every shape equal; otherwise one error listing all the differences."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if wrong:
            parts.append(f"shape mismatches: {wrong}")
        raise OriginalCheckpointError(f"the {what} checkpoint does not fit the inferred model; " + "; ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype).contiguous() for k, v in state_dict.items()}, strict=True,
                          assign=True)
    model.eval()


# ----------------------------------------------------------------------------------------------------------------------
# Writing files: this package's models in the original layout (for the original code, and for tests of the reader)
# ----------------------------------------------------------------------------------------------------------------------

# this package's transformer key → the original's (the inverse of _transformer_key's renames)
_TO_ORIGINAL_TRANSFORMER_KEYS = (
    (r"^pos_embed$", "pos_1LC"),
    (r"^level_embed\.weight$", "lvl_embed.weight"),
    (r"^null_text_embed$", "noise.weight"),
    (r"^text_proj\.(weight|bias)$", r"cond_proj.\1"),
    (r"^class_embed\.weight$", "class_emb.weight"),
    (r"^shared_ada_lin\.(weight|bias)$", r"shared_ada_lin.1.\1"),
    (r"^blocks\.(\d+)\.ada_lin\.(weight|bias)$", r"blocks.\1.ada_lin.1.\2"),
    (r"^head_ada_lin\.(weight|bias)$", r"head_nm.ada_lin.1.\1"),
)


def transformer_to_original(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s (a :class:`VARTransformer2DModel`) weights as the original ``VAR`` module's state dict, buffers
    included (the zero key biases, the level indices and the block-causal mask the original saves), so the original
    code loads it strictly. Transformers with what the original lacks (cross-attention to the caption's tokens, an
    AdaLN that does not read the condition) have no such layout: ValueError."""
    if model.config.cross_attention_dim or not model.config.conditional_adaln:
        raise ValueError("the original VAR / VAR-CLIP has no cross-attention to the caption's tokens and reads the "
                         "condition in every AdaLN: this transformer (`cross_attention_dim` "
                         f"{model.config.cross_attention_dim}, `conditional_adaln` "
                         f"{model.config.conditional_adaln}) cannot be written in its layout")
    state_dict = {}
    for key, value in model.state_dict().items():
        for pattern, replacement in _TO_ORIGINAL_TRANSFORMER_KEYS:
            if re.match(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        state_dict[key] = value.clone()
    for i in range(model.config.depth):
        state_dict[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(model.config.embed_dim)
    state_dict["lvl_1L"] = model.level_L.view(1, -1).clone()
    state_dict["attn_bias_for_masking"] = model.attn_bias_LL.view(1, 1, *model.attn_bias_LL.shape).clone()
    return state_dict


def vqvae_to_original(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as the original ``VQVAE`` module's state dict (φ's convolutions under the original's
    ``quant_resi`` layout for its ``share_quant_resi`` setting)."""
    share = model.config.share_quant_resi
    state_dict = {}
    for key, value in model.state_dict().items():
        m = re.match(r"^quantize\.phis\.(\d+)\.(weight|bias)$", key)
        if m:
            key = {0: f"quantize.quant_resi.{m[1]}.{m[2]}", 1: f"quantize.quant_resi.qresi.{m[2]}"}.get(
                share, f"quantize.quant_resi.qresi_ls.{m[1]}.{m[2]}")
        state_dict[key] = value.clone()
    return state_dict


def save_original_checkpoints(transformer: torch.nn.Module, vqvae: torch.nn.Module,
                              directory: str | os.PathLike, var_name: str = "ar-ckpt-last.pth",
                              vae_name: str = "vae_ch160v4096z32.pth") -> tuple[str, str]:
    """Write ``transformer`` in VAR-CLIP's training-checkpoint layout (``{'epoch', 'iter', 'trainer':
    {'var_wo_ddp': ...}, 'args'}``) and ``vqvae`` as a bare state dict, as the original code saves them; returns
    the two paths. Both hold tensors and plain containers only, so ``weights_only`` loading reads them."""
    os.makedirs(directory, exist_ok=True)
    var_path, vae_path = os.path.join(directory, var_name), os.path.join(directory, vae_name)
    patch_nums = "_".join(map(str, transformer.config.patch_nums))
    torch.save({"epoch": 0, "iter": 0,
                "trainer": {"config": {"depth": transformer.config.depth},
                            "var_wo_ddp": transformer_to_original(transformer)},
                "args": {"depth": transformer.config.depth, "pn": patch_nums}}, var_path)
    torch.save(vqvae_to_original(vqvae), vae_path)
    return var_path, vae_path
