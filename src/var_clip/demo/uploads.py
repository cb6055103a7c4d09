"""Uploaded images: checked by content before decoding, then fitted to the model.

An upload is refused, with one readable sentence, when it is too large on disk, is not one of the formats the demo
reads (sniffed from the file's bytes, not its name), declares more pixels than the demo decodes (a decompression
bomb: a small file that would inflate to gigabytes), or cannot be decoded. Nothing here imports Gradio.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import PIL.Image

from ..utils.image_files import ImageReadError, as_seen

__all__ = ["UploadError", "UploadLimits", "read_upload", "fit_to_square"]

#: Formats the demo decodes (PIL format names).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class UploadError(ValueError):
    """An upload the demo refuses; the message says why, in words meant for the page."""


@dataclass(frozen=True)
class UploadLimits:
    """How large an upload may be: bytes on disk, and pixels once decoded (width × height, and the longer side)."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192


def read_upload(path: str | os.PathLike, limits: UploadLimits = UploadLimits()) -> PIL.Image.Image:
    """Check and decode an uploaded image into RGB; raises :class:`UploadError` naming what is wrong.

    The size on disk and the declared dimensions are read before any pixel is decoded, so a decompression bomb is
    refused without being inflated.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UploadError("the upload could not be read; try again") from None
    if size > limits.max_bytes:
        raise UploadError(f"the file is {size / 2**20:.1f} MB; the demo accepts images up to "
                          f"{limits.max_bytes / 2**20:.1f} MB")
    if size == 0:
        raise UploadError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)  # refused, never decoded
            with PIL.Image.open(path, formats=ALLOWED_FORMATS) as im:
                _check_dimensions(im.size, limits)
                im.load()
                image = as_seen(im, "RGB", "the image")  # as every command reads an image: EXIF, 16-bit, alpha
    except UploadError:
        raise
    except ImageReadError as error:
        raise UploadError(str(error)) from None
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise UploadError("the image declares more pixels than the demo decodes (a decompression bomb?)") from None
    except PIL.UnidentifiedImageError:
        raise UploadError(f"the file is not an image the demo reads; upload one of "
                          f"{', '.join(ALLOWED_FORMATS)}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UploadError(f"the image could not be decoded (a truncated or damaged file?): "
                          f"{' '.join(str(e).split())}") from None
    return image


def _check_dimensions(size: tuple[int, int], limits: UploadLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise UploadError(f"the image is {width}×{height} pixels: it has no pixels")
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise UploadError(f"the image is {width}×{height} pixels; the demo decodes at most {limits.max_pixels:,} "
                          f"pixels and {limits.max_side} on a side (a decompression bomb is refused before decoding)")


def fit_to_square(image: PIL.Image.Image, size: int) -> tuple[PIL.Image.Image, str | None]:
    """The image's centre square at ``size``×``size`` (the model's resolution), and a note when it was changed."""
    if image.size == (size, size):
        return image, None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side)).resize((size, size), PIL.Image.Resampling.LANCZOS)
    cropped = "its centre square, " if image.width != image.height else ""
    return square, f"the {image.width}×{image.height} image was fitted to the model: {cropped}resized to {size}×{size}"
