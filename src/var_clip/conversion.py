"""Convert original VAR-CLIP / VAR checkpoints into a diffusers pipeline folder (safetensors, model card).

The logic behind ``conversion_scripts/convert_var_clip_to_diffusers.py`` and ``convert_var_to_diffusers.py``:

1. read both ``.pth`` files without running code (``torch.load(weights_only=True)``), recognise swapped, truncated,
   HTML or Git-LFS-pointer files and name the argument that holds them;
2. infer every hyperparameter from the checkpoints (:mod:`var_clip.original_format` consumes every key and checks
   every shape);
3. optionally attach a CLIP text encoder and tokenizer, checking its projection width against the transformer;
4. write the pipeline (and its model card) into a hidden temporary folder next to ``output_dir``, load it back and
   generate one image from it, and only then move it into place; a failure or an interruption leaves no output.

Progress goes through :mod:`logging` (logger ``var_clip.conversion``); the scripts print it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .models.strict_loading import CONDITION_TYPES
from .original_format import (
    DEFAULT_PATCH_NUMS,
    OriginalCheckpointError,
    load_original_state_dict,
    looks_like_transformer,
    looks_like_vqvae,
    transformer_from_original,
    vqvae_from_original,
)
from .pipelines import VARCLIPPipeline, VARPipeline
from .utils.files import check_replaceable, resolve_output_dir, write_marker

__all__ = [
    "ConversionError",
    "ConversionResult",
    "DTYPES",
    "DEFAULT_TEXT_ENCODER",
    "convert_original_checkpoints",
    "load_original_pipeline",
    "load_text_encoder",
    "parse_patch_nums",
    "describe_pipeline",
    "render_model_card",
    "check_pipeline_folder",
]

logger = logging.getLogger(__name__)

#: ``--dtype`` → the torch dtype the weights are saved in; anything but fp32 is saved as a diffusers variant.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: The text tower VAR-CLIP was trained with (frozen): OpenAI CLIP ViT-L/14, 768-d projected embeddings.
DEFAULT_TEXT_ENCODER = "openai/clip-vit-large-patch14"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# The architecture of the released weights, to tell in the model card whether a conversion is one of them.
_RELEASED_VQVAE = dict(vocab_size=4096, latent_channels=32, ch=160)
_RELEASED_PATCH_NUMS = DEFAULT_PATCH_NUMS


class ConversionError(ValueError):
    """A conversion that cannot proceed because of its inputs; the message names the argument at fault."""


@dataclass
class ConversionResult:
    """What a conversion wrote and measured."""

    output_dir: Path
    summary: list[tuple[str, str, str]]
    variant: str | None
    seconds: dict[str, float] = field(default_factory=dict)
    check_image_size: tuple[int, int] | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def parse_patch_nums(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,2,3,4"`` → ``(1, 2, 3, 4)``; None stays None (the checkpoint's own, else VAR's 256-px schedule)."""
    if text is None:
        return None
    parts = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        patch_nums = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        patch_nums = ()
    if not patch_nums or any(p < 1 for p in patch_nums) or list(patch_nums) != sorted(set(patch_nums)):
        raise ConversionError(f"patch_nums must be strictly increasing positive ints separated by commas "
                              f"(e.g. 1,2,3,4,5,6,8,10,13,16), got {text!r}")
    return patch_nums


def _read_pair(var_checkpoint, vae_checkpoint) -> tuple[dict, dict]:
    """Read both files; a file in the other's place is named as such."""
    var_sd = load_original_state_dict(var_checkpoint, "var_checkpoint")
    vae_sd = load_original_state_dict(vae_checkpoint, "vae_checkpoint")
    var_is_vae, vae_is_var = looks_like_vqvae(var_sd), looks_like_transformer(vae_sd)
    if var_is_vae and vae_is_var:
        raise ConversionError(f"var_checkpoint and vae_checkpoint are swapped: var_checkpoint {str(var_checkpoint)!r} "
                              f"holds the VQ-VAE and vae_checkpoint {str(vae_checkpoint)!r} the transformer")
    if var_is_vae:
        raise ConversionError(f"var_checkpoint {str(var_checkpoint)!r} holds a VQ-VAE, not a VAR transformer "
                              f"(pass it as vae_checkpoint)")
    if vae_is_var:
        raise ConversionError(f"vae_checkpoint {str(vae_checkpoint)!r} holds a VAR transformer, not the VQ-VAE "
                              f"(pass it as var_checkpoint)")
    if not looks_like_transformer(var_sd):
        raise ConversionError(f"var_checkpoint {str(var_checkpoint)!r} is not a VAR transformer state dict "
                              f"(no 'pos_1LC' / 'head.weight')")
    if not looks_like_vqvae(vae_sd):
        raise ConversionError(f"vae_checkpoint {str(vae_checkpoint)!r} is not a VAR VQ-VAE state dict "
                              f"(no 'quantize.embedding.weight' / 'encoder.conv_in.weight')")
    return var_sd, vae_sd


