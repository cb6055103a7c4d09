"""The final check: a converted folder is loaded back and generates one image, as a user would."""

from __future__ import annotations

import json
import os

import torch

from ..pipelines import VARCLIPPipeline, VARPipeline
from ..sampling import DEFAULT_GUIDANCE_SCALE


def check_pipeline_folder(folder: str | os.PathLike, variant: str | None = None, seed: int = 0) -> tuple[int, int]:
    """Load a converted folder and generate one image with guidance, as a user would; returns its (height, width).

    Half-precision variants are loaded in float32 here: the check is about the files, and CPU half kernels are slow.
    Raises ``RuntimeError`` when the image is not finite or not of the VQ-VAE's size.
    """
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        class_name = json.load(f)["_class_name"]
    cls = {"VARCLIPPipeline": VARCLIPPipeline, "VARPipeline": VARPipeline}[class_name]
    pipe = cls.from_pretrained(folder, variant=variant, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    if cls is VARPipeline:
        images = pipe(class_labels=0, guidance_scale=DEFAULT_GUIDANCE_SCALE, generator=generator,
                      output_type="np").images
    elif pipe.text_encoder is not None:
        images = pipe("a photo of a red fox in the snow", guidance_scale=DEFAULT_GUIDANCE_SCALE, generator=generator,
                      output_type="np").images
    else:  # no text encoder: a random unit vector stands in for a CLIP text embedding
        E = pipe.transformer.config.text_embed_dim
        embeds = torch.nn.functional.normalize(torch.randn(1, E, generator=generator), dim=-1)
        images = pipe(prompt_embeds=embeds, guidance_scale=DEFAULT_GUIDANCE_SCALE, generator=generator,
                      output_type="np").images
    size = pipe.vqvae.sample_size
    if images.shape != (1, size, size, 3) or not (images >= 0).all() or not (images <= 1).all():
        raise RuntimeError(f"the converted pipeline produced an image of shape {images.shape}, expected (1, {size}, "
                           f"{size}, 3) in [0, 1]")
    return size, size
