"""train-var's loss: teacher-forced next-scale cross-entropy over all L tokens with condition dropout (VAR-CLIP §3.2,
label smoothing 0.1 by default, as VAR), optionally weighted per scale, and, for ``--keep_known_captions``, the KL
divergence to a frozen teacher's predictions on the rows it holds.

Legend: B batch · K rows held to the teacher · S scales · pn side of one scale · L = Σ pn² · V codebook size
· C latent channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel

__all__ = ["SCALE_WEIGHTINGS", "kl_to_teacher", "scale_loss_weights", "teacher_forcing_input", "var_loss"]

SCALE_WEIGHTINGS = ("tokens", "scales")

# (inputs, cond_drop_mask, rows_B) -> the frozen model's logits (or log-probabilities) for the batch's rows_B
TeacherFn = Callable[[torch.Tensor, torch.BoolTensor, torch.BoolTensor], torch.Tensor]


def scale_loss_weights(patch_nums: Sequence[int], weighting: str) -> torch.Tensor:
    """Per-token loss weights (L,), summing to one.

    ``"tokens"``: every token alike (1/L), VAR's mean over all L tokens, which gives the 1×1 scale 1/L of the loss.
    ``"scales"``: every scale alike (1 / (S · pn²) per token): the coarse scales, which decide an image's layout,
    weigh as much as the finest one.
    """
    if weighting not in SCALE_WEIGHTINGS:
        raise ValueError(f"`scale_loss_weighting` must be one of {SCALE_WEIGHTINGS}, got {weighting!r}")
    L = sum(pn * pn for pn in patch_nums)
    if weighting == "tokens":
        return torch.full((L,), 1.0 / L)
    return torch.cat([torch.full((pn * pn,), 1.0 / (len(patch_nums) * pn * pn)) for pn in patch_nums])


@torch.no_grad()
def teacher_forcing_input(vqvae: MultiScaleVQModel, patch_nums: Sequence[int],
                          idx_BL: torch.LongTensor) -> torch.Tensor:
    """The transformer's input (B, L - 1, C): scales 2..S built from the ground-truth indices of the coarser scales
    (teacher forcing), in float32 whatever the autocast around it."""
    with torch.autocast(idx_BL.device.type, enabled=False):
        idx_per_scale = list(idx_BL.split([pn * pn for pn in patch_nums], dim=1))  # (B, L) -> S × (B, pn²)
        return vqvae.indices_to_teacher_input(idx_per_scale)


def kl_to_teacher(logits_KLV: torch.Tensor, target_KLV: torch.Tensor, patch_nums: Sequence[int]) -> torch.Tensor:
    """KL(teacher ‖ model) of each row's next-token distributions (K,), averaged per scale and then over scales.

    ``target_KLV`` holds the teacher's log-probabilities. A mean over tokens would give the 1×1 scale 1/L of the
    weight, yet the coarse scales decide the layout and are where an adapter drifts most; balanced, each scale is held
    as firmly as the others.
    """
    kl_KL = F.kl_div(logits_KLV.float().log_softmax(dim=-1), target_KLV, reduction="none",
                     log_target=True).sum(dim=-1)
    return (kl_KL * scale_loss_weights(patch_nums, "scales").to(kl_KL.device)).sum(dim=1)


def var_loss(model, transformer: VARTransformer2DModel, vqvae: MultiScaleVQModel, idx_BL: torch.LongTensor,
             condition: dict[str, torch.Tensor], label_smoothing: float,
             generator: torch.Generator | None, keep_B: torch.BoolTensor | None = None,
             teacher: TeacherFn | None = None,
             scale_weighting: str = "tokens") -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher-forced next-scale cross-entropy over all L tokens, with condition dropout.

    ``scale_weighting`` weighs the tokens' cross-entropy (:func:`scale_loss_weights`): ``"tokens"`` is VAR's mean.

    ``model`` is the (possibly wrapped) trainable transformer, ``transformer`` the unwrapped one; ``condition`` its
    condition arguments (``text_embeds`` and, with token-level conditioning, ``encoder_hidden_states`` /
    ``encoder_attention_mask``; or ``class_labels``).

    With ``keep_B`` and ``teacher`` (``(inputs, cond_drop_mask, rows_B) -> logits`` of a frozen model, given the
    inputs and mask of the batch's ``rows_B`` only), the rows in ``keep_B`` and the rows trained without condition
    are instead pulled to the teacher's predictions (learning without forgetting): :func:`kl_to_teacher`.
    """
    B = idx_BL.shape[0]
    V = transformer.config.vocab_size
    patch_nums = transformer.config.patch_nums
    x_BLC_wo_first_l = teacher_forcing_input(vqvae, patch_nums, idx_BL)
    drop_B = transformer.condition_dropout_mask(B, generator=generator, device=idx_BL.device)
    logits_BLV = model(x_BLC_wo_first_l, **condition, cond_drop_mask=drop_B).logits
    metrics = {}
    if keep_B is None and scale_weighting == "tokens":  # VAR's loss, one fused mean
        loss = F.cross_entropy(logits_BLV.float().reshape(-1, V), idx_BL.reshape(-1), label_smoothing=label_smoothing)
    else:
        ce_BL = F.cross_entropy(logits_BLV.float().reshape(-1, V), idx_BL.reshape(-1), label_smoothing=label_smoothing,
                                reduction="none").view(B, -1)
        ce_B = (ce_BL * scale_loss_weights(patch_nums, scale_weighting).to(ce_BL.device)).sum(dim=1)
        keep_B = None if keep_B is None else keep_B.to(drop_B.device).bool() | drop_B
        if keep_B is not None and keep_B.any():
            with torch.no_grad():  # the teacher reads only the K kept rows
                target_KLV = teacher(x_BLC_wo_first_l[keep_B], drop_B[keep_B], keep_B).float().log_softmax(dim=-1)
            kl_K = kl_to_teacher(logits_BLV[keep_B], target_KLV, patch_nums)
            loss_B = ce_B.masked_scatter(keep_B, kl_K)  # (B,): the KL where kept, the cross-entropy elsewhere
            metrics["kl_kept"] = kl_K.mean().item()
        else:
            loss_B = ce_B
        loss = loss_B.mean()
    with torch.no_grad():
        hits_BL = logits_BLV.argmax(dim=-1) == idx_BL
        last_l = patch_nums[-1] ** 2
        metrics.update(accuracy=hits_BL.float().mean().item() * 100,
                       accuracy_last_scale=hits_BL[:, -last_l:].float().mean().item() * 100)
    return loss, metrics
