"""The next-scale loop as blocks: one iteration is one scale — predict, guide, sample, accumulate.

Each sub-block reads and writes the loop's block state and is called as ``block(components, block_state, si=si,
pn=pn)`` with the scale's index and side; any of them can be replaced by a block with the same inputs and outputs
(``blocks.sub_blocks["next_scale"].sub_blocks["sample"] = MySampler()``).

Legend: B images · S scales · pn side of one scale · l = pn² · C latent channels · V codebook size.
"""

from __future__ import annotations

import torch
from diffusers.modular_pipelines import (
    ComponentSpec,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
)

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..sampling import SamplingSchedule, filter_logits, gumbel_smooth_probs, sample_tokens
from .before_sampling import GUIDER_SPEC
from .encoders import MODEL_NAME

_SCHEDULE = InputParam("schedule", type_hint=SamplingSchedule, required=True,
                       description="the per-scale settings from the prepare step")
_NUM_IMAGES = InputParam("num_images", type_hint=int, required=True)
_GUIDED_SCALES = InputParam("guided_scales", type_hint=tuple, required=True,
                            description="the scales where the guider guides (from the prepare step)")
_LOGITS = InputParam("logits_BlV", type_hint=torch.Tensor, required=True)
_GENERATOR = InputParam("generator", type_hint=torch.Generator | list[torch.Generator])


class VARCLIPLoopPredictor(ModularPipelineBlocks):
    """Predict: the transformer's logits for every token of the scale, through the generation's KV cache.

    At the first scale the cache is created (``block_state.kv_cache``, one per generation, never stored on the model)
    and the transformer reads the condition; later scales read the latent input ``next_BChw``. After the last guided
    scale the cache keeps only the conditional rows, so the remaining scales run B rows instead of 2B.
    """

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Loop step: the transformer's logits for this scale (2B rows while guidance needs them), through the "
                "generation's KV cache")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("transformer", VARTransformer2DModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("condition", type_hint=dict, required=True),
            InputParam("next_BChw", type_hint=torch.Tensor, description="this scale's latent input; None at the first"),
            _SCHEDULE, _NUM_IMAGES, _GUIDED_SCALES,
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("logits_BlV", type_hint=torch.Tensor,
                            description="this scale's logits: B conditional rows, then B unconditional ones if guided")]

    @torch.no_grad()
    def __call__(self, components, block_state, si: int, pn: int):
        transformer, condition = components.transformer, block_state.condition
        if si == 0:  # per generation: the transformer fills the cache with everything the condition determines
            first = next(v for v in condition.values() if v is not None)
            block_state.kv_cache = transformer.new_kv_cache(first.shape[0], dtype=transformer.dtype,
                                                            device=first.device)
        block_state.logits_BlV = transformer(
            block_state.next_BChw, **(condition if si == 0 else {}), kv_cache=block_state.kv_cache,
            prune_ratio=block_state.schedule.prune_ratio[si],
        ).logits
        # guidance is over: the unconditional rows are dropped from the cache
        B, kv_cache = block_state.num_images, block_state.kv_cache
        if kv_cache.batch_size > B and si >= max(block_state.guided_scales, default=-1):
            kv_cache.keep_rows(B)
        return components, block_state


class VARCLIPLoopGuidance(ModularPipelineBlocks):
    """Guide: the guider combines the conditional and unconditional logits; VAR's ramp scales its effect per scale.

    The guider's step is the scale index and its number of steps the number of scales, so its ``start``/``stop`` are
    fractions of the scales. Its effect is scaled by the schedule's ramp ``w`` at the scale: ``cond + w · (guided −
    cond)``; with ClassifierFreeGuidance in the original formulation and scale ``t`` that is VAR's
    ``(1 + w·t)·cond − w·t·uncond``. Outside the guided scales the logits are the conditional ones, unchanged.
    """

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Loop step: classifier-free guidance through the guider, scaled by the schedule's ramp "
                "(cond + w · (guided − cond)); B rows out")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [GUIDER_SPEC]

    @property
    def inputs(self) -> list[InputParam]:
        return [_LOGITS, _NUM_IMAGES, _SCHEDULE, _GUIDED_SCALES]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("logits_BlV", type_hint=torch.Tensor, description="this scale's guided logits (B, l, V)")]

    @torch.no_grad()
    def __call__(self, components, block_state, si: int, pn: int):
        B, logits_BlV = block_state.num_images, block_state.logits_BlV
        if logits_BlV.shape[0] == B:  # no unconditional rows (any more)
            return components, block_state
        cond_BlV, uncond_BlV = logits_BlV[:B], logits_BlV[B:]
        if si not in block_state.guided_scales:
            block_state.logits_BlV = cond_BlV
            return components, block_state
        guider = components.guider
        guider.set_state(step=si, num_inference_steps=len(block_state.schedule.guidance), timestep=torch.tensor(pn))
        # the predictions are one batch already: each of the guider's batches gets its half as its prediction
        batches = guider.prepare_inputs({"noise_pred": (cond_BlV, uncond_BlV)})
        guided_BlV = guider(batches).pred
        w = block_state.schedule.guidance[si]
        block_state.logits_BlV = guided_BlV if w == 1 else cond_BlV + w * (guided_BlV - cond_BlV)
        return components, block_state


