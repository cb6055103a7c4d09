"""Pipelines straight from the original checkpoint files (``from_single_file``), and the reader the converter uses.

Both ``.pth`` files are read without running code (``torch.load(weights_only=True)``); swapped, truncated, HTML or
Git-LFS-pointer files are recognised and named by the argument that holds them; :mod:`var_clip.original_format`
consumes every key, checks every shape and infers every hyperparameter; an optional CLIP text encoder is checked
against the transformer. ``var-clip convert-var-clip`` (:mod:`var_clip.conversion`) reads the files with
:func:`read_original_components` too, so ``from_single_file`` gives the pipeline a converted folder loads. What the
original files do not hold, VAR-CLIP's text encoder and tokenizer, is passed in.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import torch

from ..models.strict_loading import CONDITION_TYPES
from ..original_format import (
    OriginalCheckpointError,
    load_original_state_dict,
    looks_like_transformer,
    looks_like_vqvae,
    transformer_from_original,
    vqvae_from_original,
)
from ..utils.dtypes import cast_keeping_fp32_modules
from ..utils.pretrained import ModelLoadError, load_clip_text_encoder

logger = logging.getLogger(__name__)

#: The text tower VAR-CLIP was trained with (frozen): OpenAI CLIP ViT-L/14, 768-d projected embeddings.
DEFAULT_TEXT_ENCODER = "openai/clip-vit-large-patch14"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class ConversionError(ValueError):
    """A conversion (or ``from_single_file``) that cannot proceed because of its inputs; the message names the
    argument at fault."""


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
    source = os.path.expanduser(name_or_path)
    if not os.path.isdir(source):
        if not _HUB_ID.match(name_or_path):
            raise ConversionError(f"text_encoder {name_or_path!r} is neither an existing folder nor a Hub id "
                                  f"(like {DEFAULT_TEXT_ENCODER!r}); pass 'none' to convert without one")
        source = name_or_path
    try:
        text_encoder, tokenizer = load_clip_text_encoder(source, f"text_encoder {name_or_path!r}")
    except ModelLoadError as e:
        raise ConversionError(f"{e} (offline? pass a local folder, or 'none')") from None
    projection_dim = text_encoder.config.projection_dim
    if projection_dim != expected_dim:
        raise ConversionError(f"text_encoder {name_or_path!r} projects to {projection_dim} dims but the transformer in "
                              f"var_checkpoint expects text embeddings of {expected_dim} (VAR-CLIP d16 uses "
                              f"{DEFAULT_TEXT_ENCODER}, 768)")
    return text_encoder, tokenizer


def read_original_components(
    var_checkpoint: str | os.PathLike,
    vae_checkpoint: str | os.PathLike,
    condition_type: str = "text",
    text_encoder: str | None = DEFAULT_TEXT_ENCODER,
    patch_nums: Sequence[int] | str | None = None,
    num_heads: int | None = None,
    quant_resi: float = 0.5,
) -> dict:
    """The components of a :class:`~var_clip.VARCLIPPipeline` (``condition_type="text"``: ``tokenizer``,
    ``text_encoder``, ``transformer``, ``vqvae``) or a :class:`~var_clip.VARPipeline` (``transformer``, ``vqvae``),
    read from the original files; the text components are None when ``text_encoder`` is.

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
        command = "convert-var-clip" if kind == "text" else "convert-var"
        loader = "VARCLIPPipeline" if kind == "text" else "VARPipeline"
        raise ConversionError(f"var_checkpoint {str(var_checkpoint)!r} holds {held}; convert it with "
                              f"var-clip {command} (or load it with {loader}.from_single_file)")
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
        return {"transformer": transformer, "vqvae": vqvae}
    return {"tokenizer": tokenizer, "text_encoder": encoder, "transformer": transformer, "vqvae": vqvae}


#: ``text_encoder`` / ``tokenizer`` left out (None is a choice: a pipeline that takes ``prompt_embeds`` only)
NOT_GIVEN = object()


def check_text_components(pipeline_name: str, text_encoder, tokenizer) -> None:
    """Before any file is read: the text components a VAR-CLIP pipeline needs and the original files lack."""
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerBase

    if text_encoder is NOT_GIVEN or (tokenizer is NOT_GIVEN and not isinstance(text_encoder, (str, os.PathLike))):
        raise ValueError(
            f"{pipeline_name}.from_single_file needs the text encoder, which the original VAR-CLIP files do not hold: "
            f"pass `text_encoder` (a CLIPTextModelWithProjection, or the local folder of a CLIP model; VAR-CLIP d16 "
            f"uses 'openai/clip-vit-large-patch14') and `tokenizer` (its CLIPTokenizer; a folder brings its own), or "
            f"text_encoder=None, tokenizer=None for a pipeline that generates from `prompt_embeds` only")
    if isinstance(text_encoder, (str, os.PathLike)):
        if tokenizer not in (NOT_GIVEN, None):
            raise ValueError("`text_encoder` names a folder, which brings its own tokenizer: leave `tokenizer` out")
        return
    if (text_encoder is None) != (tokenizer is None):
        raise ValueError("pass `text_encoder` and `tokenizer` together (both None: `prompt_embeds` only)")
    if text_encoder is not None and not isinstance(text_encoder, CLIPTextModelWithProjection):
        raise ValueError(f"`text_encoder` must be a transformers CLIPTextModelWithProjection (VAR-CLIP conditions on "
                         f"CLIP's projected text embedding), got {type(text_encoder).__name__}")
    if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ValueError(f"`tokenizer` must be a transformers tokenizer (CLIPTokenizer), got "
                         f"{type(tokenizer).__name__}")


def pipeline_from_single_file(
    cls,
    condition_type: str,
    var_checkpoint: str | os.PathLike,
    vae_checkpoint: str | os.PathLike,
    text_encoder=None,
    tokenizer=None,
    patch_nums: Sequence[int] | str | None = None,
    num_heads: int | None = None,
    quant_resi: float = 0.5,
    dtype: torch.dtype | None = None,
):
    """Build ``cls`` from the two original files; the text components (if any) are checked by
    :func:`check_text_components` first. ``dtype`` casts all but the modules kept in float32."""
    encoder_source = os.fspath(text_encoder) if isinstance(text_encoder, (str, os.PathLike)) else None
    components = read_original_components(var_checkpoint, vae_checkpoint, condition_type, text_encoder=encoder_source,
                                          patch_nums=patch_nums, num_heads=num_heads, quant_resi=quant_resi)
    if condition_type == "text" and encoder_source is None:
        components.update(text_encoder=text_encoder, tokenizer=tokenizer)  # the constructor checks their widths
    pipe = cls(**components)
    if dtype is not None:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                cast_keeping_fp32_modules(component, dtype)
    return pipe
