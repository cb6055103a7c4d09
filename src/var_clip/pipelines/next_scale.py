"""The next-scale sampling loop shared by the text- and class-conditional pipelines.

Legend: B batch (images) · S scales · pn side of one scale · l = pn² · D width · C latent channels ·
V codebook size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..sampling import SamplingSchedule, gumbel_smooth_probs, pivotal_tokens, resolve_schedule, sample_tokens

OUTPUT_TYPES = ("pil", "np", "pt", "tokens")


@dataclass
class EditRequest:
    """An image to edit, preprocessed: pixels (B, 3, H, W) in [-1, 1], and either a regenerate-mask or a strength.

    ``mask_B1HW`` in [0, 1] (1 = regenerate) makes an inpainting request; ``keep_scales`` (how many of the first
    scales keep the image's tokens) an image-to-image one.
    """

    image_B3HW: torch.Tensor
    mask_B1HW: torch.Tensor | None = None
    keep_scales: int | None = None


@dataclass
class KnownTokens:
    """Tokens imposed during sampling: per scale, the indices (B, l) and where they apply (B, l), True = keep."""

    tokens: list[torch.LongTensor]
    mask: list[torch.BoolTensor]


class NextScalePipelineMixin:
    """Sampling, validation and output handling common to :class:`VARCLIPPipeline` and :class:`VARPipeline`."""

    transformer: VARTransformer2DModel
    vqvae: MultiScaleVQModel
    _callback_tensor_inputs = ["f_hat", "idx_Bl", "logits_BlV", "tokens"]

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """Fetch a pipeline repository for ``from_pretrained("owner/name")``: the requested variant, safetensors only.

        diffusers' own download refuses components whose library it does not know (var_clip's), so repo ids are
        resolved by :func:`var_clip.hub.snapshot` instead.
        """
        from ..hub import diffusers_download

        return diffusers_download(pretrained_model_name, **kwargs)

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

    # -- validation of the sampling arguments -------------------------------------------------------------------------

    def check_sampling_inputs(self, batch_size: int, generator, output_type, callback_on_step_end_tensor_inputs,
                              **schedule_kwargs) -> SamplingSchedule:
        """Validate the sampling arguments; returns them resolved to one value per scale."""
        schedule = resolve_schedule(self.transformer.config.patch_nums, **schedule_kwargs)
        if isinstance(generator, list):
            if len(generator) != batch_size:
                raise ValueError(f"`generator` is a list of {len(generator)} generators but {batch_size} images are "
                                 f"generated (prompts × num_images_per_prompt): pass one per image, or a single one")
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("`generator` must be a torch.Generator or a list of them")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"`generator` must be a torch.Generator, a list of them, or None; got {type(generator).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}")
        return schedule

    @staticmethod
    def check_num_images(num_images_per_prompt) -> None:
        if not isinstance(num_images_per_prompt, int) or isinstance(num_images_per_prompt, bool) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an int >= 1, got {num_images_per_prompt!r}")

    # -- the loop ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_next_scale(
        self,
        cond_BD: torch.Tensor,
        uncond_BD: torch.Tensor | None,
        schedule: SamplingSchedule,
        more_smooth: bool,
        generator,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        known: KnownTokens | None = None,
    ) -> tuple[torch.Tensor, list[torch.LongTensor]]:
        """Generate all scales. Returns the accumulated latent ``f_hat`` (B, C, pn_S, pn_S) and the tokens per scale.

        With ``known``, the tokens it marks are imposed at every scale instead of the sampled ones (inpainting keeps
        the unmasked region, image-to-image the first scales); the transformer still sees them as its context.

        ``cond_BD`` / ``uncond_BD`` are the embedded conditions; with ``uncond_BD`` the batch is doubled for
        classifier-free guidance, ``logits = (1 + t)·cond − t·uncond`` with ``t`` from the schedule (by default
        ramping linearly over the scales, as in VAR).
        """
        transformer, vqvae = self.transformer, self.vqvae
        patch_nums = transformer.config.patch_nums
        S, B, C = len(patch_nums), cond_BD.shape[0], vqvae.config.latent_channels
        # The unconditional rows run only while a later scale still needs their logits or their keys and values.
        last_guided = schedule.last_guided_scale if uncond_BD is not None else -1
        cond_2BD = torch.cat((cond_BD, uncond_BD)) if last_guided >= 0 else cond_BD

        # 1. per generation: AdaLN modulations, the KV cache, and the start tokens
        mods = transformer.modulations(cond_2BD)
        kv_cache = transformer.new_kv_cache(cond_2BD.shape[0], dtype=cond_2BD.dtype, device=cond_2BD.device)
        x_BlD = transformer.start_tokens(cond_2BD)
        f_hat = cond_BD.new_zeros(B, C, patch_nums[-1], patch_nums[-1], dtype=torch.float32)
        codebook = vqvae.quantize.embedding.weight
        tokens: list[torch.LongTensor] = []
        h_prev = None

        with self.progress_bar(total=S) as progress_bar:
            for si, pn in enumerate(patch_nums):
                # 2. logits of every token of this scale (optionally only FastVAR's pivotal tokens run), guided
                keep = fill = None
                if schedule.prune_ratio[si] > 0:
                    keep = pivotal_tokens(x_BlD, schedule.prune_ratio[si])
                    side = round(h_prev.shape[1] ** 0.5)
                    grid = h_prev.transpose(1, 2).reshape(h_prev.shape[0], -1, side, side).float()
                    fill = F.interpolate(grid, size=(pn, pn), mode="bicubic").flatten(2).transpose(1, 2)
                logits_BlV, h_prev = transformer.forward_scale(x_BlD, mods, kv_cache, keep, fill)
                if logits_BlV.shape[0] > B:
                    t = schedule.guidance[si]
                    logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
                if not torch.isfinite(logits_BlV).all():
                    raise FloatingPointError(
                        f"non-finite logits at scale {si} (side {pn}): the weights or the condition contain NaN/inf, "
                        f"or the dtype {transformer.dtype} overflowed; try torch.float32"
                    )
                if schedule.temperature[si] != 1.0:
                    logits_BlV = logits_BlV / schedule.temperature[si]

                # 3. sample; the scale's latent is the codebook vector (or a Gumbel-soft mix of them)
                idx_Bl, filtered = sample_tokens(logits_BlV, schedule.top_k[si], schedule.top_p[si], generator)
                if more_smooth:
                    h_BlC = gumbel_smooth_probs(filtered, si / max(S - 1, 1), generator) @ codebook.float()
                else:
                    h_BlC = codebook[idx_Bl].float()
                if known is not None:
                    keep_Bl = known.mask[si]
                    idx_Bl = torch.where(keep_Bl, known.tokens[si], idx_Bl)
                    h_BlC = torch.where(keep_Bl.unsqueeze(-1), codebook[known.tokens[si]].float(), h_BlC)
                h_BChw = h_BlC.transpose(1, 2).reshape(B, C, pn, pn)
                tokens.append(idx_Bl)

                # 4. accumulate into f_hat, and embed the next scale's input (area-downsampled f_hat)
                f_hat, next_BChw = vqvae.next_scale_input(si, f_hat, h_BChw)
                if callback_on_step_end is not None:
                    local = {"f_hat": f_hat, "idx_Bl": idx_Bl, "logits_BlV": logits_BlV, "tokens": list(tokens)}
                    kwargs = {k: local[k] for k in callback_on_step_end_tensor_inputs or []}
                    # diffusers' convention (pipe, step, timestep, tensors); the "timestep" is the scale's side
                    returned = callback_on_step_end(self, si, pn, kwargs) or {}
                    if "f_hat" in returned:  # a callback may edit the latent; the next input follows it
                        f_hat = returned["f_hat"]
                        if next_BChw is not None:
                            next_BChw = F.interpolate(f_hat, size=next_BChw.shape[-2:], mode="area")
                if si == last_guided and kv_cache.batch_size > B:  # guidance is over: drop the unconditional rows
                    kv_cache.keep_rows(B)
                    mods, h_prev = mods.keep_rows(B), h_prev[:B]
                if next_BChw is not None:
                    x_BlD = transformer.scale_input(next_BChw, si + 1)
                    if kv_cache.batch_size > B:
                        x_BlD = torch.cat((x_BlD, x_BlD))
                progress_bar.update()
        return f_hat, tokens

    # -- editing: images and masks in, known tokens out ----------------------------------------------------------------

    def preprocess_image(self, image, name: str = "image") -> torch.Tensor:
        """PIL image(s), or arrays/tensors in [0, 1] (H, W, 3) / (B, 3, H, W) → (B, 3, S, S) in [-1, 1] at model size."""
        from diffusers.image_processor import VaeImageProcessor

        size = self.vqvae.sample_size
        if isinstance(image, torch.Tensor) and (image.min() < 0 or image.max() > 1):
            raise ValueError(f"`{name}` tensors must hold values in [0, 1], got [{float(image.min())}, {float(image.max())}]")
        try:
            pixels = VaeImageProcessor(do_normalize=True).preprocess(image, height=size, width=size)
        except (ValueError, TypeError) as e:
            raise ValueError(f"`{name}` must be a PIL image, a list of them, or a float array/tensor in [0, 1]: {e}") from None
        device, dtype = self._execution_device, torch.float32
        return pixels.to(device=device, dtype=dtype)

    def preprocess_mask(self, mask, image, name: str = "mask_image") -> torch.Tensor:
        """A mask the size of ``image`` (white / 1 = regenerate) → (B, 1, S, S) float in [0, 1] at model size."""
        import numpy as np
        import PIL.Image

        masks = mask if isinstance(mask, list) else [mask]
        images = image if isinstance(image, list) else [image]
        out = []
        for m in masks:
            if isinstance(m, PIL.Image.Image):
                arr = np.asarray(m.convert("L"), dtype=np.float32) / 255.0
            elif isinstance(m, (np.ndarray, torch.Tensor)):
                arr = m.detach().cpu().float().numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=np.float32)
                arr = arr.squeeze()
                if arr.ndim != 2:
                    raise ValueError(f"`{name}` arrays must be (H, W), (1, H, W) or (H, W, 1), got shape {m.shape}")
                if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                    raise ValueError(f"`{name}` values must be in [0, 1] (1 = regenerate), got [{arr.min()}, {arr.max()}]")
            else:
                raise ValueError(f"`{name}` must be a PIL image, a numpy array or a torch tensor, got {type(m).__name__}")
            out.append(arr)
        ref = images[0]
        ref_hw = (ref.height, ref.width) if isinstance(ref, PIL.Image.Image) else tuple(np.asarray(ref.shape[-2:] if isinstance(ref, torch.Tensor) else ref.shape[:2]))
        for arr in out:
            if tuple(arr.shape) != tuple(ref_hw):
                raise ValueError(f"`{name}` must be the size of `image` ({ref_hw[1]}×{ref_hw[0]}), got {arr.shape[1]}×{arr.shape[0]}")
        size = self.vqvae.sample_size
        mask_B1HW = torch.from_numpy(np.stack(out)).unsqueeze(1)
        if mask_B1HW.shape[-1] != size or mask_B1HW.shape[-2] != size:
            mask_B1HW = F.interpolate(mask_B1HW, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        return mask_B1HW.to(self._execution_device)

    def known_tokens(self, edit: EditRequest, batch_size: int) -> KnownTokens | None:
        """The image's multi-scale tokens and, per scale, where they are kept (inpainting or image-to-image)."""
        if edit.mask_B1HW is None and not edit.keep_scales:
            return None  # strength 1: nothing of the image is kept, exactly plain text-to-image
        image = _repeat_to(edit.image_B3HW, batch_size, "image")
        tokens = self.vqvae.encode_indices(image.to(self.vqvae.dtype))
        patch_nums = self.vqvae.config.patch_nums
        if edit.mask_B1HW is not None:
            regenerate = _repeat_to(edit.mask_B1HW, batch_size, "mask_image") > 0.5
            # a token is regenerated when any masked pixel falls into its cell at that scale
            keep = [~F.adaptive_max_pool2d(regenerate.float(), pn).flatten(1).bool() for pn in patch_nums]
        else:
            keep = [torch.full_like(t, si < edit.keep_scales, dtype=torch.bool) for si, t in enumerate(tokens)]
        return KnownTokens(tokens=tokens, mask=keep)

    def decode_preview(self, f_hat: torch.Tensor, output_type: str = "pil"):
        """Decode a partial latent (from a `callback_on_step_end`) into a coarse-to-fine preview image."""
        images = self.vqvae.decode_latent(f_hat).float()
        return self.image_processor.postprocess(images, output_type=output_type)

    # -- output --------------------------------------------------------------------------------------------------------

    def decode_output(self, f_hat: torch.Tensor, tokens: list[torch.LongTensor], output_type: str, return_dict: bool,
                      edit: EditRequest | None = None):
        if output_type == "tokens":
            images = tokens
        else:
            images = self.vqvae.decode_latent(f_hat).float()
            if edit is not None and edit.mask_B1HW is not None:
                # pixels outside the mask are the input's own, exactly
                B = images.shape[0]
                mask = _repeat_to(edit.mask_B1HW, B, "mask_image").to(images.dtype)
                images = mask * images + (1 - mask) * _repeat_to(edit.image_B3HW, B, "image").to(images.dtype)
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)



def _repeat_to(x: torch.Tensor, batch_size: int, name: str) -> torch.Tensor:
    """Broadcast a batch of 1 to ``batch_size``, or repeat each of n items batch_size / n times (images per prompt)."""
    if x.shape[0] == batch_size:
        return x
    if batch_size % x.shape[0]:
        raise ValueError(f"`{name}` has {x.shape[0]} items for {batch_size} images: give 1 or one per prompt")
    return x.repeat_interleave(batch_size // x.shape[0], dim=0)
