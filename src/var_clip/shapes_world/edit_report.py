"""Measured edits on the shapes world: inpainting, outpainting and image-to-image, scored as a user would judge them.

- **Inpainting**: one seen object in one half of a 64 × 64 scene, the other half masked, prompted with the caption
  of the intended result: a new object, its colour and shape drawn at random (seeded) from the seen pairs, in the
  relation to the kept object that puts it in the mask ("a green triangle above a blue square" masks the top half and
  keeps the object in the bottom one). Scored: the two-object caption holds *and* the new object lies inside the mask;
  stricter, the same *and* it is the only object in the mask (an extra object drawn beside it fails); the kept half of the *generated latent* (decoded before the blend with the input) against the VQ-VAE's own
  reconstruction of the input (PSNR; below 20 dB counts as redrawn); pixels outside the mask unchanged (largest
  difference, 0–255).
- **Outpainting**: the same scenes extended by 64 px to the right (a 128 × 64 canvas), prompted "a red circle on the
  right" is not checkable across windows, so the prompt is the new part's own caption ("a red circle"): a red circle
  must appear in the new area; the original pixels stay unchanged; the seam is the mean colour step across the
  boundary column compared with the step between neighbouring columns elsewhere.
- **Image-to-image**: scenes of one object, re-prompted with another colour and shape at each strength; scored: the
  new caption holds (prompt adherence) and PSNR to the input (similarity).
- **Reconstruction**: random seen scenes (the training distribution) encoded to tokens and decoded by the VQ-VAE,
  scored against their own captions: what survives the tokenizer, the ceiling of every figure of a transformer
  that samples its tokens.

Legend: H, W canvas · s the model's side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from .captions import noun_phrase
from .evaluate import detect_objects, score_image, summarize_scores
from .random_scenes import sample_scene
from .render import render_scene
from .scenes import Scene, ShapeObject
from .spec import BACKGROUND, COLORS, HELD_OUT_PAIRS, IMAGE_SIZE, RELATION_PHRASES, RELATIONS, SHAPES

__all__ = ["InpaintingTask", "inpainting_scenes", "inpainting_tasks", "evaluate_inpainting", "evaluate_outpainting",
           "evaluate_img2img", "evaluate_reconstruction", "psnr"]

REDRAWN_PSNR = 20.0  # a kept region below this many dB against the reconstruction was redrawn, not kept


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images (or regions), in dB (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def inpainting_scenes(num_images: int, seed: int = 0) -> list[Scene]:
    """One seen object in the left half of the canvas (never red, never a held-out pair), for the editing tests."""
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in COLORS for s in SHAPES if c != "red" and (c, s) not in HELD_OUT_PAIRS]
    scenes = []
    for i in range(num_images):
        color, shape = pairs[i % len(pairs)]
        size = int(rng.integers(12, 27))
        cx = float(rng.integers(size // 2 + 2, 30 - size // 2))  # the bounding box stays left of x = 30
        cy = float(rng.integers(size // 2 + 2, 62 - size // 2))
        caption = f"{noun_phrase(color, shape)} on the left"
        scenes.append(Scene((ShapeObject(color, shape, size, cx, cy),), caption, position="left"))
    return scenes


#: the half of the canvas the new object goes to, for each relation of the new object to the kept one
MASKED_HALF = {"right of": "right", "left of": "left", "above": "top", "below": "bottom"}


@dataclass(frozen=True)
class InpaintingTask:
    """A one-object scene, the half of the canvas to regenerate, and the caption of the intended result."""

    scene: Scene
    relation: str  # of the new object to the kept one: decides the masked half (MASKED_HALF)
    color: str  # the new object's
    shape: str
    prompt: str

    @property
    def masked_half(self) -> str:
        return MASKED_HALF[self.relation]


def _half_box(half: str, size: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of one half of a ``size`` × ``size`` canvas."""
    h = size / 2
    return {"left": (0, 0, h, size), "right": (h, 0, size, size), "top": (0, 0, size, h),
            "bottom": (0, h, size, size)}[half]


