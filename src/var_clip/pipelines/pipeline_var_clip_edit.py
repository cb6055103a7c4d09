"""Text-guided editing with VAR-CLIP: inpainting, outpainting and image-to-image.

Next-scale prediction makes editing natural: the coarse scales fix the layout, and known tokens can be imposed at
every scale while the transformer fills in the rest, with the imposed tokens as its context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import PIL.Image
import PIL.ImageColor
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P
from .next_scale import EditRequest
from .pipeline_var_clip import PromptInputs, VARCLIPPipeline
from .windows import inpaint_in_windows

__all__ = ["DEFAULT_OUTPAINT_FILL", "MAX_OUTPAINT_MARGIN", "VARCLIPInpaintPipeline", "VARCLIPImg2ImgPipeline",
           "outpainting_fill", "prepare_outpainting"]


class VARCLIPInpaintPipeline(VARCLIPPipeline):
    r"""Regenerate a masked region of an image from a prompt (white in the mask = regenerate), any mask shape.

    At every scale the tokens of cells outside the mask are kept: each is what the encoder would quantize of the
    image's latent minus the latent accumulated so far, so the kept region keeps reproducing the image even where
    coarser scales were regenerated; the other tokens are sampled with the kept ones as context. The decoded result
    is blended with the input so unmasked pixels are exactly unchanged.

    A canvas larger than the model's resolution (any aspect ratio) is never resized: it is filled by overlapping
    model-size windows, each an inpainting of its unknown part with the known pixels as context. Outpainting is
    inpainting on an extended canvas: see :func:`prepare_outpainting`.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
        mask_image=None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        top_k: int | list[int] = DEFAULT_TOP_K,
        top_p: float | list[float] = DEFAULT_TOP_P,
        more_smooth: bool = False,
        guidance_schedule: str = "linear",
        guidance_interval: tuple[int, int] | None = None,
        temperature: float | list[float] = 1.0,
        prune_ratios: dict[int, float] | list[float] | None = None,
        cell_threshold: float = 0.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_token_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_token_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
    ):
        r"""Inpaint ``mask_image``'s white region of ``image`` following ``prompt``.

        Args:
            image (PIL image, list of them, or array/tensor in [0, 1]): the image(s) to edit; resized to the model's
                resolution. One image, or one per prompt.
            mask_image (PIL image, array or tensor in [0, 1], or a list): the same size as `image`; 1 (white) marks
                what to regenerate, soft values blend.
            cell_threshold (`float` in [0, 1), defaults to 0.5): a token cell that straddles the mask's edge is
                regenerated when more than this share of its pixels is masked (0.5: mostly masked); 0 regenerates
                every cell that touches the mask. Measured on the default model, 0.5 keeps the unmasked half of the
                generated latent closer to the input (31.5 vs 29.4 dB) with the same success of the edit.
            Every other argument is as in [`VARCLIPPipeline.__call__`].
        """
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both `image` and `mask_image`")
        pixels = self.preprocess_image(image, resize=False)
        mask = self.preprocess_mask(mask_image, image, resize=False)
        prompts = PromptInputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_token_embeds,
                               prompt_attention_mask, negative_prompt_token_embeds, negative_prompt_attention_mask)
        request = self.prepare_request(
            prompts.num_images(self, num_images_per_prompt), generator=generator, output_type=output_type,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, more_smooth=more_smooth,
            edit=EditRequest(image_B3HW=pixels, mask_B1HW=mask, cell_threshold=cell_threshold),
            guidance_scale=guidance_scale, guidance_schedule=guidance_schedule, guidance_interval=guidance_interval,
            top_k=top_k, top_p=top_p, temperature=temperature, prune_ratios=prune_ratios,
            height=height, width=width, num_inference_steps=num_inference_steps,
        )
        size = self.vqvae.sample_size
        if pixels.shape[-2:] == (size, size):
            return self._generate(prompts, num_images_per_prompt, request)
        return self._generate_in_windows(prompts, num_images_per_prompt, request)

    def _generate_in_windows(self, prompts: PromptInputs, num_images_per_prompt: int, request):
        """A canvas larger than the model: inpaint it window by window (see :func:`inpaint_in_windows`)."""
        size = self.vqvae.sample_size
        H, W = request.edit.image_B3HW.shape[-2:]
        if H < size or W < size:
            raise ValueError(f"`image` is {W}×{H}: inpainting needs the model's {size}×{size} or a larger canvas, "
                             "which is filled window by window; resize smaller images up first")
        if request.output_type in ("latent", "tokens"):
            raise ValueError(f"`output_type={request.output_type!r}` needs a {size}×{size} image: a larger canvas is "
                             "assembled from several generations in pixel space")
        if request.edit.image_B3HW.shape[0] != 1 or request.edit.mask_B1HW.shape[0] != 1:
            raise ValueError("a canvas larger than the model is inpainted one image (and mask) at a time")

        def inpaint_window(window_B3hw: torch.Tensor, mask_B1hw: torch.Tensor) -> torch.Tensor:
            window_request = replace(request, output_type="pt", return_dict=True,
                                     edit=replace(request.edit, image_B3HW=window_B3hw, mask_B1HW=mask_B1hw))
            return self._generate(prompts, num_images_per_prompt, window_request).images * 2 - 1

        canvas = inpaint_in_windows(request.edit.image_B3HW, request.edit.mask_B1HW, size, request.num_images,
                                    inpaint_window)
        images = self.image_processor.postprocess(canvas.float(), output_type=request.output_type)
        return ImagePipelineOutput(images=images) if request.return_dict else (images,)


