"""Random scenes of the shapes world and their captions: the generator behind ``generate_dataset``.

The generator keeps every attribute at least ``PLACEMENT_MARGIN`` pixels away from the spec's thresholds, so that
the half-pixel an antialiased edge can move a measured centre never flips a ground-truth verdict. Every draw is built
on one uniform draw (``_uniform01``), so a ``random.Random`` and a ``numpy.random.Generator`` are consumed the same
way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .captions import caption_variants, rename_word
from .extension import WorldExtension
from .scenes import Scene, ShapeObject
from .spec import (
    COLORS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    ONE_OBJECT_PROBABILITY,
    PLACEMENT_MARGIN,
    POSITION_AXES,
    POSITION_MENTION_PROBABILITY,
    POSITIONS,
    REGION_HIGH,
    REGION_LOW,
    RELATION_MIN_OFFSET,
    RELATIONS,
    SHAPES,
    SIZE_MENTION_PROBABILITY,
    SIZES,
    relation_holds,
)

RandomSource = random.Random | np.random.Generator


def _uniform01(rng: RandomSource) -> float:
    """One draw in [0, 1); every other draw is built on it so both RNG kinds consume the same way."""
    if isinstance(rng, random.Random):
        return rng.random()
    if isinstance(rng, np.random.Generator):
        return float(rng.random())
    raise ValueError(f"rng must be a random.Random or a numpy.random.Generator, got {type(rng).__name__}")


def _randint(rng: RandomSource, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]``."""
    return low + min(int(_uniform01(rng) * (high - low + 1)), high - low)


def _choice(rng: RandomSource, options: Sequence[Any]) -> Any:
    return options[_randint(rng, 0, len(options) - 1)]


def _allowed_pairs(allow_held_out: bool) -> list[tuple[str, str]]:
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return pairs if allow_held_out else [p for p in pairs if p not in HELD_OUT_PAIRS]


def _corner_range(size_px: int, constraint: str | None) -> tuple[int, int]:
    """Allowed integer range of an object's top/left edge along one axis.

    ``constraint`` is ``"low"`` (centre < 22, i.e. left/top), ``"high"`` (centre > 42), ``"mid"`` (22 <= centre <= 42)
    or ``None`` (anywhere inside the canvas). Each region threshold is kept ``PLACEMENT_MARGIN`` px away.
    """
    half = size_px / 2
    low, high = 0, IMAGE_SIZE - size_px
    if constraint == "low":
        high = min(high, math.floor(REGION_LOW - PLACEMENT_MARGIN - half))
    elif constraint == "high":
        low = max(low, math.ceil(REGION_HIGH + PLACEMENT_MARGIN - half))
    elif constraint == "mid":
        low = max(low, math.ceil(REGION_LOW + PLACEMENT_MARGIN - half))
        high = min(high, math.floor(REGION_HIGH - PLACEMENT_MARGIN - half))
    return low, high


def _sample_object(
    rng: RandomSource, pair: tuple[str, str], size_word: str, position: str | None = None,
    sizes: Mapping[str, tuple[int, int]] = SIZES, axes: tuple[str | None, str | None] | None = None,
) -> ShapeObject:
    """An object of the given pair and size class, its bbox centre inside ``position``'s region (anywhere if None).

    Edges land on whole pixels, so squares render crisp and the centre is ``edge + size / 2``. ``sizes`` maps the
    size words to their ranges (a ``WorldExtension``'s ``all_sizes`` for its extra sizes); ``axes`` gives the
    region's (x, y) constraints instead of ``position`` (a ``WorldExtension``'s places).
    """
    size_px = _randint(rng, *sizes[size_word])
    x_constraint, y_constraint = POSITION_AXES[position] if axes is None else axes
    x0 = _randint(rng, *_corner_range(size_px, x_constraint))
    y0 = _randint(rng, *_corner_range(size_px, y_constraint))
    return ShapeObject(pair[0], pair[1], size_px, x0 + size_px / 2, y0 + size_px / 2)