def load_text_encoder(name_or_path: str, expected_dim: int):
    """Load ``CLIPTextModelWithProjection`` and ``CLIPTokenizer`` from a Hub id or a local folder.

    Raises :class:`ConversionError` when it cannot be loaded or when its projection width is not the transformer's
    text-embedding width.
    """
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    source = os.path.expanduser(name_or_path)
    if not os.path.isdir(source):
        if not _HUB_ID.match(name_or_path):
            raise ConversionError(f"text_encoder {name_or_path!r} is neither an existing folder nor a Hub id "
                                  f"(like {DEFAULT_TEXT_ENCODER!r}); pass 'none' to convert without one")
        source = name_or_path
    try:
        text_encoder = CLIPTextModelWithProjection.from_pretrained(source, dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:  # missing files, no network, not a CLIP model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"text_encoder {name_or_path!r} could not be loaded as a CLIP text model with "
                              f"projection and its tokenizer: {first} (offline? pass a local folder, or 'none')"
                              ) from None
    projection_dim = text_encoder.config.projection_dim
    if projection_dim != expected_dim:
        raise ConversionError(f"text_encoder {name_or_path!r} projects to {projection_dim} dims but the transformer in "
                              f"var_checkpoint expects text embeddings of {expected_dim} (VAR-CLIP d16 uses "
                              f"{DEFAULT_TEXT_ENCODER}, 768)")
    return text_encoder.eval(), tokenizer


