"""The faithfulness evaluator: objects detected in an image, and an image scored against its caption.

A pixel joins the nearest palette colour within ``COLOR_TOLERANCE``; 8-connected components of one colour of at
least ``MIN_OBJECT_AREA`` pixels are objects; the fill ratio of the bounding box tells the shape, the bounding-box
centre (``(x_min + x_max + 1) / 2``, the generator's quantity) the position and relations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .captions import CaptionSpec, ObjectSpec, parse_caption
from .extension import WorldExtension
from .spec import (
    BACKGROUND,
    COLOR_TOLERANCE,
    COLORS,
    FILL_RATIOS,
    IMAGE_SIZE,
    MIN_OBJECT_AREA,
    position_holds,
    relation_holds,
    size_class,
)


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
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # diagonal neighbours join a component too


def label_components(classes_HW: np.ndarray) -> np.ndarray:
    """8-connected components of pixels sharing a nonzero class: an int map, 0 on class 0, 1..n on components.

    Components are numbered in the scan order (row-major) of their first pixel, whatever their class, so that
    ``detect_objects`` lists equal-sized objects in the same order for every palette class.
    """
    labels_HW = np.zeros(classes_HW.shape, dtype=np.int64)
    count = 0
    for k in np.unique(classes_HW[classes_HW > 0]):
        labels_k, n = ndimage.label(classes_HW == k, structure=_EIGHT_CONNECTED)
        inside = labels_k > 0
        labels_HW[inside] = labels_k[inside] + count
        count += n
    ids, first = np.unique(labels_HW.ravel(), return_index=True)  # first: flat index of each label's first pixel
    ids, first = ids[ids > 0], first[ids > 0]
    renumber = np.zeros(count + 1, dtype=np.int64)
    renumber[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1)
    return renumber[labels_HW]


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
    least 20 px are objects; size is ``small`` when the longer bbox side is under 20 px.

    With ``extension`` its colours join the palette (the nearest rule keeps masks disjoint) and the size is its
    ``size_class``, whose boundaries lie halfway between neighbouring ranges as 20 px does.
    """
    rgb_HW3 = _as_rgb_array(image)
    palette_K3, color_names, size_of = _PALETTE_K3, list(COLORS), size_class
    if extension is not None:
        color_names, size_of = list(extension.palette), extension.size_class
        palette_K3 = np.asarray([BACKGROUND, *extension.palette.values()], dtype=np.int64)
    dist2_HWK = ((rgb_HW3[:, :, None, :] - palette_K3[None, None, :, :]) ** 2).sum(axis=-1)
    nearest_HW = dist2_HWK.argmin(axis=-1)
    within_HW = np.take_along_axis(dist2_HWK, nearest_HW[:, :, None], axis=-1)[:, :, 0] <= COLOR_TOLERANCE**2
    classes_HW = np.where(within_HW, nearest_HW, 0)  # 0: background or no palette colour
    labels_HW = label_components(classes_HW)

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
                size=size_of(max(width, height)),
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


def score_image(
    image: Image.Image | np.ndarray, caption: str | CaptionSpec, extension: WorldExtension | None = None
) -> dict[str, bool | None]:
    """Score an image against its caption, per the spec; every verdict is a bool, ``None`` where not applicable.

    One object (judged on the largest detected object): ``color``, ``shape``, ``position`` (``None`` when not named),
    ``size`` (``None`` when not named); ``caption`` when all named attributes hold and no other object larger than
    20 px exists. ``relation`` is ``None``.

    Two objects "A rel B": ``color`` when distinct objects of A's and B's colours exist; ``shape`` when distinct
    objects matching A's and B's colour and shape exist; ``relation`` when some object of A's colour and another of
    B's colour have centres satisfying the relation (shape not required, so relation errors are told from shape
    errors); ``size`` (``None`` unless the caption names sizes) when distinct objects match colour, shape and size;
    ``caption`` when distinct objects matching A and B in full satisfy the relation. ``position`` is ``None``.

    With ``extension`` (a :class:`WorldExtension`) the caption parser and the detector know its colour and size
    words, and its places' regions; without one scoring is exactly the spec's.
    """
    spec = caption if isinstance(caption, CaptionSpec) else parse_caption(caption, extension)
    objects = detect_objects(image, extension)

    if spec.num_objects == 1:
        (named,) = spec.objects
        largest = objects[0] if objects else None
        color = largest is not None and largest.color == named.color
        shape = largest is not None and largest.shape == named.shape
        holds = position_holds if extension is None else extension.position_holds
        position = None if spec.position is None else (
            largest is not None and holds(spec.position, largest.cx, largest.cy))
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
