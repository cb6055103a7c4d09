"""Models whose weights and config must agree, and configs checked before anything is allocated.

diffusers' ``ModelMixin.from_pretrained`` builds the model from ``config.json`` and then loads the weights: a key the
model lacks is dropped and a key the file lacks is left at its random initialisation, each with a log line only
(and with ``low_cpu_mem_usage`` a shape difference too). For var-clip's models either means a config that does not
describe its weights — one block fewer silently drops weights, one more silently samples from a random block — so
:class:`StrictLoadingMixin` turns the loading report into an error that lists what differs.

:func:`check_vqvae_config` and :func:`check_transformer_config` validate every config field (type, finite, in
range, consistent with the others) with limits that stop an absurd config (a corrupted or hostile ``config.json``)
before it allocates memory.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["ConfigMismatchError", "StrictLoadingMixin", "check_loading_info", "check_vqvae_config",
           "check_transformer_config"]

# Limits well above any released or plausible VAR model (VAR d30: 2B parameters, width 1920, 680 tokens), low enough
# that a typo or a hostile file fails here rather than after allocating tens of gigabytes.
MAX_VOCAB_SIZE = 1 << 20
MAX_WIDTH = 1 << 15  # channels, embedding widths
MAX_DEPTH = 512
MAX_PATCH_NUM = 512  # side of the largest token map
MAX_SCALES = 64
MAX_TOKENS = 1 << 18  # L = Σ pn²
MAX_CLASSES = 1 << 22
MAX_PARAMETERS = 100e9

CONDITION_TYPES = ("text", "class")  # what a VARTransformer2DModel is conditioned on


class ConfigMismatchError(ValueError):
    """A model folder whose ``config.json`` does not describe its weights."""


# ----------------------------------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------------------------------


def check_loading_info(cls_name: str, source: Any, info: dict[str, list], allow_mismatched_sizes: bool = False) -> None:
    """Raise :class:`ConfigMismatchError` when diffusers' loading report has missing, unexpected or reshaped keys."""
    problems = []
    for kind, what in (("missing_keys", "missing from the weights (they would stay randomly initialised)"),
                       ("unexpected_keys", "in the weights but not in the model (they would be dropped)")):
        keys = sorted(info.get(kind) or [])
        if keys:
            problems.append(f"{len(keys)} {what}: {_short(keys)}")
    mismatched = [] if allow_mismatched_sizes else info.get("mismatched_keys") or []
    if mismatched:
        shapes = [f"{key} {tuple(saved)} in the weights vs {tuple(model)} in the model"
                  for key, saved, model in sorted(mismatched)]
        problems.append(f"{len(shapes)} of another shape: {_short(shapes)}")
    if problems:
        raise ConfigMismatchError(f"{cls_name} at {str(source)!r}: its config.json does not describe its weights; "
                                  + "; ".join(problems) + ". Fix config.json (or the weights) so that they agree")


