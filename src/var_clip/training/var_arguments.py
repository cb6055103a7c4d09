"""train-var's command line: the parser (every option in ``--kebab-case`` and ``--snake_case``, see
:func:`~var_clip.utils.arguments.add_option`) and the checks that run before anything is loaded."""

from __future__ import annotations

import argparse

from ..loaders.lora import LORA_WEIGHT_NAME, TEXT_ENCODER_LORA_TARGETS, require_peft
from ..utils.arguments import add_option
from .engine import add_data_arguments, add_training_arguments, check_training_arguments
from .lora_defaults import add_lora_default_arguments
from .var_loss import SCALE_WEIGHTINGS

__all__ = ["build_parser", "check_arguments"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="var-clip train-var",
        description="Train a VAR-CLIP transformer (text) or a VAR transformer (class labels) on a frozen VQ-VAE "
                    "and CLIP text encoder; writes a VARCLIPPipeline (VARPipeline) folder.",
    )
    add_training_arguments(parser, learning_rate=None, weight_decay=0.05, adam_beta1=0.9, adam_beta2=0.95,
                           max_grad_norm=2.0, lr_scheduler="linear", train_batch_size=16)
    add_data_arguments(parser)

    group = parser.add_argument_group("frozen components")
    add_option(group, "pretrained-pipeline", type=str, default=None,
               help="fine-tune this VARCLIPPipeline/VARPipeline folder (its vqvae, text encoder and "
                    "tokenizer are used unless given below)")
    add_option(group, "vqvae", type=str, default=None,
               help="MultiScaleVQModel folder (or a pipeline folder with vqvae/)")
    add_option(group, "text-encoder", type=str, default=None,
               help="CLIPTextModelWithProjection folder (e.g. train_clip's text_encoder/ or a CLIP checkpoint)")
    add_option(group, "tokenizer", type=str, default=None,
               help="CLIPTokenizer folder (default: the text encoder's folder or its sibling tokenizer/)")
    add_option(group, "condition", choices=("text", "class"), default="text",
               help="text: VAR-CLIP on captions; class: VAR on class labels (class subfolders)")
    add_option(group, "label-column", type=str, default="label",
               help="with --condition class: the label column (default label)")
    add_option(group, "num-classes", type=int, default=None, help="default: the dataset's number of classes")

    group = parser.add_argument_group("LoRA (fine-tune adapters on a frozen --pretrained_pipeline)")
    add_option(group, "lora-rank", type=int, default=None,
               help="train LoRA adapters of this rank instead of the whole transformer; writes "
                    f"{LORA_WEIGHT_NAME} and a model card")
    add_option(group, "lora-alpha", type=float, default=None, help="LoRA scaling numerator (default: the rank)")
    add_option(group, "lora-dropout", type=float, default=0.0, help="dropout on the adapters' input")
    add_option(group, "lora-target-modules", type=str, nargs="+", default=None,
               help="module-name suffixes to adapt (default: text_proj attn.mat_qkv attn.proj, plus the "
                    "cross-attention's to_q to_k to_v proj with --conditioning tokens models); `none` with "
                    "--train_text_encoder leaves the transformer as it is")
    add_option(group, "text-encoder-lora-target-modules", type=str, nargs="+", default=None,
               help="with --train_text_encoder: module-name suffixes of the text encoder to adapt (default: "
                    f"{' '.join(TEXT_ENCODER_LORA_TARGETS)}); `token_embedding` adapts the embeddings of "
                    "tokens the base model never read (the pieces of new words) and no others")
    add_option(group, "keep-known-captions", action="store_true",
               help="learning without forgetting: for captions made only of words the base model knows (its "
                    "recorded vocabulary), and for the rows trained without condition, the loss is the KL "
                    "divergence to the frozen base model's predictions instead of cross-entropy to the image; "
                    "captions with new words learn from their images. Use replay images of the base model's "
                    "world with it")
    add_option(group, "train-text-encoder", action="store_true",
               help="also train adapters (same rank, alpha, dropout) on the CLIP text encoder's "
                    f"{' '.join(TEXT_ENCODER_LORA_TARGETS)}: for words it never saw, whose pieces it cannot "
                    "read yet; the adapter file then holds both parts")

    group = parser.add_argument_group("transformer (when training from scratch)")
    add_option(group, "depth", type=int, default=16, help="transformer blocks (default 16, VAR-d16)")
    add_option(group, "embed-dim", type=int, default=None, help="default 64 × depth, as VAR")
    add_option(group, "num-heads", type=int, default=None, help="default depth, as VAR")
    add_option(group, "mlp-ratio", type=float, default=4.0, help="MLP hidden width / model width (default 4)")
    add_option(group, "shared-aln", action="store_true",
               help="one AdaLN projection shared by all blocks (VAR's shared_aln)")
    add_option(group, "no-attn-l2-norm", action="store_true", help="plain dot-product attention")
    add_option(group, "conditioning", choices=("pooled", "tokens"), default="pooled",
               help="pooled: VAR-CLIP as published (the pooled CLIP embedding is the start token and the AdaLN "
                    "condition); tokens: also cross-attend to the caption's token states in every block")
    add_option(group, "unconditional-adaln", action="store_true",
               help="every AdaLN learns one modulation for all captions instead of reading the condition, which "
                    "then enters by the start token (and, with --conditioning tokens, by cross-attention) only")
    add_option(group, "cond-drop-rate", type=float, default=0.1,
               help="share of rows trained without condition, for classifier-free guidance (default 0.1)")
    add_option(group, "drop-rate", type=float, default=0.0, help="dropout after attention and MLP (default 0)")
    add_option(group, "attn-drop-rate", type=float, default=0.0, help="dropout on the attention weights (default 0)")
    add_option(group, "drop-path-rate", type=float, default=None, help="default 0.1 × depth / 24, as VAR")

    group = parser.add_argument_group("VAR training")
    add_option(group, "label-smoothing", type=float, default=0.1,
               help="cross-entropy label smoothing (default 0.1, as VAR)")
    add_option(group, "scale-loss-weighting", choices=SCALE_WEIGHTINGS, default="tokens",
               help="tokens (VAR): the mean over all L tokens; scales: each scale's mean weighs alike, so the "
                    "coarse scales that decide the layout get as much of the loss as the finest")
    add_option(group, "cache-dir", type=str, default=None,
               help="precompute every image's token indices and every caption's embedding once into this "
                    "folder and train from them (much faster on CPU; needs center crops, no flips)")
    add_option(group, "cache-batch-size", type=int, default=64,
               help="images per forward pass while the token cache is built (default 64)")

    group = parser.add_argument_group("validation samples")
    add_option(group, "validation-prompts", type=str, nargs="*", default=None,
               help="captions sampled at every --validation_steps and at the end")
    add_option(group, "validation-class-labels", type=int, nargs="*", default=None,
               help="with --condition class: labels sampled at every --validation_steps and at the end")
    add_option(group, "validation-guidance-scale", type=float, default=4.0,
               help="the samples' guidance scale (default 4)")
    add_option(group, "validation-top-k", type=int, default=900, help="the samples' top-k (default 900)")
    add_option(group, "validation-top-p", type=float, default=0.95, help="the samples' top-p (default 0.95)")
    add_option(group, "validation-seed", type=int, default=0, help="the samples' seed (default 0)")
    add_lora_default_arguments(parser, parser.add_argument_group(
        "LoRA settings chosen from the data (each unset one is chosen, logged and written to the card)"))
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse flags that contradict each other or are out of range, naming them (run after ``take_unset``)."""
    check_training_arguments(args)
    if not 0.0 <= args.label_smoothing < 1.0:
        raise ValueError(f"`--label_smoothing` must be in [0, 1), got {args.label_smoothing}")
    if args.depth < 1:
        raise ValueError(f"`--depth` must be >= 1, got {args.depth}")
    if not 0.0 <= args.cond_drop_rate <= 1.0:
        raise ValueError(f"`--cond_drop_rate` must be in [0, 1], got {args.cond_drop_rate}")
    if args.cache_batch_size < 1:
        raise ValueError(f"`--cache_batch_size` must be >= 1, got {args.cache_batch_size}")
    if args.cache_dir and (args.random_flip or (args.crop == "random" and args.resize_ratio > 1.0)):
        raise ValueError("`--cache_dir` stores one encoding per image, so it needs deterministic inputs: drop "
                         "`--random_flip` and `--crop random`")
    if args.condition == "text" and args.validation_class_labels:
        raise ValueError("`--validation_class_labels` is for `--condition class`; use `--validation_prompts`")
    if args.condition == "class" and args.conditioning == "tokens":
        raise ValueError("`--conditioning tokens` is for `--condition text`")
    if args.condition == "class" and args.validation_prompts:
        raise ValueError("`--validation_prompts` is for `--condition text`; use `--validation_class_labels`")
    if args.lora_rank is None:
        given = [f"--{n}" for n in ("lora_alpha", "lora_target_modules") if getattr(args, n) is not None]
        given += ["--lora_dropout"] if args.lora_dropout else []
        given += ["--train_text_encoder"] if args.train_text_encoder else []
        given += ["--text_encoder_lora_target_modules"] if args.text_encoder_lora_target_modules else []
        given += ["--keep_known_captions"] if args.keep_known_captions else []
        if given:
            raise ValueError(f"{', '.join(given)} configure LoRA training: also pass `--lora_rank`")
        return
    if args.lora_rank < 1:
        raise ValueError(f"`--lora_rank` must be >= 1, got {args.lora_rank}")
    require_peft()
    if not args.pretrained_pipeline:
        raise ValueError("`--lora_rank` trains adapters on a model that exists: pass `--pretrained_pipeline`")
    if args.condition != "text":
        raise ValueError("`--lora_rank` is for `--condition text` (VARCLIPPipeline's LoRA API)")
    if args.lora_target_modules and "none" in args.lora_target_modules and (
            len(args.lora_target_modules) > 1 or not args.train_text_encoder):
        raise ValueError("`--lora_target_modules none` (no adapter on the transformer) stands alone and needs "
                         "`--train_text_encoder`: an adapter must live somewhere")
    if args.text_encoder_lora_target_modules and not args.train_text_encoder:
        raise ValueError("`--text_encoder_lora_target_modules` chooses what `--train_text_encoder` adapts: pass it too")
    if args.lora_alpha is not None and not args.lora_alpha > 0:
        raise ValueError(f"`--lora_alpha` must be > 0, got {args.lora_alpha}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise ValueError(f"`--lora_dropout` must be in [0, 1), got {args.lora_dropout}")
