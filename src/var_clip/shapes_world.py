"""The shapes world: a tiny, fully specified image–caption world, its generator and its evaluator.

The embedded default model is trained on this world (its normative description is the spec ``shapes_world.md``), so
that the pipeline makes meaningful images offline and so that how faithfully an image follows its caption can be
*measured*. This module holds the whole world in one place:

- the vocabulary (``COLORS``, ``SHAPES``, ``SIZES``, ``POSITIONS``, ``RELATIONS``) and the ``HELD_OUT_PAIRS``;
- ``sample_scene`` / ``render_scene`` / ``generate_dataset``: scenes, their captions and a Hugging Face ``imagefolder``
  dataset of them;
- ``parse_caption``: a caption back into the attributes it names;
- ``detect_objects`` / ``score_image`` / ``evaluation_prompts`` / ``summarize_scores``: the faithfulness evaluator;
- ``WorldExtension``: words the world does not have (an extra colour, an extra size), for fine-tuning data
  (``generate_dataset(..., extension=...)``) and a scorer that knows them. Without one, everything is the spec's world.

Coordinates are continuous canvas coordinates: pixel ``(i, j)`` (column ``i``, row ``j``) covers ``[i, i+1) x [j, j+1)``
and ``y`` grows downward. An object's ``(cx, cy)`` is the centre of its bounding box; the evaluator measures the same
quantity from a pixel mask as ``(x_min + x_max + 1) / 2``. The generator keeps every attribute at least
``PLACEMENT_MARGIN`` pixels away from the spec's thresholds, so that the half-pixel an antialiased edge can move a
measured centre never flips a ground-truth verdict.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

__all__ = [
    "BACKGROUND",
    "COLORS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "RELATIONS",
    "HELD_OUT_PAIRS",
    "IMAGE_SIZE",
    "ShapeObject",
    "Scene",
    "ObjectSpec",
    "CaptionSpec",
    "DetectedObject",
    "WorldExtension",
    "sample_extension_scene",
    "sample_scene",
    "caption_variants",
    "render_scene",
    "generate_dataset",
    "parse_caption",
    "position_holds",
    "relation_holds",
    "detect_objects",
    "score_image",
    "evaluation_prompts",
    "summarize_scores",
]

# ----------------------------------------------------------------------------------------------------------------------
# The world (normative values from the spec)
# ----------------------------------------------------------------------------------------------------------------------

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

RandomSource = random.Random | np.random.Generator


# ----------------------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------------------


def _size_class(size_px: float, extension: WorldExtension | None = None) -> str:
    """The size word of a bounding-box side, by the evaluator's boundary (``SIZE_BOUNDARY_PX``, halfway between small
    and large); an extension's sizes add boundaries halfway between neighbouring ranges in the same way."""
    if extension is None or not extension.sizes:
        return "small" if size_px < SIZE_BOUNDARY_PX else "large"
    ranges = sorted({**SIZES, **extension.sizes}.items(), key=lambda item: item[1])
    for (word, (_, high)), (_, (next_low, _)) in zip(ranges, ranges[1:]):
        if size_px < (high + next_low) / 2:
            return word
    return ranges[-1][0]


