"""The adapters ``train-var --lora_rank`` trains: on the frozen transformer's attention projections, and with
``--train_text_encoder`` on the CLIP text encoder, where an adapter on the token embedding may move only the rows
of tokens the base model never read."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from ..loaders.lora import add_text_encoder_adapter, lora_config, text_encoder_lora_config
from ..models.var_transformer import VARTransformer2DModel
from .lora_run import LORA_ADAPTER_NAME

__all__ = ["add_text_encoder_adapters", "add_transformer_adapter"]


def add_transformer_adapter(transformer: VARTransformer2DModel, args: argparse.Namespace) -> None:
    """Freeze the base transformer and add the adapter of ``--lora_rank`` / ``--lora_alpha`` / ``--lora_dropout`` on
    ``--lora_target_modules`` (none for ``none``): only the adapters require grad, so only they reach AdamW."""
    transformer.requires_grad_(False)
    if args.lora_target_modules != ["none"]:
        transformer.add_adapter(lora_config(transformer, args.lora_rank, args.lora_alpha, args.lora_dropout,
                                            args.lora_target_modules), adapter_name=LORA_ADAPTER_NAME)


def add_text_encoder_adapters(text_encoder, tokenizer, vocabulary: Sequence[str] | None,
                              args: argparse.Namespace) -> None:
    """``--train_text_encoder``: adapters of the same rank, alpha and dropout on the text encoder's
    ``--text_encoder_lora_target_modules``; an embedding adapter trains only the rows of tokens outside the base
    model's recorded ``vocabulary``."""
    add_text_encoder_adapter(text_encoder,
                             text_encoder_lora_config(args.lora_rank, args.lora_alpha, args.lora_dropout,
                                                      args.text_encoder_lora_target_modules),
                             LORA_ADAPTER_NAME)
    _train_new_token_rows_only(text_encoder, tokenizer, vocabulary)


def _train_new_token_rows_only(text_encoder, tokenizer, vocabulary: Sequence[str] | None) -> None:
    """Let an adapter on the token embedding move only the rows of tokens the base model never read.

    The rows of the words in the base model's recorded ``vocabulary`` (and the special tokens) get no gradient, and
    a LoRA embedding adapter starts at zero: so they stay exactly zero, and every prompt made of known words is
    encoded bit for bit as by the base model. Only the pieces of new words learn (textual inversion, in LoRA's form).
    Without a recorded vocabulary every row trains.
    """
    from peft.tuners.lora import Embedding

    if not vocabulary:
        return
    known = {i for word in vocabulary for i in tokenizer(word).input_ids} | set(tokenizer.all_special_ids)
    for module in text_encoder.modules():
        if isinstance(module, Embedding):
            for param in module.lora_embedding_A.values():  # (rank, num_embeddings): one column per token
                mask = torch.ones(param.shape[1], device=param.device, dtype=param.dtype)
                mask[sorted(known)] = 0
                param.register_hook(lambda grad, mask=mask: grad * mask)
