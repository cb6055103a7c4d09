"""What ``train-var --lora_rank`` adds to the trainer: settings chosen from the data (:mod:`.lora_defaults`), the base
model's own images as replay (:mod:`.prior_preservation`), the progress grid (:mod:`.progress_grid`), and the
adapter's export with its model card.

The trainer calls :func:`prepare_lora_run` once its data and frozen components are loaded and before any adapter
exists (the prior images and the grid's first column are the base model's), :meth:`LoraRun.record_progress` at every
validation, and :func:`export_lora` to write the result.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import DEFAULT_MODEL
from ..loaders.lora import LORA_WEIGHT_NAME, VARCLIPLoraLoaderMixin, adapter_parts, recordable_words
from ..pipelines.pipeline_var_clip import VARCLIPPipeline
from .lora_defaults import CACHE_DIR, LoraDefaults, choose_lora_defaults
from .prior_preservation import (
    PriorSpec,
    base_model_fingerprint,
    build_prior_set,
    prior_captions,
    prior_folder,
    with_prior_images,
)
from .progress_grid import GRID_NAME, ProgressGrid, pick_captions

__all__ = ["LORA_ADAPTER_NAME", "LoraRun", "card_name", "export_lora", "prepare_lora_run"]

logger = logging.getLogger(__name__)

LORA_ADAPTER_NAME = "default"
GRID_USER_ROWS, GRID_KNOWN_ROWS = 4, 2


def card_name(name_or_path: str | os.PathLike | None) -> tuple[str, str | None]:
    """How a card names a model or data source, and its Hub id: a Hub id as it is; a local folder by its own name
    only (a card may be published, and the machine's paths are nobody's business); the embedded default model as
    such. Returns ``(name, hub_id or None)``."""
    if name_or_path is None:
        return "the given captions", None
    path = Path(name_or_path)
    if path.exists():
        if path.resolve() == Path(DEFAULT_MODEL).resolve():
            return "the var-clip default model", None
        return path.resolve().name, None
    return str(name_or_path), str(name_or_path)


@dataclass
class LoraRun:
    """One LoRA run's additions: its settings, its training data (the user's rows, then the prior images) and its
    progress grid."""

    defaults: LoraDefaults
    dataset: Any
    num_prior_images: int
    grid: ProgressGrid

    def record_progress(self, pipe: VARCLIPPipeline, step: int, accelerator) -> None:
        """Sample the grid's captions for ``step``, rewrite ``progress.png``, and log it to TensorBoard if enabled."""
        grid = self.grid.record(pipe, step)
        if any(t.name == "tensorboard" for t in accelerator.trackers):
            writer = accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image("progress", np.asarray(grid), step, dataformats="HWC")


def prepare_lora_run(args: argparse.Namespace, unset: frozenset[str], accelerator, dataset, tokenizer, text_encoder,
                     transformer, vqvae) -> LoraRun:
    """Choose the unset settings from ``dataset``, build (or reuse) the prior images and mix them in, and sample the
    progress grid's base-model column. Call it before any adapter is added: ``transformer`` must be the base model."""
    vocabulary = transformer.config.vocabulary
    captions = list(dataset["text"])
    defaults = choose_lora_defaults(args, unset, captions, vocabulary)
    if accelerator.is_main_process:
        logger.info("LoRA settings (given on the command line, or chosen from the %d images):\n  %s",
                    len(dataset), "\n  ".join(defaults.log_lines()))
    base = VARCLIPPipeline(tokenizer, text_encoder, transformer, vqvae)
    base.set_progress_bar_config(disable=True)
    known = prior_captions(captions, vocabulary, transformer.config.known_captions) if vocabulary else []

    # 1. the base model's own images of known captions, made once and cached
    if args.prior_images:
        if not known:
            raise ValueError("`--prior_images`: no caption is left once the words the base model never read are "
                             "taken out, so there is nothing known to sample; pass `--prior_images 0`, or replay "
                             "images with captions of known words in the data")
        spec = PriorSpec(tuple(known), args.prior_images, args.seed, base_model_fingerprint(base))
        folder = prior_folder(args.prior_cache_dir or args.cache_dir or Path(args.output_dir) / CACHE_DIR, spec)
        if accelerator.is_main_process:
            logger.info("prior preservation: %d images of %d known captions in %s", spec.num_images, len(known), folder)
            with _own_random_streams(accelerator.device):
                build_prior_set(base.to(accelerator.device), spec, folder, show_progress=not args.no_progress_bar)
        accelerator.wait_for_everyone()
        dataset = with_prior_images(dataset, folder, args.dataset_cache_dir)

    # 2. the progress grid: a few of the user's captions and a few known ones, the base model first
    user_rows = list(args.validation_prompts or pick_captions(captions, vocabulary, GRID_USER_ROWS))
    sampling = {"guidance_scale": args.validation_guidance_scale, "top_k": args.validation_top_k,
                "top_p": args.validation_top_p}
    grid = ProgressGrid(args.output_dir, user_rows, pick_captions(known, None, GRID_KNOWN_ROWS),
                        args.validation_seed, sampling)
    if accelerator.is_main_process and not grid.has(0):
        with _own_random_streams(accelerator.device):
            grid.record(base.to(accelerator.device), 0)
    accelerator.wait_for_everyone()
    return LoraRun(defaults, dataset, args.prior_images, grid)


