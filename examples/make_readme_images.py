"""Make the README's example images with the embedded default model (a few seconds on a CPU).

    python examples/make_readme_images.py --output-dir docs/images

Writes ``samples.png`` (text-to-image, several prompts × seeds), ``progression.png`` (the coarse-to-fine previews of
one generation), ``inpainting.png``, ``outpainting.png`` and ``img2img.png`` (the editing pipelines on a
shapes-world scene). Everything is seeded: reruns give the same pictures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import var_clip
from var_clip import VARCLIPImg2ImgPipeline, VARCLIPInpaintPipeline, VARCLIPPipeline, prepare_outpainting
from var_clip import shapes_world as sw
from var_clip.utils.image_grid import make_image_grid

PROMPTS = [
    "a red circle above a blue square",
    "a small yellow triangle on the left",
    "a large green circle in the center",
    "a blue triangle to the right of an orange square",
    "a purple square at the bottom",
    "an orange triangle below a green circle",
]
SHOW = 128  # pixels per image in the grids (nearest-neighbour upscaling of the 64 × 64 outputs)


def big(image: PIL.Image.Image) -> PIL.Image.Image:
    return image.resize((SHOW, SHOW), resample=PIL.Image.Resampling.NEAREST)


def seeded(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="docs/images")
    parser.add_argument("--model", default=var_clip.DEFAULT_MODEL)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    pipe = VARCLIPPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)

    # text-to-image: each prompt with four seeds
    per_prompt = 4
    images, captions = [], []
    for prompt in PROMPTS:
        images += [big(im) for im in pipe([prompt] * per_prompt, generator=seeded(per_prompt)).images]
        captions += [prompt] + [""] * (per_prompt - 1)
    make_image_grid(images, captions=captions, cols=per_prompt * 2).save(out / "samples.png")

    # coarse-to-fine: the partial latent decoded after every scale
    previews = []

    def keep(p, scale_index, side, tensors):
        previews.append(big(p.decode_preview(tensors["f_hat"])[0]))
        return {}

    pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), callback_on_step_end=keep,
         callback_on_step_end_tensor_inputs=["f_hat"])
    sides = [f"{pn}x{pn}" for pn in pipe.transformer.config.patch_nums]  # plain x: every font has it
    make_image_grid(previews, captions=sides, cols=len(previews)).save(out / "progression.png")

    # editing on a shapes-world scene: a blue square on the left
    scene = sw.Scene((sw.ShapeObject("blue", "square", 20, 16.0, 32.0),), "a blue square on the left", "left")
    source = sw.render_scene(scene)
    inpaint = VARCLIPInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)

    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    mask_image = PIL.Image.fromarray(mask, mode="L")
    prompt = "a red circle to the right of a blue square"
    latents = {}

    def keep_latent(p, scale_index, side, tensors):
        latents["final"] = tensors["latents"]
        return {}

    results = inpaint([prompt] * 3, image=source, mask_image=mask_image, generator=seeded(3),
                      callback_on_step_end=keep_latent, callback_on_step_end_tensor_inputs=["latents"]).images
    # what the model drew everywhere, before the unmasked half is pasted back from the input
    unblended = inpaint.decode_preview(latents["final"])
    shown_mask = PIL.Image.composite(PIL.Image.new("RGB", (64, 64), (255, 255, 255)), source, mask_image)
    make_image_grid([big(source), big(shown_mask)] + [big(r) for r in results] + [big(u) for u in unblended],
                    captions=["input", "mask (white)", f"\"{prompt}\"", "", "", "latent before the blend", "", ""],
                    cols=5).save(out / "inpainting.png")

    # outpainting: the 64 x 64 scene extended by 64 new columns on the right, filled window by window
    canvas, canvas_mask = prepare_outpainting(source, right=64, fill=sw.BACKGROUND)
    wider = inpaint(["a red circle"] * 3, image=canvas, mask_image=canvas_mask, generator=seeded(3)).images
    show = lambda im: im.resize((2 * SHOW, SHOW), resample=PIL.Image.Resampling.NEAREST)  # noqa: E731
    make_image_grid([show(canvas)] + [show(w) for w in wider],
                    captions=["canvas, 128 x 64 (new columns masked)", "\"a red circle\"", "", ""],
                    cols=2).save(out / "outpainting.png")

    img2img = VARCLIPImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    row, row_captions = [big(source)], ["input"]
    for strength in (2 / 7, 4 / 7, 6 / 7):  # 2, 4 and 6 of the 7 scales regenerated
        row.append(big(img2img("a red triangle on the left", image=source, strength=strength,
                               generator=torch.Generator().manual_seed(0)).images[0]))
        row_captions.append(f"strength {round(strength * 7)}/7")
    make_image_grid(row, captions=row_captions, cols=len(row)).save(out / "img2img.png")
    print(f"wrote samples.png, progression.png, inpainting.png, outpainting.png, img2img.png to {out}")


if __name__ == "__main__":
    main()
