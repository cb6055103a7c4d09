"""The settings of a LoRA run chosen from its data, when the user gives only ``--lora_rank``.

A user with a hundred captioned images should not have to find a recipe. Each setting the user leaves unset is
chosen here from what the data says (how many images, whether the captions use words the base model never read,
whether the data already holds captions of known words to replay) and from what was measured on the default model
(docs/lora.md); every choice carries its reason, which the trainer logs at the start and writes to the adapter's
model card. A setting the user gives is kept and marked as given.

The rules:

- ``--train_text_encoder`` when the captions hold words outside the base model's recorded vocabulary: a word the
  text encoder never read reaches it as pieces it cannot read yet, so the new word starts there.
- Prior preservation (``--prior_images``) when the base model records its vocabulary and the data holds (almost) no
  captions of known words: the trainer samples the base model on known captions and mixes the images in
  (:mod:`.prior_preservation`), as many as make the user's images ``CONCEPT_SHARE`` of the data.
- ``--keep_known_captions`` whenever the data (with the prior images) holds captions of known words: they learn the
  frozen base model's predictions, so the adapter keeps what the model knew.
- ``--label_smoothing 0``: an adapter sits next to the base model's sharp predictions; smoothing flattens all of
  them (0.1 on the default model, trained with 0, cost the seen prompts 18 points).
- ``--learning_rate``: ``LEARNING_RATE_KEPT`` with known captions held, else ``LEARNING_RATE``.
- ``--max_train_steps``: each of the user's images seen ``VIEWS_PER_IMAGE`` times at its share of the batches,
  within ``MIN_STEPS``..``MAX_STEPS``.
- ``--validation_steps``: ``PROGRESS_COLUMNS`` columns of the progress grid over the run.
- ``--cache_dir``: ``cache/`` in the output folder (each image's tokens computed once; the prior images go there
  too), unless random crops or flips make every step's images new.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.arguments import add_option
from ..vocabulary import unknown_words

__all__ = [
    "CHOSEN_FLAGS",
    "LoraChoice",
    "LoraDefaults",
    "add_lora_default_arguments",
    "choose_lora_defaults",
    "take_unset",
]

# the user's images are this share of the training data when the trainer adds the base model's own images
CONCEPT_SHARE = 0.5
# data whose captions of known words are at least this share already replays the base model's world
REPLAY_SHARE = 0.25
# no fewer prior images than this (a handful of user images still gets a varied prior)
MIN_PRIOR_IMAGES = 64
LEARNING_RATE = 1e-3
LEARNING_RATE_KEPT = 2e-3
VIEWS_PER_IMAGE = 32
MIN_STEPS, MAX_STEPS = 100, 600
PROGRESS_COLUMNS = 4

# the flags this module may choose, and the plain value each takes outside a LoRA run (the trainer's former defaults)
CHOSEN_FLAGS: dict[str, Any] = {
    "learning_rate": None, "max_train_steps": None, "num_train_epochs": 1, "label_smoothing": 0.1,
    "train_text_encoder": False, "keep_known_captions": False, "validation_steps": 0, "prior_images": 0,
    "cache_dir": None,
}
CACHE_DIR = "cache"  # a LoRA run's token cache and prior images, inside its output folder
PATH_FLAGS = frozenset({"--cache_dir"})  # settings whose value is a path of the machine


def add_lora_default_arguments(parser: argparse.ArgumentParser, group) -> None:
    """The prior-preservation flags, and unset defaults (None) for every flag in :data:`CHOSEN_FLAGS`, so that a
    LoRA run can tell a flag the user left unset from one given with its plain value."""
    add_option(group, "prior-images", type=int, default=None,
               help="LoRA: images the trainer samples from the base model on captions it knows and mixes in, so the "
                    "adapter keeps what the base model drew (0: none; default: chosen from the data, printed)")
    add_option(group, "prior-cache-dir", type=str, default=None,
               help="LoRA: where the prior images are kept for reuse (default: --cache_dir, else the output folder)")
    add_option(group, "no-train-text-encoder", dest="train_text_encoder", action="store_false",
               help="LoRA: keep the text encoder as it is, even for captions with new words")
    add_option(group, "no-keep-known-captions", dest="keep_known_captions", action="store_false",
               help="LoRA: train every caption on its image, even those made of known words")
    parser.set_defaults(**{name: None for name in CHOSEN_FLAGS})


def take_unset(args: argparse.Namespace) -> frozenset[str]:
    """The flags of :data:`CHOSEN_FLAGS` the user left unset; they get their plain values, so every later check
    reads a number (a LoRA run then replaces them with :func:`choose_lora_defaults`)."""
    unset = frozenset(name for name in CHOSEN_FLAGS if getattr(args, name, None) is None)
    for name in unset:
        setattr(args, name, CHOSEN_FLAGS[name])
    if args.prior_images < 0:
        raise ValueError(f"`--prior_images` must be >= 0, got {args.prior_images}")
    if args.lora_rank is None:
        given = [f"--{n}" for n in ("prior_images", "prior_cache_dir") if n not in unset and getattr(args, n)]
        given += [f"--no_{n}" for n in ("train_text_encoder", "keep_known_captions")
                  if n not in unset and getattr(args, n) is False]
        if given:
            raise ValueError(f"{', '.join(given)} configure LoRA training: also pass `--lora_rank`")
    return unset


@dataclass(frozen=True)
class LoraChoice:
    """One setting of the run: its flag, its value, whether the user gave it, and why it has this value."""

    flag: str
    value: Any
    given: bool
    reason: str

    def shown_value(self) -> str:
        if isinstance(self.value, bool):
            return "on" if self.value else "off"
        if isinstance(self.value, float):
            return f"{self.value:g}"
        if self.value is None:
            return "none"
        return str(self.value)


@dataclass
class LoraDefaults:
    """The settings of one LoRA run (applied to its arguments) and what they were chosen from."""

    choices: list[LoraChoice]
    new_words: list[str] | None  # None: the base model records no vocabulary
    num_images: int
    num_known: int  # the user's captions made only of known words
    extras: dict[str, Any] = field(default_factory=dict)

    def log_lines(self) -> list[str]:
        """One line per setting, as logged at the start of the run."""
        width = max(len(c.flag) for c in self.choices)
        return [f"{c.flag:<{width}}  {c.shown_value():<8} " + ("(given)" if c.given else f"(chosen) {c.reason}")
                for c in self.choices]

    def markdown_table(self, relative_to: str | Path | None = None) -> str:
        """The settings as the model card's table; a path inside ``relative_to`` (the output folder) is shown
        relative to it, any other path by its last part (a card may be published: no paths of the machine)."""
        def shown(choice: LoraChoice) -> str:
            if choice.flag not in PATH_FLAGS or not isinstance(choice.value, str):
                return choice.shown_value()
            path = Path(choice.value).resolve()
            if relative_to is not None and path.is_relative_to(Path(relative_to).resolve()):
                return f"{path.relative_to(Path(relative_to).resolve()).as_posix()}/ (in the adapter's folder)"
            return path.name

        rows = ["| setting | value | chosen from |", "| --- | --- | --- |"]
        rows += [f"| `{c.flag}` | {shown(c)} | {'given' if c.given else c.reason} |" for c in self.choices]
        return "\n".join(rows)


def _steps_for(num_images: int, batch_size: int, share: float) -> tuple[int, str]:
    raw = VIEWS_PER_IMAGE * num_images / (batch_size * share)
    steps = int(min(MAX_STEPS, max(MIN_STEPS, round(raw))))
    reason = (f"each of the {num_images} images seen about {round(steps * batch_size * share / num_images)} times "
              f"({share:.0%} of each batch of {batch_size}")
    if steps != round(raw):
        reason += f"; {VIEWS_PER_IMAGE} views would take {round(raw)} steps, kept within {MIN_STEPS}..{MAX_STEPS}"
    return steps, reason + ")"


def choose_lora_defaults(args: argparse.Namespace, unset: frozenset[str], captions: Sequence[str],
                         vocabulary: Sequence[str] | None) -> LoraDefaults:
    """Choose every flag in ``unset`` for a LoRA run on ``captions`` (one per image) and set it on ``args``.

    ``vocabulary`` is the base model's recorded vocabulary (its transformer config's ``vocabulary``), None when it
    records none. Returns the choices with their reasons (the given flags too, marked as given).
    """
    captions = list(captions)
    num_images = len(captions)
    choices: list[LoraChoice] = []

    def decide(name: str, value: Any, reason: str) -> None:
        given = name not in unset
        if not given:
            setattr(args, name, value)
        choices.append(LoraChoice(f"--{name}", getattr(args, name), given, reason))

    # 1. what the captions say about the base model
    new_words = unknown_words(captions, vocabulary) if vocabulary else None
    known_flags = [not unknown_words([c], vocabulary) for c in captions] if vocabulary else [False] * num_images
    num_known = sum(known_flags)
    if new_words is None:
        reason = "the base model records no vocabulary, so new words cannot be told apart"
        decide("train_text_encoder", False, reason)
    elif new_words:
        shown = ", ".join(new_words[:6]) + (", …" if len(new_words) > 6 else "")
        decide("train_text_encoder", True, f"the captions use {len(new_words)} word{'s' * (len(new_words) > 1)} "
                                           f"the base model never read ({shown})")
    else:
        decide("train_text_encoder", False, "every caption word is one the base model read")

    # 2. replay: the user's own captions of known words, or the base model's images
    if new_words is None:
        decide("prior_images", 0, "no recorded vocabulary: no telling which captions the base model knows")
    elif num_known >= REPLAY_SHARE * num_images:
        decide("prior_images", 0, f"{num_known} of the {num_images} captions use only known words: they are the "
                                  "replay")
    else:
        prior = max(MIN_PRIOR_IMAGES, math.ceil(num_images * (1 - CONCEPT_SHARE) / CONCEPT_SHARE))
        decide("prior_images", prior, f"no replay in the data: the base model's own images of known captions, "
                                      f"{CONCEPT_SHARE:.0%} of the data with your {num_images}")
    if args.random_flip or (args.crop == "random" and args.resize_ratio > 1.0):
        decide("cache_dir", None, "random crops or flips: every step encodes its images")
    else:
        decide("cache_dir", str(Path(args.output_dir) / CACHE_DIR), "each image's tokens computed once")
    has_known = num_known > 0 or args.prior_images > 0
    if vocabulary is None:
        decide("keep_known_captions", False, "no recorded vocabulary")
    else:
        decide("keep_known_captions", has_known, "known captions keep the base model's predictions"
               if has_known else "no caption of known words to hold")

    # 3. optimisation
    decide("label_smoothing", 0.0, "an adapter learns next to the base model's own sharp predictions")
    kept = args.keep_known_captions
    decide("learning_rate", LEARNING_RATE_KEPT if kept else LEARNING_RATE,
           "adapters start at zero; known captions held, so the concept can move faster" if kept
           else "adapters start at zero")
    total = num_images + args.prior_images
    share = num_images / total
    if "max_train_steps" in unset and "num_train_epochs" in unset:
        decide("max_train_steps", *_steps_for(num_images, args.train_batch_size, share))
    elif "max_train_steps" not in unset:
        decide("max_train_steps", None, "")
    else:  # --num_train_epochs given: the steps follow from it
        decide("num_train_epochs", None, "")
    steps = args.max_train_steps or args.num_train_epochs * max(1, total // args.train_batch_size)
    decide("validation_steps", max(1, steps // PROGRESS_COLUMNS),
           f"{PROGRESS_COLUMNS} columns of progress samples over the run")
    return LoraDefaults(choices, new_words, num_images, num_known)