def _own_random_streams(device: torch.device):
    """Sampling here draws from its own generators; this makes sure it leaves the global streams (which seed the
    adapters' initialisation) exactly as they were, whether the samples were drawn or found on disk."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def export_lora(model: torch.nn.Module, folder: Path, args: argparse.Namespace, run: LoraRun) -> None:
    """diffusers' LoRA file of the trained adapter(s) (configs in its header), the progress grid and the model card.
    ``model`` is the transformer, or the text encoder and transformer of ``--train_text_encoder``."""
    from huggingface_hub import ModelCardData

    from ..conversion.card import render_model_card

    transformer = getattr(model, "transformer", model)
    text_encoder = getattr(model, "text_encoder", None)
    parts = adapter_parts({"transformer": transformer, "text_encoder": text_encoder}, LORA_ADAPTER_NAME)
    # the words the captions taught: while the adapter is active the pipelines no longer warn that they are unknown
    taught = recordable_words(run.defaults.new_words or [])
    VARCLIPLoraLoaderMixin.save_lora_weights(folder, adapter_words=taught or None, **parts)

    rows = ["| part | rank | alpha | dropout | targets | adapter parameters | base parameters |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, module in (("transformer", transformer), ("text encoder", text_encoder)):
        key = f"{name.replace(' ', '_')}_lora_layers"
        if key not in parts:
            continue
        config = module.peft_config[LORA_ADAPTER_NAME]
        adapter = sum(t.numel() for t in parts[key].values())
        base = sum(p.numel() for n, p in module.named_parameters() if "lora_" not in n)
        targets = " ".join(f"`{t}`" for t in sorted(config.target_modules))
        rows.append(f"| {name} | {config.r} | {config.lora_alpha:g} | {config.lora_dropout:g} | {targets} | "
                    f"{adapter:,} | {base:,} ({100 * adapter / base:.2f} %) |")
    text_part = ("\nThe text encoder has adapters too (`--train_text_encoder`): the file holds both parts.\n"
                 if "text_encoder_lora_layers" in parts else "")
    new_words = run.defaults.new_words
    if new_words is None:
        words = "The base model records no vocabulary, so the captions' new words are not known."
    elif new_words:
        words = f"Words of its captions the base model never read: {', '.join(f'`{w}`' for w in new_words)}."
    else:
        words = "Every word of its captions is one the base model read."
    progress = ""
    if run.grid.path.is_file():
        shutil.copyfile(run.grid.path, folder / GRID_NAME)
        progress = GRID_NAME
    base, hub_id = card_name(args.pretrained_pipeline)
    card_data = ModelCardData(library_name="var-clip", tags=["var-clip", "lora", "text-to-image"], base_model=hub_id)
    card = render_model_card(
        "lora.md", card_data, base=base, base_id=hub_id or "path/to/the/base/pipeline",
        data=card_name(args.train_data_dir or args.caption_file)[0],
        num_images=run.defaults.num_images, num_prior_images=run.num_prior_images, steps=args.max_train_steps or
        f"{args.num_train_epochs} epochs of", batch=args.train_batch_size, weights=LORA_WEIGHT_NAME,
        settings_table=run.defaults.markdown_table(relative_to=args.output_dir), new_words=words,
        adapters_table="\n".join(rows), text_part=text_part, progress_image=progress,
        example_prompt=run.grid.rows[0][1] if run.grid.rows else "...")
    card.save(folder / "README.md")
