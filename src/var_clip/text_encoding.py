"""What VAR-CLIP reads of a prompt: CLIP's text tower on the tokenized prompts, one implementation for the pipelines'
``encode_prompt`` and the trainer, so that training conditions on exactly what inference feeds the transformer.

Legend: B prompts · E projection width · T tokens, cut to the longest prompt · H the text tower's hidden width.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["TextEncoding", "encode_text", "text_max_length"]

logger = logging.getLogger(__name__)

# CLIP's context length, for a text encoder whose tokenizer is not known yet
CLIP_MAX_LENGTH = 77


class TextEncoding(NamedTuple):
    """The prompts as the transformer reads them."""

    embeds_BE: torch.Tensor  # CLIP's projected text embedding, L2-normalised: VAR-CLIP's condition
    states_BTH: torch.Tensor  # the last hidden states, for token-level conditioning
    mask_BT: torch.BoolTensor  # which of the T positions hold a token


def text_max_length(tokenizer, text_encoder) -> int:
    """The most tokens (with start and end) the tokenizer may give and the text encoder has positions for; either
    may be None (a pipeline loaded without it)."""
    limit = tokenizer.model_max_length if tokenizer is not None else CLIP_MAX_LENGTH
    if text_encoder is not None:
        limit = min(limit, text_encoder.config.max_position_embeddings)
    return limit


def encode_text(tokenizer, text_encoder, prompts: Sequence[str], device: torch.device | str,
                execution_device: torch.device | str | None = None) -> TextEncoding:
    """Encode ``prompts`` with a CLIP tokenizer and ``CLIPTextModelWithProjection``, as VAR-CLIP conditions on.

    The prompts are padded to the context length and truncated to it, with a warning naming the words that fall off.
    The text encoder runs on ``execution_device`` (default ``device``; a pipeline passes its execution device, which
    differs from the encoder's own under offloading), in its own dtype and under whatever autocast the caller set;
    the results are moved to ``device``.
    """
    prompts = list(prompts)
    max_len = text_max_length(tokenizer, text_encoder)
    for prompt in prompts:
        # with BOS and EOS, untruncated; verbose=False: our warning below replaces transformers' generic one
        full_ids = tokenizer(prompt, verbose=False).input_ids
        if len(full_ids) > max_len:
            # truncation keeps BOS + (max_len - 2) tokens + EOS: name the words that fall off
            dropped = tokenizer.decode(full_ids[max_len - 1 : -1])
            logger.warning(f"CLIP reads at most {max_len} tokens; this part of the prompt was dropped: {dropped!r}")
    text = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    out = text_encoder(text.input_ids.to(execution_device if execution_device is not None else device))
    embeds_BE = out.text_embeds
    # CLIP's text tower is causal: a token's state never depends on the padding after it, so cutting the padding
    # changes nothing but the length
    mask_BT = text.attention_mask.bool()
    T = int(mask_BT.sum(dim=1).max())
    states_BTH = out.last_hidden_state[:, :T]
    return TextEncoding((embeds_BE / embeds_BE.norm(dim=-1, keepdim=True)).to(device), states_BTH.to(device),
                        mask_BT[:, :T].to(device))
