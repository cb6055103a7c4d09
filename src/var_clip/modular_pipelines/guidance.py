"""diffusers guiders on next-scale prediction: their ``start`` / ``stop`` read as scale indices.

A guider is told the step (the scale index ``si``) and the number of steps (the number of scales ``S``) with
``set_state``, and guides the steps ``int(start·S) <= si < int(stop·S)``: ``start`` and ``stop`` are fractions of
the scales, which is what VAR-CLIP's ``guidance_interval=(start_scale, stop_scale)`` says in scale indices.
"""

from __future__ import annotations

import torch
from diffusers.guiders.guider_utils import BaseGuidance

__all__ = ["guided_scales", "guider_interval"]


def guider_interval(start_scale: int, stop_scale: int, num_scales: int) -> dict[str, float]:
    """A guider's ``start`` and ``stop`` for guidance on the scales ``start_scale <= si < stop_scale`` of S.

    The fractions sit half a scale inside each bound, so the guider's ``int(fraction · S)`` lands on the bound itself:
    ``start_scale / S`` can round below it (``15 / 22 · 22`` is 14.999…, guidance would begin a scale early).

    Example: ``ClassifierFreeGuidance(guidance_scale=4.0, use_original_formulation=True, **guider_interval(2, 5, 7))``
    guides scales 2, 3 and 4, as the classic pipeline's ``guidance_interval=(2, 5)``.
    """
    ok = (all(isinstance(v, int) and not isinstance(v, bool) for v in (start_scale, stop_scale, num_scales))
          and 0 <= start_scale < stop_scale <= num_scales)
    if not ok:
        raise ValueError(f"`start_scale` and `stop_scale` must be scale indices with 0 <= start_scale < stop_scale <= "
                         f"num_scales, got ({start_scale!r}, {stop_scale!r}) of {num_scales!r} scales (for no "
                         "guidance at all, use `guidance_scale=0` or `enabled=False` on the guider)")
    stop = 1.0 if stop_scale == num_scales else (stop_scale + 0.5) / num_scales
    return {"start": (start_scale + 0.5) / num_scales, "stop": stop}


def guided_scales(guider, patch_nums) -> tuple[int, ...]:
    """The scale indices at which ``guider`` asks for an unconditional prediction, as the guider itself decides.

    Asked through its public state (``set_state`` with the scale index as the step and the scale's side as the
    timestep, then ``num_conditions``), as the sampling loop sets it.

    The loop runs the conditional and the unconditional prediction as one batch through one KV cache, and hands the
    guider the two halves of the logits. A guider that changes the model for one of its predictions (``prepare_models``
    hooks: perturbed-attention, skip-layer, smoothed-energy, auto-guidance) or asks for more than two predictions is
    refused: it cannot be applied to half a batch.
    """
    if type(guider).prepare_models is not BaseGuidance.prepare_models:
        raise ValueError(f"`guider` {type(guider).__name__} changes the model for its predictions (prepare_models "
                         "hooks); next-scale sampling runs the conditional and the unconditional prediction as one "
                         "batch through one KV cache: use ClassifierFreeGuidance or another guider that combines two "
                         "predictions")
    S = len(patch_nums)
    guided = []
    for si, pn in enumerate(patch_nums):
        guider.set_state(step=si, num_inference_steps=S, timestep=torch.tensor(pn))
        n = guider.num_conditions
        if n > 2:
            raise ValueError(f"`guider` {type(guider).__name__} asks for {n} predictions at scale {si}; next-scale "
                             "sampling gives a guider two, the conditional and the unconditional one (one batch, one "
                             "KV cache): use ClassifierFreeGuidance or another two-prediction guider")
        if n == 2:
            guided.append(si)
    return tuple(guided)
