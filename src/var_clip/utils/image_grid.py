"""One PIL image from many: a grid of images, each with an optional word-wrapped caption under it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["make_image_grid", "wrap_text", "default_font"]

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont | ImageFont.TransposedFont

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)
ELLIPSIS = "…"


def default_font(size: int = 12) -> Font:
    """Pillow's bundled font (scalable where Pillow has FreeType, the fixed bitmap font otherwise)."""
    return ImageFont.load_default(size=size)


def _line_height(font: Font) -> int:
    # ascent + descent of the font, not of one string, so that every line of a caption takes the same height
    if hasattr(font, "getmetrics"):
        ascent, descent = font.getmetrics()
        return ascent + descent + 2
    left, top, right, bottom = font.getbbox("Hg")
    return bottom - top + 2


def _fit(word: str, width: int, font: Font) -> str:
    """The longest prefix of ``word`` (ending in an ellipsis) that fits ``width`` pixels."""
    for end in range(len(word) - 1, 0, -1):
        if font.getlength(word[:end] + ELLIPSIS) <= width:
            return word[:end] + ELLIPSIS
    return word[:1]


def wrap_text(text: str, width: int, font: Font, max_lines: int | None = None) -> list[str]:
    """Split ``text`` at spaces (and explicit newlines) into lines no wider than ``width`` pixels.

    A word wider than a whole line is cut with an ellipsis; with ``max_lines``, the last kept line ends in an
    ellipsis when text was left out.
    """
    if width < 1:
        raise ValueError(f"`width` must be a positive number of pixels, got {width}")
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = word if font.getlength(word) <= width else _fit(word, width, font)
        lines.append(current)
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    if max_lines is not None and len(lines) > max_lines:
        kept = lines[:max_lines]
        last = kept[-1] + ELLIPSIS
        while font.getlength(last) > width and len(last) > 1:
            last = last[:-2] + ELLIPSIS
        kept[-1] = last
        lines = kept
    return lines


def make_image_grid(
    images: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    cols: int | None = None,
    caption_height: int | None = None,
    font: Font | None = None,
    cell_size: int | tuple[int, int] | None = None,
    padding: int = 4,
) -> Image.Image:
    """Lay ``images`` out row by row in a grid, each caption word-wrapped under its image.

    Args:
        images: the images (any mode; converted to RGB). They may differ in size: each is centred in a cell as
            large as the largest one (or ``cell_size``).
        captions: one caption per image, or None for a grid without text.
        cols: images per row; defaults to ``ceil(sqrt(len(images)))``.
        caption_height: pixel height of the text strip under each row; None fits the longest wrapped caption.
            Text that does not fit a fixed height ends in an ellipsis.
        font: a PIL font; defaults to Pillow's bundled font at 12 px.
        cell_size: resize every image to this size (an int for a square) before laying it out: small images are
            enlarged by an integer factor without smoothing so that their pixels stay visible, larger ones are
            resampled with Lanczos. None keeps the images as they are.
        padding: pixels of background around every cell.

    Returns:
        An RGB image of width ``cols * cell_w + (cols + 1) * padding`` and height
        ``rows * (cell_h + caption_height) + (rows + 1) * padding``.
    """
    images = list(images)
    if not images or not all(isinstance(image, Image.Image) for image in images):
        raise ValueError("`images` must be a non-empty list of PIL images")
    if captions is not None:
        captions = list(captions)
        if len(captions) != len(images) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"`captions` must be None or {len(images)} strings (one per image), got "
                             f"{len(captions)} entries")
    if cols is None:
        cols = math.ceil(math.sqrt(len(images)))
    if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1:
        raise ValueError(f"`cols` must be a positive int or None, got {cols!r}")
    if caption_height is not None and (not isinstance(caption_height, int) or caption_height < 0):
        raise ValueError(f"`caption_height` must be a non-negative int or None, got {caption_height!r}")
    if padding < 0:
        raise ValueError(f"`padding` must be >= 0, got {padding}")
    font = font if font is not None else default_font()

    # 1. bring the images to their cell size
    images = [image.convert("RGB") for image in images]
    if cell_size is not None:
        size = (cell_size, cell_size) if isinstance(cell_size, int) else tuple(cell_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"`cell_size` must be a positive int or (width, height), got {cell_size!r}")
        images = [_resize(image, size) for image in images]
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    cols = min(cols, len(images))
    rows = math.ceil(len(images) / cols)

    # 2. wrap the captions to the cell width and size the text strip
    line_h = _line_height(font)
    wrapped: list[list[str]] = []
    if captions is not None:
        max_lines = None if caption_height is None else max(caption_height // line_h, 0)
        wrapped = [wrap_text(c, max(cell_w, 1), font, max_lines) if max_lines != 0 else [] for c in captions]
        if caption_height is None:
            caption_height = max(len(lines) for lines in wrapped) * line_h + 2
    caption_height = caption_height or 0

    # 3. paste the images and draw their captions
    width = cols * cell_w + (cols + 1) * padding
    height = rows * (cell_h + caption_height) + (rows + 1) * padding
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        x0 = padding + col * (cell_w + padding)
        y0 = padding + row * (cell_h + caption_height + padding)
        grid.paste(image, (x0 + (cell_w - image.width) // 2, y0 + (cell_h - image.height) // 2))
        for line_index, line in enumerate(wrapped[index] if wrapped else []):
            x = x0 + (cell_w - font.getlength(line)) / 2  # centred under the image
            draw.text((x, y0 + cell_h + 1 + line_index * line_h), line, fill=TEXT_COLOR, font=font)
    return grid


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    factor_w, factor_h = size[0] / image.width, size[1] / image.height
    if factor_w >= 1 and factor_h >= 1 and factor_w.is_integer() and factor_h.is_integer():
        return image.resize(size, Image.Resampling.NEAREST)
    return image.resize(size, Image.Resampling.LANCZOS)
