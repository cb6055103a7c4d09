"""Train VAR's multi-scale residual VQ-VAE (``MultiScaleVQModel``) from scratch or fine-tune one.

The loss is ``l2_weight · MSE + l1_weight · L1`` between image and reconstruction plus ``vq_weight ·`` the quantizer's
loss (β-weighted commitment + codebook terms averaged over scales). VAR's tokenizer was additionally trained with
LPIPS and a patch GAN; those need pretrained perceptual networks that are not available offline, so this trainer
uses pixel losses only: reconstructions are blurrier than VAR's released tokenizer, and are fine for small synthetic
worlds. Codebook usage is logged per step (share of entries hit in the batch, and in the quantizer's EMA of hits).

    accelerate launch -m var_clip.training.train_vqvae --train_data_dir DATA --output_dir OUT \
        --ch 64 --ch_mult 1 2 2 4 --vocab_size 1024 --latent_channels 16 --patch_nums 1 2 3 4 5 6 8

Legend: B batch · S scales · V codebook size.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models.multiscale_vq import MultiScaleVQModel
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
from .samples import save_sample_grid, tensor_to_pil

__all__ = ["build_parser", "main", "train", "vqvae_loss", "ema_codebook_usage"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="var-clip train-vqvae",
        description="Train a multi-scale residual VQ-VAE (MultiScaleVQModel) on images; writes its folder.",
    )
    add_training_arguments(parser, learning_rate=2e-4, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
                           max_grad_norm=1.0, lr_scheduler="cosine", train_batch_size=16)
    add_data_arguments(parser)

    group = parser.add_argument_group("model (when not --init_from)")
    add_option(group, "init-from", type=str, default=None, help="fine-tune this MultiScaleVQModel folder")
    add_option(group, "decoder-only", action="store_true",
               help="with --init_from: train only the decoder (post-quant conv and decoder); the encoder, codebook "
                    "and φ convs stay frozen, so every image keeps its tokens and a transformer trained on the "
                    "VQ-VAE stays valid: it renders the same tokens more sharply")
    add_option(group, "vocab-size", type=int, default=4096, help="codebook entries V (default 4096, as VAR)")
    add_option(group, "latent-channels", type=int, default=32, help="codebook vector width C (default 32)")
    add_option(group, "ch", type=int, default=160, help="base channel count of encoder and decoder (default 160)")
    add_option(group, "ch-mult", type=int, nargs="+", default=[1, 1, 2, 2, 4],
                       help="width multipliers; the image is downsampled 2^(len-1) times")
    add_option(group, "num-res-blocks", type=int, default=2, help="residual blocks per resolution (default 2)")
    add_option(group, "patch-nums", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
                       help="side of each scale; image size = last × 2^(len(ch_mult)-1)")
    add_option(group, "no-attention", action="store_true", help="no self-attention in encoder and decoder")
    add_option(group, "quant-resi", type=float, default=0.5, help="φ's residual ratio (default 0.5, as VAR)")
    add_option(group, "share-quant-resi", type=int, default=4,
               help="φ convolutions shared across the scales (default 4, as VAR; 0: one per scale)")
    add_option(group, "beta", type=float, default=0.25, help="commitment weight")
    add_option(group, "using-znorm", action="store_true", help="cosine-similarity codebook search")
    add_option(group, "dropout", type=float, default=0.0, help="dropout in the residual blocks (default 0)")

    group = parser.add_argument_group("loss")
    add_option(group, "l2-weight", type=float, default=1.0, help="weight of the pixel MSE (default 1)")
    add_option(group, "l1-weight", type=float, default=1.0, help="weight of the pixel L1 loss (default 1)")
    add_option(group, "vq-weight", type=float, default=1.0,
               help="weight of the codebook and commitment losses (default 1)")

    group = parser.add_argument_group("validation")
    add_option(group, "num-validation-images", type=int, default=8,
                       help="reconstructions of the first N images written as a grid")
    return parser


def _build_model(args) -> MultiScaleVQModel:
    if args.init_from:
        model = MultiScaleVQModel.from_pretrained(args.init_from)
    else:
        model = _new_model(args)
    if args.decoder_only:
        # the tokens of an image (encoder, quant_conv, codebook) and the latent of a token map (codebook, φ) are what
        # a transformer was trained on: only what turns that latent into pixels learns
        model.requires_grad_(False)
        model.post_quant_conv.requires_grad_(True)
        model.decoder.requires_grad_(True)
        return model
    # With fewer scales than shared φ convs some φ serve no scale: freeze them, or data-parallel training would wait
    # for gradients that never come (they stay as initialised, and are never used by this model).
    used = set(model.quantize.phi_index_per_scale)
    for index, phi in enumerate(model.quantize.phis):
        if index not in used:
            phi.requires_grad_(False)
    return model


def _new_model(args) -> MultiScaleVQModel:
    return MultiScaleVQModel(
        vocab_size=args.vocab_size, latent_channels=args.latent_channels, ch=args.ch, ch_mult=tuple(args.ch_mult),
        num_res_blocks=args.num_res_blocks, dropout=args.dropout, using_sa=not args.no_attention,
        using_mid_sa=not args.no_attention, beta=args.beta, using_znorm=args.using_znorm,
        quant_resi=args.quant_resi, share_quant_resi=args.share_quant_resi, patch_nums=tuple(args.patch_nums),
    )


def ema_codebook_usage(model: MultiScaleVQModel) -> torch.Tensor:
    """Per scale, the percentage of codebook entries whose EMA hit count is at least 1 % of a uniform share (S,)."""
    hits_SV = model.quantize.ema_vocab_hit_SV
    uniform_S1 = hits_SV.sum(dim=1, keepdim=True) / hits_SV.shape[1]
    return (hits_SV >= 0.01 * uniform_S1).float().mean(dim=1) * 100 * (uniform_S1.squeeze(1) > 0)


def vqvae_loss(model, images_B3HW: torch.Tensor, l2_weight: float, l1_weight: float,
               vq_weight: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """Reconstruction (L2 + L1) plus VQ loss; returns the loss, metrics and the reconstruction."""
    # a tuple, not MultiScaleVQOutput: accelerate's mixed-precision wrapper rebuilds dict outputs from one mapping
    sample, vq_loss, usage_S = model(images_B3HW, return_dict=False)
    recon = sample.float()
    l2 = F.mse_loss(recon, images_B3HW.float())
    l1 = F.l1_loss(recon, images_B3HW.float())
    loss = l2_weight * l2 + l1_weight * l1 + vq_weight * vq_loss
    metrics = {"l2": l2.item(), "l1": l1.item(), "vq_loss": vq_loss.item(), "codebook_usage": usage_S.mean().item(),
               "codebook_usage_last_scale": usage_S[-1].item()}
    return loss, metrics, recon


def train(args: argparse.Namespace) -> TrainingResult:
    from accelerate.utils import set_seed

    check_training_arguments(args)
    if args.decoder_only and not args.init_from:
        raise ValueError("`--decoder_only` fine-tunes the decoder of an existing VQ-VAE: give it with `--init_from`")
    for name in ("l2_weight", "l1_weight", "vq_weight"):
        if getattr(args, name) < 0:
            raise ValueError(f"`--{name}` must be >= 0, got {getattr(args, name)}")
    if args.num_validation_images < 0:
        raise ValueError(f"`--num_validation_images` must be >= 0, got {args.num_validation_images}")
    accelerator = create_accelerator(args, "var-clip-train-vqvae")
    set_seed(args.seed)
    device = accelerator.device

    model = _build_model(args)
    if args.resolution is not None and args.resolution != model.sample_size:
        raise ValueError(f"`--resolution` {args.resolution} differs from the model's image size {model.sample_size} "
                         f"(patch_nums[-1] {model.config.patch_nums[-1]} × downsample {model.downsample_factor})")
    dataset = load_image_caption_dataset(args.train_data_dir, args.caption_file, args.image_root, condition=None,
                                         image_column=args.image_column, caption_column=args.caption_column,
                                         max_samples=args.max_train_samples, cache_dir=args.dataset_cache_dir)
    transform = ImageTransform(model.sample_size, crop=args.crop, resize_ratio=args.resize_ratio,
                               random_flip=args.random_flip)
    examples = ImageCaptionDataset(dataset, transform, seed=args.seed)

    def loss_fn(prepared, batch: dict[str, Any]):
        loss, metrics, _ = vqvae_loss(prepared, batch["pixel_values"].to(device), args.l2_weight, args.l1_weight,
                                      args.vq_weight)
        usage_S = ema_codebook_usage(accelerator.unwrap_model(prepared))
        metrics["codebook_usage_ema"] = usage_S.mean().item()
        return loss, metrics

    fixed = ImageTransform(model.sample_size)  # validation: the same first images, center-cropped, every time
    num_shown = min(args.num_validation_images, len(dataset))
    validation_images = torch.stack([fixed(dataset[i]["image"]) for i in range(num_shown)]) if num_shown else None

    def validate(unwrapped, step: int, output_dir: Path) -> dict[str, float]:
        if validation_images is None:
            return {}
        images = validation_images.to(device)
        with torch.autocast(device.type, enabled=False):
            recon = unwrapped.decode_indices(unwrapped.encode_indices(images))
        mse = F.mse_loss(recon.float(), images).item()
        pictures = [p for pair in zip(tensor_to_pil(images), tensor_to_pil(recon)) for p in pair]
        captions = ["input", "reconstruction"] * len(images)
        save_sample_grid(pictures, captions, output_dir, step, name="reconstructions", cols=min(8, len(pictures)))
        # PSNR of [-1, 1] images: the peak-to-peak range is 2
        return {"psnr": 10 * math.log10(4.0 / max(mse, 1e-12))}

    def export(unwrapped, folder: Path) -> None:
        unwrapped.save_pretrained(folder, safe_serialization=True)

    task = TrainingTask(name="vqvae", model=model, loss_fn=loss_fn, dataset=examples, export=export,
                        validate=validate, no_decay_keys=("embedding",), index_names=("config.json",))
    return run_training(args, accelerator, task)


def main(argv: list[str] | None = None) -> int:
    return trainer_main(build_parser, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
