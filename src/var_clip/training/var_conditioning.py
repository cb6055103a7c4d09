"""What train-var's transformer is conditioned on, and the frozen teacher of ``--keep_known_captions``.

- :class:`BatchInputs`: a batch's token indices (from its images, or the token cache) and the transformer's condition
  arguments: class labels, the captions' text encoding (as the pipelines encode prompts), or the captions themselves
  for a text encoder that trains.
- :class:`TextEncoderAndTransformer`: ``--train_text_encoder``'s trainable modules in one forward.
- :func:`condition_columns`: the per-row columns the conditioning and the teacher read besides the images.
- :class:`FrozenTeacher`: the base model, copied before any adapter, whose predictions the known captions keep.

Legend: B batch · K rows held to the teacher · L = Σ pn² · V codebook size · C latent channels · E text-embedding width
· T caption tokens · H the text tower's hidden width.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..text_encoding import encode_text
from ..vocabulary import unknown_words
from .teacher_targets import TeacherTargets, precompute_teacher_targets
from .var_loss import TeacherFn, teacher_forcing_input, var_loss

__all__ = ["BatchInputs", "FrozenTeacher", "TextEncoderAndTransformer", "VARObjective", "WithColumns",
           "condition_columns"]

logger = logging.getLogger(__name__)


class BatchInputs:
    """A batch's token indices (B, L) and the transformer's condition arguments, on ``device``.

    The indices come from the batch's cached ``indices`` or from its images (``vqvae``); the condition is
    ``class_labels`` (``condition_type="class"``), the batch's captions (``captions_as_text``: a text encoder that
    trains encodes them in the model's forward, :class:`TextEncoderAndTransformer`), or their text encoding, cached or
    computed here (``text_embeds`` and, when the transformer ``uses_tokens``, the token states and mask).
    """

    def __init__(self, vqvae: MultiScaleVQModel, tokenizer, text_encoder, condition_type: str, uses_tokens: bool,
                 device: torch.device, captions_as_text: bool = False):
        self.vqvae, self.tokenizer, self.text_encoder = vqvae, tokenizer, text_encoder
        self.condition_type, self.uses_tokens, self.device = condition_type, uses_tokens, device
        self.captions_as_text = captions_as_text

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → their token indices (B, L), all scales concatenated."""
        with torch.autocast(self.device.type, enabled=False):
            return torch.cat(self.vqvae.encode_indices(pixel_values.to(self.device)), dim=1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions → ``text_embeds`` (B, E) and, for token-level conditioning, ``text_states`` (B, T, H) and
        ``text_mask`` (B, T): the pipelines' own text encoding, so training and inference condition on identical
        inputs (in float32, as the token cache stores them)."""
        with torch.autocast(self.device.type, enabled=False):
            embeds_BE, states_BTH, mask_BT = encode_text(self.tokenizer, self.text_encoder, texts, self.device)
        encoded = {"text_embeds": embeds_BE.float()}
        if self.uses_tokens:
            encoded.update(text_states=states_BTH.float(), text_mask=mask_BT)
        return encoded

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if "indices" in batch:
            idx_BL = batch["indices"].to(self.device)
        else:
            idx_BL = self.encode_images(batch["pixel_values"])
        if self.condition_type == "class":
            return idx_BL, {"class_labels": batch["label"].to(self.device)}
        if self.captions_as_text:
            return idx_BL, {"captions": list(batch["text"])}
        text = {k: batch[k] for k in ("text_embeds", "text_states", "text_mask") if k in batch}
        if "text_embeds" not in text:
            text = self.encode_texts(batch["text"])
        condition = {"text_embeds": text["text_embeds"].to(self.device)}
        if self.uses_tokens:
            condition.update(encoder_hidden_states=text["text_states"].to(self.device),
                             encoder_attention_mask=text["text_mask"].to(self.device))
        return idx_BL, condition


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


def condition_columns(dataset, with_captions: bool, known_vocabulary: Sequence[str] | None) -> dict[str, list]:
    """The per-row columns the loss reads besides the images, from ``dataset``'s captions: ``text``, the captions
    themselves (``with_captions``: the token cache holds a frozen encoder's embeddings, and the text encoder trains);
    ``known``, whether a caption uses only words of the base model's ``known_vocabulary`` (``--keep_known_captions``).
    """
    columns = {}
    if with_captions:  # the text encoder learns: its outputs change every step
        columns["text"] = list(dataset["text"])
    if known_vocabulary is not None:
        columns["known"] = [not unknown_words([caption], known_vocabulary) for caption in dataset["text"]]
        logger.info("--keep_known_captions: %d of %d captions use only words the base model knows; they keep its "
                    "predictions, the other %d learn from their images", sum(columns["known"]), len(dataset),
                    len(dataset) - sum(columns["known"]))
    return columns


class WithColumns(torch.utils.data.Dataset):
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


def _rows_of(condition: dict[str, Any], rows_B: torch.BoolTensor) -> dict[str, Any]:
    """The condition arguments of the batch's ``rows_B`` (tensors indexed, lists of captions filtered)."""
    picked = rows_B.tolist()
    return {k: v[rows_B.to(v.device)] if isinstance(v, torch.Tensor) else [c for c, keep in zip(v, picked) if keep]
            for k, v in condition.items()}


class FrozenTeacher:
    """The base model's predictions, which ``--keep_known_captions`` holds the known captions (and the rows trained
    without condition) to: the frozen ``model`` run on the held rows at every step, or, once :meth:`precompute` has
    run on fixed inputs (a token cache), its predictions looked up by row."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.targets: TeacherTargets | None = None

    @classmethod
    def copy_of(cls, transformer: VARTransformer2DModel, tokenizer, text_encoder, device: torch.device,
                with_text_encoder: bool, source: str | None) -> FrozenTeacher:
        """A frozen copy of the base ``transformer`` (``source`` names it in errors); ``with_text_encoder``: with a
        copy of the base text encoder too, as the teacher read the captions, for a text encoder that trains. Call it
        before any adapter is added."""
        if not transformer.config.vocabulary:
            raise ValueError("`--keep_known_captions` needs the words the base model was trained on, and "
                             f"{source!r} records none (its transformer config has no `vocabulary`)")
        model = copy.deepcopy(transformer).requires_grad_(False).eval().to(device)
        if with_text_encoder:
            teacher_text = copy.deepcopy(text_encoder).requires_grad_(False).to(device)
            model = TextEncoderAndTransformer(tokenizer, teacher_text, model)
        return cls(model)

    def precompute(self, dataset, known_N: Sequence[bool], inputs: BatchInputs, transformer: VARTransformer2DModel,
                   show_progress: bool) -> None:
        """Compute the model's predictions for every row of ``dataset`` once (its rows must be fixed: a token cache);
        :func:`~.teacher_targets.precompute_teacher_targets` may decline (too large), and the model then runs at every
        step."""
        patch_nums = transformer.config.patch_nums

        def predict(batch: dict[str, Any], drop_B: torch.Tensor) -> torch.Tensor:
            idx_BL, condition = inputs(batch)
            x_BLC_wo_first_l = teacher_forcing_input(inputs.vqvae, patch_nums, idx_BL)
            return self.model(x_BLC_wo_first_l, **condition, cond_drop_mask=drop_B.to(inputs.device)).logits

        self.targets = precompute_teacher_targets(dataset, known_N, predict, transformer.num_tokens,
                                                  transformer.config.vocab_size, show_progress=show_progress)

    def for_batch(self, batch: dict[str, Any], condition: dict[str, Any]) -> TeacherFn:
        """The teacher of :func:`~.var_loss.var_loss` for this batch and its condition arguments."""
        if self.targets is None:
            return lambda x, drop, rows: self.model(x, **_rows_of(condition, rows), cond_drop_mask=drop).logits
        return lambda x, drop, rows: self.targets.log_probs(batch["index"][rows.cpu()], drop.cpu()).to(x.device)


@dataclass
class VARObjective:
    """train-var's loss on one batch, as ``TrainingTask.loss_fn`` takes it: ``(model, batch) -> (loss, metrics)``.

    ``inputs`` turns a batch into its token indices (B, L) and condition arguments
    (:class:`BatchInputs`); with a ``teacher`` (``--keep_known_captions``) the rows the batch marks
    ``known`` are held to its predictions.
    """

    transformer: VARTransformer2DModel
    vqvae: MultiScaleVQModel
    inputs: Callable[[dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]
    label_smoothing: float
    scale_weighting: str
    generator: torch.Generator
    teacher: FrozenTeacher | None = None

    def __call__(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        idx_BL, condition = self.inputs(batch)
        held = self.teacher is not None
        return var_loss(model, self.transformer, self.vqvae, idx_BL, condition, self.label_smoothing, self.generator,
                        keep_B=batch["known"] if held else None,
                        teacher=self.teacher.for_batch(batch, condition) if held else None,
                        scale_weighting=self.scale_weighting)
