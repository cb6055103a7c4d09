"""VAR-CLIP text-to-image pipeline (Zhang et al. 2024): next-scale prediction conditioned on CLIP text embeddings."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import logging
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from ..loaders import VARCLIPLoraLoaderMixin
from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P
from ..text_encoding import encode_text, text_max_length
from ..vocabulary import unknown_words
from .next_scale import NextScalePipelineMixin, check_components_agree
from .single_file import NOT_GIVEN, check_text_components, pipeline_from_single_file

logger = logging.get_logger(__name__)

class VARCLIPPipeline(NextScalePipelineMixin, DiffusionPipeline, VARCLIPLoraLoaderMixin):
    r"""Text-to-image generation with VAR-CLIP.

    The prompt is encoded by CLIP's text tower into its projected, L2-normalised embedding; the transformer predicts
    the VQ-VAE's token maps scale by scale (1×1, 2×2, … 16×16), each conditioned on all coarser ones, and the VQ-VAE
    decodes the accumulated latent.

    LoRA adapters on the transformer load and combine with diffusers' API (`load_lora_weights`, `set_adapters`,
    `fuse_lora`, `unload_lora_weights`; see :class:`~var_clip.loaders.VARCLIPLoraLoaderMixin`).

    Components:
        tokenizer ([`~transformers.CLIPTokenizer`], optional): the CLIP tokenizer.
        text_encoder ([`~transformers.CLIPTextModelWithProjection`], optional): CLIP's text tower with projection.
            Both may be None; the pipeline then needs `prompt_embeds`.
        transformer ([`VARTransformer2DModel`]): a text-conditioned VAR transformer.
        vqvae ([`MultiScaleVQModel`]): the multi-scale VQ-VAE.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vqvae"
    _optional_components = ["tokenizer", "text_encoder", "transformer", "vqvae"]

    def __init__(
        self,
        tokenizer: CLIPTokenizer | None,
        text_encoder: CLIPTextModelWithProjection | None,
        transformer: VARTransformer2DModel,
        vqvae: MultiScaleVQModel,
    ):
        super().__init__()
        # any component may be None (e.g. only the text components, to call `encode_prompt`); those given must agree
        if transformer is not None:
            if transformer.config.condition_type != "text":
                raise ValueError("`transformer` is class-conditional; use `VARPipeline` for it")
            if vqvae is not None:
                check_components_agree(transformer, vqvae)
            if text_encoder is not None and text_encoder.config.projection_dim != transformer.config.text_embed_dim:
                raise ValueError(f"`text_encoder` projects to {text_encoder.config.projection_dim} dims but "
                                 f"`transformer` expects text embeddings of {transformer.config.text_embed_dim}")
            H = transformer.config.cross_attention_dim
            if text_encoder is not None and H and text_encoder.config.hidden_size != H:
                raise ValueError(f"`text_encoder`'s hidden states have {text_encoder.config.hidden_size} dims but "
                                 f"`transformer` cross-attends to {H}")
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vqvae=vqvae)

    @classmethod
    def from_single_file(
        cls,
        var_checkpoint: str | os.PathLike,
        vae_checkpoint: str | os.PathLike,
        *,
        text_encoder: CLIPTextModelWithProjection | str | os.PathLike | None = NOT_GIVEN,
        tokenizer: CLIPTokenizer | None = NOT_GIVEN,
        patch_nums: Sequence[int] | str | None = None,
        num_heads: int | None = None,
        quant_resi: float = 0.5,
        dtype: torch.dtype | None = None,
    ):
        r"""Load the original VAR-CLIP files directly, without converting them first.

        The files are read by the converter's own code (``var-clip convert-var-clip``):
        ``torch.load(weights_only=True)`` after a look at their first bytes, every key consumed, every hyperparameter
        inferred; the pipeline equals the one the converted folder loads.

        Args:
            var_checkpoint: VAR-CLIP's ``ar-ckpt-*.pth`` (or a bare transformer state dict).
            vae_checkpoint: VAR's VQ-VAE, ``vae_ch160v4096z32.pth``.
            text_encoder, tokenizer: the CLIP text tower and tokenizer, which the original files do not hold (VAR-CLIP
                d16: ``openai/clip-vit-large-patch14``); ``text_encoder`` may also be a local folder holding both.
                Both must be given; both None makes a pipeline that takes ``prompt_embeds`` only.
            patch_nums: the scale sides; default the checkpoint's own (else VAR's 256-px schedule).
            num_heads: only for checkpoints without L2-normalised attention (else heads = depth is assumed).
            quant_resi: φ's residual ratio (0.5 in VAR), which the files do not store.
            dtype: cast the weights (all but the modules kept in float32).

        Examples:
            ```py
            >>> from transformers import CLIPTextModelWithProjection, CLIPTokenizer
            >>> from var_clip import VARCLIPPipeline

            >>> clip = "openai/clip-vit-large-patch14"
            >>> pipe = VARCLIPPipeline.from_single_file(
            ...     "ar-ckpt-last.pth", "vae_ch160v4096z32.pth",
            ...     text_encoder=CLIPTextModelWithProjection.from_pretrained(clip),
            ...     tokenizer=CLIPTokenizer.from_pretrained(clip),
            ... )
            ```
        """
        check_text_components(cls.__name__, text_encoder, tokenizer)
        return pipeline_from_single_file(cls, "text", var_checkpoint, vae_checkpoint, text_encoder=text_encoder,
                                         tokenizer=tokenizer, patch_nums=patch_nums, num_heads=num_heads,
                                         quant_resi=quant_resi, dtype=dtype)

    @property
    def tokenizer_max_length(self) -> int:
        return text_max_length(self.tokenizer, self.text_encoder)

    # -- prompts -------------------------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_token_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_token_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
    ) -> PromptEmbeddings:
        """Everything the transformer reads of the prompts, repeated ``num_images_per_prompt`` times.

        Returns a :class:`PromptEmbeddings`: the pooled, normalised embeddings (B·n, E) and, with guidance, the
        negative ones; and, when the transformer cross-attends to the text (or has no transformer to ask), the
        token states (B·n, T, H) with their masks. Without a negative prompt the negative condition is the
        transformer's learned null embedding (and null token), as in VAR-CLIP; on a pipeline loaded without a
        transformer (``transformer=None``, only the text components) the negative fields stay None, and the
        transformer applies its null condition when these embeddings are passed to ``__call__``.
        """
        device = device or self._execution_device
        tokens = self.transformer is None or self.transformer.uses_text_tokens
        if prompt_embeds is None:
            # the text encoder runs on the execution device, not its `.device`: meta under sequential offload
            prompt_embeds, states, mask = encode_text(self.tokenizer, self.text_encoder,
                                                      [prompt] if isinstance(prompt, str) else list(prompt), device,
                                                      execution_device=self._execution_device)
            if prompt_token_embeds is None:
                prompt_token_embeds, prompt_attention_mask = states, mask
        batch_size = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is not None:
                negatives = ([negative_prompt] * batch_size if isinstance(negative_prompt, str)
                             else list(negative_prompt))
                negative_prompt_embeds, states, mask = encode_text(self.tokenizer, self.text_encoder, negatives, device,
                                                                   execution_device=self._execution_device)
                if negative_prompt_token_embeds is None:
                    negative_prompt_token_embeds, negative_prompt_attention_mask = states, mask
            elif self.transformer is not None:
                negative_prompt_embeds = self.transformer.null_condition(batch_size)
        if (do_classifier_free_guidance and tokens and negative_prompt_token_embeds is None
                and self.transformer is not None):
            negative_prompt_token_embeds, negative_prompt_attention_mask = self.transformer.null_text_states(batch_size)

        dtype = self.transformer.dtype if self.transformer is not None else prompt_embeds.dtype

        def expand(x: torch.Tensor | None, cast: bool = True) -> torch.Tensor | None:
            if x is None:
                return None
            x = x.to(device=device, dtype=dtype) if cast else x.to(device=device)
            return x.repeat_interleave(num_images_per_prompt, dim=0)

        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_token_embeds = negative_prompt_attention_mask = None
        if not tokens:
            prompt_token_embeds = prompt_attention_mask = None
            negative_prompt_token_embeds = negative_prompt_attention_mask = None
        elif prompt_token_embeds is not None and prompt_attention_mask is None:
            prompt_attention_mask = torch.ones(prompt_token_embeds.shape[:2], dtype=torch.bool)
        if negative_prompt_token_embeds is not None and negative_prompt_attention_mask is None:
            negative_prompt_attention_mask = torch.ones(negative_prompt_token_embeds.shape[:2], dtype=torch.bool)
        return PromptEmbeddings(
            expand(prompt_embeds), expand(negative_prompt_embeds), expand(prompt_token_embeds),
            expand(prompt_attention_mask, cast=False), expand(negative_prompt_token_embeds),
            expand(negative_prompt_attention_mask, cast=False),
        )

    def text_condition(self, embeddings: PromptEmbeddings, guided: bool) -> dict[str, torch.Tensor]:
        """The transformer's condition arguments: the conditional rows and, with guidance, the unconditional ones.

        Without negative embeddings the unconditional rows are the learned null condition, applied inside the
        transformer's forward (``cond_drop_mask``), where offloading hooks have put its weights on the device.
        """
        e = embeddings
        B = e.prompt_embeds.shape[0]
        tokens = self.transformer.uses_text_tokens
        if tokens and e.prompt_token_embeds is None:
            raise ValueError("this transformer cross-attends to the text: pass `prompt_token_embeds` and "
                             "`prompt_attention_mask` with `prompt_embeds` (see `encode_prompt`)")
        states, mask = (e.prompt_token_embeds, e.prompt_attention_mask.bool()) if tokens else (None, None)
        condition = {"text_embeds": e.prompt_embeds}
        if guided and e.negative_prompt_embeds is None:
            condition = {"text_embeds": e.prompt_embeds.repeat(2, 1),
                         "cond_drop_mask": torch.arange(2 * B, device=e.prompt_embeds.device) >= B}
            if tokens:
                states, mask = states.repeat(2, 1, 1), mask.repeat(2, 1)
        elif guided:
            condition = {"text_embeds": torch.cat((e.prompt_embeds, e.negative_prompt_embeds))}
            if tokens:
                states, mask = _pad_cat(states, mask, e.negative_prompt_token_embeds,
                                        e.negative_prompt_attention_mask.bool())
        if tokens:
            condition.update(encoder_hidden_states=states, encoder_attention_mask=mask)
        return condition

    def known_words(self) -> list[str] | None:
        """The words that steer this pipeline: those of the transformer's training captions (its config's
        ``vocabulary``) and those the active LoRA adapters taught; None when the model records no vocabulary."""
        vocabulary = getattr(self.transformer.config, "vocabulary", None) if self.transformer is not None else None
        if not vocabulary:
            return None
        taught = self.adapter_words()
        return sorted({*vocabulary, *taught}) if taught else list(vocabulary)

    def warn_unknown_words(self, prompt: str | list[str] | None) -> list[str]:
        """Warn once per call when the prompts use words the transformer never saw in training (and no active adapter
        taught); returns them."""
        vocabulary = self.known_words()
        if not vocabulary or prompt is None:
            return []
        unknown = unknown_words([prompt] if isinstance(prompt, str) else prompt, vocabulary)
        if unknown:
            logger.warning(f"this model never saw {', '.join(map(repr, unknown))} in training; it still generates, but "
                           f"only these words steer it: {' '.join(vocabulary)}")
        return unknown

    def check_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> int:
        """Validate the condition arguments; returns the number of prompts."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`"
                             + (" (both were given)" if prompt is not None else " (neither was given)"))
        E = self.transformer.config.text_embed_dim
        if prompt is not None:
            if not (isinstance(prompt, str)
                    or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))):
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
            if not (isinstance(negative_prompt, str)
                    or (isinstance(negative_prompt, list) and all(isinstance(p, str) for p in negative_prompt))):
                raise ValueError(f"`negative_prompt` must be a str or a list of str, "
                                 f"got {type(negative_prompt).__name__}")
            if isinstance(negative_prompt, list) and len(negative_prompt) != batch_size:
                raise ValueError(f"`negative_prompt` has {len(negative_prompt)} entries for {batch_size} prompts")
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError("this pipeline has no `text_encoder`/`tokenizer`: pass `negative_prompt_embeds` "
                                 "instead")
        if negative_prompt_embeds is not None:
            _check_embeds("negative_prompt_embeds", negative_prompt_embeds, E)
            if negative_prompt_embeds.shape[0] != batch_size:
                raise ValueError(f"`negative_prompt_embeds` has {negative_prompt_embeds.shape[0]} rows for "
                                 f"{batch_size} prompts")
        return batch_size

    def check_token_inputs(self, batch_size: int, prompt, negative_prompt, prompt_embeds, **token_inputs) -> None:
        """Validate ``prompt_token_embeds`` / ``prompt_attention_mask`` and their negatives."""
        H = self.transformer.config.cross_attention_dim
        given = {k: v for k, v in token_inputs.items() if v is not None}
        if not given:
            if prompt_embeds is not None and self.transformer.uses_text_tokens:
                raise ValueError("this transformer cross-attends to the text: with `prompt_embeds` also pass "
                                 f"`prompt_token_embeds` (B, T, {H}) and `prompt_attention_mask` (B, T)")
            return
        if not self.transformer.uses_text_tokens:
            raise ValueError(f"{sorted(given)} are for transformers with token-level conditioning; this one reads the "
                             "pooled `prompt_embeds` only")
        for side, text in (("", prompt), ("negative_", negative_prompt)):
            states, mask = (token_inputs.get(f"{side}prompt_token_embeds"),
                            token_inputs.get(f"{side}prompt_attention_mask"))
            if states is None:
                if mask is not None:
                    raise ValueError(f"`{side}prompt_attention_mask` needs `{side}prompt_token_embeds`")
                continue
            if text is not None:
                raise ValueError(f"pass `{side}prompt_token_embeds` with `{side}prompt_embeds`, "
                                 f"not with `{side}prompt`")
            if (not isinstance(states, torch.Tensor) or states.ndim != 3 or states.shape[0] != batch_size
                    or states.shape[2] != H):
                shape = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
                raise ValueError(f"`{side}prompt_token_embeds` must be a tensor ({batch_size}, T, {H}), got {shape}")
            if not states.is_floating_point() or not torch.isfinite(states).all():
                raise ValueError(f"`{side}prompt_token_embeds` must be finite floating-point values")
            if mask is not None and (not isinstance(mask, torch.Tensor)
                                     or tuple(mask.shape) != tuple(states.shape[:2])):
                raise ValueError(f"`{side}prompt_attention_mask` must be a tensor {tuple(states.shape[:2])}, got "
                                 f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")

    # -- generation ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
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
            prompt_embeds (`torch.Tensor` (B, E), optional): precomputed pooled, normalised CLIP text embeddings
                instead of `prompt`.
            negative_prompt_embeds (`torch.Tensor` (B, E), optional): precomputed negative embeddings.
            prompt_token_embeds (`torch.Tensor` (B, T, H), optional): with `prompt_embeds`, for a transformer with
                token-level conditioning: the text encoder's last hidden states.
            prompt_attention_mask (`torch.Tensor` (B, T), optional): which of `prompt_token_embeds` are real tokens.
            negative_prompt_token_embeds / negative_prompt_attention_mask (optional): the same for the negative
                condition (default: the transformer's learned null token).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (B, H, W, 3) in [0, 1], `"pt"` (B, 3, H, W) in
                [0, 1], `"latent"` (the accumulated latent `f_hat`, not decoded) or `"tokens"` (the list of
                per-scale token indices).
            return_dict (`bool`, defaults to True): return an [`~diffusers.ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable` or diffusers `PipelineCallback`, optional): called after every scale as
                `callback(pipe, scale_index, scale_side, tensors)`; it may return `{"latents": ...}` to edit the
                latent, and may set `pipe._guidance_scale` (the remaining scales follow it).
            callback_on_step_end_tensor_inputs (`list[str]`, optional): which of `latents` (= `f_hat`), `idx_Bl`,
                `logits_BlV`, `tokens`, `prompt_embeds` to pass.
            height, width, num_inference_steps (`int`, optional): diffusers' names, for apps that always pass them:
                accepted only with this model's values (the image side, fixed by the VQ-VAE's `patch_nums`, and one
                step per scale); any other value is a ValueError that says what to use instead.

        Examples:
            ```py
            >>> import torch
            >>> from var_clip import VARCLIPPipeline

            >>> pipe = VARCLIPPipeline.from_pretrained("path/or/repo-id")
            >>> image = pipe("a red fox", generator=torch.Generator().manual_seed(0)).images[0]
            ```
        """
        prompts = PromptInputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_token_embeds,
                               prompt_attention_mask, negative_prompt_token_embeds, negative_prompt_attention_mask)
        request = self.prepare_request(
            prompts.num_images(self, num_images_per_prompt), generator=generator, output_type=output_type,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, more_smooth=more_smooth,
            guidance_scale=guidance_scale, guidance_schedule=guidance_schedule, guidance_interval=guidance_interval,
            top_k=top_k, top_p=top_p, temperature=temperature, prune_ratios=prune_ratios,
            height=height, width=width, num_inference_steps=num_inference_steps,
        )
        return self._generate(prompts, num_images_per_prompt, request)

    def _generate(self, prompts: PromptInputs, num_images_per_prompt: int, request):
        """The steps shared by text-to-image, inpainting and image-to-image (inputs already checked)."""
        # the intra-op threads that suit this call's work, unless the user chose them (restored afterwards)
        with self.threads_for(request):
            device = self._execution_device
            self.warn_unknown_words(prompts.prompt)

            # 1. encode the prompt and the negative prompt (without one, the transformer applies its learned null
            #    condition)
            do_cfg = request.guided
            has_negative = prompts.negative_prompt is not None or prompts.negative_prompt_embeds is not None
            embeddings = self.encode_prompt(
                prompts.prompt, device, num_images_per_prompt, do_cfg and has_negative, prompts.negative_prompt,
                prompts.prompt_embeds,
                prompts.negative_prompt_embeds, prompts.prompt_token_embeds, prompts.prompt_attention_mask,
                prompts.negative_prompt_token_embeds, prompts.negative_prompt_attention_mask,
            )

            # 2. when editing, the input image's tokens that are kept at each scale
            known = self.known_tokens(request.edit, request.num_images) if request.edit is not None else None

            # 3. sample the token maps scale by scale
            f_hat, tokens = self.sample_next_scale(self.text_condition(embeddings, guided=do_cfg), request, known)

            # 4. decode (and, when inpainting, paste back the unmasked pixels)
            return self.decode_output(f_hat, tokens, request)


