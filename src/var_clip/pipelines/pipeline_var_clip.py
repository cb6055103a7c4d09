"""VAR-CLIP text-to-image pipeline (Zhang et al. 2024): next-scale prediction conditioned on CLIP text embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import logging
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from .next_scale import EditRequest, NextScalePipelineMixin

logger = logging.get_logger(__name__)

class VARCLIPPipeline(NextScalePipelineMixin, DiffusionPipeline):
    r"""Text-to-image generation with VAR-CLIP.

    The prompt is encoded by CLIP's text tower into its projected, L2-normalised embedding; the transformer predicts
    the VQ-VAE's token maps scale by scale (1×1, 2×2, … 16×16), each conditioned on all coarser ones, and the VQ-VAE
    decodes the accumulated latent.

    Components:
        tokenizer ([`~transformers.CLIPTokenizer`], optional): the CLIP tokenizer.
        text_encoder ([`~transformers.CLIPTextModelWithProjection`], optional): CLIP's text tower with projection.
            Both may be None; the pipeline then needs `prompt_embeds`.
        transformer ([`VARTransformer2DModel`]): a text-conditioned VAR transformer.
        vqvae ([`MultiScaleVQModel`]): the multi-scale VQ-VAE.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vqvae"
    _optional_components = ["tokenizer", "text_encoder"]

    def __init__(
        self,
        tokenizer: CLIPTokenizer | None,
        text_encoder: CLIPTextModelWithProjection | None,
        transformer: VARTransformer2DModel,
        vqvae: MultiScaleVQModel,
    ):
        super().__init__()
        if transformer.config.condition_type != "text":
            raise ValueError("`transformer` is class-conditional; use `VARPipeline` for it")
        if tuple(transformer.config.patch_nums) != tuple(vqvae.config.patch_nums):
            raise ValueError(f"`transformer` and `vqvae` disagree on patch_nums: {transformer.config.patch_nums} vs "
                             f"{vqvae.config.patch_nums}")
        if (transformer.config.vocab_size, transformer.config.latent_channels) != (vqvae.config.vocab_size, vqvae.config.latent_channels):
            raise ValueError("`transformer` and `vqvae` disagree on the codebook (vocab_size, latent_channels)")
        if text_encoder is not None and text_encoder.config.projection_dim != transformer.config.text_embed_dim:
            raise ValueError(f"`text_encoder` projects to {text_encoder.config.projection_dim} dims but `transformer` "
                             f"expects text embeddings of {transformer.config.text_embed_dim}")
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vqvae=vqvae)

    @property
    def tokenizer_max_length(self) -> int:
        limit = self.tokenizer.model_max_length if self.tokenizer is not None else 77
        if self.text_encoder is not None:
            limit = min(limit, self.text_encoder.config.max_position_embeddings)
        return limit

    # -- prompts -------------------------------------------------------------------------------------------------------

    def _encode_text(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """CLIP's projected text embedding of each prompt, L2-normalised (B, E), as VAR-CLIP conditions on."""
        max_len = self.tokenizer_max_length
        for prompt in prompts:
            full_ids = self.tokenizer(prompt).input_ids  # with BOS and EOS, untruncated
            if len(full_ids) > max_len:
                # truncation keeps BOS + (max_len - 2) tokens + EOS: name the words that fall off
                dropped = self.tokenizer.decode(full_ids[max_len - 1 : -1])
                logger.warning(f"CLIP reads at most {max_len} tokens; this part of the prompt was dropped: {dropped!r}")
        ids = self.tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        embeds = self.text_encoder(ids.to(self.text_encoder.device)).text_embeds
        return (embeds / embeds.norm(dim=-1, keepdim=True)).to(device)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings (B·n, E) and, with guidance, the negative ones (B·n, E).

        Without a negative prompt the negative embedding is the transformer's learned null embedding, as in VAR-CLIP.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self._encode_text([prompt] if isinstance(prompt, str) else list(prompt), device)
        batch_size = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is not None:
                negatives = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
                negative_prompt_embeds = self._encode_text(negatives, device)
            else:
                negative_prompt_embeds = self.transformer.null_condition(batch_size)
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        else:
            negative_prompt_embeds = None
        return prompt_embeds, negative_prompt_embeds

    def check_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> int:
        """Validate the condition arguments; returns the number of prompts."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`"
                             + (" (both were given)" if prompt is not None else " (neither was given)"))
        E = self.transformer.config.text_embed_dim
        if prompt is not None:
            if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))):
                raise ValueError(f"`prompt` must be a str or a non-empty list of str, got {type(prompt).__name__}")
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no `text_encoder`/`tokenizer` (converted without one): pass "
                                 f"`prompt_embeds` of shape (B, {E}) instead of `prompt`")
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        else:
            _check_embeds("prompt_embeds", prompt_embeds, E)
            batch_size = prompt_embeds.shape[0]
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of `negative_prompt` and `negative_prompt_embeds`")
        if negative_prompt is not None:
            if not (isinstance(negative_prompt, str) or (isinstance(negative_prompt, list) and all(isinstance(p, str) for p in negative_prompt))):
                raise ValueError(f"`negative_prompt` must be a str or a list of str, got {type(negative_prompt).__name__}")
            if isinstance(negative_prompt, list) and len(negative_prompt) != batch_size:
                raise ValueError(f"`negative_prompt` has {len(negative_prompt)} entries for {batch_size} prompts")
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no `text_encoder`/`tokenizer`: pass `negative_prompt_embeds` instead")
        if negative_prompt_embeds is not None:
            _check_embeds("negative_prompt_embeds", negative_prompt_embeds, E)
            if negative_prompt_embeds.shape[0] != batch_size:
                raise ValueError(f"`negative_prompt_embeds` has {negative_prompt_embeds.shape[0]} rows for {batch_size} prompts")
        return batch_size

    # -- generation ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 4.0,
        top_k: int | list[int] = 900,
        top_p: float | list[float] = 0.95,
        more_smooth: bool = False,
        guidance_schedule: str = "linear",
        guidance_interval: tuple[int, int] | None = None,
        temperature: float | list[float] = 1.0,
        prune_ratios: dict[int, float] | list[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        r"""Generate images from text.

        Args:
            prompt (`str` or `list[str]`): what to draw. Longer than CLIP's 77 tokens is truncated with a warning.
            negative_prompt (`str` or `list[str]`, optional): takes the place of the learned null embedding in
                guidance.
            num_images_per_prompt (`int`, defaults to 1): images per prompt.
            guidance_scale (`float`, defaults to 4.0): classifier-free guidance strength; the weight at scale k of
                S is `guidance_scale · k / (S - 1)` and logits are `(1 + t)·cond − t·uncond`. 0 disables guidance.
            top_k (`int`, defaults to 900): keep the k most likely tokens (0 or ≥ vocabulary size: no filter).
            top_p (`float`, defaults to 0.95): nucleus filtering in [0, 1] (0: no filter).
            more_smooth (`bool`, defaults to False): Gumbel-softmax smoothing of the sampled embeddings (visually
                smoother, the original's visualisation setting).
            guidance_schedule (`str`, defaults to `"linear"`): `"linear"` (the original ramp) or `"constant"`.
            guidance_interval (`tuple[int, int]`, optional): `(start, stop)` scale indices where guidance applies.
                Stopping before the last scales (e.g. `(0, S - 2)`) also skips their unconditional pass: faster, an
                approximation (as Switti).
            temperature (`float` or `list[float]`, defaults to 1.0): softmax temperature, one value or one per scale.
                `top_k` and `top_p` likewise accept one value per scale.
            prune_ratios (`dict[int, float]` or `list[float]`, optional): FastVAR's cached token pruning, an opt-in
                approximation: at the named scales (by side, e.g. `{13: 0.4, 16: 0.5}`) only the most
                high-frequency tokens run through the transformer, the rest reuse the previous scale's hidden states.
            generator (`torch.Generator` or list of them, optional): the only source of randomness; a list gives
                each image its own generator.
            prompt_embeds (`torch.Tensor` (B, E), optional): precomputed (normalised) CLIP text embeddings instead of
                `prompt`.
            negative_prompt_embeds (`torch.Tensor` (B, E), optional): precomputed negative embeddings.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, 3) in [0, 1], `"pt"` (B, 3, H, W) in
                [0, 1], or `"tokens"` (the list of per-scale token indices, not decoded).
            return_dict (`bool`, defaults to True): return an [`~diffusers.ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, optional): called after every scale as
                `callback(pipe, scale_index, scale_side, tensors)`; it may return `{"f_hat": ...}` to edit the latent.
            callback_on_step_end_tensor_inputs (`list[str]`, optional): which of `f_hat`, `idx_Bl`, `logits_BlV` to pass.

        Examples:
            ```py
            >>> import torch
            >>> from var_clip import VARCLIPPipeline

            >>> pipe = VARCLIPPipeline.from_pretrained("path/or/repo-id")
            >>> image = pipe("a red fox", generator=torch.Generator().manual_seed(0)).images[0]
            ```
        """
        return self._generate(
            prompt, negative_prompt, num_images_per_prompt, prompt_embeds, negative_prompt_embeds, generator, output_type,
            return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, more_smooth, edit=None,
            guidance_scale=guidance_scale, guidance_schedule=guidance_schedule, guidance_interval=guidance_interval,
            top_k=top_k, top_p=top_p, temperature=temperature, prune_ratios=prune_ratios,
        )

    def _generate(self, prompt, negative_prompt, num_images_per_prompt, prompt_embeds, negative_prompt_embeds, generator,
                  output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, more_smooth,
                  edit: EditRequest | None, **schedule_kwargs):
        """The steps shared by text-to-image, inpainting and image-to-image."""
        # 1. check inputs
        batch_size = self.check_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self.check_num_images(num_images_per_prompt)
        num_images = batch_size * num_images_per_prompt
        schedule = self.check_sampling_inputs(num_images, generator, output_type, callback_on_step_end_tensor_inputs,
                                              **schedule_kwargs)
        device = self._execution_device

        # 2. encode the prompt (and the negative prompt, or the learned null embedding)
        do_cfg = schedule.last_guided_scale >= 0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds, negative_prompt_embeds
        )

        # 3. project to the transformer's width: the start token and the AdaLN condition
        cond_BD = self.transformer.embed_condition(text_embeds=prompt_embeds)
        uncond_BD = self.transformer.embed_condition(text_embeds=negative_prompt_embeds) if do_cfg else None

        # 4. when editing, the input image's tokens that are kept at each scale
        known = self.known_tokens(edit, num_images) if edit is not None else None

        # 5. sample the token maps scale by scale
        f_hat, tokens = self.sample_next_scale(cond_BD, uncond_BD, schedule, more_smooth, generator,
                                               callback_on_step_end, callback_on_step_end_tensor_inputs, known)

        # 6. decode (and, when inpainting, paste back the unmasked pixels)
        return self.decode_output(f_hat, tokens, output_type, return_dict, edit)


def _check_embeds(name: str, embeds, width: int) -> None:
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[1] != width or embeds.shape[0] < 1:
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"`{name}` must be a float tensor of shape (B, {width}), got {shape}")
    if not embeds.is_floating_point() or not torch.isfinite(embeds).all():
        raise ValueError(f"`{name}` must be finite floating-point values (found NaN/inf or a non-float dtype)")