@dataclass(frozen=True)
class WorldExtension:
    """Words the shapes world does not have, each with what it means on the canvas.

    Attributes:
        colors: extra palette colours, name → exact RGB (e.g. ``{"pink": (255, 105, 180)}``).
        sizes: extra size words, name → inclusive range of the bounding-box side in px (e.g. ``{"huge": (34, 38)}``);
            a range may not overlap another size's.

    Rendering, caption parsing and scoring take one optionally; without it they are exactly the spec's.
    """

    colors: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {*COLORS, *SHAPES, *SIZES}
        for word in [*self.colors, *self.sizes]:
            if not (isinstance(word, str) and word.isalpha() and word.islower()) or word in known:
                raise ValueError(f"extension word {word!r} must be a new lower-case word (not one of {sorted(known)})")
        for name, rgb in self.colors.items():
            if len(rgb) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in rgb):
                raise ValueError(f"colour {name!r} must be an RGB triple of ints in [0, 255], got {rgb!r}")
        ranges = sorted({**SIZES, **self.sizes}.items(), key=lambda item: item[1])
        for name, (low, high) in self.sizes.items():
            if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= IMAGE_SIZE):
                raise ValueError(f"size {name!r} must be an int range (low, high) within 1..{IMAGE_SIZE}, got {(low, high)}")
        for (a, (_, a_high)), (b, (b_low, _)) in zip(ranges, ranges[1:]):
            if b_low <= a_high:
                raise ValueError(f"sizes {a!r} and {b!r} overlap")

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        return {**COLORS, **self.colors}

    @property
    def all_sizes(self) -> dict[str, tuple[int, int]]:
        return {**SIZES, **self.sizes}


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape: its colour and shape words, bounding-box side ``size_px`` and bounding-box centre."""

    color: str
    shape: str
    size_px: int
    cx: float
    cy: float

    def __post_init__(self) -> None:
        if not isinstance(self.color, str) or not self.color:  # the palette (and any extension) is checked by rendering
            raise ValueError(f"color must be a colour name, got {self.color!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {list(SHAPES)}, got {self.shape!r}")
        if self.size_px <= 0:
            raise ValueError(f"size_px must be positive, got {self.size_px}")

    @property
    def size(self) -> str:
        """``"small"`` or ``"large"``."""
        return _size_class(self.size_px)

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the scene (caption excluded), as written to ``metadata.jsonl``."""
        return {
            "objects": [
                {"color": o.color, "shape": o.shape, "size": o.size, "size_px": o.size_px, "cx": o.cx, "cy": o.cy}
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


# ----------------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------------


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
    sizes: Mapping[str, tuple[int, int]] = SIZES,
) -> ShapeObject:
    """An object of the given pair and size class, its bbox centre inside ``position``'s region (anywhere if None).

    Edges land on whole pixels, so squares render crisp and the centre is ``edge + size / 2``.
    """
    size_px = _randint(rng, *sizes[size_word])
    x_constraint, y_constraint = _POSITION_AXES[position]
    x0 = _randint(rng, *_corner_range(size_px, x_constraint))
    y0 = _randint(rng, *_corner_range(size_px, y_constraint))
    return ShapeObject(pair[0], pair[1], size_px, x0 + size_px / 2, y0 + size_px / 2)


def _bboxes_apart(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    """Whether the bounding boxes are separated by at least ``gap`` px along x or along y."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return max(bx0 - ax1, ax0 - bx1) >= gap or max(by0 - ay1, ay0 - by1) >= gap


def _article(word: str) -> str:
    # Every word that can follow an article here starts with a letter whose sound matches its spelling.
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(color: str, shape: str, size: str | None = None) -> str:
    words = f"{size} {color} {shape}" if size else f"{color} {shape}"
    return f"{_article(words)} {words}"


def caption_variants(scene: Scene) -> list[str]:
    """Every caption the templates produce for ``scene``'s objects, position, relation and size word.

    One object: ``PREFIX + np [+ " " + position phrase]``; two objects: ``PREFIX + np + " " + relation phrase + " " +
    np``, with the prefixes of ``CAPTION_PREFIXES`` and the paraphrases of ``POSITION_PHRASES``/``RELATION_PHRASES``.
    """
    if len(scene.objects) == 1:
        (obj,) = scene.objects
        noun = _noun_phrase(obj.color, obj.shape, scene.size_word)
        tails = [f" {p}" for p in POSITION_PHRASES[scene.position]] if scene.position else [""]
        return [f"{prefix}{noun}{tail}" for prefix in CAPTION_PREFIXES for tail in tails]
    if len(scene.objects) == 2:
        if scene.relation not in RELATION_PHRASES:
            raise ValueError(f"scene.relation must be one of {list(RELATIONS)} for two objects, got {scene.relation!r}")
        a, b = scene.objects
        first, second = _noun_phrase(a.color, a.shape), _noun_phrase(b.color, b.shape)
        phrases = RELATION_PHRASES[scene.relation]
        return [f"{prefix}{first} {phrase} {second}" for prefix in CAPTION_PREFIXES for phrase in phrases]
    raise ValueError(f"scene.objects must hold one or two objects, got {len(scene.objects)}")


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

    An extension colour goes on any shape at either size (the size named in half of the captions); an extension size
    goes on any seen colour-shape pair and is always named. The position is named in 80 % of captions, as in the
    world. Held-out pairs never occur.
    """
    concepts = [("color", c) for c in extension.colors] + [("size", s) for s in extension.sizes]
    if not concepts:
        raise ValueError("`extension` names no colour and no size")
    kind, word = _choice(rng, concepts)
    if kind == "color":
        pair = (word, _choice(rng, SHAPES))
        size = _choice(rng, tuple(SIZES))
        size_word = size if _uniform01(rng) < SIZE_MENTION_PROBABILITY else None
    else:
        pair = _choice(rng, _allowed_pairs(allow_held_out=False))
        size = size_word = word
    position = _choice(rng, POSITIONS) if _uniform01(rng) < POSITION_MENTION_PROBABILITY else None
    obj = _sample_object(rng, pair, size, position, sizes=extension.all_sizes)
    scene = Scene((obj,), "", position=position, size_word=size_word)
    return replace(scene, caption=_choice(rng, caption_variants(scene)))


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------


def _coverage(obj: ShapeObject) -> np.ndarray:
    """Fraction of each pixel the object covers, ``(IMAGE_SIZE, IMAGE_SIZE)`` float, from a supersampled grid."""
    n = IMAGE_SIZE * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE  # sample points never sit on a whole or half pixel: no ties
    x, y = coords[None, :], coords[:, None]
    half = obj.size_px / 2
    if obj.shape == "square":
        inside = (np.abs(x - obj.cx) < half) & (np.abs(y - obj.cy) < half)
    elif obj.shape == "circle":
        inside = (x - obj.cx) ** 2 + (y - obj.cy) ** 2 < half**2
    else:  # triangle, apex up: height equals base, so its bounding box is the square of side size_px
        top = obj.cy - half
        inside = (y > top) & (y < obj.cy + half) & (np.abs(x - obj.cx) < (y - top) / 2)
    # (rows, sub-rows, cols, sub-cols) -> mean over the sub-samples = box-filter downsampling
    return inside.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def render_scene(scene: Scene, extension: WorldExtension | None = None) -> Image.Image:
    """The scene as a 64x64 RGB image: flat background, filled antialiased shapes without outline.

    Fully covered pixels carry the palette colour (the extension's colours included) exactly; edge pixels blend it
    with what lies beneath.
    """
    palette = extension.palette if extension is not None else COLORS
    unknown = [o.color for o in scene.objects if o.color not in palette]
    if unknown:
        raise ValueError(f"color must be one of {list(palette)}, got {unknown[0]!r}")
    canvas_HW3 = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.float64), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    for obj in scene.objects:
        alpha_HW1 = _coverage(obj)[:, :, None]
        canvas_HW3 = canvas_HW3 * (1 - alpha_HW1) + np.asarray(palette[obj.color], dtype=np.float64) * alpha_HW1
    return Image.fromarray(np.rint(canvas_HW3).astype(np.uint8), mode="RGB")


# ----------------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------------


def generate_dataset(
    output_dir: str | os.PathLike,
    num_images: int,
    seed: int,
    allow_held_out: bool = False,
    show_progress: bool = True,
    extension: WorldExtension | None = None,
) -> Path:
    """Write a Hugging Face ``imagefolder`` dataset of ``num_images`` scenes and return its folder.

    Layout: ``000000.png, 000001.png, ...`` and ``metadata.jsonl`` whose lines read ``{"file_name", "text", "scene"}``
    (``scene`` is ``Scene.to_dict()`` serialised as a JSON string, kept a string so every row has one type). The same
    ``seed`` gives byte-identical files, and the first scenes of a larger dataset with that seed are the same. The
    folder is built in a temporary sibling and renamed into place, so an interrupted run leaves no half dataset.

    With ``extension`` every scene shows one of its words instead (``sample_extension_scene``): fine-tuning data
    for a concept the world does not have.
    """
    output_dir = Path(output_dir)
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"output_dir {str(output_dir)!r} exists and is not an empty folder; choose a new path")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        rng = random.Random(seed)  # stdlib Mersenne Twister: its stream is stable across Python versions
        digits = max(6, len(str(num_images - 1)))
        lines = []
        for index in tqdm(range(num_images), desc="shapes world", disable=not show_progress):
            if extension is None:
                scene = sample_scene(rng, allow_held_out=allow_held_out)
            else:
                scene = sample_extension_scene(rng, extension)
            file_name = f"{index:0{digits}d}.png"
            render_scene(scene, extension).save(staging / file_name, format="PNG")
            record = {"file_name": file_name, "text": scene.caption, "scene": json.dumps(scene.to_dict())}
            lines.append(json.dumps(record) + "\n")
        (staging / "metadata.jsonl").write_text("".join(lines), encoding="utf-8")
        if output_dir.exists():  # an empty folder: replace it
            output_dir.rmdir()
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


