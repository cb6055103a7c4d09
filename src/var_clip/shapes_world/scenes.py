"""Scenes of the shapes world: the objects, and how a scene and its caption are drawn at random.

An object's ``(cx, cy)`` is the centre of its bounding box. The generator keeps every attribute at least
``PLACEMENT_MARGIN`` pixels away from the spec's thresholds, so that the half-pixel an antialiased edge can move a
measured centre never flips a ground-truth verdict.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .captions import caption_variants
from .spec import (
    COLORS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    ONE_OBJECT_PROBABILITY,
    PLACEMENT_MARGIN,
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
    size_class,
)

if TYPE_CHECKING:
    from .extension import WorldExtension

RandomSource = random.Random | np.random.Generator


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape: its colour and shape words, bounding-box side ``size_px`` and bounding-box centre."""

    color: str
    shape: str
    size_px: int
    cx: float
    cy: float

    def __post_init__(self) -> None:
        # any colour word: a WorldExtension may add colours; render_scene checks the word against its palette
        if not (isinstance(self.color, str) and self.color.isalpha() and self.color.islower()):
            raise ValueError(f"color must be a lower-case colour word such as {list(COLORS)}, got {self.color!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {list(SHAPES)}, got {self.shape!r}")
        if self.size_px <= 0:
            raise ValueError(f"size_px must be positive, got {self.size_px}")

    @property
    def size(self) -> str:
        """``"small"`` or ``"large"``."""
        return size_class(self.size_px)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in continuous coordinates; the object covers ``[x0, x1) x [y0, y1)``."""
        half = self.size_px / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass(frozen=True)
class Scene:
    """A scene and its caption.

    ``position`` is the position word of a one-object caption (``None`` when the caption names none), ``relation``
    the relation of a two-object caption (``objects[0]`` is its subject), ``size_word`` the size a one-object caption
    names (``None`` when it names none).
    """

    objects: tuple[ShapeObject, ...]
    caption: str
    position: str | None = None
    relation: str | None = None
    size_word: str | None = None

    def to_dict(self, extension: WorldExtension | None = None) -> dict[str, Any]:
        """A JSON-ready dict of the scene (caption excluded), as written to ``metadata.jsonl``; with ``extension``
        each object's ``size`` is its class among the extension's sizes too."""
        size_of = size_class if extension is None else extension.size_class
        return {
            "objects": [
                {"color": o.color, "shape": o.shape, "size": size_of(o.size_px), "size_px": o.size_px, "cx": o.cx,
                 "cy": o.cy}
                for o in self.objects
            ],
            "position": self.position,
            "relation": self.relation,
            "size_word": self.size_word,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], caption: str) -> Scene:
        """Inverse of ``to_dict``."""
        objects = tuple(
            ShapeObject(o["color"], o["shape"], int(o["size_px"]), float(o["cx"]), float(o["cy"]))
            for o in data["objects"]
        )
        return cls(objects, caption, data.get("position"), data.get("relation"), data.get("size_word"))



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


_POSITION_AXES: dict[str | None, tuple[str | None, str | None]] = {
    "left": ("low", None),
    "right": ("high", None),
    "top": (None, "low"),
    "bottom": (None, "high"),
    "center": ("mid", "mid"),
    None: (None, None),
}


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
    x_constraint, y_constraint = _POSITION_AXES[position] if axes is None else axes
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

