"""Token sampling for next-scale prediction: top-k / top-p filtering, multinomial draws and Gumbel smoothing.

Every random draw takes the caller's generator: one ``torch.Generator`` for the whole batch (one draw over all
rows, as the original sampler does), or a list with one generator per image (each image drawn on its own, so a
batch reproduces single-image runs).

Legend: B batch · l tokens of one scale · V codebook size.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .utils.arguments import float_between, float_where, int_at_least

Generators = torch.Generator | list[torch.Generator] | None

# The sampling defaults of VAR-CLIP's demo, which every pipeline, command and report uses unless told otherwise.
DEFAULT_GUIDANCE_SCALE = 4.0
DEFAULT_TOP_K = 900
DEFAULT_TOP_P = 0.95
GUIDANCE_SCHEDULES = ("linear", "constant")

__all__ = ["DEFAULT_GUIDANCE_SCALE", "DEFAULT_TOP_K", "DEFAULT_TOP_P", "SAMPLING_OPTIONS", "SamplingOption",
           "add_sampling_options", "given_sampling_options",
           "filter_logits", "sample_tokens", "gumbel_smooth_probs", "guidance_weight", "SamplingSchedule",
           "resolve_schedule", "pivotal_tokens"]


def guidance_weight(guidance_scale: float, si: int, num_scales: int) -> float:
    """Classifier-free guidance weight at scale ``si``: ramps linearly from 0 to ``guidance_scale``, as in VAR."""
    return guidance_scale * si / (num_scales - 1) if num_scales > 1 else 0.0


def filter_logits(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask (to -inf) the logits outside the top-k and outside the top-p nucleus; returns a new tensor.

    ``top_k`` ≤ 0 or ≥ V and ``top_p`` ≤ 0 disable the respective filter. Ties with the k-th largest logit are
    kept, and the nucleus always keeps the most likely token: the original sampler's rules. When top-k bounds the
    candidates, the nucleus is computed on the k survivors only (a partial sort of k, not a sort of all V): the
    masked tokens have probability 0 and cannot change the cumulative sums.
    """
    V = logits_BlV.shape[-1]
    use_top_k = 0 < top_k < V
    if use_top_k:
        top_vals, top_idx = logits_BlV.topk(top_k, dim=-1, sorted=top_p > 0)  # descending when sorted
        keep = logits_BlV >= top_vals[..., -1:] if top_p > 0 else logits_BlV >= top_vals.amin(dim=-1, keepdim=True)
        ties = int(keep.sum(dim=-1).max()) > top_k  # a logit equal to the k-th one survives too
        logits_BlV = logits_BlV.masked_fill(~keep, -torch.inf)
        if top_p <= 0:
            return logits_BlV
        if not ties:
            # ascending order, as the original sorts: cumulative probability of the low tail within the top k
            asc_vals, asc_idx = top_vals.flip(-1), top_idx.flip(-1)
            drop_k = asc_vals.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
            drop_k[..., -1:] = False
            return logits_BlV.scatter(-1, asc_idx, asc_vals.masked_fill(drop_k, -torch.inf))
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        # drop the low tail whose cumulative probability stays within 1 - top_p; never the top token
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits_BlV = logits_BlV.masked_fill(drop_sorted.scatter(-1, sorted_idx, drop_sorted), -torch.inf)
    return logits_BlV


def _per_image(generator: Generators, batch_size: int):
    if isinstance(generator, list):
        return generator
    return None


def sample_tokens(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                  generator: Generators = None) -> tuple[torch.LongTensor, torch.Tensor]:
    """Draw one token per position. Returns the indices (B, l) and the filtered logits (for Gumbel smoothing)."""
    B, l, V = logits_BlV.shape
    filtered = filter_logits(logits_BlV, top_k, top_p)
    probs_BlV = filtered.softmax(dim=-1)
    generators = _per_image(generator, B)
    if generators is None:
        idx = torch.multinomial(probs_BlV.view(-1, V), num_samples=1, generator=generator).view(B, l)
    else:
        idx = torch.stack([torch.multinomial(probs_BlV[b], num_samples=1, generator=g).view(l)
                           for b, g in enumerate(generators)])
    return idx, filtered


def gumbel_smooth_probs(filtered_logits_BlV: torch.Tensor, ratio: float, generator: Generators = None) -> torch.Tensor:
    """Soft token weights for ``more_smooth`` sampling: a Gumbel-softmax of the filtered logits.

    The logits are sharpened by ``1 + ratio`` and the temperature anneals from 0.27 to 0.005 over the scales
    (the original's visual-quality trick, borrowed from MaskGIT; not used for FID).
    """
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    logits = filtered_logits_BlV.mul(1 + ratio)
    generators = _per_image(generator, logits.shape[0])
    if generators is None:
        noise = torch.empty_like(logits).exponential_(generator=generator)
    else:
        noise = torch.stack([torch.empty_like(logits[b]).exponential_(generator=g) for b, g in enumerate(generators)])
    return F.softmax((logits - noise.log()) / tau, dim=-1)