# ----------------------------------------------------------------------------------------------------------------------
# Parsing captions
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object a caption names: colour, shape and, optionally, size."""

    color: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption names: one or two objects, a position (one object) or a relation (two objects)."""

    objects: tuple[ObjectSpec, ...]
    position: str | None = None
    relation: str | None = None

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(o.color for o in self.objects)

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(o.shape for o in self.objects)

    @property
    def size(self) -> str | None:
        """The size named for the first object (the only one of a one-object caption)."""
        return self.objects[0].size

    @property
    def has_held_out_pair(self) -> bool:
        return any((o.color, o.shape) in HELD_OUT_PAIRS for o in self.objects)


_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "center": "center"}
_POSITION_WORDS.update({"centre": "center", "middle": "center"})  # spellings a user may write for "center"


def _parse_noun_phrase(tokens: list[str], caption: str, extension: WorldExtension | None = None) -> ObjectSpec:
    palette, all_sizes = (extension.palette, extension.all_sizes) if extension is not None else (COLORS, SIZES)
    colors = [t for t in tokens if t in palette]
    shapes = [t for t in tokens if t in SHAPES]
    sizes = [t for t in tokens if t in all_sizes]
    for kind, found in (("color", colors), ("shape", shapes)):
        if len(found) != 1:
            raise ValueError(
                f"cannot parse caption {caption!r}: expected one {kind} per object, found {found or 'none'}"
            )
    if len(sizes) > 1:
        raise ValueError(f"cannot parse caption {caption!r}: expected at most one size per object, found {sizes}")
    return ObjectSpec(colors[0], shapes[0], sizes[0] if sizes else None)


