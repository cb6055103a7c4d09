"""Train the VAR-CLIP transformer (or a class-conditional VAR) on a frozen VQ-VAE and a frozen CLIP text encoder.

Each step: the images' per-scale token indices (VQ-VAE) are the targets, their teacher-forcing inputs the coarser
scales' accumulated latents; the condition is the caption's L2-normalised CLIP text embedding (exactly what
``VARCLIPPipeline.encode_prompt`` gives at inference), replaced by the learned null embedding for 10 % of each batch
(classifier-free guidance training, VAR-CLIP §3.2); the loss is cross-entropy over all L tokens with label
smoothing 0.1, as VAR-CLIP's defaults. The result is a ``VARCLIPPipeline`` folder (``VARPipeline`` for classes).

With ``--lora_rank R`` (and ``--pretrained_pipeline``) the transformer is frozen and only LoRA adapters on its
attention projections train, by the same loop (``--train_text_encoder``: adapters on the CLIP text encoder's attention
too, trained jointly); the result is diffusers' ``pytorch_lora_weights.safetensors`` and a model card, which
``VARCLIPPipeline.load_lora_weights`` reads.

    accelerate launch -m var_clip.training.train_var --train_data_dir DATA --vqvae VQVAE \
        --text_encoder CLIP/text_encoder --tokenizer CLIP/tokenizer --output_dir OUT

This module is the run read top to bottom; its parts live beside it: ``var_arguments`` (the command line),
``var_components`` (the models), ``var_conditioning`` (the batch's inputs and condition, the frozen teacher),
``var_loss`` (the loss), ``lora_adapters`` and ``lora_run`` (what a LoRA run adds).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..loaders.lora import LORA_WEIGHT_NAME
from ..pipelines.pipeline_var import VARPipeline
from ..pipelines.pipeline_var_clip import VARCLIPPipeline
from ..vocabulary import build_vocabulary
from .data import ImageCaptionDataset, ImageTransform, load_image_caption_dataset, num_classes_of
from .engine import TrainingResult, TrainingTask, create_accelerator, run_training, trainer_main
from .lora_adapters import add_text_encoder_adapters, add_transformer_adapter
from .lora_defaults import take_unset
from .lora_run import LoraRun, export_lora, prepare_lora_run
from .prior_preservation import record_known_captions
from .samples import save_sample_grid
from .token_cache import (
    TokenCacheDataset,
    build_token_cache,
    dataset_fingerprint,
    load_token_cache,
    module_fingerprint,
    token_cache_path,
    tokenizer_fingerprint,
)
from .var_arguments import build_parser, check_arguments
from .var_components import VARComponents, build_components, load_vqvae
from .var_conditioning import (
    BatchInputs,
    FrozenTeacher,
    TextEncoderAndTransformer,
    VARObjective,
    WithColumns,
    condition_columns,
)
from .var_loss import scale_loss_weights, var_loss

__all__ = ["TRANSFORMER_NO_DECAY_KEYS", "build_parser", "load_vqvae", "main", "scale_loss_weights", "train",
           "var_loss"]

# VAR's no-weight-decay names, in this package's parameter naming
TRANSFORMER_NO_DECAY_KEYS = ("pos_start", "pos_embed", "level_embed", "null_text_embed", "null_text_tokens", "ada_gss",
                             "scale_mul", "adaln_embed")


def train(args: argparse.Namespace) -> TrainingResult:
    """Run a VAR / VAR-CLIP training from parsed arguments (``args`` itself is left as given)."""
    from accelerate.utils import set_seed

    args = argparse.Namespace(**vars(args))  # the settings a LoRA run chooses from its data are set on this copy
    unset = take_unset(args)  # flags left unset: a LoRA run chooses them from its data
    check_arguments(args)
    accelerator = _create_accelerator(args)
    set_seed(args.seed)  # initialisation only: data order, augmentation and dropout have their own seeded streams
    device = accelerator.device

    # 1. data and models; a LoRA run's settings and replay images; the frozen teacher, copied before any adapter
    dataset = _load_dataset(args)
    num_classes = (args.num_classes or num_classes_of(dataset)) if args.condition == "class" else None
    models = build_components(args, num_classes)
    lora_run = None
    if args.lora_rank is not None:
        lora_run = prepare_lora_run(args, unset, accelerator, dataset, models.tokenizer, models.text_encoder,
                                    models.transformer, models.vqvae)
        dataset = lora_run.dataset
    teacher = None
    if args.keep_known_captions:
        teacher = FrozenTeacher.copy_of(models.transformer, models.tokenizer, models.text_encoder, device,
                                        with_text_encoder=args.train_text_encoder, source=args.pretrained_pipeline)
    if args.lora_rank is not None:
        add_transformer_adapter(models.transformer, args)
    learning_rate = _learning_rate(args, accelerator)
    models.frozen_to(device)

    # 2. the rows the loop draws, and what the transformer reads of each batch
    inputs = BatchInputs(models.vqvae, models.tokenizer, models.text_encoder, args.condition,
                         models.transformer.uses_text_tokens, device, captions_as_text=args.train_text_encoder)
    rows, columns = _training_rows(args, accelerator, dataset, models, inputs)
    trainable = models.transformer
    if args.train_text_encoder:  # after the cache, whose key is the frozen encoder's fingerprint
        add_text_encoder_adapters(models.text_encoder, models.tokenizer, models.transformer.config.vocabulary, args)
        trainable = TextEncoderAndTransformer(models.tokenizer, models.text_encoder, models.transformer)

    # 3. the loss
    cond_generator = torch.Generator().manual_seed(args.seed + 1_000_003 * accelerator.process_index)
    if teacher is not None and args.cache_dir:  # fixed inputs: the frozen model's predictions, computed once
        teacher.precompute(rows, columns["known"], inputs, models.transformer, show_progress=not args.no_progress_bar)
    objective = VARObjective(models.transformer, models.vqvae, inputs, args.label_smoothing,
                             args.scale_loss_weighting, cond_generator, teacher)

    # 4. the loop, its samples and the result
    if args.condition == "text" and args.lora_rank is None:
        _record_vocabulary(models.transformer, dataset["text"])
    outputs = _Outputs(args, accelerator, models, lora_run,
                       _label_names(dataset) if args.condition == "class" else None)
    task = TrainingTask(name="var" if args.lora_rank is None else "var-lora", model=trainable, loss_fn=objective,
                        dataset=rows, export=outputs.export, validate=outputs.validate,
                        generators={"condition_dropout": cond_generator}, no_decay_keys=TRANSFORMER_NO_DECAY_KEYS,
                        index_names=("model_index.json",) if args.lora_rank is None else (LORA_WEIGHT_NAME,),
                        learning_rate=learning_rate)
    return run_training(args, accelerator, task)


def main(argv: list[str] | None = None) -> int:
    return trainer_main(build_parser, train, argv)


# ----------------------------------------------------------------------------------------------------------------------
# The steps of train()
# ----------------------------------------------------------------------------------------------------------------------


def _create_accelerator(args: argparse.Namespace):
    accelerator = create_accelerator(args, "var-clip-train-var")
    if args.lora_rank is not None and accelerator.distributed_type.value == "FSDP":
        raise ValueError("`--lora_rank` trains a few small matrices: use data parallelism (DDP), not FSDP")
    return accelerator


def _load_dataset(args: argparse.Namespace):
    return load_image_caption_dataset(args.train_data_dir, args.caption_file, args.image_root,
                                      condition=args.condition, image_column=args.image_column,
                                      caption_column=args.caption_column, label_column=args.label_column,
                                      max_samples=args.max_train_samples, cache_dir=args.dataset_cache_dir)


def _learning_rate(args: argparse.Namespace, accelerator) -> float:
    """``--learning_rate`` (a LoRA run has chosen one if it was unset), else VAR's rule: 1e-4 per 256 images of the
    total batch."""
    if args.learning_rate is not None:
        return args.learning_rate
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    return 1e-4 * total_batch / 256


def _training_rows(args: argparse.Namespace, accelerator, dataset, models: VARComponents,
                   inputs: BatchInputs) -> tuple[Any, dict[str, list]]:
    """The rows of the training data: each image with its caption or label, or with ``--cache_dir`` its token indices
    and text encoding, computed once by the main process; with the per-row columns the conditioning reads
    (:func:`~.var_conditioning.condition_columns`), which are returned too."""
    transform = ImageTransform(models.vqvae.sample_size, crop=args.crop, resize_ratio=args.resize_ratio,
                               random_flip=args.random_flip)
    rows = ImageCaptionDataset(dataset, transform, seed=args.seed)
    if args.cache_dir:
        key = _cache_key(args, dataset, models)
        if accelerator.is_main_process:
            build_token_cache(args.cache_dir, rows, key, inputs.encode_images,
                              inputs.encode_texts if args.condition == "text" else None,
                              batch_size=args.cache_batch_size, show_progress=not args.no_progress_bar)
        accelerator.wait_for_everyone()
        rows = TokenCacheDataset(load_token_cache(token_cache_path(args.cache_dir, key)))
    columns = condition_columns(
        dataset, with_captions=bool(args.train_text_encoder and args.cache_dir),
        known_vocabulary=models.transformer.config.vocabulary if args.keep_known_captions else None)
    if columns:
        rows = WithColumns(rows, columns, drop_text_cache=args.train_text_encoder)
    return rows, columns


def _cache_key(args: argparse.Namespace, dataset, models: VARComponents) -> dict[str, str]:
    """What the cached indices and text encodings depend on: the data, the frozen models and the image transform."""
    key = {"dataset": dataset_fingerprint(dataset), "vqvae": module_fingerprint(models.vqvae),
           "transform": f"{models.vqvae.sample_size}:{args.crop}:{args.resize_ratio}", "condition": args.condition}
    if models.text_encoder is not None:
        key["text_encoder"] = module_fingerprint(models.text_encoder)
        key["tokenizer"] = tokenizer_fingerprint(models.tokenizer)
        if models.transformer.uses_text_tokens:
            key["text_states"] = "last_hidden_state"
    return key


def _record_vocabulary(transformer, captions) -> None:
    """Record the words the captions taught (and some of the captions), so pipelines can flag prompts outside them;
    fine-tuning adds to what the model knew."""
    known = transformer.config.vocabulary or []
    transformer.register_to_config(vocabulary=build_vocabulary([*known, *captions]),
                                   known_captions=record_known_captions(captions, transformer.config.known_captions))


def _label_names(dataset) -> list[str] | None:
    return getattr(dataset.features.get("label"), "names", None)


@dataclass
class _Outputs:
    """What the run writes besides checkpoints: validation samples (a LoRA run's progress grid) and the result."""

    args: argparse.Namespace
    accelerator: Any
    models: VARComponents
    lora_run: LoraRun | None
    label_names: list[str] | None

    def validate(self, model, step: int, output_dir: Path) -> dict[str, float]:
        args, models = self.args, self.models
        if self.lora_run is not None:  # the progress grid: the same captions and seeds at every validation
            pipe = VARCLIPPipeline(models.tokenizer, models.text_encoder, getattr(model, "transformer", model),
                                   models.vqvae)
            pipe.set_progress_bar_config(disable=True)
            self.lora_run.record_progress(pipe, step, self.accelerator)
            return {}
        if args.condition == "text" and args.validation_prompts:
            pipe = VARCLIPPipeline(models.tokenizer, models.text_encoder, getattr(model, "transformer", model),
                                   models.vqvae)
            conditions, captions = {"prompt": list(args.validation_prompts)}, list(args.validation_prompts)
        elif args.condition == "class" and args.validation_class_labels:
            pipe = VARPipeline(model, models.vqvae)
            conditions = {"class_labels": list(args.validation_class_labels)}
            names = self.label_names
            captions = [names[c] if names and c < len(names) else f"class {c}" for c in args.validation_class_labels]
        else:
            return {}
        pipe.set_progress_bar_config(disable=True)
        generators = [torch.Generator(device=self.accelerator.device).manual_seed(args.validation_seed + i)
                      for i in range(len(captions))]
        images = pipe(**conditions, guidance_scale=args.validation_guidance_scale, top_k=args.validation_top_k,
                      top_p=args.validation_top_p, generator=generators).images
        save_sample_grid(images, captions, output_dir, step)
        return {}

    def export(self, model, folder: Path) -> None:
        models = self.models
        if self.args.lora_rank is not None:
            export_lora(model, folder, self.args, self.lora_run)
        elif self.args.condition == "text":
            VARCLIPPipeline(models.tokenizer, models.text_encoder, model, models.vqvae).save_pretrained(
                folder, safe_serialization=True)
        else:
            VARPipeline(model, models.vqvae).save_pretrained(folder, safe_serialization=True)


if __name__ == "__main__":
    raise SystemExit(main())