class VARCLIPLoopSampler(ModularPipelineBlocks):
    """Sample: one token per position from the guided logits, with the scale's temperature, top-k and top-p."""

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Loop step: draws this scale's tokens (temperature, top-k, top-p, multinomial with the generator)"

    @property
    def inputs(self) -> list[InputParam]:
        return [_LOGITS, _SCHEDULE, _GENERATOR]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("idx_Bl", type_hint=torch.LongTensor, description="this scale's token indices (B, l)")]

    @torch.no_grad()
    def __call__(self, components, block_state, si: int, pn: int):
        schedule = block_state.schedule
        block_state.idx_Bl, _ = sample_tokens(_tempered(block_state.logits_BlV, schedule, si, pn),
                                              schedule.top_k[si], schedule.top_p[si], block_state.generator)
        return components, block_state


class VARCLIPLoopAccumulator(ModularPipelineBlocks):
    """Accumulate: the scale's codebook vectors, upsampled and refined by φ, are added into ``f_hat``.

    With ``more_smooth`` the vectors are Gumbel-softmax mixes over the tokens the sampling settings keep (the
    original's visual setting), drawn after the tokens from the same generator. Also gives the next scale's input,
    ``f_hat`` area-downsampled to its side.
    """

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Loop step: adds this scale's codebook vectors into f_hat and makes the next scale's input"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vqvae", MultiScaleVQModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("idx_Bl", type_hint=torch.LongTensor, required=True),
            InputParam("f_hat", type_hint=torch.Tensor, required=True),
            InputParam("tokens", type_hint=list, required=True),
            InputParam("logits_BlV", type_hint=torch.Tensor, description="the guided logits, read with `more_smooth`"),
            InputParam("more_smooth", type_hint=bool, default=False),
            _SCHEDULE, _GENERATOR,
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("f_hat", type_hint=torch.Tensor, description="the accumulated latent (B, C, pn_S, pn_S)"),
            OutputParam("next_BChw", type_hint=torch.Tensor, description="the next scale's input; None after the last"),
            OutputParam("tokens", type_hint=list, description="the token indices of every scale so far"),
        ]

    @torch.no_grad()
    def __call__(self, components, block_state, si: int, pn: int):
        vqvae, schedule, idx_Bl = components.vqvae, block_state.schedule, block_state.idx_Bl
        if block_state.more_smooth:
            filtered = filter_logits(_tempered(block_state.logits_BlV, schedule, si, pn), schedule.top_k[si],
                                     schedule.top_p[si])
            ratio = si / max(len(schedule.guidance) - 1, 1)
            h_BChw = vqvae.embed_tokens(probs_BlV=gumbel_smooth_probs(filtered, ratio, block_state.generator))
        else:
            h_BChw = vqvae.embed_tokens(idx_Bl)
        block_state.tokens.append(idx_Bl)
        block_state.f_hat, block_state.next_BChw = vqvae.next_scale_input(si, block_state.f_hat, h_BChw)
        return components, block_state


def _tempered(logits_BlV: torch.Tensor, schedule: SamplingSchedule, si: int, pn: int) -> torch.Tensor:
    """The scale's sampling logits: checked finite, divided by its temperature."""
    if not torch.isfinite(logits_BlV).all():
        raise FloatingPointError(f"non-finite logits at scale {si} (side {pn}): the weights or the condition contain "
                                 "NaN/inf, or the transformer's dtype overflowed; try torch.float32")
    temperature = schedule.temperature[si]
    return logits_BlV / temperature if temperature != 1.0 else logits_BlV


class VARCLIPNextScaleLoop(LoopSequentialPipelineBlocks):
    """The loop over the scales, coarse to fine; each iteration runs the sub-blocks in order for one scale."""

    model_name = MODEL_NAME
    block_classes = [VARCLIPLoopPredictor, VARCLIPLoopGuidance, VARCLIPLoopSampler, VARCLIPLoopAccumulator]
    block_names = ["predict", "guide", "sample", "accumulate"]

    @property
    def description(self) -> str:
        return ("Next-scale loop: for each scale of the transformer's patch_nums, coarse to fine, runs its sub-blocks "
                "(predict, guide, sample, accumulate) with the scale's index `si` and side `pn`")

    @property
    def loop_expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("transformer", VARTransformer2DModel), ComponentSpec("vqvae", MultiScaleVQModel)]

    @torch.no_grad()
    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        patch_nums = components.transformer.config.patch_nums
        # the VQ-VAE's small quantizer follows the latent when the VQ-VAE itself is offloaded until decoding
        with components.vqvae.quantizer_on(block_state.f_hat.device), \
                self.progress_bar(total=len(patch_nums)) as progress_bar:
            for si, pn in enumerate(patch_nums):
                components, block_state = self.loop_step(components, block_state, si=si, pn=pn)
                progress_bar.update()
        # the KV cache is not an output: it ends with this generation, the returned state does not keep it
        self.set_block_state(state, block_state)
        return components, state