def parse_caption(caption: str, extension: WorldExtension | None = None) -> CaptionSpec:
    """Read the colour(s), shape(s), size, position and relation a caption names.

    Parses every caption of ``caption_variants`` and free-form ones in the spec's vocabulary, case and punctuation
    ignored ("A small red circle, on the left."). Words outside the vocabulary are skipped. "left"/"right" followed
    by "of", "above" and "below" are relations; "left", "right", "top", "bottom", "center" alone are positions.
    Raises ``ValueError`` naming the caption when it names no object, several per role, or mixes a relation and a
    position. ``extension``'s colour and size words count as colours and sizes.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}")
    tokens = "".join(ch if ch.isalpha() else " " for ch in caption.lower()).split()

    relations: list[tuple[int, int, str]] = []  # (first token, one past last token, relation)
    for i, token in enumerate(tokens):
        if token in ("left", "right") and i + 1 < len(tokens) and tokens[i + 1] == "of":
            relations.append((i, i + 2, f"{token} of"))
        elif token in ("above", "below"):
            relations.append((i, i + 1, token))
    relation_tokens = {j for start, end, _ in relations for j in range(start, end)}
    positions = [_POSITION_WORDS[t] for j, t in enumerate(tokens) if t in _POSITION_WORDS and j not in relation_tokens]

    if len(relations) > 1:
        raise ValueError(f"cannot parse caption {caption!r}: it names several relations {[r for *_, r in relations]}")
    if relations:
        start, end, relation = relations[0]
        if positions:
            raise ValueError(
                f"cannot parse caption {caption!r}: a two-object caption names no position, found {positions}"
            )
        subject = _parse_noun_phrase(tokens[:start], caption, extension)
        reference = _parse_noun_phrase(tokens[end:], caption, extension)
        return CaptionSpec((subject, reference), relation=relation)
    if len(positions) > 1:
        raise ValueError(f"cannot parse caption {caption!r}: it names several positions {positions}")
    return CaptionSpec((_parse_noun_phrase(tokens, caption, extension),), position=positions[0] if positions else None)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class DetectedObject:
    """An object found in an image: one connected component of one palette colour's mask.

    ``bbox`` is ``(x_min, y_min, x_max, y_max)`` in inclusive pixel indices; ``(cx, cy)`` its centre in continuous
    coordinates; ``fill_ratio`` is ``area / bbox area``, from which ``shape`` is the nearest of ``FILL_RATIOS``.
    """

    color: str
    shape: str
    size: str
    area: int
    bbox: tuple[int, int, int, int]
    cx: float
    cy: float
    fill_ratio: float = field(repr=False)

    def in_region(self, position: str) -> bool:
        return position_holds(position, self.cx, self.cy)


_PALETTE_K3 = np.asarray([BACKGROUND, *COLORS.values()], dtype=np.int64)  # class 0 = background, k = k-th colour
_NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _label_components(classes_HW: np.ndarray) -> np.ndarray:
    """8-connected components of pixels sharing a nonzero class, in pure numpy.

    Returns an int map: each pixel of a component holds the smallest flat index (in the 1-px padded grid) of that
    component, and pixels of class 0 hold a sentinel larger than every index. Labels spread as neighbour minima and
    then jump along their own pointers (``label[label]``), which converges in a few dozen steps on 64x64 images.
    """
    h, w = classes_HW.shape
    padded = np.pad(classes_HW, 1)  # class 0 border: every shifted view below stays in bounds
    hp, wp = padded.shape
    sentinel = hp * wp
    inner = (slice(1, h + 1), slice(1, w + 1))
    shifted = [(slice(1 + dy, h + 1 + dy), slice(1 + dx, w + 1 + dx)) for dy, dx in _NEIGHBOURS_8]
    centre = padded[inner]
    linked = [(padded[s] == centre) & (centre > 0) for s in shifted]  # same class on both ends of the link

    # flat label array with one extra slot holding the sentinel, so label[label] is defined everywhere
    labels = np.full(sentinel + 1, sentinel, dtype=np.int64)
    foreground = padded.ravel() > 0
    labels[:sentinel][foreground] = np.flatnonzero(foreground)
    while True:
        grid = labels[:sentinel].reshape(hp, wp)
        best = grid[inner].copy()
        for s, link in zip(shifted, linked):
            np.minimum(best, np.where(link, grid[s], sentinel), out=best)
        spread = grid.copy()
        spread[inner] = best
        new = np.append(spread.ravel(), sentinel)
        new = new[new]  # pointer jumping: a label's own label is in the same component and no larger
        if np.array_equal(new, labels):
            return labels[:sentinel].reshape(hp, wp)[inner]
        labels = new


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:  # a float image in [0, 1] would silently read as near-black
            raise ValueError(f"image must be a uint8 array, got dtype {image.dtype}")
        array = image
    else:
        raise ValueError(f"image must be a PIL.Image or a uint8 array (H, W, 3), got {type(image).__name__}")
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"image must be {IMAGE_SIZE}x{IMAGE_SIZE} RGB, got an array of shape {array.shape}")
    return array.astype(np.int64)


def detect_objects(image: Image.Image | np.ndarray, extension: WorldExtension | None = None) -> list[DetectedObject]:
    """The objects of a 64x64 image, largest first.

    A pixel joins the mask of a palette colour within RGB distance 60 of it. Orange and yellow lie 60.2 apart, so a
    slightly-off orange pixel can be within 60 of both: each pixel goes to the *nearest* of the palette and the
    background, which keeps every mask a subset of the spec's and the masks disjoint. Components (8-connected) of at
    least 20 px are objects; size is ``small`` when the longer bbox side is under 20 px. ``extension``'s colours join
    the palette and its sizes the size classes (boundaries halfway between neighbouring ranges).
    """
    rgb_HW3 = _as_rgb_array(image)
    palette_K3, color_names = _PALETTE_K3, list(COLORS)
    if extension is not None and extension.colors:
        color_names = list(extension.palette)
        palette_K3 = np.asarray([BACKGROUND, *extension.palette.values()], dtype=np.int64)
    dist2_HWK = ((rgb_HW3[:, :, None, :] - palette_K3[None, None, :, :]) ** 2).sum(axis=-1)
    nearest_HW = dist2_HWK.argmin(axis=-1)
    within_HW = np.take_along_axis(dist2_HWK, nearest_HW[:, :, None], axis=-1)[:, :, 0] <= COLOR_TOLERANCE**2
    classes_HW = np.where(within_HW, nearest_HW, 0)  # 0: background or no palette colour
    labels_HW = _label_components(classes_HW)

    ids, counts = np.unique(labels_HW[classes_HW > 0], return_counts=True)
    objects = []
    for label, area in zip(ids[counts >= MIN_OBJECT_AREA], counts[counts >= MIN_OBJECT_AREA]):
        rows, cols = np.nonzero(labels_HW == label)
        x_min, x_max, y_min, y_max = int(cols.min()), int(cols.max()), int(rows.min()), int(rows.max())
        width, height = x_max - x_min + 1, y_max - y_min + 1
        fill = float(area) / (width * height)
        objects.append(
            DetectedObject(
                color=color_names[int(classes_HW[rows[0], cols[0]]) - 1],
                shape=min(FILL_RATIOS, key=lambda s: abs(FILL_RATIOS[s] - fill)),
                size=_size_class(max(width, height), extension),
                area=int(area),
                bbox=(x_min, y_min, x_max, y_max),
                cx=(x_min + x_max + 1) / 2,
                cy=(y_min + y_max + 1) / 2,
                fill_ratio=fill,
            )
        )
    objects.sort(key=lambda o: (-o.area, o.bbox[1], o.bbox[0]))  # labels are scan-ordered: ties stay deterministic
    return objects


def _matches(obj: DetectedObject, spec: ObjectSpec, check_size: bool = True) -> bool:
    return obj.color == spec.color and obj.shape == spec.shape and (not check_size or spec.size in (None, obj.size))


def score_image(image: Image.Image | np.ndarray, caption: str | CaptionSpec,
                extension: WorldExtension | None = None) -> dict[str, bool | None]:
    """Score an image against its caption, per the spec; every verdict is a bool, ``None`` where not applicable.

    One object (judged on the largest detected object): ``color``, ``shape``, ``position`` (``None`` when not named),
    ``size`` (``None`` when not named); ``caption`` when all named attributes hold and no other object larger than
    20 px exists. ``relation`` is ``None``.

    Two objects "A rel B": ``color`` when distinct objects of A's and B's colours exist; ``shape`` when distinct
    objects matching A's and B's colour and shape exist; ``relation`` when some object of A's colour and another of
    B's colour have centres satisfying the relation (shape not required, so relation errors are told from shape
    errors); ``size`` (``None`` unless the caption names sizes) when distinct objects match colour, shape and size;
    ``caption`` when distinct objects matching A and B in full satisfy the relation. ``position`` is ``None``.

    ``extension`` (a :class:`WorldExtension`) makes its colour and size words known to the caption parser and the
    detector; without it scoring is exactly the spec's.
    """
    spec = caption if isinstance(caption, CaptionSpec) else parse_caption(caption, extension)
    objects = detect_objects(image, extension)

    if spec.num_objects == 1:
        (named,) = spec.objects
        largest = objects[0] if objects else None
        color = largest is not None and largest.color == named.color
        shape = largest is not None and largest.shape == named.shape
        position = None if spec.position is None else (largest is not None and largest.in_region(spec.position))
        size = None if named.size is None else (largest is not None and largest.size == named.size)
        alone = all(o.area <= MIN_OBJECT_AREA for o in objects[1:])
        verdict = color and shape and position is not False and size is not False and alone
        return {
            "color": color,
            "shape": shape,
            "position": position,
            "size": size,
            "relation": None,
            "caption": verdict,
        }

    subject, reference = spec.objects
    pairs = [(a, b) for a in objects for b in objects if a is not b]

    def exists(test_a: Any, test_b: Any, related: bool = False) -> bool:
        return any(
            test_a(a) and test_b(b) and (not related or relation_holds(spec.relation, (a.cx, a.cy), (b.cx, b.cy)))
            for a, b in pairs
        )

    same_color = (lambda o: o.color == subject.color), (lambda o: o.color == reference.color)
    same_kind = (lambda o: _matches(o, subject, False)), (lambda o: _matches(o, reference, False))
    full = (lambda o: _matches(o, subject)), (lambda o: _matches(o, reference))
    sized = subject.size is not None or reference.size is not None
    return {
        "color": exists(*same_color),
        "shape": exists(*same_kind),
        "position": None,
        "size": exists(*full) if sized else None,
        "relation": exists(*same_color, related=True),
        "caption": exists(*full, related=True),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Faithfulness report
# ----------------------------------------------------------------------------------------------------------------------


def evaluation_prompts(held_out: bool, num_objects: int) -> list[str]:
    """The fixed prompt set of the faithfulness report, in canonical wording (no prefix, first paraphrase).

    - one object, seen (15): each pair outside ``HELD_OUT_PAIRS`` (colour-major order), position cycling through
      ``POSITIONS``, size cycling small / large / not named;
    - one object, held out (15): each held-out pair at each of the five positions, size cycling the same way;
    - two objects, seen (12): the i-th seen pair, related to the next seen pair five or more steps later in the list
      that has another colour, relation cycling through ``RELATIONS``;
    - two objects, held out (12): each held-out pair with each relation, as subject on even prompts and as reference
      on odd ones; its partner is a seen pair of another colour, or on every fourth prompt the next held-out pair.
    """
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects!r}")
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    seen = [p for p in all_pairs if p not in HELD_OUT_PAIRS]
    held = [p for p in all_pairs if p in HELD_OUT_PAIRS]
    size_cycle = ("small", "large", None)

    def one(pair: tuple[str, str], position: str, size: str | None) -> str:
        return f"{_noun_phrase(pair[0], pair[1], size)} {POSITION_PHRASES[position][0]}"

    def two(a: tuple[str, str], relation: str, b: tuple[str, str]) -> str:
        return f"{_noun_phrase(*a)} {RELATION_PHRASES[relation][0]} {_noun_phrase(*b)}"

    def partner(pair: tuple[str, str], start: int) -> tuple[str, str]:
        """The first seen pair from index ``start`` on (cyclically) whose colour differs from ``pair``'s."""
        rotated = seen[start % len(seen) :] + seen[: start % len(seen)]
        return next(p for p in rotated if p[0] != pair[0])

    if num_objects == 1 and not held_out:
        return [one(p, POSITIONS[i % len(POSITIONS)], size_cycle[i % 3]) for i, p in enumerate(seen)]
    if num_objects == 1:
        combos = [(p, pos) for p in held for pos in POSITIONS]
        return [one(p, pos, size_cycle[i % 3]) for i, (p, pos) in enumerate(combos)]
    if not held_out:
        return [two(seen[i], RELATIONS[i % len(RELATIONS)], partner(seen[i], i + 5)) for i in range(12)]
    prompts = []
    for i in range(12):
        target = held[i % len(held)]
        other = held[(i + 1) % len(held)] if i % 4 == 3 else partner(target, 3 * i + 1)
        a, b = (target, other) if i % 2 == 0 else (other, target)
        prompts.append(two(a, RELATIONS[i % len(RELATIONS)], b))
    return prompts


