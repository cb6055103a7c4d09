"""Inpainting, outpainting, image-to-image and per-scale previews on tiny real components."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from var_clip import (
    VARCLIPImg2ImgPipeline,
    VARCLIPInpaintPipeline,
    VARCLIPPipeline,
    VARInpaintPipeline,
    prepare_outpainting,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


@pytest.fixture
def mask():
    m = np.zeros((16, 16), dtype=np.uint8)
    m[2:9, 3:12] = 255  # an irregular region, not aligned to token cells
    m[12, 1] = 255
    return PIL.Image.fromarray(m)


def edit_pipe(cls, tiny_pipe):
    pipe = cls(**tiny_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_kept_tokens_requantize_what_the_regenerated_scales_left_of_the_input(tiny_pipe, image, mask):
    """At every scale a kept token is the encoder's quantization of the input's latent minus the latent accumulated so
    far (which holds regenerated coarse tokens), not the input's standalone token: tokens of a residual quantizer
    are residuals against their own coarser scales."""
    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    latents = []
    tokens = pipe("a red circle", image=image, mask_image=mask, generator=gen(), output_type="tokens", cell_threshold=0.0,
                  callback_on_step_end=lambda p, si, pn, t: latents.append(t["latents"].clone()),
                  callback_on_step_end_tensor_inputs=["latents"]).images
    f = pipe.vqvae.encode(pipe.preprocess_image(image)).float()
    regen = torch.from_numpy(np.asarray(mask) > 127).float()[None, None]
    f_hat = torch.zeros_like(f)
    regenerated_somewhere = False
    for si, pn in enumerate(pipe.vqvae.config.patch_nums):
        keep = ~F.adaptive_max_pool2d(regen, pn).flatten(1).bool()  # any masked pixel: the cell is regenerated
        expected = pipe.vqvae.quantize.residual_indices(f, f_hat, si)
        assert torch.equal(tokens[si][keep], expected[keep]), f"scale {si}"
        regenerated_somewhere |= bool((~keep).any())
        f_hat = latents[si]
    assert regenerated_somewhere


def test_kept_region_of_the_latent_stays_closer_to_the_input_than_standalone_tokens(tiny_pipe, image, monkeypatch):
    """With the top half regenerated, the bottom half of the generated latent approximates the input's latent better
    than when the input's standalone tokens are imposed on the regenerated coarse scales (the earlier rule)."""
    from var_clip.pipelines.next_scale import KnownTokens

    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    m = np.zeros((16, 16), dtype=np.uint8)
    m[:8] = 255
    pixels = pipe.preprocess_image(image)
    f = pipe.vqvae.encode(pixels).float().detach()
    kept = slice(2, None)  # latent rows whose cells hold no masked pixel at the last scale (4 × 4 latent)

    def error(seeds) -> float:
        total = 0.0
        for seed in seeds:
            latent = pipe("a red circle", image=image, mask_image=PIL.Image.fromarray(m), generator=gen(seed),
                          output_type="latent", cell_threshold=0.0).images
            total += float((latent - f)[..., kept, :].square().mean())
        return total / len(seeds)

    residual = error(range(8))
    residual_rule = pipe.known_tokens

    def standalone(edit, batch_size):
        known = residual_rule(edit, batch_size)
        return KnownTokens(mask=known.mask, tokens=pipe.vqvae.encode_indices(edit.image_B3HW))

    monkeypatch.setattr(pipe, "known_tokens", standalone)
    # the residual rule must beat the standalone one clearly, not by noise: 20 % less error over 8 seeds
    RESIDUAL_RULE_GAIN = 0.8
    assert residual < RESIDUAL_RULE_GAIN * error(range(8))


