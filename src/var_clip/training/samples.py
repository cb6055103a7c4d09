"""Sample grids written during training: ``output_dir/samples/<name>-step-<step>.png``, each image captioned."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils.atomic import atomic_write
from ..utils.image_grid import make_image_grid

__all__ = ["SAMPLES_DIR", "tensor_to_pil", "save_sample_grid"]

SAMPLES_DIR = "samples"


def tensor_to_pil(images_B3HW: torch.Tensor) -> list[Image.Image]:
    """Images in [-1, 1] → PIL images."""
    array = ((images_B3HW.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).cpu().numpy())) for a in array]


def save_sample_grid(images: Sequence[Image.Image], captions: Sequence[str] | None, output_dir: str | os.PathLike,
                     step: int, name: str = "samples", cols: int | None = None, cell_size: int | None = 128) -> Path:
    """Lay ``images`` out with ``captions`` under each and write the PNG atomically; returns its path."""
    folder = Path(output_dir) / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-step-{step:07d}.png"
    # small training resolutions are enlarged (pixel-exact for integer factors) so the grid is readable
    cell = None if cell_size is None or max(i.width for i in images) >= cell_size else cell_size
    grid = make_image_grid(list(images), list(captions) if captions is not None else None, cols=cols, cell_size=cell)
    atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
    return path