# ----------------------------------------------------------------------------------------------------------------------
# The sampling options, declared once
# ----------------------------------------------------------------------------------------------------------------------


def _interval(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be START,STOP scale indices, e.g. 0,5; got {text!r}")
    return int_at_least(0)(parts[0]), int_at_least(0)(parts[1])


def _prune_ratios(text: str) -> dict[int, float]:
    ratios = {}
    for item in filter(None, text.split(",")):
        side, _, ratio = item.partition(":")
        ratios[int_at_least(1)(side)] = float_where(lambda v: 0 <= v < 1, "a share in [0, 1)")(ratio)
    if not ratios:
        raise argparse.ArgumentTypeError(f"must be SIDE:SHARE pairs, e.g. 8:0.5; got {text!r}")
    return ratios


@dataclass(frozen=True)
class SamplingOption:
    """One sampling argument: its name (a pipeline keyword, ``--kebab-case`` on the command line), its default, what
    it does, and how the command line reads it (None: a flag)."""

    name: str
    default: object
    help: str
    parse: Callable[[str], object] | None

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")


#: Every sampling argument, once. Each pipeline's ``__call__`` takes them all with these defaults, and
#: ``var-clip generate`` / ``inpaint`` / ``img2img`` / ``outpaint`` and ``generate-batch`` build their options from
#: this list (tests check both), so a new option is one entry here plus its use in :func:`resolve_schedule`.
SAMPLING_OPTIONS: tuple[SamplingOption, ...] = (
    SamplingOption("guidance_scale", DEFAULT_GUIDANCE_SCALE,
                   "classifier-free guidance, ramping linearly over the scales; 0 disables it",
                   float_where(lambda v: v >= 0, "a finite number >= 0")),
    SamplingOption("guidance_schedule", "linear",
                   "linear (the weight grows with the scale, as VAR) or constant",
                   lambda t: t if t in GUIDANCE_SCHEDULES else _raise(f"must be one of {GUIDANCE_SCHEDULES}, "
                                                                      f"got {t!r}")),
    SamplingOption("guidance_interval", None, "START,STOP: guide only these scale indices (Python-slice style)",
                   _interval),
    SamplingOption("top_k", DEFAULT_TOP_K, "sample among the k most likely tokens; 0 disables",
                   int_at_least(0)),
    SamplingOption("top_p", DEFAULT_TOP_P, "nucleus sampling threshold in [0, 1]; 0 disables",
                   float_between(0.0, 1.0)),
    SamplingOption("temperature", 1.0, "divides the logits before sampling",
                   float_where(lambda v: v > 0, "a finite number > 0")),
    SamplingOption("prune_ratios", None, "FastVAR: SIDE:SHARE pairs of tokens skipped at those scales, e.g. 8:0.5",
                   _prune_ratios),
    SamplingOption("more_smooth", False, "Gumbel-softmax smoothing (the original's visualisation setting)", None),
)


def _raise(message: str):
    raise argparse.ArgumentTypeError(message)


def add_sampling_options(group) -> None:
    """A command-line option per declared sampling argument; left out, the pipeline's default applies."""
    from .utils.arguments import add_option

    for option in SAMPLING_OPTIONS:
        if option.parse is None:
            add_option(group, option.flag, action="store_true", help=option.help)
        else:
            default = "none" if option.default is None else option.default
            add_option(group, option.flag, type=option.parse, default=None, help=f"{option.help} (default {default})")


def given_sampling_options(args: argparse.Namespace) -> dict:
    """The sampling arguments a command line gave, as pipeline keywords (the others keep the pipeline's defaults)."""
    given = {o.name: getattr(args, o.name) for o in SAMPLING_OPTIONS}
    return {name: value for name, value in given.items() if value not in (None, False)}


# ----------------------------------------------------------------------------------------------------------------------
# Per-scale sampling schedule
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingSchedule:
    """Every per-scale sampling setting of one generation, resolved and validated up front (S entries each).

    It is the one holder of a call's guidance: ``guidance_scale`` as asked, ``guidance`` the weight it gives each
    scale, and :attr:`guided` whether any scale is guided (the one definition of "guidance is on").
    """

    guidance_scale: float  # as asked; `guidance` is what the schedule and the interval make of it
    guidance: tuple[float, ...]  # the weight t of (1 + t)·cond − t·uncond at each scale
    top_k: tuple[int, ...]
    top_p: tuple[float, ...]
    temperature: tuple[float, ...]
    prune_ratio: tuple[float, ...]  # FastVAR: share of tokens not run through the blocks at each scale

    @property
    def last_guided_scale(self) -> int:
        """Index of the last scale with guidance (-1 if none): after it the unconditional rows can be dropped."""
        guided = [si for si, t in enumerate(self.guidance) if t != 0]
        return guided[-1] if guided else -1

    @property
    def guided(self) -> bool:
        """Whether any scale is guided, i.e. whether the unconditional rows are run at all (a guidance scale of 0
        and an empty ``guidance_interval`` both turn guidance off)."""
        return self.last_guided_scale >= 0


def _per_scale(name: str, value, num_scales: int, check, allowed: str) -> tuple:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * num_scales
    if len(values) != num_scales:
        raise ValueError(f"`{name}` must be one value or a list of {num_scales} values (one per scale), "
                         f"got {len(values)}")
    for v in values:
        if isinstance(v, bool) or not check(v):
            raise ValueError(f"`{name}` must be {allowed}, got {v!r}")
    return tuple(values)


def resolve_schedule(
    patch_nums,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    guidance_schedule: str = "linear",
    guidance_interval: tuple[int, int] | None = None,
    top_k=DEFAULT_TOP_K,
    top_p=DEFAULT_TOP_P,
    temperature=1.0,
    prune_ratios=None,
) -> SamplingSchedule:
    """Validate the sampling arguments and expand them to one value per scale.

    - ``guidance_schedule``: ``"linear"`` (VAR: ``t = guidance_scale · k / (S − 1)``) or ``"constant"``
      (``t = guidance_scale`` at every scale).
    - ``guidance_interval``: ``(start, stop)`` scale indices, Python-slice style; guidance is applied only there.
      Ending early (e.g. ``(0, S - 2)``) also skips the unconditional pass at the last scales (as Switti).
    - ``top_k``, ``top_p``, ``temperature``: one value, or a list with one value per scale.
    - ``prune_ratios``: ``None``, a dict ``{scale side: share of tokens pruned}`` or a list per scale (FastVAR).
    """
    S = len(patch_nums)
    # finite numbers only: an infinite guidance or temperature would only fail later, as NaN logits
    is_num = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if not is_num(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"`guidance_scale` must be a finite number >= 0 (0 disables guidance), got {guidance_scale!r}")
    if guidance_schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}")
    if guidance_schedule == "linear":
        guidance = [guidance_weight(guidance_scale, si, S) for si in range(S)]
    else:
        guidance = [float(guidance_scale)] * S
    if guidance_interval is not None:
        ok = (isinstance(guidance_interval, (tuple, list)) and len(guidance_interval) == 2
              and all(isinstance(i, int) and not isinstance(i, bool) for i in guidance_interval)
              and 0 <= guidance_interval[0] <= guidance_interval[1] <= S)
        if not ok:
            raise ValueError(f"`guidance_interval` must be (start, stop) scale indices with 0 <= start <= stop <= {S}, "
                             f"got {guidance_interval!r}")
        start, stop = guidance_interval
        guidance = [t if start <= si < stop else 0.0 for si, t in enumerate(guidance)]

    top_k = _per_scale("top_k", top_k, S, lambda v: isinstance(v, int) and v >= 0,
                       "an int >= 0 (0, or >= the vocabulary size, disables top-k)")
    top_p = _per_scale("top_p", top_p, S, lambda v: is_num(v) and 0.0 <= v <= 1.0,
                       "a number in [0, 1] (0 disables nucleus filtering)")
    temperature = _per_scale("temperature", temperature, S, lambda v: is_num(v) and v > 0, "a number > 0")
    if prune_ratios is None:
        prune = (0.0,) * S
    elif isinstance(prune_ratios, dict):
        unknown = [k for k in prune_ratios if k not in patch_nums]
        if unknown:
            raise ValueError(f"`prune_ratios` keys must be scale sides from {tuple(patch_nums)}, got {unknown}")
        prune = tuple(prune_ratios.get(pn, 0.0) for pn in patch_nums)
        _per_scale("prune_ratios", prune, S, lambda v: is_num(v) and 0.0 <= v < 1.0, "a share in [0, 1)")
    else:
        prune = _per_scale("prune_ratios", prune_ratios, S, lambda v: is_num(v) and 0.0 <= v < 1.0, "a share in [0, 1)")
    if prune[0] > 0:
        raise ValueError("`prune_ratios` cannot prune the first scale (it has no coarser scale to restore from)")
    return SamplingSchedule(float(guidance_scale), tuple(guidance), top_k, tuple(float(p) for p in top_p),
                            tuple(float(t) for t in temperature), tuple(float(p) for p in prune))


def pivotal_tokens(x_BlD: torch.Tensor, prune_ratio: float) -> torch.LongTensor:
    """FastVAR's pivotal tokens: the ``(1 - prune_ratio)·l`` tokens farthest from their scale's mean (high frequency).

    Returns sorted positions (B, k), so the kept tokens keep their raster order.
    """
    l = x_BlD.shape[1]
    k = max(1, math.ceil(l * (1 - prune_ratio)))
    score_Bl = (x_BlD.float() - x_BlD.float().mean(dim=1, keepdim=True)).norm(dim=-1)
    return score_Bl.topk(k, dim=1).indices.sort(dim=1).values
