"""The shared image-grid helper: geometry, captions, validation."""

from __future__ import annotations

import pytest
from PIL import Image

from var_clip.utils import make_image_grid
from var_clip.utils.image_grid import default_font, wrap_text


def _squares(n: int, size: int = 20) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), (40 * i % 256, 100, 200)) for i in range(n)]


def test_grid_geometry_without_captions():
    grid = make_image_grid(_squares(5), cols=3, padding=2)
    assert grid.mode == "RGB"
    assert grid.size == (3 * 20 + 4 * 2, 2 * 20 + 3 * 2)
    # first image pasted at (padding, padding); the empty sixth cell stays background
    assert grid.getpixel((2, 2)) == (0, 100, 200)
    assert grid.getpixel((2 + 2 * 22 + 10, 2 + 22 + 10)) == (255, 255, 255)


def test_grid_default_cols_is_square_root():
    assert make_image_grid(_squares(4), padding=0).size == (40, 40)
    assert make_image_grid(_squares(2), cols=8, padding=0).size == (40, 20)  # never more columns than images


def test_captions_are_wrapped_under_each_image():
    caption = "a rather long caption that cannot fit on one line under a small image"
    grid = make_image_grid(_squares(2, 64), [caption, "short"], cols=2, padding=0)
    font = default_font()
    lines = wrap_text(caption, 64, font)
    assert len(lines) > 2 and all(font.getlength(line) <= 64 for line in lines)
    assert " ".join(lines) == caption
    assert grid.width == 128 and grid.height > 64 + (len(lines) - 1) * 12
    # text is drawn in the strip below the first image
    strip = grid.crop((0, 64, 64, grid.height)).convert("L")
    assert strip.getextrema()[0] < 128


def test_fixed_caption_height_truncates_with_ellipsis():
    grid = make_image_grid(_squares(1, 40), ["one two three four five six seven eight nine ten"],
                           caption_height=15, padding=0)
    assert grid.size == (40, 55)
    lines = wrap_text("one two three four five six seven eight nine ten", 40, default_font(), max_lines=1)
    assert len(lines) == 1 and lines[0].endswith("…")


def test_cell_size_upscales_small_images_without_smoothing():
    image = Image.new("RGB", (2, 2))
    image.putpixel((0, 0), (255, 0, 0))
    grid = make_image_grid([image], cell_size=8, padding=0)
    assert grid.size == (8, 8)
    assert grid.getpixel((3, 3)) == (255, 0, 0) and grid.getpixel((4, 4)) == (0, 0, 0)


def test_mixed_sizes_are_centred():
    grid = make_image_grid([Image.new("RGB", (10, 10), (0, 0, 0)), Image.new("RGB", (30, 20), (0, 0, 0))],
                           cols=2, padding=0)
    assert grid.size == (60, 20)
    assert grid.getpixel((0, 0)) == (255, 255, 255) and grid.getpixel((15, 10)) == (0, 0, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(images=[]), "images"),
        (dict(images=_squares(2), captions=["only one"]), "captions"),
        (dict(images=_squares(2), cols=0), "cols"),
        (dict(images=_squares(2), caption_height=-1), "caption_height"),
        (dict(images=_squares(2), cell_size=(0, 4)), "cell_size"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_image_grid(**kwargs)