_METRICS = ("color", "shape", "position", "size", "relation", "caption")


def summarize_scores(
    records: Iterable[tuple[str, dict[str, bool | None], bool, int]],
) -> dict[str, Any]:
    """Accuracies of ``(caption, score_image(...), held_out, num_objects)`` records.

    Returns ``result[split][group][metric]`` for split in ``seen``/``held_out``/``all``, group in
    ``one_object``/``two_objects``/``all`` and metric in color, shape, position, size, relation, caption (a fraction,
    over the records where it is not ``None``; ``None`` when no record applies), plus ``num_samples`` per group; and
    ``result["by_prompt"][caption]`` = whole-caption accuracy of each prompt.
    """
    buckets: dict[tuple[str, str], list[dict[str, bool | None]]] = {
        (split, group): [] for split in ("seen", "held_out", "all") for group in ("one_object", "two_objects", "all")
    }
    per_prompt: dict[str, list[bool]] = {}
    for caption, scores, held_out, num_objects in records:
        if num_objects not in (1, 2):
            raise ValueError(f"num_objects of a record must be 1 or 2, got {num_objects!r} for {caption!r}")
        missing = [m for m in _METRICS if m not in scores]
        if missing:
            raise ValueError(f"scores of {caption!r} lack {missing}; pass the dict returned by score_image")
        group = "one_object" if num_objects == 1 else "two_objects"
        for split in ("held_out" if held_out else "seen", "all"):
            for g in (group, "all"):
                buckets[(split, g)].append(scores)
        per_prompt.setdefault(caption, []).append(bool(scores["caption"]))

    result: dict[str, Any] = {split: {} for split in ("seen", "held_out", "all")}
    for (split, group), rows in buckets.items():
        summary: dict[str, Any] = {"num_samples": len(rows)}
        for metric in _METRICS:
            values = [bool(r[metric]) for r in rows if r[metric] is not None]
            summary[metric] = sum(values) / len(values) if values else None
        result[split][group] = summary
    result["by_prompt"] = {caption: sum(v) / len(v) for caption, v in per_prompt.items()}
    return result
