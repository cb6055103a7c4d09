"""The next-scale sampling loop shared by the text- and class-conditional pipelines.

Legend: B batch (images) · S scales · pn side of one scale · l = pn² · D width · C latent channels ·
V codebook size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..loaders.lora import loaded_adapters
from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..sampling import SamplingSchedule, gumbel_smooth_probs, resolve_schedule, sample_tokens
from ..utils.logs import logger_level
from ..utils.threads import intra_op_threads, threads_for_work

OUTPUT_TYPES = ("pil", "np", "pt", "latent", "tokens")
_MODELING_LOGGER = "diffusers.models.modeling_utils"  # warns when a cast reaches modules kept in float32


@dataclass
class EditRequest:
    """An image to edit, preprocessed: pixels (B, 3, H, W) in [-1, 1], and either a regenerate-mask or a strength.

    ``mask_B1HW`` in [0, 1] (1 = regenerate) makes an inpainting request; ``keep_scales`` (how many of the first
    scales keep the image's tokens) an image-to-image one.
    """

    image_B3HW: torch.Tensor
    mask_B1HW: torch.Tensor | None = None
    keep_scales: int | None = None
    cell_threshold: float = 0.5  # inpainting: a token cell is regenerated when more than this share is masked


@dataclass
class KnownTokens:
    """Tokens imposed during sampling, per scale where ``mask`` (B, l) is True.

    Either fixed ``tokens`` (B, l) per scale (image-to-image keeps whole scales of the image), or the image's
    continuous ``latent_BChw``: inpainting computes each kept token from what the current accumulated latent still
    leaves of it (:meth:`MultiScaleVQModel.residual_indices`), so the kept region keeps reproducing the image even
    where coarser scales were regenerated.
    """

    mask: list[torch.BoolTensor]
    tokens: list[torch.LongTensor] | None = None
    latent_BChw: torch.Tensor | None = None

    def at(self, vqvae, si: int, f_hat_BChw: torch.Tensor) -> torch.LongTensor:
        if self.tokens is not None:
            return self.tokens[si]
        return vqvae.residual_indices(self.latent_BChw, f_hat_BChw, si)


@dataclass
class GenerationRequest:
    """Everything one call asks of the sampler besides its condition, validated once by :meth:`prepare_request`.

    Every pipeline's ``__call__`` builds one and hands it down, so the loop and the output steps read one object.
    """

    num_images: int
    schedule: SamplingSchedule  # the call's guidance too: its scale, the weight per scale, whether it is on
    more_smooth: bool = False
    generator: torch.Generator | list[torch.Generator] | None = None
    output_type: str = "pil"
    return_dict: bool = True
    callback_on_step_end: Callable | None = None
    callback_on_step_end_tensor_inputs: tuple[str, ...] = ()
    edit: EditRequest | None = None

    @property
    def guidance_scale(self) -> float:
        return self.schedule.guidance_scale

    @property
    def guided(self) -> bool:
        """Whether the call runs unconditional rows (see :attr:`SamplingSchedule.guided`)."""
        return self.schedule.guided


class NextScalePipelineMixin:
    """Sampling, validation and output handling common to :class:`VARCLIPPipeline` and :class:`VARPipeline`."""

    transformer: VARTransformer2DModel
    vqvae: MultiScaleVQModel
    # `latents` is diffusers' name for the accumulated latent `f_hat`; `prompt_embeds` the condition rows
    _callback_tensor_inputs = ["f_hat", "latents", "idx_Bl", "logits_BlV", "tokens", "prompt_embeds"]

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' ``from_pipe``, keeping the components' dtypes and the modules kept in float32.

        diffusers casts every component to one dtype (float32 unless given), which would turn a bfloat16 pipeline
        into float32, or cast its float32 quantizer and logits head to bfloat16, with a warning either way; here the
        default is the pipeline's own dtype, and the float32 modules are restored afterwards.
        """
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs["dtype"] = pipeline.dtype
        with logger_level(_MODELING_LOGGER, logging.ERROR):  # its cast warning describes what the restore below undoes
            new = super().from_pipe(pipeline, **kwargs)
        _restore_fp32_modules(new)
        return new

    def to(self, *args, **kwargs):
        """diffusers' ``to``; a dtype cast keeps the modules each component keeps in float32 (the quantizer, whose
        nearest-code search is exact only in float32, and the logits head), as ``from_pretrained(dtype=...)`` does.
        """
        with logger_level(_MODELING_LOGGER, logging.ERROR):  # its cast warning describes what the restore below undoes
            super().to(*args, **kwargs)
        _restore_fp32_modules(self)
        return self

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """Fetch a pipeline repository for ``from_pretrained("owner/name")``: the requested variant, safetensors only.

        diffusers' own download refuses components whose library it does not know (var_clip's), so repo ids are
        resolved by :func:`var_clip.hub.snapshot` instead.
        """
        from ..hub import diffusers_download

        return diffusers_download(pretrained_model_name, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained``, refused before anything is written while a component holds LoRA adapters:
        its weights would be saved under peft's names (a transformer that does not load) or as the adapter alone (a
        text encoder that reloads with re-initialised weights)."""
        held = loaded_adapters(self.components)
        if held:
            raise ValueError(f"this pipeline holds LoRA adapters ({held}); save them with `save_lora_adapter_weights`, "
                             "and the base model after `unload_lora_weights()` (or `delete_adapters` of each)")
        super().save_pretrained(save_directory, *args, **kwargs)

    def compile_repeated_blocks(self, **compile_kwargs) -> None:
        """Opt-in ``torch.compile`` of the transformer blocks and the VQ-VAE's residual/attention blocks.

        Regional compilation (diffusers' ``ModelMixin.compile_repeated_blocks``): every block shares one compiled
        graph. ``dynamic=True`` is the default because each scale feeds the blocks a different number of tokens;
        with it one compilation serves all scales and batch sizes. Other keyword arguments go to ``torch.compile``
        (``mode``, ``backend``, ``fullgraph``...). The first call afterwards pays the compile time; outputs equal the
        eager ones to float rounding.
        """
        compile_kwargs.setdefault("dynamic", True)
        self.transformer.compile_repeated_blocks(**compile_kwargs)
        self.vqvae.compile_repeated_blocks(**compile_kwargs)

    @property
    def image_processor(self) -> VaeImageProcessor:
        return VaeImageProcessor(do_resize=False, do_normalize=True)

    # -- diffusers' callback contract: what a `callback_on_step_end` may read and change ---------------------------

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the running (or last) call, 0 when it guides no scale: diffusers' handle on the
        call's schedule, which a callback may change by setting ``pipe._guidance_scale`` (the later scales follow)."""
        return getattr(self, "_guidance_scale", 0.0)

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether guidance is on for the rest of the running call: its schedule guides a scale and no callback has
        set the scale to 0."""
        return self.guidance_scale > 0

    @property
    def num_timesteps(self) -> int:
        """The number of sampling steps: one per scale."""
        return len(self.transformer.config.patch_nums)

    # -- validation of the sampling arguments -------------------------------------------------------------------------

    def prepare_request(self, num_images: int, generator=None, output_type: str = "pil", return_dict: bool = True,
                        callback_on_step_end=None, callback_on_step_end_tensor_inputs=None, more_smooth: bool = False,
                        edit: EditRequest | None = None, height: int | None = None, width: int | None = None,
                        num_inference_steps: int | None = None, **schedule_kwargs) -> GenerationRequest:
        """Validate the sampling arguments once; returns them as one request, the schedule resolved per scale."""
        self.check_size_and_steps(height, width, num_inference_steps, edit)
        schedule = resolve_schedule(self.transformer.config.patch_nums, **schedule_kwargs)
        if isinstance(generator, list):
            if len(generator) != num_images:
                raise ValueError(f"`generator` is a list of {len(generator)} generators but {num_images} images are "
                                 f"generated (prompts × num_images_per_prompt): pass one per image, or a single one")
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("`generator` must be a torch.Generator or a list of them")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"`generator` must be a torch.Generator, a list of them, or None; "
                             f"got {type(generator).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not isinstance(more_smooth, bool):
            raise ValueError(f"`more_smooth` must be a bool, got {more_smooth!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}")
        if callback_on_step_end_tensor_inputs is None and hasattr(callback_on_step_end, "tensor_inputs"):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs  # diffusers' PipelineCallback
        inputs = tuple(callback_on_step_end_tensor_inputs or ())
        unknown = [k for k in inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, "
                             f"got {unknown}")
        return GenerationRequest(num_images=num_images, schedule=schedule, more_smooth=more_smooth,
                                 generator=generator, output_type=output_type, return_dict=return_dict,
                                 callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=inputs,
                                 edit=edit)

    def check_size_and_steps(self, height, width, num_inference_steps, edit: EditRequest | None = None) -> None:
        """diffusers' ``height``, ``width`` and ``num_inference_steps``: accepted when they state what the model does,
        refused with what to do instead otherwise.

        Next-scale prediction has neither a free resolution nor a free number of steps: the image side is the last
        scale's side times the VQ-VAE's downsampling (``patch_nums``), and there is one step per scale. An edited
        image keeps its own size (an inpainting canvas larger than the model is filled window by window).
        """
        patch_nums = self.transformer.config.patch_nums
        if edit is not None:
            H, W = edit.image_B3HW.shape[-2:]
        else:
            H = W = self.vqvae.sample_size
        for name, value, expected in (("height", height, H), ("width", width, W)):
            if value is not None and (isinstance(value, bool) or value != expected):
                if edit is not None:
                    raise ValueError(f"`{name}`={value!r}: the output keeps the input image's size, {W}×{H}; leave "
                                     "`height` and `width` out (resize the image itself to change it)")
                factor = self.vqvae.downsample_factor
                raise ValueError(f"`{name}`={value!r}: this model makes {W}×{H} images, a size fixed by the VQ-VAE's "
                                 f"patch_nums (last scale {patch_nums[-1]} × downsampling {factor}); leave `height` "
                                 f"and `width` out (a larger or wider image: outpaint with VARCLIPInpaintPipeline and "
                                 f"`prepare_outpainting`)")
        S = len(patch_nums)
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool) or num_inference_steps != S):
            raise ValueError(f"`num_inference_steps`={num_inference_steps!r}: next-scale prediction takes one step per "
                             f"scale, {S} for this model (patch_nums {tuple(patch_nums)}), so leave it out; to trade "
                             f"quality for speed use `guidance_interval` or `prune_ratios`")

    @staticmethod
    def check_num_images(num_images_per_prompt) -> None:
        if (not isinstance(num_images_per_prompt, int) or isinstance(num_images_per_prompt, bool)
                or num_images_per_prompt < 1):
            raise ValueError(f"`num_images_per_prompt` must be an int >= 1, got {num_images_per_prompt!r}")

    def threads_for(self, request: GenerationRequest) -> AbstractContextManager[int]:
        """The intra-op threads one call runs with on the CPU: the count that suits its work, unless the user chose
        one (:func:`var_clip.utils.threads.threads_for_work`); the previous count is restored when the call ends.

        The work is the transformer's parameters × tokens per image × rows (the images, twice while guided): one
        thread for the default model, all cores for d16. Other devices leave the count alone.
        """
        if self._execution_device.type != "cpu":
            return nullcontext(torch.get_num_threads())
        rows = request.num_images * (2 if request.guided else 1)
        parameters = sum(p.numel() for p in self.transformer.parameters())
        return threads_for_work(parameters * self.transformer.num_tokens * rows)

    # -- the loop ------------------------------------------------------------------------------------------------------

    def _guidance_at(self, request: GenerationRequest, si: int) -> float:
        """The guidance weight t at scale ``si``, following ``_guidance_scale`` if a callback changed it."""
        t = request.schedule.guidance[si]
        if request.guidance_scale > 0 and self._guidance_scale != request.guidance_scale:
            t *= self._guidance_scale / request.guidance_scale
        return t

    @torch.no_grad()
    def sample_next_scale(self, condition: dict, request: GenerationRequest,
                          known: KnownTokens | None = None) -> tuple[torch.Tensor, list[torch.LongTensor]]:
        """Generate all scales. Returns the accumulated latent ``f_hat`` (B, C, pn_S, pn_S) and the tokens per scale.

        ``condition`` holds the transformer's condition arguments (``text_embeds`` or ``class_labels``, and with
        token-level conditioning ``encoder_hidden_states`` / ``encoder_attention_mask``); with guidance its rows are
        the B conditional ones followed by the B unconditional ones, and ``logits = (1 + t)·cond − t·uncond`` with
        ``t`` from the schedule (by default ramping linearly over the scales, as in VAR).

        With ``known``, the tokens it marks are imposed at every scale instead of the sampled ones (inpainting keeps
        the unmasked region, image-to-image the first scales); the transformer still sees them as its context.
        """
        first = next(v for v in condition.values() if v is not None)
        rows, device = first.shape[0], first.device
        self._guidance_scale = request.guidance_scale if request.guided else 0.0
        with self.vqvae.quantizer_on(device):  # the quantizer follows the latent, also under model offloading
            return self._sample_loop(condition, request, known, rows, device)

    def _sample_loop(self, condition: dict, request: GenerationRequest, known: KnownTokens | None, rows: int,
                     device: torch.device) -> tuple[torch.Tensor, list[torch.LongTensor]]:
        transformer, vqvae, schedule = self.transformer, self.vqvae, request.schedule
        patch_nums = transformer.config.patch_nums
        S, B, C = len(patch_nums), request.num_images, vqvae.config.latent_channels

        # 1. per generation: the KV cache (the transformer fills it with everything the condition determines)
        kv_cache = transformer.new_kv_cache(rows, dtype=transformer.dtype, device=device)
        f_hat = torch.zeros(B, C, patch_nums[-1], patch_nums[-1], dtype=torch.float32, device=device)
        tokens: list[torch.LongTensor] = []
        next_BChw = None

        with self.progress_bar(total=S) as progress_bar:
            for si, pn in enumerate(patch_nums):
                # 2. logits of every token of this scale (optionally only FastVAR's pivotal tokens run), guided
                logits_BlV = transformer(next_BChw, **(condition if si == 0 else {}), kv_cache=kv_cache,
                                         prune_ratio=schedule.prune_ratio[si]).logits
                if logits_BlV.shape[0] > B:
                    t = self._guidance_at(request, si)
                    logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
                if not torch.isfinite(logits_BlV).all():
                    raise FloatingPointError(
                        f"non-finite logits at scale {si} (side {pn}): the weights or the condition contain NaN/inf, "
                        f"or the dtype {transformer.dtype} overflowed; try torch.float32"
                    )
                if schedule.temperature[si] != 1.0:
                    logits_BlV = logits_BlV / schedule.temperature[si]

                # 3. sample; the scale's latent is the codebook vector (or a Gumbel-soft mix of them)
                idx_Bl, filtered = sample_tokens(logits_BlV, schedule.top_k[si], schedule.top_p[si], request.generator)
                if request.more_smooth:
                    h_BChw = vqvae.embed_tokens(probs_BlV=gumbel_smooth_probs(filtered, si / max(S - 1, 1),
                                                                              request.generator))
                else:
                    h_BChw = vqvae.embed_tokens(idx_Bl)
                if known is not None:
                    keep_Bl, known_Bl = known.mask[si], known.at(vqvae, si, f_hat)
                    idx_Bl = torch.where(keep_Bl, known_Bl, idx_Bl)
                    h_BChw = torch.where(keep_Bl.view(B, 1, pn, pn), vqvae.embed_tokens(known_Bl), h_BChw)
                tokens.append(idx_Bl)

                # 4. accumulate into f_hat, and the next scale's input (area-downsampled f_hat)
                f_hat, next_BChw = vqvae.next_scale_input(si, f_hat, h_BChw)
                if request.callback_on_step_end is not None:
                    f_hat, next_BChw = self._run_callback(request, si, pn, f_hat, next_BChw, idx_Bl, logits_BlV,
                                                          tokens, condition)
                # guidance is over (or a callback switched it off): drop the unconditional rows
                guided_later = self.do_classifier_free_guidance and si < schedule.last_guided_scale
                if kv_cache.batch_size > B and not guided_later:
                    kv_cache.keep_rows(B)
                progress_bar.update()
        return f_hat, tokens

    def _run_callback(self, request, si, pn, f_hat, next_BChw, idx_Bl, logits_BlV, tokens, condition):
        """diffusers' convention ``callback(pipe, step, timestep, tensors)``; the "timestep" is the scale's side."""
        # `prompt_embeds` are the condition rows: a class pipeline's are its labels (diffusers' guidance callbacks
        # slice them as they would embeddings)
        local = {"f_hat": f_hat, "latents": f_hat, "idx_Bl": idx_Bl, "logits_BlV": logits_BlV, "tokens": list(tokens),
                 "prompt_embeds": condition.get("text_embeds", condition.get("class_labels"))}
        kwargs = {k: local[k] for k in request.callback_on_step_end_tensor_inputs}
        returned = request.callback_on_step_end(self, si, pn, kwargs) or {}
        if not isinstance(returned, dict):
            raise ValueError(f"`callback_on_step_end` must return a dict or None, got {type(returned).__name__}")
        unknown = [k for k in returned if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end` returned {unknown}; it may return only "
                             f"{self._callback_tensor_inputs} "
                             "(`latents` / `f_hat` edit the latent; the others are read-only)")
        edited = {k: v for k, v in returned.items() if k in ("f_hat", "latents") and v is not local[k]}
        if len(edited) > 1:
            raise ValueError("`callback_on_step_end` returned both `f_hat` and `latents` edited: they name one tensor")
        if edited:  # a callback may edit the latent; the next input follows it
            f_hat = next(iter(edited.values()))
            if next_BChw is not None:
                next_BChw = F.interpolate(f_hat, size=next_BChw.shape[-2:], mode="area")
        return f_hat, next_BChw

    # -- editing: images and masks in, known tokens out ----------------------------------------------------------------

    def preprocess_image(self, image, name: str = "image", resize: bool = True) -> torch.Tensor:
        """PIL image(s) (any mode), uint8 arrays, or float arrays/tensors in [0, 1] → (B, 3, H, W) in [-1, 1].

        Square images are resized to the model's resolution (with ``resize``); other shapes are refused rather than
        distorted. With ``resize=False`` the size is kept (outpainting a larger canvas).
        """
        pixels = image_to_tensor(image, name)
        size = self.vqvae.sample_size
        if resize and pixels.shape[-2:] != (size, size):
            if pixels.shape[-1] != pixels.shape[-2]:
                raise ValueError(f"`{name}` is {pixels.shape[-1]}×{pixels.shape[-2]}: this model works on square "
                                 f"{size}×{size} images; crop or pad it to a square first "
                                 "(it is not distorted silently)")
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
        return (pixels * 2 - 1).to(device=self._execution_device, dtype=torch.float32)

    def preprocess_mask(self, mask, image, name: str = "mask_image", resize: bool = True) -> torch.Tensor:
        """A mask the size of ``image`` (white / 1 = regenerate) → (B, 1, H, W) float in [0, 1], at model size
        (with ``resize``) or at the image's own size.

        PIL images in any mode (converted to L), uint8 arrays in [0, 255], float arrays/tensors in [0, 1], shaped
        (H, W), (1, H, W) or (H, W, 1); or a list of them.
        """
        import numpy as np
        import PIL.Image

        masks = mask if isinstance(mask, list) else [mask]
        if not masks:
            raise ValueError(f"`{name}` is an empty list")
        out = []
        for m in masks:
            if isinstance(m, PIL.Image.Image):
                arr = np.asarray(m.convert("L"), dtype=np.float32) / 255.0
            elif isinstance(m, (np.ndarray, torch.Tensor)):
                raw = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else m
                if raw.dtype == np.uint8:
                    arr = raw.astype(np.float32) / 255.0
                elif np.issubdtype(raw.dtype, np.floating) or raw.dtype == np.bool_:
                    arr = raw.astype(np.float32)
                else:
                    raise ValueError(f"`{name}` arrays must be uint8, bool or floating point, got {raw.dtype}")
                arr = arr.squeeze()
                if arr.ndim != 2:
                    raise ValueError(f"`{name}` arrays must be (H, W), (1, H, W) or (H, W, 1), got shape {m.shape}")
                if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                    raise ValueError(f"`{name}` values must be in [0, 1] (1 = regenerate), "
                                     f"got [{arr.min()}, {arr.max()}]")
            else:
                raise ValueError(f"`{name}` must be a PIL image, a numpy array or a torch tensor, "
                                 f"got {type(m).__name__}")
            out.append(arr)
        ref_hw = tuple(image_to_tensor(image).shape[-2:])
        for arr in out:
            if tuple(arr.shape) != ref_hw:
                raise ValueError(f"`{name}` must be the size of `image` ({ref_hw[1]}×{ref_hw[0]}), "
                                 f"got {arr.shape[1]}×{arr.shape[0]}")
        size = self.vqvae.sample_size
        mask_B1HW = torch.from_numpy(np.stack(out)).unsqueeze(1)
        if resize and (mask_B1HW.shape[-1] != size or mask_B1HW.shape[-2] != size):
            mask_B1HW = F.interpolate(mask_B1HW, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        return mask_B1HW.to(self._execution_device)

    def known_tokens(self, edit: EditRequest, batch_size: int) -> KnownTokens | None:
        """What of the image is kept at each scale (inpainting or image-to-image)."""
        if edit.mask_B1HW is None and not edit.keep_scales:
            return None  # strength 1: nothing of the image is kept, exactly plain text-to-image
        image = _repeat_to(edit.image_B3HW, batch_size, "image").to(self.vqvae.dtype)
        patch_nums = self.vqvae.config.patch_nums
        if edit.mask_B1HW is None:  # image-to-image: whole scales of the image's own tokens
            tokens = self.vqvae.encode_indices(image)
            keep = [torch.full_like(t, si < edit.keep_scales, dtype=torch.bool) for si, t in enumerate(tokens)]
            return KnownTokens(mask=keep, tokens=tokens)
        regenerate = (_repeat_to(edit.mask_B1HW, batch_size, "mask_image") > 0.5).float()
        # a cell is regenerated when more than `cell_threshold` of its pixels are masked (0: any masked pixel)
        keep = [~(F.adaptive_avg_pool2d(regenerate, pn).flatten(1) > edit.cell_threshold) for pn in patch_nums]
        with torch.no_grad():
            latent = self.vqvae.encode(image).float()
        return KnownTokens(mask=keep, latent_BChw=latent)

    @torch.no_grad()
    def decode_preview(self, f_hat: torch.Tensor, output_type: str = "pil"):
        """Decode a partial latent (from a `callback_on_step_end`) into a coarse-to-fine preview image."""
        images = self.vqvae.decode_latent(f_hat).float()
        return self.image_processor.postprocess(images, output_type=output_type)

    @torch.no_grad()
    def decode_reproducibly(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode one image at a time on one thread: images in [-1, 1] that depend on the latent alone.

        oneDNN chooses its convolution kernels, and with them the order of the sums, by the batch size and the thread
        count; the decoded pixels then differ in the last bits (and a few uint8 values by one) between a batch and
        single images. Batch 1 on one thread runs the same kernels whatever the caller's batch, process count or
        thread setting, so every image is bit for bit the same on a given machine. The thread count is process-wide:
        this is for commands that own their process (``generate-batch``), not for a server sharing it.
        """
        with intra_op_threads(1):
            return torch.cat([self.vqvae.decode_latent(f_1Chw).float() for f_1Chw in f_hat.split(1)])

    # -- output --------------------------------------------------------------------------------------------------------

    def decode_output(self, f_hat: torch.Tensor, tokens: list[torch.LongTensor], request: GenerationRequest):
        """Decode (and, when inpainting, paste back the unmasked pixels); ``"latent"`` returns ``f_hat`` as is."""
        edit, output_type = request.edit, request.output_type
        if output_type == "tokens":
            images = tokens
        elif output_type == "latent":
            images = f_hat
        else:
            images = self.vqvae.decode_latent(f_hat).float()
            if edit is not None and edit.mask_B1HW is not None:
                # pixels outside the mask are the input's own, exactly
                B = images.shape[0]
                mask = _repeat_to(edit.mask_B1HW, B, "mask_image").to(images.dtype)
                images = mask * images + (1 - mask) * _repeat_to(edit.image_B3HW, B, "image").to(images.dtype)
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not request.return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _restore_fp32_modules(pipe) -> None:
    for component in pipe.components.values():
        for name in getattr(component, "_keep_in_fp32_modules", None) or []:
            module = getattr(component, name, None)
            if isinstance(module, torch.nn.Module):
                module.float()


def image_to_tensor(image, name: str = "image") -> torch.Tensor:
    """Validate and convert an image argument to a float tensor (B, 3, H, W) in [0, 1], at its own size.

    Accepts what diffusers accepts: PIL images in any mode (converted to RGB), numpy arrays (H, W, 3) or (B, H, W, 3)
    of uint8 in [0, 255] or floats in [0, 1], torch tensors (3, H, W) or (B, 3, H, W) of floats in [0, 1], and
    lists of any of these (of one size). Anything else raises a ValueError saying what was given and what is allowed.
    """
    import numpy as np
    import PIL.Image

    allowed = ("a PIL image, a uint8 array (H, W, 3) in [0, 255], a float array (H, W, 3) or tensor (3, H, W) in "
               "[0, 1] (optionally batched), or a list of them")
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError(f"`{name}` is an empty list; give {allowed}")
    tensors = []
    for item in items:
        if isinstance(item, PIL.Image.Image):
            array = np.asarray(item.convert("RGB"), dtype=np.float32) / 255.0
            t = torch.from_numpy(array).permute(2, 0, 1)[None]
        elif isinstance(item, np.ndarray):
            if item.dtype == np.uint8:
                array = item.astype(np.float32) / 255.0
            elif np.issubdtype(item.dtype, np.floating):
                array = item.astype(np.float32)
            else:
                raise ValueError(f"`{name}` arrays must be uint8 or floating point, got {item.dtype}; give {allowed}")
            array = array[None] if array.ndim == 3 else array
            if array.ndim != 4 or array.shape[-1] != 3:
                raise ValueError(f"`{name}` arrays must be (H, W, 3) or (B, H, W, 3), got shape {item.shape}")
            t = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
        elif isinstance(item, torch.Tensor):
            if not item.is_floating_point():
                raise ValueError(f"`{name}` tensors must be floating point in [0, 1], got {item.dtype}; give {allowed}")
            t = item.detach().float().cpu()
            t = t[None] if t.ndim == 3 else t
            if t.ndim != 4 or t.shape[1] != 3:
                raise ValueError(f"`{name}` tensors must be (3, H, W) or (B, 3, H, W), got shape {tuple(item.shape)}")
        else:
            raise ValueError(f"`{name}` must be {allowed}; got {type(item).__name__}")
        if t.numel() == 0:
            raise ValueError(f"`{name}` is empty (shape {tuple(t.shape)})")
        if not torch.isfinite(t).all():
            raise ValueError(f"`{name}` holds NaN or infinite values")
        if t.min() < 0 or t.max() > 1:
            raise ValueError(f"`{name}` float values must be in [0, 1], "
                             f"got [{float(t.min()):.3g}, {float(t.max()):.3g}]")
        tensors.append(t)
    if len({t.shape[-2:] for t in tensors}) > 1:
        raise ValueError(f"`{name}` images must all have one size, "
                         f"got {sorted({tuple(t.shape[-2:]) for t in tensors})}")
    return torch.cat(tensors)


def check_components_agree(transformer: VARTransformer2DModel, vqvae: MultiScaleVQModel) -> None:
    """A transformer and a VQ-VAE work together only on the same scales and codebook."""
    if tuple(transformer.config.patch_nums) != tuple(vqvae.config.patch_nums):
        raise ValueError(f"`transformer` and `vqvae` disagree on patch_nums: {transformer.config.patch_nums} vs "
                         f"{vqvae.config.patch_nums}")
    if ((transformer.config.vocab_size, transformer.config.latent_channels)
            != (vqvae.config.vocab_size, vqvae.config.latent_channels)):
        raise ValueError("`transformer` and `vqvae` disagree on the codebook (vocab_size, latent_channels)")


def _repeat_to(x: torch.Tensor, batch_size: int, name: str) -> torch.Tensor:
    """Broadcast a batch of 1 to ``batch_size``, or repeat each of n items batch_size / n times (images per prompt)."""
    if x.shape[0] == batch_size:
        return x
    if batch_size % x.shape[0]:
        raise ValueError(f"`{name}` has {x.shape[0]} items for {batch_size} images: give 1 or one per prompt")
    return x.repeat_interleave(batch_size // x.shape[0], dim=0)