class VARCLIPImg2ImgPipeline(VARCLIPPipeline):
    r"""Image-to-image: keep an image's tokens for the first scales and sample the rest under the prompt.

    ``strength`` is the share of scales regenerated: 0 returns the image's own reconstruction, 1 is plain
    text-to-image (same seed, same image). In between: variations, re-captioning, coarse layout transfer.
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
        strength: float = 0.6,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        top_k: int | list[int] = DEFAULT_TOP_K,
        top_p: float | list[float] = DEFAULT_TOP_P,
        more_smooth: bool = False,
        guidance_schedule: str = "linear",
        guidance_interval: tuple[int, int] | None = None,
        temperature: float | list[float] = 1.0,
        prune_ratios: dict[int, float] | list[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_token_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_token_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
    ):
        r"""Re-generate ``image`` under ``prompt``, keeping its coarse scales.

        Args:
            image (PIL image, list of them, or array/tensor in [0, 1]): the starting image(s).
            strength (`float` in [0, 1], defaults to 0.6): share of the scales regenerated,
                `round(strength · S)` of the S scales, the finest ones.
            Every other argument is as in [`VARCLIPPipeline.__call__`].
        """
        if image is None:
            raise ValueError("image-to-image needs an `image`")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}")
        S = len(self.transformer.config.patch_nums)
        edit = EditRequest(image_B3HW=self.preprocess_image(image), keep_scales=S - round(strength * S))
        prompts = PromptInputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_token_embeds,
                               prompt_attention_mask, negative_prompt_token_embeds, negative_prompt_attention_mask)
        request = self.prepare_request(
            prompts.num_images(self, num_images_per_prompt), generator=generator, output_type=output_type,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, more_smooth=more_smooth, edit=edit,
            guidance_scale=guidance_scale, guidance_schedule=guidance_schedule, guidance_interval=guidance_interval,
            top_k=top_k, top_p=top_p, temperature=temperature, prune_ratios=prune_ratios,
            height=height, width=width, num_inference_steps=num_inference_steps,
        )
        return self._generate(prompts, num_images_per_prompt, request)


#: The largest margin :func:`prepare_outpainting` adds on one side, in pixels (window by window, 8192 px already takes
#: hundreds of windows); the canvas must also stay within ``PIL.Image.MAX_IMAGE_PIXELS``, the limit for input images.
MAX_OUTPAINT_MARGIN = 8192
#: What :func:`prepare_outpainting` fills the new margins with when no colour is given: the median colour of the image's
#: outermost pixels. Measured on the default model (4 scenes × 3 seeds, 64 px to the right): mid-grey (127, 127, 127)
#: gets smeared into blobs at the window edges on every seed (seam step 55, half of the new area off-palette); the
#: border colour, which is the world's background there, draws clean objects (seam step 0.1, 2 % off-palette).
DEFAULT_OUTPAINT_FILL = "border"


def outpainting_fill(image: PIL.Image.Image,
                     fill: str | tuple[int, int, int] = DEFAULT_OUTPAINT_FILL) -> tuple[int, int, int]:
    """The RGB colour ``fill`` names for ``image``'s new margins: ``"border"`` (the median colour of its outermost
    pixels), an ``(r, g, b)`` tuple, or any colour PIL reads (``"#ebebeb"``, ``"grey"``, ``"rgb(235,235,235)"``)."""
    if isinstance(fill, str) and fill == "border":
        rgb_HW3 = np.asarray(image.convert("RGB"))
        ring_N3 = np.concatenate([rgb_HW3[0], rgb_HW3[-1], rgb_HW3[:, 0], rgb_HW3[:, -1]])  # the outermost pixels
        return tuple(int(v) for v in np.median(ring_N3, axis=0))
    if isinstance(fill, str):
        try:
            colour = PIL.ImageColor.getrgb(fill)
        except ValueError:
            raise ValueError(f"`fill` must be 'border', an (r, g, b) tuple or a colour such as '#ebebeb' or 'grey', "
                             f"got {fill!r}") from None
        return tuple(colour[:3])
    if (isinstance(fill, (tuple, list)) and len(fill) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in fill)):
        return tuple(fill)
    raise ValueError(f"`fill` must be 'border', an (r, g, b) tuple of ints in [0, 255] or a colour name, got {fill!r}")


def prepare_outpainting(image: PIL.Image.Image, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0,
                        fill: str | tuple[int, int, int] = DEFAULT_OUTPAINT_FILL,
                        ) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """Extend ``image`` by the given margins (pixels) and return ``(canvas, mask)`` for the inpainting pipeline.

    The canvas holds the image with ``fill`` around it (see :func:`outpainting_fill`; by default the image's own
    border colour, which the model continues far more cleanly than a colour foreign to the image); the mask is white
    on the new margins. The inpainting pipeline keeps the canvas's size: one larger than the model is filled window by
    window, so any margins work.
    """
    for name, value in (("left", left), ("top", top), ("right", right), ("bottom", bottom)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_OUTPAINT_MARGIN:
            raise ValueError(f"`{name}` must be an int in [0, {MAX_OUTPAINT_MARGIN}] (pixels), got {value!r}")
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"`image` must be a PIL image, got {type(image).__name__}")
    colour = outpainting_fill(image, fill)
    w, h = image.size
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit and (w + left + right) * (h + top + bottom) > limit:
        raise ValueError(f"the outpainted canvas would be {w + left + right}×{h + top + bottom} pixels, more than "
                         f"PIL.Image.MAX_IMAGE_PIXELS ({limit}); use smaller margins")
    canvas = PIL.Image.new("RGB", (w + left + right, h + top + bottom), colour)
    canvas.paste(image.convert("RGB"), (left, top))
    mask = np.full((canvas.height, canvas.width), 255, dtype=np.uint8)
    mask[top : top + h, left : left + w] = 0
    return canvas, PIL.Image.fromarray(mask, mode="L")