def test_cell_threshold_keeps_cells_that_are_mostly_unmasked(tiny_pipe, image, mask):
    from var_clip.pipelines.next_scale import EditRequest

    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    pixels, mask_B1HW = pipe.preprocess_image(image), pipe.preprocess_mask(mask, image)
    any_pixel = pipe.known_tokens(EditRequest(pixels, mask_B1HW, cell_threshold=0.0), 1)
    majority = pipe.known_tokens(EditRequest(pixels, mask_B1HW, cell_threshold=0.5), 1)
    share = [F.adaptive_avg_pool2d((mask_B1HW > 0.5).float(), pn).flatten(1) for pn in pipe.vqvae.config.patch_nums]
    for si, s in enumerate(share):
        assert torch.equal(any_pixel.mask[si], s == 0) and torch.equal(majority.mask[si], s <= 0.5)
    assert sum(int(m.sum()) for m in majority.mask) > sum(int(m.sum()) for m in any_pixel.mask)


def test_unmasked_pixels_are_unchanged(tiny_pipe, image, mask):
    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    out = pipe("a red circle", image=image, mask_image=mask, generator=gen(), output_type="np").images[0]
    src = np.asarray(image, dtype=np.float32) / 255
    keep = np.asarray(mask) == 0
    np.testing.assert_allclose(out[keep], src[keep], atol=1e-6)
    assert np.abs(out[~keep] - src[~keep]).max() > 0.01
    pil = pipe("a red circle", image=image, mask_image=mask, generator=gen()).images[0]
    assert np.array_equal(np.asarray(pil)[keep], np.asarray(image)[keep])


def test_batch_and_mask_as_tensor(tiny_pipe, image):
    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    m = torch.zeros(16, 16)
    m[:, 8:] = 1.0
    out = pipe(["a", "b"], image=image, mask_image=m, num_images_per_prompt=2, generator=gen(), output_type="pt").images
    assert out.shape == (4, 3, 16, 16)


@pytest.mark.parametrize(
    "bad_mask,message",
    [
        (np.zeros((8, 8)), "must be the size of `image`"),
        (np.full((16, 16), 2.0), r"values must be in \[0, 1\]"),
        (np.full((16, 16), -0.5), r"values must be in \[0, 1\]"),
        (torch.zeros(2, 3, 16, 16), r"must be \(H, W\)"),
        ("mask.png", "must be a PIL image, a numpy array or a torch tensor"),
    ],
)
def test_bad_masks(tiny_pipe, image, bad_mask, message):
    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    with pytest.raises(ValueError, match=message):
        pipe("a red circle", image=image, mask_image=bad_mask)


def test_missing_image_or_mask(tiny_pipe, image):
    with pytest.raises(ValueError, match="needs both"):
        edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)("a", image=image)
    with pytest.raises(ValueError, match="needs an `image`"):
        edit_pipe(VARCLIPImg2ImgPipeline, tiny_pipe)("a")


def test_img2img_strength_zero_is_the_reconstruction_and_one_is_text_to_image(tiny_pipe, image):
    pipe = edit_pipe(VARCLIPImg2ImgPipeline, tiny_pipe)
    pixels = pipe.preprocess_image(image)
    recon = (pipe.vqvae.decode_indices(pipe.vqvae.encode_indices(pixels)) / 2 + 0.5).clamp(0, 1)
    zero = pipe("a red circle", image=image, strength=0.0, generator=gen(), output_type="pt").images
    torch.testing.assert_close(zero, recon, atol=1e-5, rtol=0)
    one = pipe("a red circle", image=image, strength=1.0, generator=gen(4), output_type="pt").images
    plain = tiny_pipe("a red circle", generator=gen(4), output_type="pt").images
    assert torch.equal(one, plain)


def test_img2img_keeps_the_first_scales(tiny_pipe, image):
    pipe = edit_pipe(VARCLIPImg2ImgPipeline, tiny_pipe)
    source = pipe.vqvae.encode_indices(pipe.preprocess_image(image))
    tokens = pipe("a blue square", image=image, strength=0.5, generator=gen(), output_type="tokens").images
    assert all(torch.equal(tokens[si], source[si]) for si in range(2))  # S=4, strength 0.5 → 2 scales regenerated
    with pytest.raises(ValueError, match=r"`strength` must be a number in \[0, 1\]"):
        pipe("a", image=image, strength=1.5)


