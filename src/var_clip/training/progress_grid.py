"""The progress view of a LoRA run: a few of the user's captions and a few known captions, sampled at fixed seeds
before training (the base model) and at every validation step, as one grid next to the adapter.

Each row is one caption at one seed, each column one moment of the run (``base``, ``step 100``, …), so a user sees
at a glance whether the new concept appears and whether the known captions still draw what the base model drew.
The samples of every moment are kept as PNG files under ``progress/`` (a resumed run rebuilds the same grid), the
grid is written as ``progress.png`` and, with ``--report_to tensorboard``, logged as the image ``progress``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..utils.atomic import atomic_open
from ..utils.image_grid import default_font, make_image_grid, wrap_text
from ..utils.logs import logger_level
from ..vocabulary import caption_words, unknown_words

__all__ = ["GRID_NAME", "ProgressGrid", "pick_captions"]

GRID_NAME = "progress.png"
SAMPLES_DIR = "progress"
CELL_SIZE = 128
LABEL_WIDTH = 200  # the captions' column, at the left of each row
PADDING = 4
TEXT_COLOR, KIND_COLOR, BACKGROUND = (20, 20, 20), (110, 110, 110), (255, 255, 255)


def pick_captions(captions: Sequence[str], vocabulary: Sequence[str] | None, count: int) -> list[str]:
    """Up to ``count`` distinct captions, those with words outside ``vocabulary`` first; each next one the caption
    with the most words the picked ones do not have yet (the earliest on a tie), so the rows show the data's
    variety (both of two new phrases, several colours)."""
    distinct = list(dict.fromkeys(captions))
    with_new = [c for c in distinct if vocabulary and unknown_words([c], vocabulary)]
    pools = [with_new, [c for c in distinct if c not in set(with_new)]]
    picked: list[str] = []
    covered: set[str] = set()
    for pool in pools:
        pool = list(pool)
        while pool and len(picked) < count:
            best = max(pool, key=lambda c: len(set(caption_words(c)) - covered))  # max keeps the first of ties
            pool.remove(best)
            picked.append(best)
            covered |= set(caption_words(best))
    return picked


class ProgressGrid:
    """Samples of ``user_captions`` then ``known_captions`` (row ``r`` drawn with seed ``seed + r``) per step.

    Args:
        folder: the run's output folder; samples go to ``folder/progress/step-<step>/``, the grid to
            ``folder/progress.png``.
        sampling: the pipeline's sampling arguments (``guidance_scale``, ``top_k``, ``top_p``).
    """

    def __init__(self, folder: str | Path, user_captions: Sequence[str], known_captions: Sequence[str], seed: int,
                 sampling: dict):
        if not user_captions and not known_captions:
            raise ValueError("a progress grid needs at least one caption")
        self.folder, self.seed, self.sampling = Path(folder), int(seed), dict(sampling)
        self.rows = [("your caption", c) for c in user_captions] + [("known caption", c) for c in known_captions]

    @property
    def path(self) -> Path:
        return self.folder / GRID_NAME

    def _step_dir(self, step: int) -> Path:
        return self.folder / SAMPLES_DIR / f"step-{step:07d}"

    def has(self, step: int) -> bool:
        return all((self._step_dir(step) / f"{r:02d}.png").is_file() for r in range(len(self.rows)))

    @torch.no_grad()
    def record(self, pipe, step: int) -> Image.Image:
        """Sample every row with ``pipe`` for ``step`` (0: the base model), keep the images and rewrite the grid
        with every step up to this one; returns the grid."""
        prompts = [caption for _, caption in self.rows]
        device = pipe.transformer.device
        generators = [torch.Generator(device=device).manual_seed(self.seed + r) for r in range(len(prompts))]
        # the captions' new words are what the adapter learns: the pipeline's warning about them says nothing new
        with logger_level(type(pipe).__module__, logging.ERROR):
            images = pipe(prompts, generator=generators, **self.sampling).images
        step_dir = self._step_dir(step)
        step_dir.mkdir(parents=True, exist_ok=True)
        for r, image in enumerate(images):
            with atomic_open(step_dir / f"{r:02d}.png") as handle:
                image.save(handle, format="PNG")
        grid = self.render(up_to=step)
        with atomic_open(self.path) as handle:
            grid.save(handle, format="PNG")
        return grid

    def steps(self, up_to: int) -> list[int]:
        """The steps whose samples are complete, up to ``up_to`` (a resumed run ignores those of its past)."""
        found = [int(p.name.removeprefix("step-")) for p in (self.folder / SAMPLES_DIR).glob("step-*")]
        return sorted(s for s in found if s <= up_to and self.has(s))

    def render(self, up_to: int) -> Image.Image:
        """The grid of every recorded step up to ``up_to``: a header row naming the columns, then one row per
        caption, its words (wrapped) at the left of its images."""
        steps = self.steps(up_to)
        if not steps:
            raise ValueError(f"no progress samples recorded up to step {up_to} in {self.folder}")
        font, bold = default_font(12), default_font(13)
        line = font.getbbox("Hg")[3] + 3
        width = LABEL_WIDTH + len(steps) * (CELL_SIZE + PADDING) + PADDING
        header = Image.new("RGB", (width, line + 2 * PADDING), BACKGROUND)
        draw = ImageDraw.Draw(header)
        for column, step in enumerate(steps):
            label = "base model" if step == 0 else f"step {step}"
            x = LABEL_WIDTH + PADDING + column * (CELL_SIZE + PADDING) + (CELL_SIZE - font.getlength(label)) / 2
            draw.text((x, PADDING), label, fill=TEXT_COLOR, font=bold)
        blocks = [header]
        for r, (kind, caption) in enumerate(self.rows):
            cells = []
            for step in steps:
                with Image.open(self._step_dir(step) / f"{r:02d}.png") as image:
                    cells.append(image.convert("RGB"))
            strip = make_image_grid(cells, None, cols=len(cells), cell_size=CELL_SIZE, padding=PADDING)
            row = Image.new("RGB", (width, strip.height), BACKGROUND)
            row.paste(strip, (LABEL_WIDTH, 0))
            draw = ImageDraw.Draw(row)
            lines = [kind + ":", *wrap_text(caption, LABEL_WIDTH - 2 * PADDING, font)]
            top = (strip.height - len(lines) * line) / 2
            for i, text in enumerate(lines):
                draw.text((PADDING, top + i * line), text, fill=KIND_COLOR if i == 0 else TEXT_COLOR, font=font)
            blocks.append(row)
        grid = Image.new("RGB", (width, sum(b.height for b in blocks)), BACKGROUND)
        top = 0
        for block in blocks:
            grid.paste(block, (0, top))
            top += block.height
        return grid
