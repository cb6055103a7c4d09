"""Train a CLIP model (contrastive image–text) for worlds where no pretrained CLIP fits, such as the shapes world.

A ``transformers`` ``CLIPModel`` learns from image–caption pairs with the symmetric InfoNCE loss and a learnable
temperature (Radford et al. 2021): the cosine similarities of the batch's L2-normalised image and text embeddings,
times ``exp(logit_scale)`` (clamped at 100, as CLIP), are cross-entropy targets for the matching pair in both
directions. With several processes, each process contrasts its rows against the embeddings of the whole global
batch (gathered with gradients), as in OpenCLIP.

With ``--hard_negatives K``, each image also meets K captions edited to contradict its own (antonyms of spatial
and size words, swapped relation arguments, swapped or replaced colours and shapes; see
:mod:`var_clip.training.hard_negatives`) as extra candidates of its image→text loss, as NegCLIP (Yuksekgonul et
al. 2023): without them a small CLIP learns a bag of words that cannot tell "above" from "below".

Without ``--tokenizer``, a byte-level CLIP tokenizer is built whose BPE merges are learned from the training
captions. The output folder holds ``text_encoder/`` (``CLIPTextModelWithProjection``: the conditioning tower of
``VARCLIPPipeline``), ``tokenizer/`` and ``clip/`` (the full ``CLIPModel`` with its tokenizer and image processor,
for evaluation).

    accelerate launch -m var_clip.training.train_clip --train_data_dir DATA --output_dir OUT --resolution 64

Legend: B batch · E projection width.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.arguments import ArgumentParser, add_option
from .data import ImageCaptionDataset, ImageTransform, load_image_caption_dataset
from .engine import (
    TrainingResult,
    TrainingTask,
    add_data_arguments,
    add_training_arguments,
    check_training_arguments,
    create_accelerator,
    run_training,
    trainer_main,
)
from .hard_negatives import COLOR_WORDS, SHAPE_WORDS, attribute_pairs, caption_hard_negatives
from .tokenizer import build_byte_level_clip_tokenizer

__all__ = ["build_parser", "main", "train", "build_clip_model", "clip_contrastive_loss", "text_encoder_from_clip",
           "CLIP_MEAN", "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = math.log(100.0)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="var-clip train-clip",
        description="Train a CLIP model on image-caption pairs; writes text_encoder/, tokenizer/ and clip/.",
    )
    add_training_arguments(parser, learning_rate=5e-4, weight_decay=0.2, adam_beta1=0.9, adam_beta2=0.98,
                           max_grad_norm=1.0, lr_scheduler="cosine", train_batch_size=64)
    add_data_arguments(parser)
    parser.set_defaults(resolution=64)

    group = parser.add_argument_group("tokenizer")
    add_option(group, "tokenizer", type=str, default=None,
                       help="a CLIPTokenizer folder (default: build a byte-level one from the captions)")
    add_option(group, "tokenizer-merges", type=int, default=4000,
                       help="at most this many BPE merges learned from the captions")
    add_option(group, "max-text-length", type=int, default=77, help="token positions of the text tower")

    group = parser.add_argument_group("model (when not --init_from)")
    add_option(group, "init-from", type=str, default=None,
                       help="continue from a CLIPModel folder (e.g. a previous run's clip/)")
    add_option(group, "projection-dim", type=int, default=64, help="width of the shared embedding space (default 64)")
    add_option(group, "text-width", type=int, default=256, help="text transformer width (default 256)")
    add_option(group, "text-layers", type=int, default=4, help="text transformer layers (default 4)")
    add_option(group, "text-heads", type=int, default=4, help="text attention heads (default 4)")
    add_option(group, "vision-width", type=int, default=256, help="vision transformer width (default 256)")
    add_option(group, "vision-layers", type=int, default=4, help="vision transformer layers (default 4)")
    add_option(group, "vision-heads", type=int, default=4, help="vision attention heads (default 4)")
    add_option(group, "patch-size", type=int, default=8, help="vision patch side in pixels (default 8)")

    group = parser.add_argument_group("hard negatives")
    add_option(group, "hard-negatives", type=int, default=0,
                       help="edited captions per image added to its image→text loss (0: plain CLIP)")
    add_option(group, "negative-colors", type=str, nargs="+", default=list(COLOR_WORDS),
                       help="colour words the edits may swap or substitute")
    add_option(group, "negative-shapes", type=str, nargs="+", default=list(SHAPE_WORDS),
                       help="object words the edits may swap or substitute")

    group = parser.add_argument_group("validation")
    add_option(group, "num-validation-samples", type=int, default=64,
                       help="retrieval accuracy among the first N samples, logged")
    return parser


def build_clip_model(tokenizer, args):
    """A randomly initialised ``CLIPModel`` sized by the flags, its vocabulary and ids from ``tokenizer``."""
    from transformers import CLIPConfig, CLIPModel

    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=args.text_width, intermediate_size=4 * args.text_width,
        num_hidden_layers=args.text_layers, num_attention_heads=args.text_heads,
        max_position_embeddings=args.max_text_length, projection_dim=args.projection_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = dict(
        hidden_size=args.vision_width, intermediate_size=4 * args.vision_width, num_hidden_layers=args.vision_layers,
        num_attention_heads=args.vision_heads, image_size=args.resolution, patch_size=args.patch_size,
        projection_dim=args.projection_dim,
    )
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=args.projection_dim)
    return CLIPModel(config)


def text_encoder_from_clip(clip):
    """The text tower and its projection of ``clip`` as a ``CLIPTextModelWithProjection`` (same weights)."""
    from transformers import CLIPTextModelWithProjection

    text_config = copy.deepcopy(clip.config.text_config)
    text_config.projection_dim = clip.config.projection_dim
    encoder = CLIPTextModelWithProjection(text_config)
    state = {k: v for k, v in clip.state_dict().items() if k.startswith(("text_model.", "text_projection."))}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"CLIP text weights do not fit CLIPTextModelWithProjection: missing {missing}, "
                         f"unexpected {unexpected}")
    return encoder.eval()


def _image_processor(resolution: int):
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5 without torchvision
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    from PIL import Image

    return Processor(size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution},
                     resample=Image.Resampling.LANCZOS, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def clip_contrastive_loss(text_embeds_BE: torch.Tensor, image_embeds_BE: torch.Tensor, logit_scale: torch.Tensor,
                          accelerator=None, negative_text_embeds_NE: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of normalised embeddings; returns the loss and this process's text→image logits.

    With several processes, every local row is contrasted with the whole global batch: embeddings are gathered with
    gradients (``torch.distributed.nn.all_gather``) and the targets offset by this process's rank. Hard negative
    captions (``negative_text_embeds_NE``, this process's) are extra candidates of the image→text direction only.
    """
    B = text_embeds_BE.shape[0]
    offset, all_text, all_image = 0, text_embeds_BE, image_embeds_BE
    if accelerator is not None and accelerator.num_processes > 1:
        import torch.distributed.nn as dist_nn

        all_text = torch.cat(dist_nn.all_gather(text_embeds_BE.contiguous()))
        all_image = torch.cat(dist_nn.all_gather(image_embeds_BE.contiguous()))
        offset = accelerator.process_index * B
    scale = logit_scale.exp()
    logits_text = scale * text_embeds_BE @ all_image.T  # (B, B·P)
    candidates = all_text if negative_text_embeds_NE is None else torch.cat([all_text, negative_text_embeds_NE])
    logits_image = scale * image_embeds_BE @ candidates.T
    targets_B = torch.arange(B, device=text_embeds_BE.device) + offset
    loss = (F.cross_entropy(logits_text.float(), targets_B) + F.cross_entropy(logits_image.float(), targets_B)) / 2
    return loss, logits_text


