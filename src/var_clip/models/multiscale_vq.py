"""VAR's multi-scale residual VQ-VAE.

An image is encoded to a latent ``f`` of side ``pn_S`` and quantized into S token maps of growing side
``patch_nums = (1, 2, 3, ..., 16)``: every scale quantizes what the previous scales left unexplained
(the residual), so the sum of the upsampled, φ-refined scale embeddings approximates ``f``
(Tian et al. 2024, Algorithm 1 and 2).

Legend: B batch · S scales · pn side of one scale · l = pn² · L = Σ pn² · C latent channels ·
V codebook size · H, W spatial size (of the image or of the largest latent, as named).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from .original_checkpoints import read_vqvae_file
from .strict_loading import StrictLoadingMixin, check_vqvae_config

__all__ = ["MultiScaleVQModel", "MultiScaleVQOutput", "MultiScaleQuantizer"]


# ----------------------------------------------------------------------------------------------------------------------
# Convolutional encoder / decoder (the VQGAN / LDM "vq-f16" layout, with VAR's padding and attention details)
# ----------------------------------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # A 1×1 projection only where the width changes; the state-dict layout depends on it.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all H·W positions, with one fused 1×1 qkv conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # (B, 3C, H, W) -> 3 × (B, 1, HW, C): one head of width C; SDPA's default scale is C^-1/2 as in VAR.
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unsqueeze(2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric zero padding (right and bottom only) before the stride-2 conv, as in VQGAN.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Stage(nn.Module):
    """One resolution level: residual blocks, optional attention after each block, optional resampling."""

    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if resample is not None:
            setattr(self, name, resample)
        self._resample_name = name if resample is not None else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if self._resample_name is not None:
            h = getattr(self, self._resample_name)(h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, in_channels, ch, ch_mult, num_res_blocks, z_channels, dropout, using_sa, using_mid_sa):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        stages, block_in = [], ch
        for level, mult in enumerate(ch_mult):
            last = level == len(ch_mult) - 1
            blocks, attn = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if last and using_sa:  # attention only at the lowest resolution
                    attn.append(AttnBlock(block_in))
            stages.append(_Stage(blocks, attn, None if last else Downsample2x(block_in), "downsample"))
        self.down = nn.ModuleList(stages)
        self.mid = _Middle(block_in, dropout, using_mid_sa)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, padding=1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_B3HW)
        for stage in self.down:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, out_channels, ch, ch_mult, num_res_blocks, z_channels, dropout, using_sa, using_mid_sa):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, padding=1)
        self.mid = _Middle(block_in, dropout, using_mid_sa)
        stages = []
        for level in reversed(range(len(ch_mult))):  # built from the lowest resolution up...
            blocks, attn = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * ch_mult[level], dropout))
                block_in = ch * ch_mult[level]
                if level == len(ch_mult) - 1 and using_sa:
                    attn.append(AttnBlock(block_in))
            stages.insert(0, _Stage(blocks, attn, Upsample2x(block_in) if level != 0 else None, "upsample"))
        self.up = nn.ModuleList(stages)  # ...but indexed by level, so `up.0` is the full-resolution stage
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BChw))
        for stage in reversed(self.up):
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------------------------------
# Multi-scale residual quantizer
# ----------------------------------------------------------------------------------------------------------------------


class Phi(nn.Conv2d):
    """φ: ``h ↦ (1 - r)·h + r·conv3×3(h)``, the residual refinement applied to each upsampled scale."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return (h_BChw.mul(1 - self.ratio)
                + super().forward(h_BChw.to(self.weight.dtype)).to(h_BChw.dtype).mul(self.ratio))


