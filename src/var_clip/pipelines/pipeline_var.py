"""Class-conditional VAR pipeline (Tian et al. 2024): the same next-scale sampler, conditioned on a class label."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P
from .next_scale import EditRequest, NextScalePipelineMixin, check_components_agree
from .single_file import pipeline_from_single_file


class VARPipeline(NextScalePipelineMixin, DiffusionPipeline):
    r"""Class-conditional image generation with VAR (for example ImageNet 256 × 256 with `var_d16` … `var_d30`).

    Components:
        transformer ([`VARTransformer2DModel`]): a class-conditional VAR transformer.
        vqvae ([`MultiScaleVQModel`]): the multi-scale VQ-VAE.
    """

    model_cpu_offload_seq = "transformer->vqvae"

    def __init__(self, transformer: VARTransformer2DModel, vqvae: MultiScaleVQModel):
        super().__init__()
        if transformer is not None:
            if transformer.config.condition_type != "class":
                raise ValueError("`transformer` is text-conditional; use `VARCLIPPipeline` for it")
            if vqvae is not None:
                check_components_agree(transformer, vqvae)
        self.register_modules(transformer=transformer, vqvae=vqvae)

    @classmethod
    def from_single_file(
        cls,
        var_checkpoint: str | os.PathLike,
        vae_checkpoint: str | os.PathLike,
        *,
        patch_nums: Sequence[int] | str | None = None,
        num_heads: int | None = None,
        quant_resi: float = 0.5,
        dtype: torch.dtype | None = None,
    ):
        r"""Load VAR's original files (``var_d16.pth`` … ``var_d30.pth`` and ``vae_ch160v4096z32.pth``) directly.

        The files are read by the converter's own code (``var-clip convert-var``): ``torch.load(weights_only=True)``
        after a look at their first bytes, every key consumed, every hyperparameter inferred; the pipeline equals the
        one the converted folder loads. ``num_heads`` is needed only for checkpoints without L2-normalised attention
        (VAR's released ones use heads = depth, the default); the other arguments are as in
        [`VARCLIPPipeline.from_single_file`].
        """
        return pipeline_from_single_file(cls, "class", var_checkpoint, vae_checkpoint, patch_nums=patch_nums,
                                         num_heads=num_heads, quant_resi=quant_resi, dtype=dtype)

    def check_inputs(self, class_labels) -> list[int]:
        labels = ([class_labels] if isinstance(class_labels, int) and not isinstance(class_labels, bool)
                  else class_labels)
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist() if labels.ndim == 1 and not labels.is_floating_point() else None
        n = self.transformer.config.num_classes
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(c, int) and not isinstance(c, bool) for c in labels)):
            raise ValueError(f"`class_labels` must be an int or a non-empty list of ints in [0, {n}), "
                             f"got {class_labels!r}")
        bad = [c for c in labels if not 0 <= c < n]
        if bad:
            raise ValueError(f"`class_labels` must be in [0, {n}), got {bad}")
        return labels

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int],
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
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
    ):
        r"""Generate images of the given classes.

        Args:
            class_labels (`int` or `list[int]`): class indices in `[0, num_classes)`.
            Every other argument is as in [`VARCLIPPipeline.__call__`]; the unconditional branch of guidance is the
            null class.

        Examples:
            ```py
            >>> import torch
            >>> from var_clip import VARPipeline

            >>> pipe = VARPipeline.from_pretrained("path/to/converted/var_d16")
            >>> image = pipe(class_labels=[207],
            ...              generator=torch.Generator().manual_seed(0)).images[0]  # golden retriever
            ```
        """
        labels = self.check_inputs(class_labels)
        self.check_num_images(num_images_per_prompt)
        request = self.prepare_request(
            len(labels) * num_images_per_prompt, generator=generator, output_type=output_type, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            more_smooth=more_smooth, guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
            guidance_interval=guidance_interval, top_k=top_k, top_p=top_p, temperature=temperature,
            prune_ratios=prune_ratios,
            height=height, width=width, num_inference_steps=num_inference_steps,
        )
        return self._generate(labels, num_images_per_prompt, request)

    def _generate(self, labels: list[int], num_images_per_prompt: int, request):
        """The steps shared by generation and inpainting (inputs already checked)."""
        # the intra-op threads that suit this call's work, unless the user chose them (restored afterwards)
        with self.threads_for(request):
            device = self._execution_device

            # 1. the labels and, for guidance, the same rows again, which the transformer turns into its null class
            labels_B = torch.tensor(labels, device=device).repeat_interleave(num_images_per_prompt)
            condition = {"class_labels": labels_B}
            if request.guided:
                B = labels_B.shape[0]
                condition = {"class_labels": labels_B.repeat(2),
                             "cond_drop_mask": torch.arange(2 * B, device=device) >= B}

            # 2. when editing, the input image's tokens that are kept at each scale
            known = self.known_tokens(request.edit, request.num_images) if request.edit is not None else None

            # 3. sample the token maps scale by scale
            f_hat, tokens = self.sample_next_scale(condition, request, known)

            # 4. decode (and, when inpainting, paste back the unmasked pixels)
            return self.decode_output(f_hat, tokens, request)


class VARInpaintPipeline(VARPipeline):
    r"""Class-conditional inpainting with VAR: regenerate the white region of `mask_image` as the given class."""

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int],
        image=None,
        mask_image=None,
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
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
    ):
        r"""As [`VARCLIPInpaintPipeline.__call__`], with `class_labels` in place of prompts."""
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both `image` and `mask_image`")
        labels = self.check_inputs(class_labels)
        self.check_num_images(num_images_per_prompt)
        edit = EditRequest(image_B3HW=self.preprocess_image(image), mask_B1HW=self.preprocess_mask(mask_image, image))
        request = self.prepare_request(
            len(labels) * num_images_per_prompt, generator=generator, output_type=output_type, return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            more_smooth=more_smooth, edit=edit, guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
            guidance_interval=guidance_interval, top_k=top_k, top_p=top_p, temperature=temperature,
            prune_ratios=prune_ratios,
            height=height, width=width, num_inference_steps=num_inference_steps,
        )
        return self._generate(labels, num_images_per_prompt, request)