def load_original_pipeline(
    var_checkpoint: str | os.PathLike,
    vae_checkpoint: str | os.PathLike,
    condition_type: str = "text",
    text_encoder: str | None = DEFAULT_TEXT_ENCODER,
    patch_nums: Sequence[int] | None = None,
    num_heads: int | None = None,
    quant_resi: float = 0.5,
):
    """Build a :class:`VARCLIPPipeline` (``condition_type="text"``) or :class:`VARPipeline` from original files.

    ``patch_nums`` defaults to the transformer checkpoint's own (VAR saves the per-token scale index ``lvl_1L``),
    else VAR's 256-px schedule. ``num_heads`` is needed only for checkpoints without L2-normalised attention (the
    only place the head count is stored); without it VAR's convention heads = depth is assumed, with a warning.
    """
    if condition_type not in CONDITION_TYPES:
        raise ConversionError(f"condition_type must be one of {CONDITION_TYPES}, got {condition_type!r}")
    if num_heads is not None and (not isinstance(num_heads, int) or num_heads < 1):
        raise ConversionError(f"num_heads must be a positive int, got {num_heads!r}")
    if not isinstance(quant_resi, (int, float)) or not 0.0 <= quant_resi < 1.0:
        raise ConversionError(f"quant_resi must be a number in [0, 1) (VAR uses 0.5), got {quant_resi!r}")
    patch_nums = parse_patch_nums(patch_nums)

    var_sd, vae_sd = _read_pair(var_checkpoint, vae_checkpoint)
    kind = "text" if "noise.weight" in var_sd else "class" if "class_emb.weight" in var_sd else None
    if kind is not None and kind != condition_type:
        held = ("a text-conditional VAR-CLIP transformer" if kind == "text"
                else f"a class-conditional VAR transformer ({var_sd['class_emb.weight'].shape[0] - 1} classes)")
        script = "convert_var_clip_to_diffusers.py" if kind == "text" else "convert_var_to_diffusers.py"
        raise ConversionError(f"var_checkpoint {str(var_checkpoint)!r} holds {held}; convert it with "
                              f"conversion_scripts/{script}")
    encoder = tokenizer = None
    if condition_type == "text" and text_encoder is not None and kind == "text":
        # before the slow part, so that a wrong or unreachable text encoder is reported at once
        encoder, tokenizer = load_text_encoder(text_encoder, int(var_sd["noise.weight"].shape[1]))
    if "blocks.0.attn.scale_mul_1H11" not in var_sd and num_heads is None:
        depth = len({k.split(".")[1] for k in var_sd if k.startswith("blocks.")})
        logger.warning(f"var_checkpoint has no L2-normalised attention, so it does not store the number of heads: "
                       f"assuming VAR's heads = depth = {depth} (pass num_heads if it was trained otherwise)")

    try:
        transformer = transformer_from_original(var_sd, num_heads=num_heads, patch_nums=patch_nums)
    except OriginalCheckpointError as e:
        raise ConversionError(f"var_checkpoint {str(var_checkpoint)!r}: {e}") from None
    del var_sd
    patch_nums = tuple(transformer.config.patch_nums)
    try:
        vqvae = vqvae_from_original(vae_sd, patch_nums=patch_nums, quant_resi=quant_resi)
    except OriginalCheckpointError as e:
        raise ConversionError(f"vae_checkpoint {str(vae_checkpoint)!r}: {e}") from None
    del vae_sd

    t, v = transformer.config, vqvae.config
    if (t.vocab_size, t.latent_channels) != (v.vocab_size, v.latent_channels):
        raise ConversionError(f"var_checkpoint and vae_checkpoint do not belong together: the transformer predicts "
                              f"{t.vocab_size} codes of {t.latent_channels} channels, the VQ-VAE's codebook has "
                              f"{v.vocab_size} × {v.latent_channels}")

    if condition_type == "class":
        return VARPipeline(transformer=transformer, vqvae=vqvae)
    return VARCLIPPipeline(tokenizer=tokenizer, text_encoder=encoder, transformer=transformer, vqvae=vqvae)


# ----------------------------------------------------------------------------------------------------------------------
# Describing and checking
# ----------------------------------------------------------------------------------------------------------------------