def _check_arguments(args) -> None:
    check_training_arguments(args)
    for name in ("projection_dim", "text_width", "text_layers", "text_heads", "vision_width", "vision_layers",
                 "vision_heads", "patch_size", "resolution"):
        if getattr(args, name) is None or getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive int, got {getattr(args, name)}")
    if args.text_width % args.text_heads or args.vision_width % args.vision_heads:
        raise ValueError("`--text_heads` / `--vision_heads` must divide `--text_width` / `--vision_width`")
    if args.resolution % args.patch_size:
        raise ValueError(f"`--patch_size` {args.patch_size} must divide `--resolution` {args.resolution}")
    if args.max_text_length < 3:
        raise ValueError(f"`--max_text_length` must be >= 3, got {args.max_text_length}")
    if args.tokenizer_merges < 0:
        raise ValueError(f"`--tokenizer_merges` must be >= 0, got {args.tokenizer_merges}")
    if args.num_validation_samples < 0:
        raise ValueError(f"`--num_validation_samples` must be >= 0, got {args.num_validation_samples}")
    if args.hard_negatives < 0:
        raise ValueError(f"`--hard_negatives` must be >= 0, got {args.hard_negatives}")


def train(args: argparse.Namespace) -> TrainingResult:
    from accelerate.utils import set_seed
    from transformers import CLIPModel, CLIPTokenizer

    _check_arguments(args)
    accelerator = create_accelerator(args, "var-clip-train-clip")
    set_seed(args.seed)
    device = accelerator.device

    # 1. data, tokenizer, model
    dataset = load_image_caption_dataset(args.train_data_dir, args.caption_file, args.image_root, condition="text",
                                         image_column=args.image_column, caption_column=args.caption_column,
                                         max_samples=args.max_train_samples, cache_dir=args.dataset_cache_dir)
    if args.init_from:
        clip = CLIPModel.from_pretrained(args.init_from)
        tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer or args.init_from)
        args.resolution = clip.config.vision_config.image_size
    else:
        if args.tokenizer:
            tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer)
        else:
            tokenizer = build_byte_level_clip_tokenizer(dataset["text"], num_merges=args.tokenizer_merges,
                                                        model_max_length=args.max_text_length)
        clip = build_clip_model(tokenizer, args)
    max_length = min(tokenizer.model_max_length, clip.config.text_config.max_position_embeddings)
    transform = ImageTransform(args.resolution, crop=args.crop, resize_ratio=args.resize_ratio,
                               random_flip=args.random_flip)
    examples = ImageCaptionDataset(dataset, transform, seed=args.seed)
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    # edits may only pair colours and shapes the way the captions do: held-out compositions stay unseen
    allowed_pairs = attribute_pairs(dataset["text"], args.negative_colors, args.negative_shapes)

    def negatives_of(batch: dict[str, Any]) -> list[str]:
        """K edited captions per sample (fewer where fewer edits apply), a function of (seed, sample index)."""
        negatives = []
        for index, text in zip(batch["index"].tolist(), batch["text"]):
            rng = np.random.default_rng([args.seed, index])
            negatives += caption_hard_negatives(text, args.hard_negatives, rng, args.negative_colors,
                                                args.negative_shapes, allowed_pairs)
        return negatives

    def model_inputs(batch: dict[str, Any], extra_texts: list[str] = ()) -> dict[str, torch.Tensor]:
        # [-1, 1] → [0, 1] → CLIP's per-channel normalisation (what the saved image processor does)
        pixel_values = ((batch["pixel_values"].to(device) + 1) / 2 - mean) / std
        # padded to the longest caption: the text tower is causal and pools at the end token, so padding further
        # (as the pipeline does) gives the same embedding
        tokens = tokenizer(list(batch["text"]) + list(extra_texts), padding="longest", max_length=max_length,
                           truncation=True, return_tensors="pt")
        return {"input_ids": tokens.input_ids.to(device), "attention_mask": tokens.attention_mask.to(device),
                "pixel_values": pixel_values}

    # 2. loss
    def loss_fn(model, batch: dict[str, Any]):
        negatives = negatives_of(batch) if args.hard_negatives else []
        out = model(**model_inputs(batch, negatives))
        B = out.image_embeds.shape[0]
        logit_scale = accelerator.unwrap_model(model).logit_scale
        loss, logits_text = clip_contrastive_loss(out.text_embeds[:B], out.image_embeds, logit_scale,
                                                  accelerator if accelerator.num_processes > 1 else None,
                                                  out.text_embeds[B:] if negatives else None)
        with torch.no_grad():
            offset = accelerator.process_index * logits_text.shape[0] if accelerator.num_processes > 1 else 0
            targets = torch.arange(logits_text.shape[0], device=device) + offset
            accuracy = (logits_text.argmax(dim=1) == targets).float().mean().item() * 100
        return loss, {"accuracy": accuracy, "logit_scale": logit_scale.exp().item()}

    def after_step(unwrapped) -> None:
        with torch.no_grad():  # CLIP clamps the temperature so logits never exceed 100× the cosine similarity
            unwrapped.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    # 3. validation: image → text and text → image top-1 retrieval among the first N samples
    def validate(unwrapped, step: int, output_dir: Path) -> dict[str, float]:
        n = min(args.num_validation_samples, len(examples))
        if n < 2:
            return {}
        fixed = ImageTransform(args.resolution)
        rows = [dataset[i] for i in range(n)]
        batch = {"pixel_values": torch.stack([fixed(r["image"]) for r in rows]), "text": [r["text"] for r in rows]}
        with torch.autocast(device.type, enabled=False):
            out = unwrapped(**model_inputs(batch))
        similarity = out.text_embeds @ out.image_embeds.T
        # identical captions are all correct matches
        same_caption = torch.tensor([[a == b for b in batch["text"]] for a in batch["text"]], device=device)
        text_to_image = same_caption[torch.arange(n), similarity.argmax(dim=1)].float().mean().item() * 100
        image_to_text = same_caption[similarity.argmax(dim=0), torch.arange(n)].float().mean().item() * 100
        metrics = {"text_to_image_top1": text_to_image, "image_to_text_top1": image_to_text}
        if args.hard_negatives:  # how often an image prefers its caption to every edited one
            wins = []
            for i, row in enumerate(rows):
                negatives = negatives_of({"index": torch.tensor([i]), "text": [row["text"]]})
                if negatives:
                    with torch.autocast(device.type, enabled=False):
                        texts = unwrapped.get_text_features(**{k: v for k, v in model_inputs(
                            {"pixel_values": batch["pixel_values"][:1], "text": negatives}).items()
                            if k != "pixel_values"})
                    texts = F.normalize(texts if isinstance(texts, torch.Tensor) else texts.pooler_output, dim=-1)
                    wins.append(bool((texts @ out.image_embeds[i] < similarity[i, i]).all()))
            if wins:
                metrics["hard_negative_accuracy"] = 100 * sum(wins) / len(wins)
        return metrics

    # 4. export: text_encoder/, tokenizer/, clip/
    def export(unwrapped, folder: Path) -> None:
        text_encoder_from_clip(unwrapped).save_pretrained(folder / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(folder / "tokenizer")
        unwrapped.save_pretrained(folder / "clip", safe_serialization=True)
        tokenizer.save_pretrained(folder / "clip")
        _image_processor(args.resolution).save_pretrained(folder / "clip")

    task = TrainingTask(name="clip", model=clip, loss_fn=loss_fn, dataset=examples, export=export, validate=validate,
                        after_step=after_step, no_decay_keys=("logit_scale",), index_names=("clip",))
    return run_training(args, accelerator, task)


def main(argv: list[str] | None = None) -> int:
    return trainer_main(build_parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
