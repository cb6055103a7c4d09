"""What the page's fields mean to the engine, and what the engine's results look like in the page.

Plain functions between the form values (numbers, PIL images, the image editor's layers) and
:class:`~var_clip.demo.engine.DemoRequest` / :class:`~var_clip.demo.engine.Result`; nothing here imports Gradio, so
the whole translation is tested without a browser.
"""

from __future__ import annotations

import secrets

import numpy as np
import PIL.Image

from .engine import Result

__all__ = ["EDITOR_SIDE", "enlarge", "mask_from_layers", "resolve_seed", "result_summary", "unknown_word_warning",
           "verdict_table", "gallery_items"]

#: Side of the image shown in the editor: small models' images are enlarged (nearest neighbour) to be painted on.
EDITOR_SIDE = 256
#: The seed drawn when "random" is ticked lies in [0, RANDOM_SEEDS).
RANDOM_SEEDS = 2**31


def resolve_seed(seed: float | int | None, randomize: bool) -> int:
    """The seed a request uses: a fresh one when ``randomize``, else the field's value (an integer ≥ 0)."""
    if randomize:
        return secrets.randbelow(RANDOM_SEEDS)
    if seed is None or float(seed) != int(seed) or int(seed) < 0:
        raise ValueError(f"the seed must be a whole number ≥ 0, got {seed}")
    return int(seed)


def enlarge(image: PIL.Image.Image, side: int = EDITOR_SIDE) -> PIL.Image.Image:
    """``image`` enlarged by a whole factor (nearest neighbour: its pixels stay sharp) to about ``side`` on its
    longer side; an image already that large is returned as it is."""
    factor = max(1, side // max(image.size))
    return image.resize((image.width * factor, image.height * factor), PIL.Image.Resampling.NEAREST)


def mask_from_layers(layers: list[PIL.Image.Image] | None, size: tuple[int, int]) -> PIL.Image.Image:
    """The inpainting mask at the image's ``size`` (white = regenerate) from the editor's brush layers.

    A pixel of the image is regenerated when the brush touched any part of it on the enlarged canvas.
    """
    painted = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers or []:
        alpha = np.asarray(layer.convert("RGBA").getchannel("A"))
        if alpha.shape != painted.shape:  # the enlarged canvas: a pixel is painted when any of its block is
            alpha = np.asarray(PIL.Image.fromarray(alpha).resize(size, PIL.Image.Resampling.BOX, reducing_gap=None))
        painted |= alpha > 0
    return PIL.Image.fromarray(np.where(painted, 255, 0).astype(np.uint8), mode="L")


def gallery_items(result: Result) -> list[tuple[PIL.Image.Image, str]]:
    """The gallery's (image, caption) pairs: the seed and, for shapes-world images, the evaluator's verdict."""
    return [(g.image, f"seed {g.seed}" + (f" · {g.verdict.short()}" if g.verdict else "")) for g in result.images]


def verdict_table(result: Result) -> str:
    """A Markdown table of every image's verdict (empty when the images cannot be judged)."""
    rows = [g for g in result.images if g.verdict is not None]
    if not rows:
        return ""
    mark = {True: "✓", False: "✗", None: "–"}
    lines = ["| seed | colour | shape | place | relation | size | whole caption |", "|---|---|---|---|---|---|---|"]
    for g in rows:
        v = g.verdict
        lines.append(f"| {g.seed} | {mark[v.color]} | {mark[v.shape]} | {mark[v.place]} | {mark[v.relation]} | "
                     f"{mark[v.size]} | {'**matches**' if v.caption else 'does not match'} |")
    return "\n".join(lines)


def unknown_word_warning(words: list[str], vocabulary: list[str]) -> str:
    """The page's warning for words the model never saw (empty when there are none)."""
    if not words:
        return ""
    return (f"⚠️ This model never saw {', '.join(f'**{w}**' for w in words)} in training: it still draws, but only "
            f"these words steer it: {' '.join(vocabulary)}")


def result_summary(result: Result) -> str:
    seeds = [g.seed for g in result.images]
    span = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"
    count = f"{len(seeds)} image{'s' if len(seeds) > 1 else ''}"
    return f"{count} in {result.seconds:.2f} s ({span})"
