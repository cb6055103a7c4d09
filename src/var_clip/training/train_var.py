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

Legend: B batch · L = Σ pn² · V codebook size · C latent channels · E text-embedding width.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from ..loaders import (
    LORA_WEIGHT_NAME,
    add_text_encoder_adapter,
    lora_config,
    text_encoder_lora_config,
)
from ..models.var_transformer import VARTransformer2DModel
from ..pipelines.pipeline_var import VARPipeline
from ..pipelines.pipeline_var_clip import VARCLIPPipeline
from ..text_encoding import encode_text
from ..vocabulary import build_vocabulary, unknown_words
from .data import ImageCaptionDataset, ImageTransform, load_image_caption_dataset, num_classes_of
from .engine import (
    TrainingResult,
    TrainingTask,
    configure_logging,
    create_accelerator,
    run_training,
)
from .lora_defaults import take_unset
from .lora_run import LORA_ADAPTER_NAME, export_lora, prepare_lora_run
from .prior_preservation import record_known_captions
from .samples import save_sample_grid
from .teacher_targets import precompute_teacher_targets
from .token_cache import (
    TokenCacheDataset,
    build_token_cache,
    dataset_fingerprint,
    load_token_cache,
    module_fingerprint,
    token_cache_path,
)
from .var_arguments import build_parser, check_arguments
from .var_components import build_components, load_vqvae
from .var_loss import scale_loss_weights, var_loss

__all__ = ["TRANSFORMER_NO_DECAY_KEYS", "build_parser", "load_vqvae", "main", "scale_loss_weights", "train",
           "var_loss"]

logger = logging.getLogger(__name__)

# VAR's no-weight-decay names, in this package's parameter naming
TRANSFORMER_NO_DECAY_KEYS = ("pos_start", "pos_embed", "level_embed", "null_text_embed", "ada_gss", "scale_mul")


def _rows_of(condition: dict[str, Any], rows_B: torch.BoolTensor) -> dict[str, Any]:
    """The condition arguments of the batch's ``rows_B`` (tensors indexed, lists of captions filtered)."""
    picked = rows_B.tolist()
    return {k: v[rows_B.to(v.device)] if isinstance(v, torch.Tensor) else [c for c, keep in zip(v, picked) if keep]
            for k, v in condition.items()}


def _train_new_token_rows_only(text_encoder, tokenizer, vocabulary: list[str] | None) -> None:
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


class TextEncoderAndTransformer(torch.nn.Module):
    """The trainable modules of ``--train_text_encoder``: the captions' encoding and the transformer in one forward,
    so that data parallelism sees (and averages) the gradients of both adapters.

    The captions are encoded by :func:`~var_clip.text_encoding.encode_text` (what ``encode_prompt`` uses), in the
    text encoder's own dtype as at inference, so training conditions on exactly what the pipeline will feed the
    transformer.
    """

    def __init__(self, tokenizer, text_encoder, transformer: VARTransformer2DModel):
        super().__init__()
        self.text_encoder, self.transformer = text_encoder, transformer
        self.tokenizer = tokenizer

    def forward(self, x_BLC_wo_first_l: torch.Tensor, captions: list[str], cond_drop_mask: torch.BoolTensor):
        with torch.autocast(x_BLC_wo_first_l.device.type, enabled=False):
            embeds_BE, states_BTH, mask_BT = encode_text(self.tokenizer, self.text_encoder, captions,
                                                         x_BLC_wo_first_l.device)
        condition = {"text_embeds": embeds_BE}
        if self.transformer.uses_text_tokens:
            condition.update(encoder_hidden_states=states_BTH, encoder_attention_mask=mask_BT)
        return self.transformer(x_BLC_wo_first_l, **condition, cond_drop_mask=cond_drop_mask)