def test_class_conditional_inpainting(tiny_class_pipe, image, mask):
    pipe = VARInpaintPipeline(**tiny_class_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(3, image=image, mask_image=mask, generator=gen(), output_type="np").images[0]
    keep = np.asarray(mask) == 0
    np.testing.assert_allclose(out[keep], np.asarray(image, dtype=np.float32)[keep] / 255, atol=1e-6)


def test_outpainting_canvas_and_mask(tiny_pipe):
    small = PIL.Image.new("RGB", (8, 8), (255, 0, 0))
    canvas, mask = prepare_outpainting(small, left=4, right=4, top=4, bottom=4)
    assert canvas.size == (16, 16) and mask.size == (16, 16)
    m = np.asarray(mask)
    assert m[4:12, 4:12].max() == 0 and m[0].min() == 255
    out = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)("a red square", image=canvas, mask_image=mask, generator=gen(),
                                                       output_type="np").images[0]
    np.testing.assert_allclose(out[4:12, 4:12], np.asarray(canvas, dtype=np.float32)[4:12, 4:12] / 255, atol=1e-6)
    with pytest.raises(ValueError, match=r"`left` must be an int in \[0, 8192\]"):
        prepare_outpainting(small, left=-1)


def test_outpainting_fills_with_the_images_own_border_colour_by_default(tmp_path, monkeypatch):
    scene = PIL.Image.new("RGB", (8, 8), (235, 235, 235))
    scene.putpixel((0, 0), (220, 40, 40))  # an object touching the border does not move the median
    canvas, _ = prepare_outpainting(scene, right=4)
    assert canvas.getpixel((10, 3)) == (235, 235, 235)
    for fill, colour in (("grey", (128, 128, 128)), ("#102030", (16, 32, 48)), ((1, 2, 3), (1, 2, 3))):
        assert prepare_outpainting(scene, right=4, fill=fill)[0].getpixel((10, 3)) == colour
    for fill in ("no-such-colour", (1, 2), (0, 0, 256), (0.5, 0, 0)):
        with pytest.raises(ValueError, match="`fill` must be"):
            prepare_outpainting(scene, right=4, fill=fill)
    # margins are bounded before the canvas is allocated
    with pytest.raises(ValueError, match="`right` must be an int in"):
        prepare_outpainting(scene, right=10**9)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # the limit input images have
    with pytest.raises(ValueError, match=r"108×108 pixels, more than PIL.Image.MAX_IMAGE_PIXELS \(1000\)"):
        prepare_outpainting(scene, right=100, bottom=100)


