"""train-var's models: the frozen VQ-VAE and CLIP text components, and the transformer to train, read from a
``--pretrained_pipeline`` or from their own folders, or (the transformer) built from the flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..pipelines.pipeline_var import VARPipeline
from ..pipelines.pipeline_var_clip import VARCLIPPipeline

__all__ = ["VARComponents", "build_components", "load_text_components", "load_vqvae"]


@dataclass
class VARComponents:
    """The models of one run: the transformer trains, the rest stay frozen. ``tokenizer`` and ``text_encoder`` are
    None for class conditioning."""

    tokenizer: object | None
    text_encoder: torch.nn.Module | None
    transformer: VARTransformer2DModel
    vqvae: MultiScaleVQModel

    def frozen_to(self, device: torch.device) -> None:
        """Move the frozen models to ``device`` (the transformer is placed by the training loop)."""
        self.vqvae.to(device)
        if self.text_encoder is not None:
            self.text_encoder.to(device)


def load_vqvae(path: str | Path) -> MultiScaleVQModel:
    """A ``MultiScaleVQModel`` from its folder, or from a pipeline folder's ``vqvae/``."""
    path = Path(path)
    if (path / "vqvae" / "config.json").is_file():
        return MultiScaleVQModel.from_pretrained(path, subfolder="vqvae")
    if not (path / "config.json").is_file():
        raise ValueError(f"`--vqvae` {str(path)!r} is neither a MultiScaleVQModel folder nor a pipeline folder")
    return MultiScaleVQModel.from_pretrained(path)


def load_text_components(text_encoder: str | Path, tokenizer: str | Path | None):
    """(tokenizer, text encoder): a ``CLIPTextModelWithProjection`` folder, and the tokenizer in ``tokenizer`` or,
    by default, in the text encoder's folder or its sibling ``tokenizer/``."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    text_path = Path(text_encoder)
    model = CLIPTextModelWithProjection.from_pretrained(text_path)
    candidates = [Path(tokenizer)] if tokenizer else [text_path, text_path.parent / "tokenizer"]
    for candidate in candidates:
        if (candidate / "tokenizer_config.json").is_file() or (candidate / "vocab.json").is_file():
            return CLIPTokenizer.from_pretrained(candidate), model
    raise ValueError(f"no CLIP tokenizer found at {[str(c) for c in candidates]}: pass `--tokenizer`")


def build_components(args: argparse.Namespace, num_classes: int | None) -> VARComponents:
    """The run's models, the transformer trainable and the rest frozen (``num_classes``: the dataset's, for class
    conditioning)."""
    pipe = None
    if args.pretrained_pipeline:
        pipe_cls = VARCLIPPipeline if args.condition == "text" else VARPipeline
        pipe = pipe_cls.from_pretrained(args.pretrained_pipeline)
    vqvae = load_vqvae(args.vqvae) if args.vqvae else (pipe.vqvae if pipe is not None else None)
    if vqvae is None:
        raise ValueError("`--vqvae` is required (or `--pretrained_pipeline`)")
    tokenizer = text_encoder = None
    if args.condition == "text":
        if args.text_encoder:
            tokenizer, text_encoder = load_text_components(args.text_encoder, args.tokenizer)
        elif pipe is not None and pipe.text_encoder is not None and pipe.tokenizer is not None:
            tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
        else:
            raise ValueError("`--condition text` needs `--text_encoder` (and `--tokenizer`), or a "
                             "`--pretrained_pipeline` that has them")

    transformer = pipe.transformer if pipe is not None else _new_transformer(args, vqvae, text_encoder, num_classes)
    if args.condition == "class" and num_classes is not None and transformer.config.num_classes < num_classes:
        raise ValueError(f"the dataset has {num_classes} classes but the transformer {transformer.config.num_classes}")
    vqvae.requires_grad_(False).eval()
    if text_encoder is not None:
        text_encoder.requires_grad_(False).eval()
    if args.resolution is not None and args.resolution != vqvae.sample_size:
        raise ValueError(f"`--resolution` {args.resolution} differs from the VQ-VAE's image size {vqvae.sample_size}")
    return VARComponents(tokenizer, text_encoder, transformer, vqvae)


def _new_transformer(args: argparse.Namespace, vqvae: MultiScaleVQModel, text_encoder,
                     num_classes: int | None) -> VARTransformer2DModel:
    """A transformer of the flags' size for ``vqvae``'s tokens, with VAR's defaults for what they leave unset."""
    depth = args.depth
    return VARTransformer2DModel(
        vocab_size=vqvae.config.vocab_size, latent_channels=vqvae.config.latent_channels,
        patch_nums=tuple(vqvae.config.patch_nums), depth=depth, embed_dim=args.embed_dim or 64 * depth,
        num_heads=args.num_heads or depth, mlp_ratio=args.mlp_ratio, shared_aln=args.shared_aln,
        attn_l2_norm=not args.no_attn_l2_norm, condition_type=args.condition,
        text_embed_dim=text_encoder.config.projection_dim if text_encoder is not None else 768,
        cross_attention_dim=text_encoder.config.hidden_size if args.conditioning == "tokens" else None,
        num_classes=num_classes or 1000, cond_drop_rate=args.cond_drop_rate, drop_rate=args.drop_rate,
        attn_drop_rate=args.attn_drop_rate,
        drop_path_rate=args.drop_path_rate if args.drop_path_rate is not None else 0.1 * depth / 24,
        conditional_adaln=not args.unconditional_adaln,
    )
