"""Writing a conversion: cast, save into a hidden staging folder next to ``output_dir``, check, move into place.

A failure or an interruption at any step leaves no output folder, and a replaced folder is deleted only once the
new one is in place.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..pipelines.single_file import DEFAULT_TEXT_ENCODER, ConversionError, parse_patch_nums
from ..utils.dtypes import VARIANT_DTYPE_NAMES, cast_keeping_fp32_modules, torch_dtype
from ..utils.files import check_replaceable, resolve_output_dir, write_marker
from . import check as final_check
from .card import card_data_of, card_fields, render_model_card
from .describe import describe_pipeline, format_table
from .infer import load_original_pipeline

logger = logging.getLogger(__package__)

#: ``--dtype`` → the torch dtype the weights are saved in; anything but fp32 is saved as a diffusers variant.
DTYPES = VARIANT_DTYPE_NAMES

@dataclass
class ConversionResult:
    """What a conversion wrote and measured."""

    output_dir: Path
    summary: list[tuple[str, str, str]]
    variant: str | None
    seconds: dict[str, float] = field(default_factory=dict)
    check_image_size: tuple[int, int] | None = None



def _cast(pipe, dtype: torch.dtype) -> None:
    """Cast every component to ``dtype`` except the modules its class keeps in float32 (see
    :func:`~var_clip.utils.dtypes.cast_keeping_fp32_modules`)."""
    if dtype == torch.float32:
        return
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cast_keeping_fp32_modules(component, dtype)


def _check_output_dir(output_dir: Path, overwrite: bool, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse before any work: a non-empty ``output_dir`` without ``overwrite``, and with it anything but a folder
    var-clip wrote (see :func:`~var_clip.utils.files.check_replaceable`)."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"output_dir {str(output_dir)!r} exists and is not empty; pass overwrite "
                              f"(--overwrite) to replace it once the new conversion is complete")
    check_replaceable(output_dir, "output_dir", inputs)


def _sibling(output_dir: Path, kind: str) -> Path:
    """A fresh hidden name next to ``output_dir`` (same file system, so renames are atomic)."""
    return output_dir.parent / f".{output_dir.name}.{kind}-{secrets.token_hex(4)}"


def _move_into_place(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished folder to ``output_dir``; an old one is set aside first and deleted only afterwards."""
    old = None
    if output_dir.exists():
        if any(output_dir.iterdir()):
            if not overwrite:  # appeared while converting
                raise ConversionError(f"output_dir {str(output_dir)!r} was created while converting; pass overwrite "
                                      f"(--overwrite) to replace it")
            check_replaceable(output_dir, "output_dir")  # again: it may have changed while converting
            old = _sibling(output_dir, "old")
            os.replace(output_dir, old)
        else:
            output_dir.rmdir()
    try:
        os.replace(staging, output_dir)
    except BaseException:
        if old is not None:  # put the previous conversion back
            os.replace(old, output_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_original_checkpoints(
    var_checkpoint: str | os.PathLike,
    vae_checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    condition_type: str = "text",
    text_encoder: str | None = DEFAULT_TEXT_ENCODER,
    patch_nums: Sequence[int] | str | None = None,
    num_heads: int | None = None,
    quant_resi: float = 0.5,
    dtype: str = "fp32",
    overwrite: bool = False,
    model_card_template: str | os.PathLike | None = None,
    repo_id: str | None = None,
    check: bool = True,
) -> ConversionResult:
    """Convert an original checkpoint pair into a pipeline folder; see the module docstring for the steps.

    Args:
        var_checkpoint: VAR-CLIP's ``ar-ckpt-last.pth`` (or a bare transformer state dict), or VAR's ``var_d*.pth``.
        vae_checkpoint: VAR's ``vae_ch160v4096z32.pth``.
        output_dir: the pipeline folder to create; an existing non-empty one needs ``overwrite``.
        condition_type: ``"text"`` (:class:`VARCLIPPipeline`) or ``"class"`` (:class:`VARPipeline`).
        text_encoder: a Hub id or local folder of a CLIP model (text tower with projection + tokenizer), or None.
        patch_nums: the scale sides; default the checkpoint's own, else ``1,2,3,4,5,6,8,10,13,16``.
        num_heads: only for checkpoints without L2-normalised attention.
        quant_resi: φ's residual ratio (0.5 in VAR); the checkpoint does not store it.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (or torch's names, ``"float16"``, ...); half precisions are
            saved as the diffusers variant of that name (``fp16``, ``bf16``).
        overwrite: replace a non-empty ``output_dir``, only once the new folder is complete.
        model_card_template: a Jinja template file, or the name of one shipped in ``var_clip/model_cards``, for the
            folder's ``README.md``; None writes none.
        repo_id: the Hub repository the folder is meant for, used in the card's usage snippet (else the local path).
        check: load the written folder and generate one image before moving it into place.
    """
    dtype = {torch_name: variant for variant, torch_name in DTYPES.items()}.get(dtype, dtype)  # "bfloat16" → "bf16"
    if dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {tuple(DTYPES)} (or {tuple(DTYPES.values())}), got {dtype!r}")
    output_dir = resolve_output_dir(output_dir, "output_dir")
    _check_output_dir(output_dir, overwrite, [var_checkpoint, vae_checkpoint])
    variant = None if dtype == "fp32" else dtype
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    pipe = load_original_pipeline(var_checkpoint, vae_checkpoint, condition_type, text_encoder,
                                  parse_patch_nums(patch_nums), num_heads, quant_resi)
    seconds["load"] = time.perf_counter() - start
    summary = describe_pipeline(pipe, text_encoder)
    summary.append(("output", "dtype", dtype + (f" (variant {variant!r})" if variant else "")))
    logger.info("inferred configuration:\n" + format_table(summary))

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(output_dir, "partial")
    staging.mkdir()  # with the user's umask, unlike tempfile.mkdtemp's private 0700
    image_size = None
    try:
        start = time.perf_counter()
        _cast(pipe, torch_dtype(dtype))
        pipe.save_pretrained(staging, safe_serialization=True, variant=variant)
        write_marker(staging, "convert_original_checkpoints")
        if model_card_template is not None:
            has_text_encoder = getattr(pipe, "text_encoder", None) is not None
            fields = card_fields(pipe, var_checkpoint=var_checkpoint, vae_checkpoint=vae_checkpoint,
                                  text_encoder_source=text_encoder, model_location=repo_id or str(output_dir),
                                  dtype=dtype, variant=variant)
            card_data = card_data_of(pipe, has_text_encoder, text_encoder, fields["released_architecture"])
            card = render_model_card(model_card_template, card_data, **fields)
            card.save(staging / "README.md")
        seconds["save"] = time.perf_counter() - start
        del pipe
        if check:
            start = time.perf_counter()
            logger.info(f"checking that the written folder loads and generates (variant {variant!r}) ...")
            try:
                image_size = final_check.check_pipeline_folder(staging, variant=variant)
            except Exception as e:  # noqa: BLE001 - NaN weights, a broken config: whatever it is, nothing is kept
                reason = " ".join(str(e).split()) or type(e).__name__
                raise ConversionError(f"the converted pipeline failed its check (loading the written folder and "
                                      f"generating one image): {reason}; no output folder was written") from e
            seconds["check"] = time.perf_counter() - start
        _move_into_place(staging, output_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ConversionResult(output_dir=output_dir, summary=summary, variant=variant, seconds=seconds,
                            check_image_size=image_size)