def test_outpaint_command_fill_option(tiny_pipe, tmp_path, capsys):
    from var_clip.cli import main

    tiny_pipe.save_pretrained(tmp_path / "pipe")
    PIL.Image.new("RGB", (16, 16), (235, 235, 235)).save(tmp_path / "scene.png")
    base = ["outpaint", "x", "--model", str(tmp_path / "pipe"), "--image", str(tmp_path / "scene.png"), "--right", "8"]
    assert main([*base, "--fill", "235,235,235", "-o", str(tmp_path / "a.png")]) == 0
    assert main([*base, "-o", str(tmp_path / "b.png")]) == 0  # the border colour: the same canvas, the same image
    pixels = [np.asarray(PIL.Image.open(tmp_path / name)) for name in ("a.png", "b.png")]
    assert np.array_equal(*pixels)
    capsys.readouterr()
    for extra, message in ((["--fill", "bluish"], "--fill must be"), (["--top", "99999"], "--top must be an int in")):
        assert main([*base, *extra, "-o", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("margins", [dict(left=8, right=8), dict(top=16), dict(right=16, bottom=16),
                                     dict(left=5, top=3, right=9, bottom=20)])
def test_outpainting_keeps_the_canvas_size_and_the_original_pixels(tiny_pipe, image, margins):
    """A canvas larger than the model (16 px here) is filled window by window, never resized."""
    canvas, mask = prepare_outpainting(image, **margins)
    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    out = pipe("a red circle", image=canvas, mask_image=mask, num_images_per_prompt=2, generator=[gen(0), gen(1)],
               output_type="np").images
    assert out.shape == (2, canvas.height, canvas.width, 3)
    top, left = margins.get("top", 0), margins.get("left", 0)
    for result in out:
        np.testing.assert_allclose(result[top : top + 16, left : left + 16], np.asarray(image, dtype=np.float32) / 255,
                                   atol=1e-6)
    assert not np.allclose(out[0], out[1])  # the margins were generated, differently for each image


def test_windows_cover_the_canvas_and_go_outwards_from_the_known_part():
    from var_clip.pipelines.windows import inpaint_in_windows, window_origins

    assert window_origins(16, 16) == [0] and window_origins(40, 16) == [0, 8, 16, 24] and window_origins(33, 16) == [0, 8, 16, 17]
    canvas = torch.zeros(1, 3, 16, 48)
    mask = torch.ones(1, 1, 16, 48)
    mask[..., 16:32] = 0  # the known image in the middle
    order = []

    def record(window, window_mask):
        order.append((round(float(window_mask.mean()), 2)))
        return (window * (1 - window_mask) + window_mask).expand(2, -1, -1, -1)  # as the pipeline blends

    out = inpaint_in_windows(canvas, mask, 16, 2, record)
    assert order == [0.5, 0.5, 0.5, 0.5]  # every window is half known when its turn comes
    assert torch.equal(out[..., 16:32], torch.zeros(2, 3, 16, 16)) and (out[..., :16] == 1).all()


def test_canvas_errors(tiny_pipe, image):
    pipe = edit_pipe(VARCLIPInpaintPipeline, tiny_pipe)
    canvas, mask = prepare_outpainting(image, right=8)
    with pytest.raises(ValueError, match="output_type='latent'"):
        pipe("a red circle", image=canvas, mask_image=mask, output_type="latent")
    small = image.resize((8, 8))
    with pytest.raises(ValueError, match="resize smaller images up first"):
        pipe("a red circle", image=small, mask_image=PIL.Image.new("L", (8, 8), 255))
    with pytest.raises(ValueError, match="holds NaN"):
        pipe("a red circle", image=torch.full((3, 16, 16), float("nan")), mask_image=PIL.Image.new("L", (16, 16), 255))
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        pipe("a red circle", image=np.full((16, 16, 3), 2.0), mask_image=PIL.Image.new("L", (16, 16), 255))
    with pytest.raises(ValueError, match="uint8 or floating point"):
        pipe("a red circle", image=np.zeros((16, 16, 3), dtype=np.int64), mask_image=PIL.Image.new("L", (16, 16), 255))
    rgba = image.convert("RGBA")  # any PIL mode is converted
    assert pipe("a red circle", image=rgba, mask_image=PIL.Image.new("L", (16, 16), 255), output_type="np").images.shape == (1, 16, 16, 3)


def test_previews_after_every_scale(tiny_pipe):
    previews, seen_tokens = [], []

    def on_scale(pipe, si, pn, tensors):
        seen_tokens.append(len(tensors["tokens"]))
        previews.append(pipe.decode_preview(tensors["f_hat"])[0])
        return {}

    final = tiny_pipe("a red circle", generator=gen(), callback_on_step_end=on_scale,
                      callback_on_step_end_tensor_inputs=["f_hat", "tokens"]).images[0]
    assert seen_tokens == [1, 2, 3, 4] and len(previews) == 4
    assert np.array_equal(np.asarray(previews[-1]), np.asarray(final))
    assert isinstance(tiny_pipe, VARCLIPPipeline)