def _bboxes_apart(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    """Whether the bounding boxes are separated by at least ``gap`` px along x or along y."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return max(bx0 - ax1, ax0 - bx1) >= gap or max(by0 - ay1, ay0 - by1) >= gap


def sample_scene(rng: RandomSource, allow_held_out: bool = False) -> Scene:
    """Draw one scene and its caption.

    About 60 % of scenes hold one object: its caption names a position (80 %) and a size (50 %); when the size is
    not named either size is drawn. The rest hold two objects of different colors whose caption names a relation.
    With ``allow_held_out=False`` no object is a pair of ``HELD_OUT_PAIRS``, so no caption names one either.
    """
    pairs = _allowed_pairs(allow_held_out)
    if _uniform01(rng) < ONE_OBJECT_PROBABILITY:
        pair = _choice(rng, pairs)
        size = _choice(rng, tuple(SIZES))
        size_word = size if _uniform01(rng) < SIZE_MENTION_PROBABILITY else None
        position = _choice(rng, POSITIONS) if _uniform01(rng) < POSITION_MENTION_PROBABILITY else None
        scene = Scene((_sample_object(rng, pair, size, position),), "", position=position, size_word=size_word)
    else:
        first = _choice(rng, pairs)
        second = _choice(rng, [p for p in pairs if p[0] != first[0]])
        sizes = (_choice(rng, tuple(SIZES)), _choice(rng, tuple(SIZES)))
        relation = _choice(rng, RELATIONS)
        # Rejection sampling keeps placements uniform among the valid ones; even two 30 px objects accept about one
        # draw in 200, so the cap is never reached in practice.
        for _ in range(100_000):
            a = _sample_object(rng, first, sizes[0])
            b = _sample_object(rng, second, sizes[1])
            if relation_holds(relation, (a.cx, a.cy), (b.cx, b.cy), RELATION_MIN_OFFSET + PLACEMENT_MARGIN) and (
                _bboxes_apart(a, b, PLACEMENT_MARGIN)
            ):
                break
        else:  # pragma: no cover - probability below 1e-200
            raise RuntimeError("could not place two objects; this is a bug")
        scene = Scene((a, b), "", relation=relation)
    return replace(scene, caption=_choice(rng, caption_variants(scene)))


def sample_extension_scene(rng: RandomSource, extension: WorldExtension) -> Scene:
    """One object that shows one of ``extension``'s words, and its caption from the world's templates.

    The word is drawn uniformly among the extension's colours, sizes, places and synonyms. An extra colour goes on
    any shape at either of the world's sizes, the size named in half of the captions; an extra size goes on a seen
    colour-shape pair and is always named; an extra place holds a seen pair at either size, the size named in half of
    the captions, and is always named; a synonym names a seen pair that holds the world word it renames (the caption
    is the world's, with that word renamed), the size named in half of the captions. Otherwise the position is named
    in 80 % of captions, as in the world. Held-out pairs never occur.
    """
    concepts = ([("color", c) for c in extension.colors] + [("size", s) for s in extension.sizes]
                + [("position", p) for p in extension.positions] + [("synonym", w) for w in extension.synonyms])
    if not concepts:
        raise ValueError("`extension` names no colour, size, place or synonym")
    kind, word = _choice(rng, concepts)
    if kind == "color":
        pair = (word, _choice(rng, SHAPES))
    elif kind == "synonym":
        meaning = extension.synonyms[word]
        pair = _choice(rng, [p for p in _allowed_pairs(allow_held_out=False) if meaning in p])
    else:
        pair = _choice(rng, _allowed_pairs(allow_held_out=False))
    if kind == "size":
        size = size_word = word
    else:
        size = _choice(rng, tuple(SIZES))
        size_word = size if _uniform01(rng) < SIZE_MENTION_PROBABILITY else None
    if kind == "position":
        position = word
    else:
        position = _choice(rng, POSITIONS) if _uniform01(rng) < POSITION_MENTION_PROBABILITY else None
    obj = _sample_object(rng, pair, size, sizes=extension.all_sizes, axes=extension.position_axes(position))
    scene = Scene((obj,), "", position=position, size_word=size_word)
    caption = _choice(rng, caption_variants(scene, extension))
    if kind == "synonym":
        caption = rename_word(caption, extension.synonyms[word], word)
    return replace(scene, caption=caption)