def _params(module: torch.nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def describe_pipeline(pipe, text_encoder_source: str | None = None) -> list[tuple[str, str, str]]:
    """The inferred configuration as ``(component, setting, value)`` rows, for the script's table."""
    t, v = pipe.transformer.config, pipe.vqvae.config
    L = sum(p * p for p in t.patch_nums)
    cond = (f"text, {t.text_embed_dim}-d CLIP embedding" if t.condition_type == "text"
            else f"class label, {t.num_classes} classes")
    rows = [
        ("transformer", "condition", cond),
        ("", "depth / width / heads", f"{t.depth} / {t.embed_dim} / {t.num_heads}"),
        ("", "mlp ratio", f"{t.mlp_ratio:g}"),
        ("", "shared AdaLN", "yes" if t.shared_aln else "no"),
        ("", "L2-norm attention", "yes" if t.attn_l2_norm else "no"),
        ("", "patch_nums", f"{','.join(map(str, t.patch_nums))} ({L} tokens)"),
        ("", "parameters", _params(pipe.transformer)),
        ("vqvae", "codebook", f"{v.vocab_size} × {v.latent_channels}"),
        ("", "ch / ch_mult / res blocks", f"{v.ch} / {tuple(v.ch_mult)} / {v.num_res_blocks}"),
        ("", "image size", f"{pipe.vqvae.sample_size} px"),
        ("", "φ (quant_resi, shared)", f"{v.quant_resi:g}, {v.share_quant_resi}"),
        ("", "parameters", _params(pipe.vqvae)),
    ]
    if t.condition_type == "text":
        encoder = getattr(pipe, "text_encoder", None)
        if encoder is None:
            rows.append(("text encoder", "", "none (generate with prompt_embeds)"))
        else:
            rows.append(("text encoder", text_encoder_source or "CLIP",
                         f"projection {encoder.config.projection_dim}, {_params(encoder)}"))
    return rows


def format_table(rows: Sequence[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows)


def check_pipeline_folder(folder: str | os.PathLike, variant: str | None = None, seed: int = 0) -> tuple[int, int]:
    """Load a converted folder and generate one image with guidance, as a user would; returns its (height, width).

    Half-precision variants are loaded in float32 here: the check is about the files, and CPU half kernels are slow.
    Raises ``RuntimeError`` when the image is not finite or not of the VQ-VAE's size.
    """
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        class_name = json.load(f)["_class_name"]
    cls = {"VARCLIPPipeline": VARCLIPPipeline, "VARPipeline": VARPipeline}[class_name]
    pipe = cls.from_pretrained(folder, variant=variant, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    if cls is VARPipeline:
        images = pipe(class_labels=0, guidance_scale=4.0, generator=generator, output_type="np").images
    elif pipe.text_encoder is not None:
        images = pipe("a photo of a red fox in the snow", guidance_scale=4.0, generator=generator,
                      output_type="np").images
    else:  # no text encoder: a random unit vector stands in for a CLIP text embedding
        E = pipe.transformer.config.text_embed_dim
        embeds = torch.nn.functional.normalize(torch.randn(1, E, generator=generator), dim=-1)
        images = pipe(prompt_embeds=embeds, guidance_scale=4.0, generator=generator, output_type="np").images
    size = pipe.vqvae.sample_size
    if images.shape != (1, size, size, 3) or not (images >= 0).all() or not (images <= 1).all():
        raise RuntimeError(f"the converted pipeline produced an image of shape {images.shape}, expected (1, {size}, "
                           f"{size}, 3) in [0, 1]")
    return size, size


# ----------------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------------


def render_model_card(template_path: str | os.PathLike, card_data, **fields):
    """Fill a Jinja model-card template; every placeholder must be given (a missing one is an error).

    ``card_data`` is a :class:`huggingface_hub.ModelCardData`, rendered as the YAML front matter (``{{ card_data }}``).
    Returns a :class:`huggingface_hub.ModelCard` (its metadata parsed back, so malformed YAML fails here).
    """
    import jinja2
    from huggingface_hub import ModelCard

    template_path = Path(template_path)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template_path.parent), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    try:
        text = env.get_template(template_path.name).render(card_data=card_data.to_yaml(), **fields)
    except jinja2.UndefinedError as e:
        raise ConversionError(f"model card template {str(template_path)!r} needs a value: {e.message}") from None
    return ModelCard(text, ignore_metadata_errors=False)


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _card_fields(pipe, *, var_checkpoint, vae_checkpoint, text_encoder_source, model_location, dtype, variant):
    import diffusers

    t, v = pipe.transformer.config, pipe.vqvae.config
    released = (all(v[k] == val for k, val in _RELEASED_VQVAE.items())
                and tuple(t.patch_nums) == _RELEASED_PATCH_NUMS and t.embed_dim == 64 * t.depth)
    if t.condition_type == "text":
        released = released and t.depth == 16 and t.text_embed_dim == 768
    else:
        released = released and t.depth in (16, 20, 24, 30) and t.num_classes == 1000
    has_text_encoder = getattr(pipe, "text_encoder", None) is not None
    return dict(
        model_location=model_location,
        released_architecture=released,
        depth=t.depth, embed_dim=t.embed_dim, num_heads=t.num_heads, mlp_ratio=f"{t.mlp_ratio:g}",
        shared_aln=t.shared_aln, attn_l2_norm=t.attn_l2_norm,
        patch_nums=",".join(map(str, t.patch_nums)), num_tokens=sum(p * p for p in t.patch_nums),
        vocab_size=t.vocab_size, latent_channels=t.latent_channels, image_size=pipe.vqvae.sample_size,
        vae_ch=v.ch, vae_ch_mult=tuple(v.ch_mult),
        text_embed_dim=t.text_embed_dim if t.condition_type == "text" else None,
        num_classes=t.num_classes if t.condition_type == "class" else None,
        example_class=207 if t.condition_type == "class" and t.num_classes > 207 else 0,
        transformer_params=_params(pipe.transformer), vqvae_params=_params(pipe.vqvae),
        has_text_encoder=has_text_encoder,
        text_encoder_source=text_encoder_source or DEFAULT_TEXT_ENCODER,
        dtype=dtype, variant=variant,
        torch_dtype={"fp32": "torch.float32", "fp16": "torch.float16", "bf16": "torch.bfloat16"}[dtype],
        var_checkpoint_name=Path(var_checkpoint).name, var_checkpoint_sha256=_sha256(var_checkpoint),
        vae_checkpoint_name=Path(vae_checkpoint).name, vae_checkpoint_sha256=_sha256(vae_checkpoint),
        var_clip_version=__version__, diffusers_version=diffusers.__version__,
    )


def _card_data(pipe, has_text_encoder: bool, text_encoder_source: str | None, released: bool):
    from huggingface_hub import ModelCardData

    # `library_name: var-clip`, not `diffusers`: the Hub derives the "Use this model" snippet and the loader from
    # it, and diffusers' own `DiffusionPipeline.from_pretrained(repo_id)` cannot load components of var_clip's
    # classes. The `diffusers` tag still lists the repository with diffusers-format models.
    text = pipe.transformer.config.condition_type == "text"
    tags = ["var-clip", "diffusers", "safetensors", "var", "next-scale-prediction", "autoregressive"]
    tags += ["text-to-image", "clip"] if text else ["class-conditional", "imagenet"]
    base_model = ["FoundationVision/var"]
    if text and has_text_encoder and text_encoder_source == DEFAULT_TEXT_ENCODER:
        base_model.append(DEFAULT_TEXT_ENCODER)
    # The Hub has no class-conditional task; generating from a label and no text is closest to its
    # `unconditional-image-generation` task.
    pipeline_tag = "text-to-image" if text else "unconditional-image-generation"
    return ModelCardData(
        library_name="var-clip", license="mit", pipeline_tag=pipeline_tag, tags=tags,
        base_model=base_model if released else None, datasets=["ILSVRC/imagenet-1k"] if released else None,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------------


def _cast(pipe, dtype: torch.dtype) -> None:
    """Cast every component's floating weights to ``dtype`` except the modules its class keeps in float32.

    ``pipe.to(dtype)`` would cast those too (the transformer's head, the quantizer's codebook), and a half-precision
    variant would then lose them for good; diffusers keeps them in float32 when loading with ``dtype=``.
    """
    if dtype == torch.float32:
        return
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        keep = getattr(component, "_keep_in_fp32_modules", None) or []
        for name, tensor in [*component.named_parameters(), *component.named_buffers()]:
            if tensor.is_floating_point() and not any(k in name.split(".") for k in keep):
                tensor.data = tensor.data.to(dtype)


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
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``; the latter two are saved as diffusers variants of that name.
        overwrite: replace a non-empty ``output_dir``, only once the new folder is complete.
        model_card_template: a Jinja template (see ``model_cards/``) for the folder's ``README.md``; None writes none.
        repo_id: the Hub repository the folder is meant for, used in the card's usage snippet (else the local path).
        check: load the written folder and generate one image before moving it into place.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
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
        _cast(pipe, DTYPES[dtype])
        pipe.save_pretrained(staging, safe_serialization=True, variant=variant)
        write_marker(staging, "convert_original_checkpoints")
        if model_card_template is not None:
            has_text_encoder = getattr(pipe, "text_encoder", None) is not None
            fields = _card_fields(pipe, var_checkpoint=var_checkpoint, vae_checkpoint=vae_checkpoint,
                                  text_encoder_source=text_encoder, model_location=repo_id or str(output_dir),
                                  dtype=dtype, variant=variant)
            card_data = _card_data(pipe, has_text_encoder, text_encoder, fields["released_architecture"])
            card = render_model_card(model_card_template, card_data, **fields)
            card.save(staging / "README.md")
        seconds["save"] = time.perf_counter() - start
        del pipe
        if check:
            start = time.perf_counter()
            logger.info(f"checking that the written folder loads and generates (variant {variant!r}) ...")
            try:
                image_size = check_pipeline_folder(staging, variant=variant)
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


# ----------------------------------------------------------------------------------------------------------------------
# Command line of the conversion scripts
# ----------------------------------------------------------------------------------------------------------------------


def conversion_parser(condition_type: str, description: str, var_help: str) -> argparse.ArgumentParser:
    """The arguments of the conversion scripts (``conversion_scripts/convert_*_to_diffusers.py``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var_checkpoint", required=True, help=var_help)
    parser.add_argument("--vae_checkpoint", required=True, help="VAR's VQ-VAE, vae_ch160v4096z32.pth")
    parser.add_argument("--output_dir", required=True, help="the pipeline folder to create")
    parser.add_argument("--patch_nums", default=None,
                        help="comma-separated scale sides (default: the checkpoint's own, else 1,2,3,4,5,6,8,10,13,16)")
    if condition_type == "text":
        parser.add_argument("--text_encoder", default=DEFAULT_TEXT_ENCODER,
                            help=f"Hub id or local folder of a CLIP model (text tower with projection and tokenizer; "
                                 f"default {DEFAULT_TEXT_ENCODER}); 'none' writes a pipeline without text encoder and "
                                 f"tokenizer, used with prompt_embeds")
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES),
                        help="weight precision; fp16/bf16 are saved as the diffusers variant of that name")
    parser.add_argument("--num_heads", type=int, default=None,
                        help="only for checkpoints without L2-normalised attention (default: heads = depth, as VAR)")
    parser.add_argument("--quant_resi", type=float, default=0.5, help="φ's residual ratio (VAR: 0.5)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output_dir (only once the new conversion is complete)")
    parser.add_argument("--skip_check", action="store_true",
                        help="do not load the written folder back and generate an image before finishing")
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def conversion_main(argv: list[str] | None, parser: argparse.ArgumentParser, condition_type: str,
                    model_card_template: str | os.PathLike, upload_message: str) -> int:
    """Run a conversion script: one-line errors and exit codes (0 done, 1 failed, 130 interrupted), no traceback."""
    from .hub import push_pipeline_to_hub

    args = parser.parse_args(argv)
    text_encoder = getattr(args, "text_encoder", None)
    if text_encoder is not None and text_encoder.strip().lower() == "none":
        text_encoder = None
    # Progress from the library goes to stdout; SIGTERM unwinds like Ctrl-C, so the temporary folder is removed.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # the conversion's progress, and where a symlinked output folder resolves to
    logs = [logging.getLogger("var_clip.conversion"), logging.getLogger("var_clip.utils.files")]
    previous_levels = [log.level for log in logs]
    for log in logs:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        start = time.perf_counter()
        result = convert_original_checkpoints(
            args.var_checkpoint, args.vae_checkpoint, args.output_dir, condition_type=condition_type,
            text_encoder=text_encoder, patch_nums=args.patch_nums, num_heads=args.num_heads,
            quant_resi=args.quant_resi, dtype=args.dtype, overwrite=args.overwrite,
            model_card_template=model_card_template, repo_id=args.push_to_hub, check=not args.skip_check,
        )
        total = time.perf_counter() - start
    except (ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no output folder was written", file=sys.stderr)
        return 130
    finally:
        for log, level in zip(logs, previous_levels):
            log.removeHandler(handler)
            log.setLevel(level)
        signal.signal(signal.SIGTERM, previous_sigterm)

    s = result.seconds
    print(f"wrote {result.output_dir}" + (f" (variant {result.variant!r})" if result.variant else "")
          + f" in {total:.1f} s (load {s['load']:.1f} s, save {s['save']:.1f} s"
          + (f", check {s['check']:.1f} s: generated a {result.check_image_size[0]}×{result.check_image_size[1]} image"
             if result.check_image_size else ", check skipped") + ")")
    if args.push_to_hub:
        try:
            url = push_pipeline_to_hub(result.output_dir, args.push_to_hub, private=args.private,
                                       commit_message=upload_message)
        except Exception as e:  # noqa: BLE001 - network, permissions, quota: the local folder is complete either way
            print(f"error: the upload to {args.push_to_hub} failed ({_one_line(e)}); the converted folder "
                  f"{result.output_dir} is complete", file=sys.stderr)
            return 1
        print(f"uploaded to https://huggingface.co/{args.push_to_hub} ({url})")
    return 0
