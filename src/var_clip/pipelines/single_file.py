"""Pipelines straight from the original checkpoint files (``from_single_file``), without a conversion step.

The files are read by the converter's own code (:func:`var_clip.conversion.load_original_pipeline`: no code run while
unpickling, wrong files recognised by their first bytes and named by the argument that holds them, every key
consumed, every hyperparameter inferred), so the pipeline equals the one a converted folder loads. What the original
files do not hold, VAR-CLIP's text encoder and tokenizer, is passed in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..utils.dtypes import cast_keeping_fp32_modules

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
    from ..conversion.infer import load_original_pipeline, parse_patch_nums

    encoder_source = os.fspath(text_encoder) if isinstance(text_encoder, (str, os.PathLike)) else None
    pipe = load_original_pipeline(var_checkpoint, vae_checkpoint, condition_type, text_encoder=encoder_source,
                                  patch_nums=parse_patch_nums(patch_nums), num_heads=num_heads, quant_resi=quant_resi)
    components = dict(pipe.components)
    if condition_type == "text" and encoder_source is None:
        components.update(text_encoder=text_encoder, tokenizer=tokenizer)  # the constructor checks their widths
    pipe = cls(**components)
    if dtype is not None:
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                cast_keeping_fp32_modules(component, dtype)
    return pipe
