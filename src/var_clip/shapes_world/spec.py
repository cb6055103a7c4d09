"""The shapes world's words and the spec's numbers: palette, shapes, sizes, positions, relations, thresholds.

Normative values from the spec ``shapes_world.md`` (and the generator-only choices it leaves open: how often a
caption names what, and the phrases captions are written with), and the two geometric rules both the generator and
the evaluator apply: where a position's region is, and when two centres stand in a relation. Coordinates are
continuous, ``y`` grows downward. The bottom of the package: this module imports none of the others.
"""

from __future__ import annotations

import math

IMAGE_SIZE = 64
BACKGROUND: tuple[int, int, int] = (235, 235, 235)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, tuple[int, int]] = {"small": (12, 16), "large": (24, 30)}  # bounding-box side, inclusive, in px
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "circle"), ("green", "square")}
)

# Region thresholds: left = x < 22, right = x > 42, top = y < 22, bottom = y > 42, center = both in [22, 42].
REGION_LOW = 22
REGION_HIGH = 42
RELATION_MIN_OFFSET = 16  # two related centres differ by at least this along the relation's axis
COLOR_TOLERANCE = 60.0  # a pixel belongs to a palette colour's mask within this RGB Euclidean distance
MIN_OBJECT_AREA = 20  # connected components of at least this many pixels are objects
SIZE_BOUNDARY_PX = 20  # measured bbox side < 20 -> small: halfway between small's max (16) and large's min (24)
FILL_RATIOS: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bbox area

# Generator-only choices (the spec leaves them open).
ONE_OBJECT_PROBABILITY = 0.6
SIZE_MENTION_PROBABILITY = 0.5  # of one-object captions
POSITION_MENTION_PROBABILITY = 0.8  # of one-object captions; the rest read like "a red circle"
PLACEMENT_MARGIN = 2  # px kept from every region threshold, relation offset and between two objects
SUPERSAMPLE = 4  # coverage is measured on a 4x4 grid of samples per pixel (antialiasing)

# Caption templates: a caption is PREFIX + noun phrase [+ position phrase], or PREFIX + np + relation phrase + np.
# Every attribute word appears verbatim; the first phrase of each entry is the canonical one used for prompts.
CAPTION_PREFIXES: tuple[str, ...] = ("", "there is ", "a photo of ", "an image of ")
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "at the center"),
}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below",),
}


def size_class(size_px: float) -> str:
    """The size word of a bounding-box side, by the evaluator's boundary."""
    return "small" if size_px < SIZE_BOUNDARY_PX else "large"


# Each position's region as one constraint per axis (x, y), the form the generator places an object by: "low" (the
# centre below REGION_LOW: left, top), "high" (above REGION_HIGH: right, bottom), "mid" (between them, both
# included: center) or None (anywhere on the canvas); None, no position named, leaves both axes free. The same
# regions as position_holds.
POSITION_AXES: dict[str | None, tuple[str | None, str | None]] = {
    "left": ("low", None),
    "right": ("high", None),
    "top": (None, "low"),
    "bottom": (None, "high"),
    "center": ("mid", "mid"),
    None: (None, None),
}


def position_holds(position: str, cx: float, cy: float) -> bool:
    """Whether a bounding-box centre lies in the spec's region for ``position``."""
    if position == "left":
        return cx < REGION_LOW
    if position == "right":
        return cx > REGION_HIGH
    if position == "top":
        return cy < REGION_LOW
    if position == "bottom":
        return cy > REGION_HIGH
    if position == "center":
        return REGION_LOW <= cx <= REGION_HIGH and REGION_LOW <= cy <= REGION_HIGH
    raise ValueError(f"position must be one of {list(POSITIONS)}, got {position!r}")


def relation_holds(
    relation: str, subject: tuple[float, float], reference: tuple[float, float], min_offset: float = RELATION_MIN_OFFSET
) -> bool:
    """Whether centre ``subject`` is ``relation`` centre ``reference`` by at least ``min_offset`` px (y grows down)."""
    dx, dy = reference[0] - subject[0], reference[1] - subject[1]
    if relation == "left of":
        return dx >= min_offset
    if relation == "right of":
        return -dx >= min_offset
    if relation == "above":
        return dy >= min_offset
    if relation == "below":
        return -dy >= min_offset
    raise ValueError(f"relation must be one of {list(RELATIONS)}, got {relation!r}")
