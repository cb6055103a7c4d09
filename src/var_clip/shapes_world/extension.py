"""Words the shapes world does not have: an extra colour, size or place, or a new name for a world colour or shape,
with what each means on the canvas.

A :class:`WorldExtension` is how a fine-tuning experiment teaches the default model something new and measures
whether it learned it: ``generate_dataset(..., extension=...)`` writes captioned images of the new words in the
world's own templates (``sample_extension_scene``), and ``render_scene``, ``parse_caption``, ``detect_objects`` and
``score_image`` take the same ``extension=`` so the evaluator knows the words too. Without an extension every one
of them is exactly the spec's. It stands right above ``spec``: what the words mean is all it holds, and every other
module may take one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from .spec import (
    BACKGROUND,
    COLOR_TOLERANCE,
    COLORS,
    PLACEMENT_MARGIN,
    POSITION_AXES,
    POSITION_PHRASES,
    REGION_LOW,
    SHAPES,
    SIZES,
    position_holds,
)

# The sides an extra size may span. At 8 px the edge pixels of a triangle that blend too far from its colour to join
# its mask are enough of it that its fill ratio reads as a circle's (red, green, blue); from 9 px every shape in every
# colour is detected right. Above 2 × (REGION_LOW - PLACEMENT_MARGIN) = 40 px no centre fits in the "left" (or
# "top") region with the generator's margin.
MIN_EXTENSION_SIDE = 9
MAX_EXTENSION_SIDE = 2 * (REGION_LOW - PLACEMENT_MARGIN)
# the world positions a place may combine, one per axis: "top left corner" is the top region and the left one
_PLACE_PARTS = {"left": "x", "right": "x", "top": "y", "bottom": "y"}


@dataclass(frozen=True)
class WorldExtension:
    """Extra colour, size and place words for the shapes world, and new names for its colours and shapes, each with
    its meaning on the canvas.

    Attributes:
        colors: extra palette colours, word → exact RGB, e.g. ``{"pink": (255, 105, 180)}``. A colour must lie more
            than ``COLOR_TOLERANCE`` (RGB distance) from the background and from every palette colour, so the
            detector can tell it apart.
        sizes: extra size words, word → inclusive range of the bounding-box side in px, e.g. ``{"huge": (34, 38)}``,
            within ``MIN_EXTENSION_SIDE``..``MAX_EXTENSION_SIDE``; ranges may not overlap each other's or the
            world's. The detector's size classes get boundaries halfway between neighbouring ranges, as the spec's
            small/large boundary (20 px) lies halfway between 16 and 24.
        positions: extra places, phrase → the world positions whose regions it lies in, one per axis, e.g.
            ``{"top left corner": ("top", "left")}``: an object is "in the top left corner" when its centre is both
            in the top region (y < 22) and in the left one (x < 22). Captions say ``in the <phrase>``; the phrase is
            lower-case words, at least two (one word is a world position's job).
        synonyms: new names for the world's colours and shapes, word → the world word it means, e.g.
            ``{"ball": "circle"}``: "a red ball" shows what "a red circle" shows. A new word for a known thing.

    Every colour, size and synonym must be a new lower-case word. The mappings are copied on construction.
    """

    colors: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    positions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    synonyms: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("colors", "sizes", "positions", "synonyms"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"`{name}` must be a mapping word → value, got {type(getattr(self, name)).__name__}")
        known = {*COLORS, *SHAPES, *SIZES}
        words = [*self.colors, *self.sizes, *self.synonyms]
        for word in words:
            if not (isinstance(word, str) and word.isalpha() and word.islower()) or word in known:
                raise ValueError(f"extension word {word!r} must be a new lower-case word (not one of {sorted(known)})")
        if len(set(words)) != len(words):
            twice = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"extension words {twice} have two meanings (colour, size or synonym)")
        for word, meaning in self.synonyms.items():
            if meaning not in (*COLORS, *SHAPES):
                raise ValueError(f"synonym {word!r} must rename one of the world's colours or shapes "
                                 f"{[*COLORS, *SHAPES]}, got {meaning!r}")
            if any(word in place.split() for place in self.positions if isinstance(place, str)):
                raise ValueError(f"synonym {word!r} is also a word of a place")
        for word, rgb in self.colors.items():
            if not (isinstance(rgb, tuple | list) and len(rgb) == 3 and all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb)):
                raise ValueError(f"colour {word!r} must be an RGB triple of ints in [0, 255], got {rgb!r}")
        neighbours = {"background": BACKGROUND, **COLORS}
        for word, rgb in self.colors.items():
            for other, other_rgb in neighbours.items():
                if other != word and math.dist(rgb, other_rgb) <= COLOR_TOLERANCE:
                    raise ValueError(f"colour {word!r} {tuple(rgb)} lies within {COLOR_TOLERANCE:g} of {other} "
                                     f"{other_rgb}: the detector could not tell them apart")
            neighbours[word] = tuple(rgb)
        for word, side in self.sizes.items():
            if not (isinstance(side, tuple | list) and len(side) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in side)
                    and MIN_EXTENSION_SIDE <= side[0] <= side[1] <= MAX_EXTENSION_SIDE):
                raise ValueError(f"size {word!r} must be an int range (low, high) within "
                                 f"{MIN_EXTENSION_SIDE}..{MAX_EXTENSION_SIDE} px, got {side!r}")
        ranges = sorted({**SIZES, **{w: tuple(s) for w, s in self.sizes.items()}}.items(), key=lambda item: item[1])
        for (a, (_, a_high)), (b, (b_low, _)) in pairwise(ranges):
            if b_low <= a_high:
                raise ValueError(f"sizes {a!r} and {b!r} overlap")
        for phrase, parts in self.positions.items():
            words = phrase.split(" ") if isinstance(phrase, str) else []
            if len(words) < 2 or not all(w.isalpha() and w.islower() for w in words):
                raise ValueError(f"place {phrase!r} must be two or more lower-case words separated by single spaces")
            if phrase in POSITION_PHRASES or any(phrase in p for p in POSITION_PHRASES.values()):
                raise ValueError(f"place {phrase!r} is already one of the world's positions")
            axes = [_PLACE_PARTS.get(part) for part in parts] if isinstance(parts, tuple | list) else [None]
            if not parts or None in axes or len(set(axes)) != len(axes):
                raise ValueError(f"place {phrase!r} must name one or two of {list(_PLACE_PARTS)}, at most one per "
                                 f"axis, got {parts!r}")
        for phrase in self.positions:
            for other in self.positions:
                if other != phrase and f" {phrase} " in f" {other} ":
                    raise ValueError(f"place {phrase!r} is part of place {other!r}: a caption could not tell them "
                                     "apart")
        # frozen: store private copies, so a caller's later edit of its dicts cannot change the extension
        object.__setattr__(self, "colors", {w: tuple(rgb) for w, rgb in self.colors.items()})
        object.__setattr__(self, "sizes", {w: tuple(s) for w, s in self.sizes.items()})
        object.__setattr__(self, "positions", {p: tuple(parts) for p, parts in self.positions.items()})
        object.__setattr__(self, "synonyms", dict(self.synonyms))

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        """The world's colours, then the extension's."""
        return {**COLORS, **self.colors}

    @property
    def all_sizes(self) -> dict[str, tuple[int, int]]:
        """The world's sizes, then the extension's."""
        return {**SIZES, **self.sizes}

    @property
    def position_phrases(self) -> dict[str, tuple[str, ...]]:
        """The world's position phrases, then the extension's places (``"in the <place>"``)."""
        return {**POSITION_PHRASES, **{place: (f"in the {place}",) for place in self.positions}}

    def position_axes(self, position: str | None) -> tuple[str | None, str | None]:
        """The (x, y) region constraints of a world position or a place: ``"low"``, ``"high"``, ``"mid"`` or None."""
        if position not in self.positions:
            return POSITION_AXES[position]
        parts = self.positions[position]
        x = next((POSITION_AXES[p][0] for p in parts if _PLACE_PARTS[p] == "x"), None)
        y = next((POSITION_AXES[p][1] for p in parts if _PLACE_PARTS[p] == "y"), None)
        return x, y

    def position_holds(self, position: str, cx: float, cy: float) -> bool:
        """Whether a bounding-box centre lies in a world position's region or in a place (every part's region)."""
        if position in self.positions:
            return all(position_holds(part, cx, cy) for part in self.positions[position])
        return position_holds(position, cx, cy)

    def size_class(self, size_px: float) -> str:
        """The size word of a measured bounding-box side: the range it falls in, with boundaries halfway between
        neighbouring ranges (without extra sizes this is ``spec.size_class``)."""
        ranges = sorted(self.all_sizes.items(), key=lambda item: item[1])
        for (word, (_, high)), (_, (next_low, _)) in pairwise(ranges):
            if size_px < (high + next_low) / 2:
                return word
        return ranges[-1][0]