def inpainting_tasks(num_images: int, seed: int = 0) -> list[InpaintingTask]:
    """Seeded inpainting tasks: a kept seen object in one half, a new seen object of another colour in the other.

    The relations cycle through the four (so every masked half is measured equally often); the kept and new objects'
    colours, shapes, sizes and places are drawn from ``seed``. Held-out pairs never occur.
    """
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    relations = [RELATIONS[i % len(RELATIONS)] for i in range(num_images)]
    tasks = []
    for relation in relations:
        kept_color, kept_shape = pairs[rng.integers(len(pairs))]
        others = [p for p in pairs if p[0] != kept_color]
        color, shape = others[rng.integers(len(others))]
        # the kept object's bounding box stays inside the unmasked half, 2 px from its edges
        x0, y0, x1, y1 = _half_box(_opposite(MASKED_HALF[relation]), IMAGE_SIZE)
        size = int(rng.integers(12, 27))
        cx = float(rng.integers(int(x0) + size // 2 + 2, int(x1) - size // 2 - 1))
        cy = float(rng.integers(int(y0) + size // 2 + 2, int(y1) - size // 2 - 1))
        kept = Scene((ShapeObject(kept_color, kept_shape, size, cx, cy),), noun_phrase(kept_color, kept_shape))
        prompt = f"{noun_phrase(color, shape)} {RELATION_PHRASES[relation][0]} {noun_phrase(kept_color, kept_shape)}"
        tasks.append(InpaintingTask(kept, relation, color, shape, prompt))
    return tasks


def _opposite(half: str) -> str:
    return {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[half]


def _at(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """``image`` at ``size`` × ``size`` (models of another resolution than the spec's 64 px; box filter down)."""
    if image.size == (size, size):
        return image
    return image.resize((size, size),
                        resample=PIL.Image.Resampling.BOX if size < image.width else PIL.Image.Resampling.LANCZOS)


def _object_in(image: PIL.Image.Image, color: str, shape: str, box: tuple[float, float, float, float]) -> bool:
    """Whether a detected ``color`` ``shape`` has its centre inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return any(o.color == color and o.shape == shape and x0 <= o.cx <= x1 and y0 <= o.cy <= y1
               for o in detect_objects(image))


def _objects_in(image: PIL.Image.Image, box: tuple[float, float, float, float]) -> int:
    """How many detected objects have their centre inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return sum(x0 <= o.cx <= x1 and y0 <= o.cy <= y1 for o in detect_objects(image))


def _uint8(images_B3HW: torch.Tensor) -> np.ndarray:
    return (images_B3HW.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())


@torch.no_grad()
def evaluate_inpainting(pipe, num_images: int = 12, samples_per_image: int = 4, seed: int = 0,
                        cell_threshold: float = 0.5, show_progress: bool = True,
                        **sampling_kwargs) -> tuple[dict, list]:
    """Inpaint a random new object next to a kept one (:func:`inpainting_tasks`); see the module docstring.

    Returns the summary (with the accuracy per relation) and ``(prompt, source, result, correct)`` records for a grid
    (the source with its masked half darkened).
    """
    from ..pipelines import VARCLIPInpaintPipeline

    inpaint = VARCLIPInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    size = inpaint.vqvae.sample_size  # scenes are drawn at the spec's 64 px and resized to the model's side
    correct, alone, kept_psnr, records, max_change = [], [], [], [], 0
    by_relation: dict[str, list[bool]] = {}
    bar = tqdm(total=num_images * samples_per_image, desc="inpainting", disable=not show_progress)
    for i, task in enumerate(inpainting_tasks(num_images, seed)):
        source = _at(render_scene(task.scene), size)
        x0, y0, x1, y1 = (int(v) for v in _half_box(task.masked_half, size))
        mask = np.zeros((size, size), dtype=bool)
        mask[y0:y1, x0:x1] = True
        mask_image = PIL.Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        shaded = np.asarray(source).copy()  # the input as the grid shows it: the masked half darkened
        shaded[mask] = (shaded[mask] * 0.6).astype(np.uint8)
        shaded = PIL.Image.fromarray(shaded)
        pixels = inpaint.preprocess_image(source)
        reconstruction = _uint8(inpaint.vqvae.decode_indices(inpaint.vqvae.encode_indices(pixels)))[0]
        latents = {}

        def keep_latent(p, si, pn, tensors):
            latents["final"] = tensors["latents"]
            return {}

        generators = [torch.Generator().manual_seed(seed + 1000 * i + j) for j in range(samples_per_image)]
        images = inpaint([task.prompt] * samples_per_image, image=source, mask_image=mask_image, generator=generators,
                         cell_threshold=cell_threshold, callback_on_step_end=keep_latent,
                         callback_on_step_end_tensor_inputs=["latents"], **sampling_kwargs).images
        generated = _uint8(inpaint.vqvae.decode_latent(latents["final"]))  # before the blend with the input
        for image, latent_image in zip(images, generated):
            change = np.abs(np.asarray(image).astype(int) - np.asarray(source).astype(int))[~mask]
            max_change = max(max_change, int(change.max()))
            kept_psnr.append(psnr(latent_image[~mask], reconstruction[~mask]))
            scored = _at(image, IMAGE_SIZE)  # the evaluator reads the spec's 64 × 64 canvas
            box = _half_box(task.masked_half, IMAGE_SIZE)
            ok = bool(score_image(scored, task.prompt)["caption"]) and _object_in(scored, task.color, task.shape, box)
            correct.append(ok)
            alone.append(ok and _objects_in(scored, box) == 1)
            by_relation.setdefault(task.relation, []).append(ok)
            records.append((task.prompt, shaded, image, ok))
        bar.update(samples_per_image)
    bar.close()
    finite = [p for p in kept_psnr if np.isfinite(p)] or [float("inf")]
    summary = {
        "caption_with_new_object_in_mask": float(np.mean(correct)),
        "caption_with_only_new_object_in_mask": float(np.mean(alone)),
        "by_relation": {r: float(np.mean(v)) for r, v in by_relation.items()},
        "kept_latent_psnr_median": float(np.median(kept_psnr)),
        "kept_latent_psnr_min": float(min(finite)),
        "kept_redrawn_share": float(np.mean([p < REDRAWN_PSNR for p in kept_psnr])),
        "max_unmasked_change": max_change, "num_images": num_images, "samples_per_image": samples_per_image,
        "cell_threshold": cell_threshold, "seed": seed,
    }
    return summary, records


@torch.no_grad()
def evaluate_outpainting(pipe, num_images: int = 12, samples_per_image: int = 4, seed: int = 0,
                         show_progress: bool = True, **sampling_kwargs) -> tuple[dict, list]:
    """Extend each scene by 64 px to the right with "a red circle"; see the module docstring."""
    from ..pipelines import VARCLIPInpaintPipeline, prepare_outpainting

    inpaint = VARCLIPInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    size = inpaint.vqvae.sample_size
    found, seams, baselines, records, max_change, sizes_ok = [], [], [], [], 0, True
    bar = tqdm(total=num_images * samples_per_image, desc="outpainting", disable=not show_progress)
    for i, scene in enumerate(inpainting_scenes(num_images, seed)):
        source = _at(render_scene(scene), size)
        canvas, mask = prepare_outpainting(source, right=size, fill=BACKGROUND)
        generators = [torch.Generator().manual_seed(seed + 1000 * i + j) for j in range(samples_per_image)]
        images = inpaint(["a red circle"] * samples_per_image, image=canvas, mask_image=mask, generator=generators,
                         **sampling_kwargs).images
        for image in images:
            sizes_ok &= image.size == canvas.size
            array = np.asarray(image).astype(int)
            max_change = max(max_change, int(np.abs(array[:, :size] - np.asarray(source).astype(int)).max()))
            new_area = _at(image.crop((size, 0, 2 * size, size)), IMAGE_SIZE)
            found.append(_object_in(new_area, "red", "circle", (0, 0, IMAGE_SIZE, IMAGE_SIZE)))
            steps = np.abs(np.diff(array, axis=1)).mean(axis=(0, 2))  # mean colour step between neighbouring columns
            seams.append(float(steps[size - 1]))
            baselines.append(float(np.median(steps)))
            records.append(("a red circle (new area)", canvas, image, found[-1]))
        bar.update(samples_per_image)
    bar.close()
    summary = {"red_circle_in_new_area": float(np.mean(found)), "seam_step": float(np.mean(seams)),
               "median_column_step": float(np.mean(baselines)), "max_original_change": max_change,
               "output_size_kept": bool(sizes_ok), "num_images": num_images, "samples_per_image": samples_per_image}
    return summary, records


@torch.no_grad()
def evaluate_img2img(pipe, strengths: tuple[float, ...] = (0.0, 2 / 7, 3 / 7, 4 / 7, 5 / 7, 6 / 7, 1.0),
                     num_images: int = 12, samples_per_image: int = 4, seed: int = 0, show_progress: bool = True,
                     **sampling_kwargs) -> dict:
    """Re-prompt one-object scenes with another colour and shape at each strength; see the module docstring."""
    from ..pipelines import VARCLIPImg2ImgPipeline

    img2img = VARCLIPImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    scenes = inpainting_scenes(num_images, seed)
    table = {}
    bar = tqdm(total=len(strengths) * num_images * samples_per_image, desc="img2img", disable=not show_progress)
    for strength in strengths:
        adherence, similarity, kept_layout = [], [], []
        for i, scene in enumerate(scenes):
            source = render_scene(scene)
            (obj,) = scene.objects
            color = next(c for c in ("red", "blue", "green") if c != obj.color)
            shape = "circle" if obj.shape != "circle" else "square"
            prompt = f"{noun_phrase(color, shape)} on the left"
            generators = [torch.Generator().manual_seed(seed + 1000 * i + j) for j in range(samples_per_image)]
            images = img2img([prompt] * samples_per_image, image=source, strength=strength, generator=generators,
                             **sampling_kwargs).images
            for image in images:
                scored = _at(image, IMAGE_SIZE)
                adherence.append(bool(score_image(scored, prompt)["caption"]))
                similarity.append(psnr(np.asarray(scored), np.asarray(source)))
                kept_layout.append(bool(score_image(scored, scene.caption)["caption"]))
            bar.update(samples_per_image)
        finite = [p for p in similarity if np.isfinite(p)]
        table[f"{strength:.2f}"] = {"new_caption": float(np.mean(adherence)),
                                    "input_caption": float(np.mean(kept_layout)),
                                    "psnr_to_input": float(np.median(finite)) if finite else float("inf")}
    bar.close()
    return {"strengths": table, "num_images": num_images, "samples_per_image": samples_per_image}


@torch.no_grad()
def evaluate_reconstruction(vqvae, num_images: int = 200, seed: int = 0, batch_size: int = 50,
                            show_progress: bool = True) -> dict:
    """Score the VQ-VAE's reconstructions of ``num_images`` random seen scenes (``sample_scene``, seeded) against
    their captions. Returns ``{"one_object": {metric: fraction}, "two_objects": {...}, "num_images": n}`` with the
    metrics of :func:`~var_clip.shapes_world.summarize_scores` (``num_samples`` per group)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(num_images)]
    device, dtype = vqvae.device, vqvae.dtype
    records = []
    bar = tqdm(total=num_images, desc="reconstruction", disable=not show_progress)
    for start in range(0, num_images, batch_size):
        chunk = scenes[start : start + batch_size]
        pixels = np.stack([np.asarray(_at(render_scene(scene), vqvae.sample_size)) for scene in chunk])
        images_B3HW = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device, dtype) / 127.5 - 1
        decoded = _uint8(vqvae.decode_indices(vqvae.encode_indices(images_B3HW)))
        for scene, image in zip(chunk, decoded):
            scored = _at(PIL.Image.fromarray(image), IMAGE_SIZE)
            records.append((scene.caption, score_image(scored, scene.caption), False, len(scene.objects)))
        bar.update(len(chunk))
    bar.close()
    seen = summarize_scores(records)["seen"]
    return {"one_object": seen["one_object"], "two_objects": seen["two_objects"], "num_images": num_images}