class MultiScaleQuantizer(nn.Module):
    """One shared codebook quantizing a latent at every scale of ``patch_nums`` in turn.

    ``num_phis`` φ convs are shared among the S scales: scale ``si`` uses the φ whose "tick" is nearest to its
    position ``si / (S - 1)`` in [0, 1]. With 4 φs the ticks are ``linspace(1/12, 11/12, 4)``, otherwise
    ``linspace(1/(2K), 1 - 1/(2K), K)`` (VAR's rule; a tie goes to the lower tick).
    """

    def __init__(self, vocab_size: int, channels: int, patch_nums: tuple[int, ...], num_phis: int, quant_resi: float,
                 beta: float, using_znorm: bool):
        super().__init__()
        self.vocab_size, self.channels, self.patch_nums = vocab_size, channels, tuple(patch_nums)
        self.beta, self.using_znorm = beta, using_znorm
        self.embedding = nn.Embedding(vocab_size, channels)
        self.phis = nn.ModuleList(
            [Phi(channels, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity() for _ in range(num_phis)]
        )
        # Exponential moving average of codebook hits per scale, for the usage statistics logged in training.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.phi_index_per_scale = self._phi_indices(len(self.patch_nums), num_phis)

    @staticmethod
    def _phi_indices(num_scales: int, num_phis: int) -> tuple[int, ...]:
        K = num_phis
        lo = 1 / 3 / K if K == 4 else 1 / 2 / K
        # numpy's linspace and argmin, not a closed form: scales often sit exactly halfway between two ticks, and
        # the float rounding of linspace decides those ties in the original (e.g. scale 2 of 10 takes φ 1, not φ 0).
        ticks = np.linspace(lo, 1 - lo, K)
        return tuple(int(np.argmin(np.abs(ticks - si / max(num_scales - 1, 1)))) for si in range(num_scales))

    def phi(self, si: int) -> nn.Module:
        return self.phis[self.phi_index_per_scale[si]]

    # -- helpers -------------------------------------------------------------------------------------------------------

    def _nearest(self, z_NC: torch.Tensor) -> torch.LongTensor:
        codebook_VC = self.embedding.weight.detach()
        if self.using_znorm:  # cosine similarity
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(codebook_VC.T, dim=0), dim=1)
        # ‖z‖² + ‖e‖² − 2 z·e, in this order and with one addmm, so ties break as in the original
        d_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(codebook_VC.square(), dim=1)
        d_NV.addmm_(z_NC, codebook_VC.T, alpha=-2, beta=1)
        return torch.argmin(d_NV, dim=1)

    def _upsample_refine(self, h_BChw: torch.Tensor, si: int, size: int) -> torch.Tensor:
        # Every scale but the last is upsampled bicubically to the full latent size before its φ; the last is
        # already full size and is taken as it is (no interpolation at all, not even an identity resize).
        if si != len(self.patch_nums) - 1:
            h_BChw = F.interpolate(h_BChw, size=(size, size), mode="bicubic")
        return self.phi(si)(h_BChw)

    def _residual_at(self, f_rest_BChw: torch.Tensor, si: int, pn: int) -> torch.Tensor:
        if si != len(self.patch_nums) - 1:
            f_rest_BChw = F.interpolate(f_rest_BChw, size=(pn, pn), mode="area")
        return f_rest_BChw.permute(0, 2, 3, 1).reshape(-1, self.channels)

    @torch.no_grad()
    def residual_indices(self, f_BChw: torch.Tensor, f_hat_BChw: torch.Tensor, si: int) -> torch.LongTensor:
        """Scale ``si``'s tokens (B, pn²) for what ``f_hat`` still leaves of ``f``, quantized as the encoder does.

        With ``f_hat`` the image's own accumulation this is exactly :meth:`latent_to_indices`' scale ``si``; with any
        other ``f_hat`` (coarse scales partly regenerated) they are the tokens that bring it back towards ``f``.
        """
        pn = self.patch_nums[si]
        f_rest = f_BChw.float() - f_hat_BChw.float()
        return self._nearest(self._residual_at(f_rest, si, pn)).view(f_BChw.shape[0], pn * pn)

    def indices_to_embedding(self, idx_Bl: torch.LongTensor) -> torch.Tensor:
        """(B, pn²) token indices → (B, C, pn, pn) codebook vectors."""
        B, l = idx_Bl.shape
        pn = round(l**0.5)
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.channels, pn, pn)

    # -- encoding ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def latent_to_indices(self, f_BChw: torch.Tensor) -> list[torch.LongTensor]:
        B, C, H, W = f_BChw.shape
        if H != self.patch_nums[-1] or W != self.patch_nums[-1]:
            raise ValueError(f"latent side {H}×{W} does not match the last scale {self.patch_nums[-1]} of `patch_nums`")
        f_rest = f_BChw.detach().float().clone()
        idx_per_scale = []
        for si, pn in enumerate(self.patch_nums):
            idx_N = self._nearest(self._residual_at(f_rest, si, pn))
            idx_Bl = idx_N.view(B, pn * pn)
            f_rest -= self._upsample_refine(self.indices_to_embedding(idx_Bl), si, H)
            idx_per_scale.append(idx_Bl)
        return idx_per_scale

    # -- decoding and the autoregressive interface ---------------------------------------------------------------------

    def indices_to_latent(self, idx_per_scale: list[torch.LongTensor]) -> torch.Tensor:
        """Σ_k φ_k(upsample(e(idx_k))): the accumulated latent ``f_hat`` (B, C, pn_S, pn_S)."""
        H = self.patch_nums[-1]
        f_hat = None
        for si, idx_Bl in enumerate(idx_per_scale):
            h = self._upsample_refine(self.indices_to_embedding(idx_Bl).float(), si, H)
            f_hat = h if f_hat is None else f_hat + h
        return f_hat

    def next_scale_input(self, si: int, f_hat_BChw: torch.Tensor,
                         h_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale ``si``'s embedding ``h`` to ``f_hat``; return it and the transformer's input for scale si+1.

        The next input is the new ``f_hat`` area-downsampled to the next side (None after the last scale).
        ``f_hat`` is updated out of place so the caller's tensor is never modified.
        """
        f_hat_BChw = f_hat_BChw + self._upsample_refine(h_BChw, si, self.patch_nums[-1])
        if si == len(self.patch_nums) - 1:
            return f_hat_BChw, None
        pn_next = self.patch_nums[si + 1]
        return f_hat_BChw, F.interpolate(f_hat_BChw, size=(pn_next, pn_next), mode="area")

    def indices_to_teacher_input(self, idx_per_scale: list[torch.LongTensor]) -> torch.Tensor:
        """Teacher-forcing input of the transformer: (B, L - pn_1², C), the inputs of scales 2..S."""
        B = idx_per_scale[0].shape[0]
        f_hat = idx_per_scale[0].new_zeros(B, self.channels, self.patch_nums[-1], self.patch_nums[-1],
                                           dtype=torch.float32)
        inputs = []
        for si in range(len(self.patch_nums) - 1):
            f_hat, next_BChw = self.next_scale_input(si, f_hat, self.indices_to_embedding(idx_per_scale[si]).float())
            inputs.append(next_BChw.flatten(2).transpose(1, 2))  # (B, C, pn, pn) -> (B, pn², C)
        return torch.cat(inputs, dim=1)

    # -- training ------------------------------------------------------------------------------------------------------

    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize for training. Returns the straight-through ``f_hat``, the VQ loss and the hits per scale (S, V).

        Runs in float32 even under mixed-precision autocast: the codebook search and the residual accumulation are
        where low precision changes which code wins.
        """
        with torch.autocast(f_BChw.device.type, enabled=False):
            return self._quantize_fp32(f_BChw.float())

    def _quantize_fp32(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, C, H, W = f.shape
        f_no_grad = f.detach()
        f_rest, f_hat = f_no_grad.clone(), torch.zeros_like(f_no_grad)
        vq_loss = f.new_zeros(())
        hits_SV = f.new_zeros(len(self.patch_nums), self.vocab_size)
        for si, pn in enumerate(self.patch_nums):
            with torch.no_grad():
                idx_N = self._nearest(self._residual_at(f_rest, si, pn))
            hits_SV[si] = idx_N.bincount(minlength=self.vocab_size).float()
            h = self._upsample_refine(self.indices_to_embedding(idx_N.view(B, pn * pn)), si, H)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            # β·commitment (moves the encoder) + codebook term (moves codebook and φ), summed over every prefix of
            # scales
            vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_no_grad)
        vq_loss = vq_loss / len(self.patch_nums)
        # Straight-through estimator: the forward value is f_hat, the gradient flows to f.
        f_hat_st = (f_hat.detach() - f_no_grad) + f
        if self.training:
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(hits_SV)
            with torch.no_grad():
                self.ema_vocab_hit_SV.mul_(0.99).add_(hits_SV, alpha=0.01)
        return f_hat_st, vq_loss, hits_SV


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class MultiScaleVQOutput(BaseOutput):
    """Output of :meth:`MultiScaleVQModel.forward`.

    Args:
        sample (`torch.Tensor` of shape `(B, 3, H, W)`): the reconstruction (not clamped, for the loss).
        vq_loss (`torch.Tensor`): scalar, commitment and codebook terms averaged over scales.
        codebook_usage (`torch.Tensor` of shape `(S,)`): percentage of codebook entries hit at each scale in
            this batch (summed over processes in distributed training).
    """

    sample: torch.Tensor
    vq_loss: torch.Tensor | None = None
    codebook_usage: torch.Tensor | None = None


def offloaded_entry_point(method):
    """Run a model method other than ``forward`` under the model's offloading hooks, as if it were ``forward``.

    accelerate's hooks (``enable_model_cpu_offload``) and diffusers' group offloading attach to ``forward``; the
    pipelines call ``encode`` and ``decode_latent`` instead, so those fire the same hooks first (diffusers'
    ``apply_forward_hook`` covers the accelerate hook only; block-level group offloading keeps the decoder in the
    model's top-level group, which onloads on the top-level call).
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if hasattr(self, "_hf_hook") and hasattr(self._hf_hook, "pre_forward"):
            self._hf_hook.pre_forward(self)
        registry = getattr(self, "_diffusers_hook", None)
        group_hook = registry.get_hook("group_offloading") if registry is not None else None
        if group_hook is None:
            return method(self, *args, **kwargs)
        args, kwargs = group_hook.pre_forward(self, *args, **kwargs)
        return group_hook.post_forward(self, method(self, *args, **kwargs))

    return wrapper


class MultiScaleVQModel(StrictLoadingMixin, ModelMixin, ConfigMixin):
    r"""VAR's VQ-VAE with a multi-scale residual quantizer.

    Parameters:
        vocab_size (`int`, defaults to 4096): number of codebook entries V.
        latent_channels (`int`, defaults to 32): channels C of the latent and of each codebook vector.
        ch (`int`, defaults to 160): base width of the encoder and decoder.
        ch_mult (`tuple[int]`, defaults to `(1, 1, 2, 2, 4)`): width multiplier per resolution; the image is
            downsampled by `2 ** (len(ch_mult) - 1)` (16 by default, 8 with four levels).
        num_res_blocks (`int`, defaults to 2): residual blocks per encoder level (the decoder has one more).
        dropout (`float`, defaults to 0.0): dropout inside the residual blocks.
        using_sa (`bool`, defaults to True): self-attention after each block at the lowest resolution.
        using_mid_sa (`bool`, defaults to True): self-attention in the middle block.
        in_channels (`int`, defaults to 3): image channels.
        beta (`float`, defaults to 0.25): weight of the commitment loss.
        using_znorm (`bool`, defaults to False): nearest codebook entry by cosine similarity instead of L2.
        quant_conv_kernel_size (`int`, defaults to 3): kernel of the convs around the quantizer.
        quant_resi (`float`, defaults to 0.5): φ mixing ratio, ``φ(h) = (1 - r)·h + r·conv(h)``; 0 disables φ.
        share_quant_resi (`int`, defaults to 4): number of φ convs: 0 one per scale, 1 one for all, K ≥ 2 K
            partially shared ones.
        patch_nums (`tuple[int]`, defaults to `(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)`): side of each scale's token
            map; the last one is the latent side, so images are `patch_nums[-1] * downsample` pixels wide.
    """

    _supports_gradient_checkpointing = False
    # The codebook search and the residual accumulation stay in float32 under `dtype=torch.bfloat16`:
    # nearest-neighbour indices are exact only at full precision.
    _keep_in_fp32_modules = ["quantize"]
    # regional compilation compiles the decoder as one region: its residual blocks differ in width, and a graph per
    # width would mean a recompilation per block (compiled weights have static shapes); the encoder runs only to edit
    _repeated_blocks = ["Decoder"]

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 4096,
        latent_channels: int = 32,
        ch: int = 160,
        ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        using_sa: bool = True,
        using_mid_sa: bool = True,
        in_channels: int = 3,
        beta: float = 0.25,
        using_znorm: bool = False,
        quant_conv_kernel_size: int = 3,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    ):
        super().__init__()
        check_vqvae_config(
            vocab_size=vocab_size, latent_channels=latent_channels, ch=ch, ch_mult=ch_mult,
            num_res_blocks=num_res_blocks, dropout=dropout, using_sa=using_sa, using_mid_sa=using_mid_sa,
            in_channels=in_channels, beta=beta, using_znorm=using_znorm, quant_conv_kernel_size=quant_conv_kernel_size,
            quant_resi=quant_resi, share_quant_resi=share_quant_resi, patch_nums=patch_nums,
        )
        patch_nums = tuple(int(p) for p in patch_nums)

        # 1. encoder and decoder
        dd = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, z_channels=latent_channels,
                  dropout=dropout, using_sa=using_sa, using_mid_sa=using_mid_sa)
        self.encoder = Encoder(in_channels=in_channels, **dd)
        self.decoder = Decoder(out_channels=in_channels, **dd)

        # 2. quantizer: 0 → one φ per scale, 1 → a single shared φ, K → K partially shared φs
        num_phis = len(patch_nums) if share_quant_resi == 0 else share_quant_resi
        self.quantize = MultiScaleQuantizer(vocab_size, latent_channels, patch_nums, num_phis, quant_resi, beta,
                                            using_znorm)
        k = quant_conv_kernel_size
        self.quant_conv = nn.Conv2d(latent_channels, latent_channels, k, padding=k // 2)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, k, padding=k // 2)

    @classmethod
    def from_single_file(cls, checkpoint, patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                         quant_resi: float = 0.5, dtype: torch.dtype | None = None, **config_overrides):
        r"""Load VAR's original VQ-VAE file (``vae_ch160v4096z32.pth``), as ``var-clip convert-var`` reads it.

        The file is read with ``torch.load(weights_only=True)`` after a look at its first bytes (Git LFS pointers and
        HTML pages are named as such), every key is consumed and every shape checked; the model equals the one a
        converted folder loads. The file stores neither ``patch_nums`` (VAR's 256-px schedule by default) nor φ's
        ratio ``quant_resi`` (0.5 in VAR); ``dtype`` casts all but the quantizer, which stays in float32.
        """
        return read_vqvae_file(cls, checkpoint, patch_nums=patch_nums, quant_resi=quant_resi, dtype=dtype,
                               **config_overrides)

    # -- derived sizes -------------------------------------------------------------------------------------------------

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    @property
    def sample_size(self) -> int:
        """Side of the images this model encodes and decodes."""
        return self.config.patch_nums[-1] * self.downsample_factor

    # -- public API ----------------------------------------------------------------------------------------------------

    @offloaded_entry_point  # offloading hooks fire on forward only: the pipelines encode and decode through these
    def encode(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → continuous latent ``f`` (B, C, pn_S, pn_S) before quantization."""
        self._check_images(images_B3HW)
        # the norms' dtype is the compute dtype, also when the convolutions' weights are stored in fp8 (layerwise
        # casting)
        return self.quant_conv(self.encoder(images_B3HW.to(self.encoder.norm_out.weight.dtype)))

    @torch.no_grad()
    def encode_indices(self, images_B3HW: torch.Tensor) -> list[torch.LongTensor]:
        """Images in [-1, 1] → one LongTensor (B, pn²) of token indices per scale."""
        return self.quantize.latent_to_indices(self.encode(images_B3HW))

    @offloaded_entry_point
    def decode_latent(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Accumulated latent ``f_hat`` → images in [-1, 1]."""
        dtype = self.decoder.norm_out.weight.dtype
        # channels-last activations: oneDNN's convolutions run faster on NHWC on CPU; the values are unchanged
        f = f_hat_BChw.to(dtype=dtype, memory_format=torch.channels_last)
        if f.shape[0] > 1:  # a compiled decoder: one graph for every batch size above one
            torch._dynamo.maybe_mark_dynamic(f, 0)
        return self.decoder(self.post_quant_conv(f)).clamp(-1, 1).contiguous()

    @torch.no_grad()
    def decode_indices(self, idx_per_scale: list[torch.LongTensor]) -> torch.Tensor:
        """Per-scale token indices → images in [-1, 1]."""
        self._check_indices(idx_per_scale)
        return self.decode_latent(self.quantize.indices_to_latent(idx_per_scale))

    @torch.no_grad()
    def indices_to_teacher_input(self, idx_per_scale: list[torch.LongTensor]) -> torch.Tensor:
        """Per-scale indices → the transformer's teacher-forcing input (B, L - pn_1², C)."""
        self._check_indices(idx_per_scale)
        return self.quantize.indices_to_teacher_input(idx_per_scale)

    # -- what a next-scale sampler asks of the VQ-VAE between transformer steps ----------------------------------------

    def embed_tokens(self, idx_Bl: torch.LongTensor | None = None,
                     probs_BlV: torch.Tensor | None = None) -> torch.Tensor:
        """One scale's latent (B, C, pn, pn) in float32: the codebook vectors of the tokens ``idx_Bl`` (B, pn²), or the
        mix of all of them weighted by ``probs_BlV`` (B, pn², V) (the Gumbel-smoothed sampling of the original's
        visualisation setting). Exactly one of the two is given."""
        if (idx_Bl is None) == (probs_BlV is None):
            raise ValueError("pass exactly one of `idx_Bl` (token indices) and `probs_BlV` (codebook weights)")
        codebook = self.quantize.embedding
        h_BlC = codebook(idx_Bl).float() if probs_BlV is None else probs_BlV @ codebook.weight.float()
        B, l, C = h_BlC.shape
        pn = math.isqrt(l)
        return h_BlC.transpose(1, 2).reshape(B, C, pn, pn)  # (B, l, C) -> (B, C, pn, pn)

    def residual_indices(self, f_BChw: torch.Tensor, f_hat_BChw: torch.Tensor, si: int) -> torch.LongTensor:
        """Scale ``si``'s tokens of the latent ``f`` given what ``f_hat`` already holds: see
        :meth:`MultiScaleQuantizer.residual_indices` (inpainting's kept tokens)."""
        return self.quantize.residual_indices(f_BChw, f_hat_BChw, si)

    def next_scale_input(self, si: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor):
        """The sampler's update: see :meth:`MultiScaleQuantizer.next_scale_input`."""
        return self.quantize.next_scale_input(si, f_hat_BChw, h_BChw)

    @contextmanager
    def quantizer_on(self, device: torch.device | str):
        """Keep the residual quantizer (codebook and φ convolutions, a fraction of a MB) on ``device`` while a sampler
        uses it, then put it back.

        Under model offloading the VQ-VAE waits on the CPU until decoding, and onloading all of it at every scale would
        offload the transformer each time; so the quantizer alone follows the latent. Weights on the meta device
        (sequential or leaf-level group offloading) are left alone: their own hooks onload them per call.
        """
        params = list(self.quantize.parameters())
        home = params[0].device if params else torch.device(device)
        move = home != torch.device(device) and home.type != "meta"
        if move:
            self.quantize.to(device)
        try:
            yield self
        finally:
            if move:
                self.quantize.to(home)

    def forward(self, images_B3HW: torch.Tensor, return_dict: bool = True):
        """Training forward: reconstruction through the straight-through quantizer, VQ loss and codebook usage."""
        f_hat, vq_loss, hits_SV = self.quantize(self.encode(images_B3HW))
        sample = self.decoder(self.post_quant_conv(f_hat.to(images_B3HW.dtype)))
        usage_S = (hits_SV > 0).float().mean(dim=1) * 100
        if not return_dict:
            return sample, vq_loss, usage_S
        return MultiScaleVQOutput(sample=sample, vq_loss=vq_loss, codebook_usage=usage_S)

    # -- validation ----------------------------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != self.config.in_channels:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"`images` must be a tensor (B, {self.config.in_channels}, H, W) in [-1, 1], got {shape}")
        if images.shape[-2:] != (self.sample_size, self.sample_size):
            raise ValueError(
                f"`images` must be {self.sample_size}×{self.sample_size} for this model "
                f"(patch_nums[-1]={self.config.patch_nums[-1]} × downsample {self.downsample_factor}), "
                f"got {tuple(images.shape[-2:])}"
            )

    def _check_indices(self, idx_per_scale: list[torch.LongTensor]) -> None:
        pns = self.config.patch_nums
        if not isinstance(idx_per_scale, (list, tuple)) or len(idx_per_scale) != len(pns):
            raise ValueError(f"expected a list of {len(pns)} index tensors (one per scale of {tuple(pns)})")
        for si, (idx, pn) in enumerate(zip(idx_per_scale, pns)):
            if idx.ndim != 2 or idx.shape[1] != pn * pn:
                raise ValueError(f"indices of scale {si} must have shape (B, {pn * pn}), got {tuple(idx.shape)}")
            if idx.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"indices of scale {si} must be integer, got {idx.dtype}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
                raise ValueError(f"indices of scale {si} must be in [0, {self.config.vocab_size}), got "
                                 f"[{int(idx.min())}, {int(idx.max())}]")
