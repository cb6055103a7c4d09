"""Inpainting a canvas larger than the model: overlapping model-size windows, each with known pixels as context.

Legend: B batch · H, W canvas height and width · s the model's image side.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["window_origins", "inpaint_in_windows"]


def window_origins(length: int, size: int) -> list[int]:
    """Start offsets of windows of ``size`` covering ``length`` with half-window overlap (the last flush with the
    end)."""
    starts = list(range(0, length - size + 1, max(1, size // 2)))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def inpaint_in_windows(canvas_B3HW: torch.Tensor, mask_B1HW: torch.Tensor, size: int, num_images: int,
                       inpaint_window: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Fill the masked part of ``canvas`` (values in [-1, 1]; mask 1 = unknown) window by window.

    The next window is always the one whose pixels are most known among those with something left to fill, so
    every window after the first has the most context available (outpainting grows outwards from the image). A
    window regenerates only its still-unknown pixels; what earlier windows drew is context, kept exactly.
    ``inpaint_window(window_B3ss, mask_B1ss)`` returns the inpainted windows (num_images, 3, s, s) in [-1, 1].
    Returns the canvases (num_images, 3, H, W) in [-1, 1].
    """
    H, W = canvas_B3HW.shape[-2:]
    canvas = canvas_B3HW.expand(num_images, -1, -1, -1).clone()
    mask_HW = mask_B1HW[0, 0].clone()
    unknown_HW = mask_HW > 0.5
    windows = [(y, x) for y in window_origins(H, size) for x in window_origins(W, size)]
    while True:
        todo = [(float((~unknown_HW[y : y + size, x : x + size]).float().mean()), -i, y, x)
                for i, (y, x) in enumerate(windows) if unknown_HW[y : y + size, x : x + size].any()]
        if not todo:
            return canvas
        _, _, y, x = max(todo)  # the most-known window; ties: the first in raster order
        window_mask = torch.where(unknown_HW[y : y + size, x : x + size], mask_HW[y : y + size, x : x + size], 0.0)
        canvas[..., y : y + size, x : x + size] = inpaint_window(canvas[..., y : y + size, x : x + size],
                                                                 window_mask[None, None]).to(canvas.dtype)
        unknown_HW[y : y + size, x : x + size] = False
