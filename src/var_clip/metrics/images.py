"""Reading evaluation images: a folder (in its ``metadata.jsonl`` order, else sorted by name) or an ``.npz``.

Legend: N images · H, W image size.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..utils.files import check_regular_file
from ..utils.records import read_jsonl

__all__ = ["IMAGE_SUFFIXES", "WeightsError", "count_images", "image_files", "iter_image_batches"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class WeightsError(Exception):
    """A metric's network weights are missing or unusable; the message says how to supply them."""


def image_files(folder: Path) -> list[Path]:
    """The images of ``folder``: those ``metadata.jsonl`` lists (its order), else every image file by name."""
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        records = read_jsonl(metadata, ["file_name"], {"file_name": str})
        files = [folder / r["file_name"] for r in records]
        outside = [f for f in files if folder.resolve() not in f.resolve().parents]
        if outside:
            raise ValueError(f"{metadata}: `file_name` {str(outside[0].relative_to(folder))!r} is not inside "
                             f"{str(folder)!r}; name the folder's own images")
        return files
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


_LAYOUT = "the guided-diffusion layout: arr_0, N×H×W×3 uint8"


def _npz_shape(path: Path) -> tuple[int, int, int, int]:
    """The shape of ``arr_0`` in the ``.npz`` at ``path``, read from its header and checked against the bytes the
    archive holds, before anything is allocated (a header may claim any shape; numpy would allocate it)."""
    path = check_regular_file(path, "image archive")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "arr_0.npy" not in names:
                raise ValueError(f"{str(path)!r} has no `arr_0` ({_LAYOUT}); it holds {sorted(names)[:5]}")
            info = archive.getinfo("arr_0.npy")
            with archive.open(info) as member:
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                reader = readers.get(np.lib.format.read_magic(member))
                if reader is None:
                    raise ValueError(f"`arr_0` of {str(path)!r} uses an .npy format version numpy.savez does not "
                                     "write; save it with numpy.savez")
                shape, _, dtype = reader(member)
                data_bytes = info.file_size - member.tell()
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{str(path)!r} is not a readable .npz archive ({error})") from None
    if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
        raise ValueError(f"`arr_0` of {str(path)!r} must be N×H×W×3 uint8, got {shape} {dtype}")
    if math.prod(shape) != data_bytes:
        raise ValueError(f"`arr_0` of {str(path)!r} claims the shape {shape} ({math.prod(shape):,} bytes) but holds "
                         f"{data_bytes:,} bytes: the archive is damaged or cut off")
    return shape


def _npz_images(path: Path) -> np.ndarray:
    _npz_shape(path)
    with np.load(path) as archive:
        return archive["arr_0"]


def count_images(source: str | os.PathLike) -> int:
    path = Path(source)
    if path.suffix == ".npz":
        return _npz_shape(path)[0]
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is neither a folder of images nor an .npz")
    return len(image_files(path))


def iter_image_batches(source: str | os.PathLike, batch_size: int) -> Iterator[torch.Tensor]:
    """Batches of uint8 images (N, 3, H, W), the input torchmetrics' FID and CLIP score take."""
    path = Path(source)
    if path.suffix == ".npz":
        arr_NHW3 = _npz_images(path)
        for start in range(0, len(arr_NHW3), batch_size):
            yield torch.from_numpy(arr_NHW3[start : start + batch_size]).permute(0, 3, 1, 2).contiguous()
        return
    from ..utils.image_files import read_image

    files = image_files(path)
    for start in range(0, len(files), batch_size):
        pixels = [np.asarray(read_image(file, "image")) for file in files[start : start + batch_size]]
        sizes = sorted({p.shape for p in pixels})
        if len(sizes) > 1:
            raise ValueError(f"the images of {str(path)!r} must share one size, found {sizes[:3]} (e.g. "
                             f"{files[start]})")
        yield torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