class _WithColumns(torch.utils.data.Dataset):
    """Rows of ``rows`` with per-sample ``columns`` added (by dataset index); ``drop_text_cache`` removes the cached
    (frozen-encoder) text embeddings, for a text encoder that trains."""

    def __init__(self, rows, columns: dict[str, list], drop_text_cache: bool = False):
        self.rows, self.columns, self.drop_text_cache = rows, columns, drop_text_cache

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        index = key if isinstance(key, int) else key[0]
        row = {k: v for k, v in self.rows[key].items() if not (self.drop_text_cache and k.startswith("text_"))}
        row.update({name: values[int(index)] for name, values in self.columns.items()})
        return row


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> TrainingResult:
    """Run a VAR / VAR-CLIP training from parsed arguments."""
    from accelerate.utils import set_seed

    unset = take_unset(args)  # flags left unset: a LoRA run chooses them from its data
    check_arguments(args)
    accelerator = create_accelerator(args, "var-clip-train-var")
    if args.lora_rank is not None and accelerator.distributed_type.value == "FSDP":
        raise ValueError("`--lora_rank` trains a few small matrices: use data parallelism (DDP), not FSDP")
    set_seed(args.seed)  # initialisation only: data order, augmentation and dropout have their own seeded streams
    device = accelerator.device

    # 1. data and frozen components
    dataset = load_image_caption_dataset(args.train_data_dir, args.caption_file, args.image_root,
                                         condition=args.condition, image_column=args.image_column,
                                         caption_column=args.caption_column, label_column=args.label_column,
                                         max_samples=args.max_train_samples, cache_dir=args.dataset_cache_dir)
    num_classes = (args.num_classes or num_classes_of(dataset)) if args.condition == "class" else None
    models = build_components(args, num_classes)
    tokenizer, text_encoder = models.tokenizer, models.text_encoder
    transformer, vqvae = models.transformer, models.vqvae
    lora_run = None
    if args.lora_rank is not None:  # settings from the data; the base model's own images as replay
        lora_run = prepare_lora_run(args, unset, accelerator, dataset, tokenizer, text_encoder, transformer, vqvae)
        dataset = lora_run.dataset
    teacher = None
    if args.keep_known_captions:  # the frozen base model, copied before any adapter is added
        if not transformer.config.vocabulary:
            raise ValueError("`--keep_known_captions` needs the words the base model was trained on, and "
                             f"{args.pretrained_pipeline!r} records none (its transformer config has no `vocabulary`)")
        teacher = copy.deepcopy(transformer).requires_grad_(False).eval().to(device)
        if args.train_text_encoder:  # with the base text encoder, as the teacher read the captions
            teacher_text = copy.deepcopy(text_encoder).requires_grad_(False).to(device)
            teacher = TextEncoderAndTransformer(tokenizer, teacher_text, teacher)
    if args.lora_rank is not None:  # freeze the base model; only the adapters require grad (and reach AdamW)
        transformer.requires_grad_(False)
        if args.lora_target_modules != ["none"]:
            transformer.add_adapter(lora_config(transformer, args.lora_rank, args.lora_alpha, args.lora_dropout,
                                                args.lora_target_modules), adapter_name=LORA_ADAPTER_NAME)
    if args.learning_rate is None:  # VAR's rule: 1e-4 per 256 images (a LoRA run has chosen its own)
        total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        args.learning_rate = 1e-4 * total_batch / 256
    vqvae.to(device)
    if text_encoder is not None:
        text_encoder.to(device)
    transform = ImageTransform(vqvae.sample_size, crop=args.crop, resize_ratio=args.resize_ratio,
                               random_flip=args.random_flip)
    examples = ImageCaptionDataset(dataset, transform, seed=args.seed)
    use_tokens = transformer.uses_text_tokens

    @torch.no_grad()
    def encode_texts(texts: list[str]) -> dict[str, torch.Tensor]:
        # the pipelines' own text encoding, so training and inference condition on identical inputs
        with torch.autocast(device.type, enabled=False):
            embeds_BE, states_BTH, mask_BT = encode_text(tokenizer, text_encoder, texts, device)
        encoded = {"text_embeds": embeds_BE.float()}
        if use_tokens:
            encoded.update(text_states=states_BTH.float(), text_mask=mask_BT)
        return encoded

    @torch.no_grad()
    def encode_images(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=False):
            return torch.cat(vqvae.encode_indices(pixel_values.to(device)), dim=1)

    # 2. optional cache of indices and embeddings, built once by the main process
    if args.cache_dir:
        parts = {"dataset": dataset_fingerprint(dataset), "vqvae": module_fingerprint(vqvae),
                 "transform": f"{vqvae.sample_size}:{args.crop}:{args.resize_ratio}", "condition": args.condition}
        if text_encoder is not None:
            parts["text_encoder"] = module_fingerprint(text_encoder)
            parts["tokenizer"] = _tokenizer_digest(tokenizer)
            if use_tokens:
                parts["text_states"] = "last_hidden_state"
        if accelerator.is_main_process:
            build_token_cache(args.cache_dir, examples, parts, encode_images,
                              encode_texts if args.condition == "text" else None, batch_size=args.cache_batch_size,
                              show_progress=not args.no_progress_bar)
        accelerator.wait_for_everyone()
        train_dataset = TokenCacheDataset(load_token_cache(token_cache_path(args.cache_dir, parts)))
    else:
        train_dataset = examples
    columns = {}
    if args.train_text_encoder and args.cache_dir:  # the text encoder learns: its outputs change every step
        columns["text"] = list(dataset["text"])
    if args.keep_known_captions:
        vocabulary = transformer.config.vocabulary
        columns["known"] = [not unknown_words([caption], vocabulary) for caption in dataset["text"]]
        logger.info("--keep_known_captions: %d of %d captions use only words the base model knows; they keep its "
                    "predictions, the other %d learn from their images", sum(columns["known"]), len(dataset),
                    len(dataset) - sum(columns["known"]))
    if columns:
        train_dataset = _WithColumns(train_dataset, columns, drop_text_cache=args.train_text_encoder)
    trainable = transformer
    if args.train_text_encoder:  # after the cache, whose key is the frozen encoder's fingerprint
        add_text_encoder_adapter(text_encoder,
                                 text_encoder_lora_config(args.lora_rank, args.lora_alpha, args.lora_dropout,
                                                          args.text_encoder_lora_target_modules),
                                 LORA_ADAPTER_NAME)
        _train_new_token_rows_only(text_encoder, tokenizer, transformer.config.vocabulary)
        trainable = TextEncoderAndTransformer(tokenizer, text_encoder, transformer)

    # 3. the loss on one batch
    cond_generator = torch.Generator().manual_seed(args.seed + 1_000_003 * accelerator.process_index)

    def batch_inputs(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The batch's token indices (B, L) and the transformer's condition arguments."""
        if "indices" in batch:
            idx_BL = batch["indices"].to(device)
        else:
            idx_BL = encode_images(batch["pixel_values"])
        if args.condition == "class":
            condition = {"class_labels": batch["label"].to(device)}
        elif args.train_text_encoder:
            condition = {"captions": list(batch["text"])}
        else:
            text = {k: batch[k] for k in ("text_embeds", "text_states", "text_mask") if k in batch}
            if "text_embeds" not in text:
                text = encode_texts(batch["text"])
            condition = {"text_embeds": text["text_embeds"].to(device)}
            if use_tokens:
                condition.update(encoder_hidden_states=text["text_states"].to(device),
                                 encoder_attention_mask=text["text_mask"].to(device))
        return idx_BL, condition

    teacher_targets = None
    if teacher is not None and args.cache_dir:  # fixed inputs: the frozen model's predictions, computed once
        def predict(batch: dict[str, Any], drop_B: torch.Tensor) -> torch.Tensor:
            idx_BL, condition = batch_inputs(batch)
            idx_per_scale = list(idx_BL.split([pn * pn for pn in transformer.config.patch_nums], dim=1))
            x_BLC_wo_first_l = vqvae.indices_to_teacher_input(idx_per_scale)
            return teacher(x_BLC_wo_first_l, **condition, cond_drop_mask=drop_B.to(device)).logits

        teacher_targets = precompute_teacher_targets(train_dataset, columns["known"], predict, transformer.num_tokens,
                                                     transformer.config.vocab_size,
                                                     show_progress=not args.no_progress_bar)

    def loss_fn(model, batch: dict[str, Any]):
        idx_BL, condition = batch_inputs(batch)
        if teacher is None:
            return var_loss(model, transformer, vqvae, idx_BL, condition, args.label_smoothing, cond_generator,
                            scale_weighting=args.scale_loss_weighting)
        return var_loss(model, transformer, vqvae, idx_BL, condition, args.label_smoothing, cond_generator,
                        keep_B=batch["known"], teacher=lambda x, drop, rows: (
                            teacher(x, **_rows_of(condition, rows), cond_drop_mask=drop).logits
                            if teacher_targets is None
                            else teacher_targets.log_probs(batch["index"][rows.cpu()], drop.cpu()).to(device)),
                        scale_weighting=args.scale_loss_weighting)

    # 4. samples and export
    def validate(model, step: int, output_dir: Path) -> dict[str, float]:
        if lora_run is not None:  # the progress grid: the same captions and seeds at every validation
            pipe = VARCLIPPipeline(tokenizer, text_encoder, getattr(model, "transformer", model), vqvae)
            pipe.set_progress_bar_config(disable=True)
            lora_run.record_progress(pipe, step, accelerator)
            return {}
        if args.condition == "text" and args.validation_prompts:
            pipe = VARCLIPPipeline(tokenizer, text_encoder, getattr(model, "transformer", model), vqvae)
            conditions, captions = {"prompt": list(args.validation_prompts)}, list(args.validation_prompts)
        elif args.condition == "class" and args.validation_class_labels:
            pipe = VARPipeline(model, vqvae)
            conditions = {"class_labels": list(args.validation_class_labels)}
            names = getattr(dataset.features.get("label"), "names", None)
            captions = [names[c] if names and c < len(names) else f"class {c}" for c in args.validation_class_labels]
        else:
            return {}
        pipe.set_progress_bar_config(disable=True)
        generators = [torch.Generator(device=device).manual_seed(args.validation_seed + i)
                      for i in range(len(captions))]
        images = pipe(**conditions, guidance_scale=args.validation_guidance_scale, top_k=args.validation_top_k,
                      top_p=args.validation_top_p, generator=generators).images
        save_sample_grid(images, captions, output_dir, step)
        return {}

    if args.condition == "text" and args.lora_rank is None:  # the words the captions taught, so pipelines can flag
        known = transformer.config.vocabulary or []  # prompts outside them; fine-tuning adds to what it knew
        transformer.register_to_config(vocabulary=build_vocabulary([*known, *dataset["text"]]),
                                       known_captions=record_known_captions(dataset["text"],
                                                                            transformer.config.known_captions))

    def export(model, folder: Path) -> None:
        if args.lora_rank is not None:
            export_lora(model, folder, args, lora_run)
        elif args.condition == "text":
            VARCLIPPipeline(tokenizer, text_encoder, model, vqvae).save_pretrained(folder, safe_serialization=True)
        else:
            VARPipeline(model, vqvae).save_pretrained(folder, safe_serialization=True)

    index_names = ("model_index.json",) if args.lora_rank is None else (LORA_WEIGHT_NAME,)
    task = TrainingTask(name="var" if args.lora_rank is None else "var-lora", model=trainable, loss_fn=loss_fn,
                        dataset=train_dataset, export=export, validate=validate,
                        generators={"condition_dropout": cond_generator}, no_decay_keys=TRANSFORMER_NO_DECAY_KEYS,
                        index_names=index_names)
    return run_training(args, accelerator, task)


def _tokenizer_digest(tokenizer) -> str:
    """SHA-256 of the tokenizer's full definition (vocabulary, merges, normaliser) and its maximum length."""
    definition = tokenizer.backend_tokenizer.to_str() + f":{tokenizer.model_max_length}"
    return hashlib.sha256(definition.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