def _short(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class StrictLoadingMixin:
    """Put before ``ModelMixin`` in a model's bases: ``from_pretrained`` fails when config and weights disagree.

    It asks diffusers for its loading report (``output_loading_info=True``) and raises
    :class:`ConfigMismatchError` listing the missing, unexpected and reshaped keys. ``ignore_mismatched_sizes=True``
    still allows reshaped keys, as in diffusers; ``output_loading_info=True`` still returns the report.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        except (RuntimeError, ValueError) as error:
            # diffusers raises for a reshaped key itself: RuntimeError ("size mismatch ...") from load_state_dict,
            # ValueError ("... expected shape ..., but got ...") with low_cpu_mem_usage
            lines = [line.strip() for line in str(error).splitlines()
                     if "size mismatch" in line or "expected shape" in line]
            if not lines:
                raise
            lines = [line.split(". If you want", 1)[0] for line in lines]
            raise ConfigMismatchError(f"{cls.__name__} at {str(pretrained_model_name_or_path)!r}: its config.json "
                                      f"does not describe its weights: {_short(lines)}") from None
        check_loading_info(cls.__name__, pretrained_model_name_or_path, info,
                           allow_mismatched_sizes=bool(kwargs.get("ignore_mismatched_sizes")))
        return (model, info) if wants_info else model


# ----------------------------------------------------------------------------------------------------------------------
# Config fields
# ----------------------------------------------------------------------------------------------------------------------


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"`{name}` must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def _float(name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be a finite number in {interval}, got {value!r}")
    return float(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be true or false, got {value!r}")
    return value


def _patch_nums(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not 1 <= len(value) <= MAX_SCALES:
        raise ValueError(f"`patch_nums` must be a list of 1 to {MAX_SCALES} strictly increasing ints in "
                         f"[1, {MAX_PATCH_NUM}], got {value!r}")
    patch_nums = tuple(_int("patch_nums", p, 1, MAX_PATCH_NUM) for p in value)
    if list(patch_nums) != sorted(set(patch_nums)):
        raise ValueError(f"`patch_nums` must be strictly increasing, got {list(patch_nums)}")
    if sum(p * p for p in patch_nums) > MAX_TOKENS:
        raise ValueError(f"`patch_nums` {list(patch_nums)} make {sum(p * p for p in patch_nums)} tokens, more than "
                         f"{MAX_TOKENS}")
    return patch_nums


def check_vqvae_config(*, vocab_size, latent_channels, ch, ch_mult, num_res_blocks, dropout, using_sa, using_mid_sa,
                       in_channels, beta, using_znorm, quant_conv_kernel_size, quant_resi, share_quant_resi,
                       patch_nums) -> None:
    """Validate every field of :class:`~var_clip.models.MultiScaleVQModel`'s config; ValueError names the field."""
    _int("vocab_size", vocab_size, 1, MAX_VOCAB_SIZE)
    _int("latent_channels", latent_channels, 1, MAX_WIDTH)
    _int("ch", ch, 1, MAX_WIDTH)
    if isinstance(ch_mult, (str, bytes)) or not isinstance(ch_mult, Sequence) or not 1 <= len(ch_mult) <= 12:
        raise ValueError(f"`ch_mult` must be a list of 1 to 12 positive ints, got {ch_mult!r}")
    for m in ch_mult:
        _int("ch_mult", m, 1, MAX_WIDTH // ch)
    if any((ch * m) % 32 for m in ch_mult):
        raise ValueError(f"`ch` × every `ch_mult` must be a multiple of 32 (GroupNorm groups), got ch={ch}, "
                         f"ch_mult={list(ch_mult)}")
    _int("num_res_blocks", num_res_blocks, 1, 64)
    _float("dropout", dropout, 0.0, 1.0, high_open=True)
    _bool("using_sa", using_sa)
    _bool("using_mid_sa", using_mid_sa)
    _bool("using_znorm", using_znorm)
    _int("in_channels", in_channels, 1, 64)
    _float("beta", beta, 0.0, 1e3)
    k = _int("quant_conv_kernel_size", quant_conv_kernel_size, 1, 31)
    if k % 2 == 0:
        raise ValueError(f"`quant_conv_kernel_size` must be odd (the latent keeps its size), got {k}")
    # φ mixes (1 - |r|)·h + |r|·conv(h); NaN would silently turn φ off (|NaN| > 1e-6 is false)
    _float("quant_resi", quant_resi, -1.0, 1.0)
    patch_nums = _patch_nums(patch_nums)
    _int("share_quant_resi", share_quant_resi, 0, MAX_SCALES)


def check_transformer_config(*, vocab_size, latent_channels, patch_nums, depth, embed_dim, num_heads, mlp_ratio,
                             norm_eps, shared_aln, attn_l2_norm, condition_type, text_embed_dim, cross_attention_dim,
                             num_classes, cond_drop_rate, drop_rate, attn_drop_rate, drop_path_rate,
                             conditional_adaln=True) -> None:
    """Validate every field of :class:`~var_clip.models.VARTransformer2DModel`'s config; ValueError names the field.

    Called first in the transformer's ``__init__``, so an absurd ``config.json`` fails before any allocation.
    """
    _int("vocab_size", vocab_size, 1, MAX_VOCAB_SIZE)
    _int("latent_channels", latent_channels, 1, MAX_WIDTH)
    patch_nums = _patch_nums(patch_nums)
    _int("depth", depth, 1, MAX_DEPTH)
    _int("embed_dim", embed_dim, 1, MAX_WIDTH)
    _int("num_heads", num_heads, 1, embed_dim)
    if embed_dim % num_heads:
        raise ValueError(f"`num_heads` ({num_heads}) must divide `embed_dim` ({embed_dim})")
    _float("mlp_ratio", mlp_ratio, 0.0, 64.0, low_open=True)
    _float("norm_eps", norm_eps, 0.0, 1.0, low_open=True)
    _bool("shared_aln", shared_aln)
    _bool("attn_l2_norm", attn_l2_norm)
    _bool("conditional_adaln", conditional_adaln)
    if condition_type not in CONDITION_TYPES:
        raise ValueError(f"`condition_type` must be one of {CONDITION_TYPES}, got {condition_type!r}")
    _int("text_embed_dim", text_embed_dim, 1, MAX_WIDTH)
    if cross_attention_dim is not None:
        _int("cross_attention_dim", cross_attention_dim, 1, MAX_WIDTH)
        if condition_type != "text":
            raise ValueError(f"`cross_attention_dim` is only for condition_type='text', got {cross_attention_dim!r} "
                             f"with {condition_type!r}")
    _int("num_classes", num_classes, 1, MAX_CLASSES)
    for name, value in (("cond_drop_rate", cond_drop_rate), ("drop_rate", drop_rate),
                        ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
        _float(name, value, 0.0, 1.0)
    # the parameter count, before anything is allocated: blocks (attention 4D², feed-forward 2·r·D², AdaLN 6D²),
    # positions and the head
    D, L = embed_dim, sum(p * p for p in patch_nums)
    per_block = (4 + 2 * mlp_ratio + (0 if shared_aln else 6)) * D * D
    if cross_attention_dim:
        per_block += 2 * D * D + 2 * cross_attention_dim * D
    total = depth * per_block + L * D + D * vocab_size + (num_classes + 1) * D
    if total > MAX_PARAMETERS:
        raise ValueError(f"this config describes a transformer of about {total / 1e9:.0f}B parameters (depth {depth}, "
                         f"embed_dim {embed_dim}, vocab_size {vocab_size}), more than the {MAX_PARAMETERS / 1e9:.0f}B "
                         f"limit; check config.json")