class PromptEmbeddings(NamedTuple):
    """What :meth:`VARCLIPPipeline.encode_prompt` returns; the token fields are None for pooled-only models."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    prompt_token_embeds: torch.Tensor | None = None
    prompt_attention_mask: torch.Tensor | None = None
    negative_prompt_token_embeds: torch.Tensor | None = None
    negative_prompt_attention_mask: torch.Tensor | None = None


@dataclass
class PromptInputs:
    """The prompt arguments of one text-conditioned call, as given."""

    prompt: str | list[str] | None = None
    negative_prompt: str | list[str] | None = None
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    prompt_token_embeds: torch.Tensor | None = None
    prompt_attention_mask: torch.Tensor | None = None
    negative_prompt_token_embeds: torch.Tensor | None = None
    negative_prompt_attention_mask: torch.Tensor | None = None

    def num_images(self, pipe: VARCLIPPipeline, num_images_per_prompt) -> int:
        """Validate against ``pipe``; returns prompts × images per prompt."""
        batch_size = pipe.check_inputs(self.prompt, self.negative_prompt, self.prompt_embeds,
                                       self.negative_prompt_embeds)
        pipe.check_token_inputs(batch_size, self.prompt, self.negative_prompt, self.prompt_embeds,
                                prompt_token_embeds=self.prompt_token_embeds,
                                prompt_attention_mask=self.prompt_attention_mask,
                                negative_prompt_token_embeds=self.negative_prompt_token_embeds,
                                negative_prompt_attention_mask=self.negative_prompt_attention_mask)
        pipe.check_num_images(num_images_per_prompt)
        return batch_size * num_images_per_prompt


def _pad_cat(a_BTH: torch.Tensor, a_mask: torch.BoolTensor, b_BTH: torch.Tensor, b_mask: torch.BoolTensor):
    """Stack two token-state batches along the batch, padding the shorter one (masked out)."""
    T = max(a_BTH.shape[1], b_BTH.shape[1])
    pad = lambda x, m: (F.pad(x, (0, 0, 0, T - x.shape[1])), F.pad(m, (0, T - m.shape[1]), value=False))  # noqa: E731
    (a_BTH, a_mask), (b_BTH, b_mask) = pad(a_BTH, a_mask), pad(b_BTH, b_mask)
    return torch.cat((a_BTH, b_BTH.to(a_BTH.dtype))), torch.cat((a_mask, b_mask))


def _check_embeds(name: str, embeds, width: int) -> None:
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[1] != width or embeds.shape[0] < 1:
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"`{name}` must be a float tensor of shape (B, {width}), got {shape}")
    if not embeds.is_floating_point() or not torch.isfinite(embeds).all():
        raise ValueError(f"`{name}` must be finite floating-point values (found NaN/inf or a non-float dtype)")
