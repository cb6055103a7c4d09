"""Drawing a scene: filled, antialiased shapes on a flat background, 64 x 64 RGB.

Pixel ``(i, j)`` (column ``i``, row ``j``) covers ``[i, i+1) x [j, j+1)``; coverage is measured on a supersampled
grid, so edge pixels blend the palette colour with what lies beneath.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .extension import WorldExtension
from .scenes import Scene, ShapeObject
from .spec import BACKGROUND, COLORS, IMAGE_SIZE, SUPERSAMPLE


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

    Fully covered pixels carry the palette colour exactly; edge pixels blend it with what lies beneath. With
    ``extension`` its colours join the palette. Raises ``ValueError`` for a colour outside the palette.
    """
    palette = COLORS if extension is None else extension.palette
    unknown = [o.color for o in scene.objects if o.color not in palette]
    if unknown:
        raise ValueError(f"color must be one of {list(palette)}, got {unknown[0]!r}")
    canvas_HW3 = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.float64), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    for obj in scene.objects:
        alpha_HW1 = _coverage(obj)[:, :, None]
        canvas_HW3 = canvas_HW3 * (1 - alpha_HW1) + np.asarray(palette[obj.color], dtype=np.float64) * alpha_HW1
    return Image.fromarray(np.rint(canvas_HW3).astype(np.uint8), mode="RGB")
