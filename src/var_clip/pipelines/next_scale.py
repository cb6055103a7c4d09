"""The next-scale sampling loop shared by the text- and class-conditional pipelines.

Legend: B batch (images) · S scales · pn side of one scale · l = pn² · D width · C latent channels ·
V codebook size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..sampling import SamplingSchedule, gumbel_smooth_probs, pivotal_tokens, resolve_schedule, sample_tokens

OUTPUT_TYPES = ("pil", "np", "pt", "tokens")


class NextScalePipelineMixin:
    """Sampling, validation and output handling common to :class:`VARCLIPPipeline` and :class:`VARPipeline`."""

    transformer: VARTransformer2DModel
    vqvae: MultiScaleVQModel
    _callback_tensor_inputs = ["f_hat", "idx_Bl", "logits_BlV"]

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
    ) -> tuple[torch.Tensor, list[torch.LongTensor]]:
        """Generate all scales. Returns the accumulated latent ``f_hat`` (B, C, pn_S, pn_S) and the tokens per scale.

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
                h_BChw = h_BlC.transpose(1, 2).reshape(B, C, pn, pn)
                tokens.append(idx_Bl)

                # 4. accumulate into f_hat, and embed the next scale's input (area-downsampled f_hat)
                f_hat, next_BChw = vqvae.next_scale_input(si, f_hat, h_BChw)
                if callback_on_step_end is not None:
                    local = {"f_hat": f_hat, "idx_Bl": idx_Bl, "logits_BlV": logits_BlV}
                    kwargs = {k: local[k] for k in callback_on_step_end_tensor_inputs or []}
                    # diffusers' convention (pipe, step, timestep, tensors); the "timestep" is the scale's side
                    returned = callback_on_step_end(self, si, pn, kwargs) or {}
                    if "f_hat" in returned:  # a callback may edit the latent; the next input follows it
                        f_hat = returned["f_hat"]
                        if next_BChw is not None:
                            next_BChw = F.interpolate(f_hat, size=next_BChw.shape[-2:], mode="area")
                if si == last_guided and kv_cache.k[0].shape[0] > B:  # guidance is over: drop the unconditional rows
                    kv_cache.keep_rows(B)
                    mods, h_prev = mods.keep_rows(B), h_prev[:B]
                if next_BChw is not None:
                    x_BlD = transformer.scale_input(next_BChw, si + 1)
                    if kv_cache.k[0].shape[0] > B:
                        x_BlD = torch.cat((x_BlD, x_BlD))
                progress_bar.update()
        return f_hat, tokens

    # -- output --------------------------------------------------------------------------------------------------------

    def decode_output(self, f_hat: torch.Tensor, tokens: list[torch.LongTensor], output_type: str, return_dict: bool):
        if output_type == "tokens":
            images = tokens
        else:
            images = self.vqvae.decode_latent(f_hat).float()
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

