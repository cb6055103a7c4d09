"""The frozen base model's predictions for ``--keep_known_captions``, computed once instead of at every step.

A LoRA run holds its known captions (and every row drawn without condition) to the base model's next-token
distributions. The base model is frozen and, with a token cache, every row's inputs are fixed, so its predictions
for a row never change: they are computed once before training, conditional for the rows it holds and
unconditional for every row (condition dropout may draw any), and looked up by row index at every step. A teacher
forward per step cost about a sixth of a LoRA step on the default model (half of each batch is held).

They are kept in float16 log-probabilities, 2 · L · V bytes per prediction (155 KiB for the default model); a
dataset whose predictions would take more than ``MAX_BYTES`` keeps the per-step teacher.

Legend: N dataset size · K rows looked up · L = Σ pn² · V codebook size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import collate_examples

__all__ = ["MAX_BYTES", "TeacherTargets", "precompute_teacher_targets"]

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 30


class TeacherTargets:
    """Log-probabilities ``(L, V)`` per dataset row: ``unconditional_NLV`` for every row, ``conditional_KLV`` for
    the held rows, whose dataset indices are ``held``."""

    def __init__(self, unconditional_NLV: torch.Tensor, conditional_KLV: torch.Tensor, held: Sequence[int]):
        self.unconditional_NLV, self.conditional_KLV = unconditional_NLV, conditional_KLV
        self.position = {int(index): k for k, index in enumerate(held)}

    def log_probs(self, index_B: torch.Tensor, drop_B: torch.Tensor) -> torch.Tensor:
        """``(B, L, V)`` float32: row ``b``'s unconditional prediction where ``drop_B[b]``, else its conditional
        one (a row that is not held has none: ``KeyError``)."""
        rows = [self.unconditional_NLV[int(i)] if bool(d) else self.conditional_KLV[self.position[int(i)]]
                for i, d in zip(index_B.tolist(), drop_B.tolist())]
        return torch.stack(rows).float()


@torch.no_grad()
def precompute_teacher_targets(
    dataset, held_N: Sequence[bool], predict: Callable[[dict[str, Any], torch.Tensor], torch.Tensor],
    num_tokens: int, vocab_size: int, batch_size: int = 32, show_progress: bool = True,
) -> TeacherTargets | None:
    """The base model's predictions for every row of ``dataset`` (deterministic rows: a token cache), or None when
    they would take more than ``MAX_BYTES``.

    ``predict(batch, drop_B)`` gives the frozen model's logits ``(B, L, V)`` for a collated batch, without condition
    where ``drop_B``; ``held_N`` marks the rows whose conditional prediction is needed.
    """
    N, held = len(dataset), [i for i, h in enumerate(held_N) if h]
    size = (N + len(held)) * num_tokens * vocab_size * 2
    if size > MAX_BYTES:
        logger.info("the base model's predictions would take %.1f GiB: computed at every step instead", size / 2**30)
        return None
    unconditional, conditional = [], []
    for start in tqdm(range(0, N, batch_size), desc="base model's predictions", disable=not show_progress):
        rows = list(range(start, min(start + batch_size, N)))
        batch = collate_examples([dataset[i] for i in rows])
        unconditional.append(predict(batch, torch.ones(len(rows), dtype=torch.bool)).float().log_softmax(-1).half())
        kept = [j for j, i in enumerate(rows) if held_N[i]]
        if kept:
            sub = collate_examples([dataset[rows[j]] for j in kept])
            conditional.append(predict(sub, torch.zeros(len(kept), dtype=torch.bool)).float().log_softmax(-1).half())
    empty = torch.empty(0, num_tokens, vocab_size, dtype=torch.half)
    return TeacherTargets(torch.cat(unconditional).cpu(), torch.cat(conditional).cpu() if conditional else empty, held)
