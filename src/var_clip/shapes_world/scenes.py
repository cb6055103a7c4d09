"""Scenes of the shapes world: the objects a scene holds and the caption it comes with.

An object's ``(cx, cy)`` is the centre of its bounding box, in continuous canvas coordinates (``y`` grows downward).
How a scene is drawn at random is ``random_scenes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .extension import WorldExtension
from .spec import COLORS, SHAPES, size_class


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
