"""Reading images as the user sees them: the one door every command's input images go through.

- only regular files are opened (a FIFO or a device would block the read, or never end);
- a decompression bomb (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``) is an error, not a warning;
- the EXIF orientation is applied, as every image viewer does (a phone photo is stored sideways);
- 16-bit greyscale is scaled to 8 bits (PIL's ``convert`` clips it: almost every pixel would turn white),
  transparency is composited over white (what a viewer shows, not the colours hidden under transparent pixels),
  and modes without a defined range (32-bit integer, floating point) are refused rather than guessed.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import PIL.Image
import PIL.ImageOps

from .files import check_regular_file

__all__ = ["ImageReadError", "as_seen", "read_image"]

# 16-bit greyscale modes: values 0..65535, as 16-bit PNG and TIFF files open
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# modes whose values have no range a file states: an image could mean 0..255, 0..65535 or 0..1
_RANGELESS_MODES = ("I", "F", "I;32", "I;32B", "I;32L")


class ImageReadError(ValueError):
    """An input image that cannot be read as the user sees it; the message names the file and the fix."""


def as_seen(image: PIL.Image.Image, mode: str = "RGB", what: str = "image") -> PIL.Image.Image:
    """``image`` in ``mode`` ("RGB" or "L") as a viewer shows it: oriented by its EXIF tag, 16-bit scaled to 8 bits,
    transparency over white. A mode without a defined value range is refused (:class:`ImageReadError`)."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"`mode` must be 'RGB' or 'L', got {mode!r}")
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        # 65535 / 257 = 255 exactly: the scaling that maps the 16-bit range onto the 8-bit one
        values = np.asarray(image, dtype=np.uint32)
        image = PIL.Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")
    elif image.mode in _RANGELESS_MODES:
        raise ImageReadError(f"{what} is a {image.mode!r} image (32-bit integer or floating-point values, with no "
                             f"range that says which is white); save it as an 8- or 16-bit PNG")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def read_image(path: str | os.PathLike, what: str, mode: str = "RGB") -> PIL.Image.Image:
    """Decode the image file ``path`` as the user sees it (see :func:`as_seen`); every failure is one
    :class:`ImageReadError` naming ``what`` (the flag, e.g. ``--image``) and the file."""
    try:
        path = check_regular_file(path, what)
    except ValueError as error:
        raise ImageReadError(str(error)) from None
    try:
        with warnings.catch_warnings():  # a decompression bomb is refused, not decoded
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                image.load()
                return as_seen(image, mode, f"{what} {str(path)!r}")
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"{what} {str(path)!r} is refused: {error} (raise PIL.Image.MAX_IMAGE_PIXELS only for "
                             f"images you trust)") from None
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{what} {str(path)!r} cannot be read as an image: {' '.join(str(error).split())}"
                             ) from None
