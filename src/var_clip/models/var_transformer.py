"""The VAR transformer: next-scale prediction with AdaLN conditioning on a text embedding or a class label.

Every scale's token map is predicted at once from all coarser scales (block-causal attention). The condition,
projected to the width, is the start token and drives every block's adaptive LayerNorm (Tian et al. 2024, §3;
VAR-CLIP, Zhang et al. 2024, §3.2, where the class embedding is replaced by a projected CLIP text embedding).

Legend: B batch · S scales · pn side of one scale · l = pn² · L = Σ pn² · D width · C latent channels ·
V codebook size · E text-embedding width · T text tokens · H text hidden width · Hd heads · hd head width.

Token-level text conditioning (``cross_attention_dim``, off by default so VAR and VAR-CLIP checkpoints are unchanged):
every block also cross-attends to the text encoder's last hidden states (B, T, H), as VAR-CLIP's successors Switti
and Infinity do; the pooled embedding still is the start token and the AdaLN condition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, dispatch_attention_fn
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..sampling import pivotal_tokens
from .original_checkpoints import read_transformer_file
from .strict_loading import StrictLoadingMixin, check_transformer_config

__all__ = ["VARTransformer2DModel", "VARTransformerOutput", "KVCache", "LayerKVCache"]



def _mark_dynamic(x: torch.Tensor, *dims: int) -> None:
    """Tell torch.compile (if the blocks are compiled) that these dims vary, so the first graph is already general.

    Left to itself, dynamo compiles the first call for its exact sizes and generalises only after a recompilation;
    sizes 0 and 1 are always specialised, so a batch of one or the first scale's single token still get their own.
    """
    for dim in dims:
        if x.shape[dim] > 1:
            torch._dynamo.maybe_mark_dynamic(x, dim)


def _mark_block_inputs_dynamic(x_BlD: torch.Tensor, cache: KVCache) -> None:
    """Under regional compilation: one graph of the blocks for every batch size and scale length."""
    _mark_dynamic(x_BlD, 0, 1)
    for ada, layer in zip(cache.modulations.blocks, cache.layers):
        _mark_dynamic(ada, 0)
        _mark_dynamic(layer.k, 0)
        _mark_dynamic(layer.v, 0)
        for t in layer.context_kv or ():
            _mark_dynamic(t, 0, 2)
    if cache.context_mask_B11T is not None:
        _mark_dynamic(cache.context_mask_B11T, 0, 3)


class LayerKVCache:
    """One layer's keys and values for one generation, allocated once for all L tokens.

    With cross-attention it also holds the text's keys and values (B, Hd, T, hd), computed once per generation.
    """

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device):
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0
        self.context_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def append(self, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the l new keys/values after those already there; returns the whole prefix (B, H, length, c)."""
        start, end = self.length, self.length + k_BHlc.shape[2]
        self.k[:, :, start:end] = k_BHlc
        self.v[:, :, start:end] = v_BHlc
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def keep_rows(self, rows: int) -> None:
        self.k, self.v = self.k[:rows], self.v[:rows]
        if self.context_kv is not None:
            self.context_kv = (self.context_kv[0][:rows], self.context_kv[1][:rows])


class KVCache:
    """Everything one generation keeps between scales: each layer's keys and values, allocated once for all L
    tokens, and what the condition determines once (AdaLN modulations, the text's cross-attention keys and values).

    Each scale writes its l new keys/values after the ones already there and attends to the whole prefix, which
    is exactly block-causal attention without a mask. Create one per generation with
    :meth:`VARTransformer2DModel.new_kv_cache`; it is never stored on a model. Block ``i`` gets ``layers[i]``, so
    the blocks themselves hold no layer index (one compiled graph serves all).
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch_size, num_heads, max_len, head_dim)
        self.layers = [LayerKVCache(shape, dtype, device) for _ in range(num_layers)]
        self.scale_index = 0  # the scale the next call predicts
        self.modulations: Modulations | None = None
        self.context_mask_B11T: torch.Tensor | None = None
        self.hidden_BlD: torch.Tensor | None = None  # the last scale's final hidden states (FastVAR's fill)

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.shape[0]

    def keep_rows(self, rows: int) -> None:
        """Keep only the first ``rows`` batch rows (the conditional half, once guidance is over)."""
        for layer in self.layers:
            layer.keep_rows(rows)
        if self.modulations is not None:
            self.modulations = self.modulations.keep_rows(rows)
        if self.context_mask_B11T is not None:
            self.context_mask_B11T = self.context_mask_B11T[:rows]
        if self.hidden_BlD is not None:
            self.hidden_BlD = self.hidden_BlD[:rows]


# -- attention, computed by processors through diffusers' attention dispatcher -----------------------------------------

#: diffusers attention backends that apply a boolean or additive (B, Hd, Lq, Lk) mask as SDPA does. The others take
#: no mask (flash, sage, xla: they raise), keep only its key-padding part (the varlen kernels: VAR's block-causal mask
#: would silently vanish) or read a boolean mask as an additive one (xformers).
MASKED_ATTENTION_BACKENDS = ("native", "_native_math", "_native_efficient", "_native_cudnn", "flex")
#: SDPA kernels that torch has only on CUDA: on a CPU they fail with "No viable backend".
CUDA_ONLY_ATTENTION_BACKENDS = ("_native_efficient", "_native_cudnn")


def active_attention_backend(attn: nn.Module) -> str:
    """The backend an attention module runs on now: its own (``set_attention_backend``), else the one of the
    ``diffusers.attention_backend(...)`` context, else ``DIFFUSERS_ATTN_BACKEND``, else ``"native"``."""
    backend = getattr(attn.processor, "_attention_backend", None)
    if backend is None:  # what dispatch_attention_fn falls back to; diffusers has no public getter for it
        backend, _ = _AttentionBackendRegistry.get_active_backend()
    return AttentionBackendName(backend).value


class VARSelfAttnProcessor:
    """:class:`SelfAttention`'s computation: projections, VAR's biases and L2 norm, the KV cache, then the attention
    through ``dispatch_attention_fn`` on the backend chosen with ``set_attention_backend`` (diffusers' processor API).

    The dispatcher takes (B, L, Hd, hd). q, k and v stay in the KV cache's (B, Hd, L, hd) layout and go in as
    transposed views, which the SDPA backends transpose back: the native backend makes exactly the kernel call the
    original code makes.
    """

    _attention_backend = None

    def __call__(self, attn: SelfAttention, x_BLD: torch.Tensor, attn_bias_11LL: torch.Tensor | None = None,
                 kv_cache: LayerKVCache | None = None) -> torch.Tensor:
        B, L, D = x_BLD.shape
        bias = torch.cat((attn.q_bias, attn.zero_k_bias, attn.v_bias))
        # through the module, not its weight, so hooks (offloading, casting), adapters and quantized weights apply;
        # (B, L, 3D) -> (3, B, Hd, L, hd)
        qkv = (attn.mat_qkv(x_BLD) + bias.to(x_BLD.dtype)).view(B, L, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if attn.l2_norm:
            scale_mul = attn.scale_mul_1H11.clamp_max(attn.max_log_scale).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        if attn_bias_11LL is not None:
            attn_bias_11LL = attn_bias_11LL.to(q.dtype)
        out_BLHc = dispatch_attention_fn(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_bias_11LL,
            dropout_p=attn.attn_drop if attn.training else 0.0, scale=attn.scale, backend=self._attention_backend,
        )
        return attn.proj_drop(attn.proj(out_BLHc.reshape(B, L, D)))  # (B, L, Hd, hd) -> (B, L, D)


class VARCrossAttnProcessor:
    """:class:`CrossAttention`'s computation: the image tokens' queries against the text's keys and values, through
    ``dispatch_attention_fn`` like :class:`VARSelfAttnProcessor`, with the caption's padding mask."""

    _attention_backend = None

    def __call__(self, attn: CrossAttention, x_BLD: torch.Tensor, context_kv: tuple[torch.Tensor, torch.Tensor],
                 mask_B11T: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q_BLHc = attn.to_q(x_BLD).view(B, L, attn.num_heads, attn.head_dim)
        k, v = context_kv  # each (B, Hd, T, hd)
        out_BLHc = dispatch_attention_fn(q_BLHc, k.to(q_BLHc.dtype).transpose(1, 2), v.to(q_BLHc.dtype).transpose(1, 2),
                                         attn_mask=mask_B11T, backend=self._attention_backend)
        return attn.proj_drop(attn.proj(out_BLHc.reshape(B, L, D)))


class SelfAttention(nn.Module, AttentionModuleMixin):
    """Multi-head self-attention with VAR's biases (q and v, none on k) and optional L2-normalised q·k.

    With ``attn_l2_norm`` the logits are ``cos(q, k) · exp(s_h)`` with a learned per-head log-scale ``s_h``
    (clamped at log 100); otherwise plain dot products scaled by ``0.25 / sqrt(hd)``, both as in VAR. The
    computation is its processor's (:class:`VARSelfAttnProcessor`), as in diffusers' attention modules.
    """

    _default_processor_cls = VARSelfAttnProcessor
    _available_processors = [VARSelfAttnProcessor]
    _supports_qkv_fusion = False  # q, k and v already come from one projection

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float, l2_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_log_scale = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim), persistent=False)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.set_processor(VARSelfAttnProcessor())

    def forward(self, x_BLD: torch.Tensor, attn_bias_11LL: torch.Tensor | None,
                kv_cache: LayerKVCache | None) -> torch.Tensor:
        return self.processor(self, x_BLD, attn_bias_11LL, kv_cache)


class CrossAttention(nn.Module, AttentionModuleMixin):
    """Multi-head attention from the image tokens (B, l, D) to the text's hidden states (B, T, H).

    Plain scaled dot products; the keys and values depend only on the text, so sampling computes them once per
    generation (:meth:`context_kv`) and every scale reuses them. The attention itself is its processor's
    (:class:`VARCrossAttnProcessor`).
    """

    _default_processor_cls = VARCrossAttnProcessor
    _available_processors = [VARCrossAttnProcessor]
    _supports_qkv_fusion = False  # the keys and values are computed once per generation, not per step

    def __init__(self, dim: int, context_dim: int, num_heads: int, proj_drop: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.set_processor(VARCrossAttnProcessor())

    def context_kv(self, context_BTH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text's keys and values, each (B, Hd, T, hd)."""
        B, T, _ = context_BTH.shape
        k = self.to_k(context_BTH).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.to_v(context_BTH).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x_BLD: torch.Tensor, context_kv: tuple[torch.Tensor, torch.Tensor],
                mask_B11T: torch.Tensor) -> torch.Tensor:
        return self.processor(self, x_BLD, context_kv, mask_B11T)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample (rescaled to keep the expectation)."""
    # `training` first: at inference the per-block rate is never read, so a compiled block does not guard on it and
    # one graph serves every block
    if not training or p == 0.0:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep.div_(1 - p)


def _fixed_order_row_sum(rows: torch.Tensor) -> torch.Tensor:
    """Σ over the rows of (N, D) as a pairwise tree of elementwise additions: each output element is summed in the
    same order at any thread count (an elementwise kernel computes every element on its own), which a reduction
    kernel does not promise."""
    while rows.shape[0] > 1:
        half = rows.shape[0] // 2
        paired = rows[:half] + rows[half:2 * half]
        rows = torch.cat((paired, rows[2 * half:])) if rows.shape[0] % 2 else paired
    return rows[0]


class _LayerNormRowSums(torch.autograd.Function):
    """torch's LayerNorm, forward and input gradient, with the scale and shift gradients summed over rows in a fixed
    order (:func:`_fixed_order_row_sum`): torch's CPU backward kernel sums them in one partial sum per thread, so they
    (and every weight after the next update) change with the thread count."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, mean, rstd = torch.ops.aten.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_layer_norm_backward(grad_out, x, (x.shape[-1],), mean, rstd, weight, bias,
                                                               [True, False, False])[0]
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = _fixed_order_row_sum(rows * ((x - mean) * rstd).reshape(rows.shape))
        if ctx.needs_input_grad[2]:
            grad_bias = _fixed_order_row_sum(rows)
        return grad_x, grad_weight, grad_bias, None


class ThreadInvariantLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters, same outputs) whose training on a CPU gives the same gradients at any
    thread count by construction (:class:`_LayerNormRowSums`); elsewhere, under autocast or without gradients,
    torch's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() or x.device.type != "cpu" or self.weight is None or self.bias is None
                or torch.is_autocast_enabled("cpu") or x.dtype != self.weight.dtype):
            return super().forward(x)
        return _LayerNormRowSums.apply(x, self.weight, self.bias, self.eps)


class AdaLNSelfAttnBlock(nn.Module):
    """Pre-norm transformer block whose LayerNorms take scale, shift and a residual gate from the condition."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float, shared_aln: bool,
                 l2_norm: bool, drop: float, attn_drop: float, drop_path: float,
                 cross_attention_dim: int | None = None):
        super().__init__()
        self.dim, self.shared_aln, self.drop_path = dim, shared_aln, drop_path
        self.attn = SelfAttention(dim, num_heads, attn_drop, drop, l2_norm)
        if cross_attention_dim:  # token-level text conditioning, after self-attention (as Switti and Infinity)
            self.norm_cross = ThreadInvariantLayerNorm(dim, eps=norm_eps)
            self.cross_attn = CrossAttention(dim, cross_attention_dim, num_heads, drop)
        else:
            self.norm_cross = self.cross_attn = None
        self.ffn = FeedForward(dim, round(dim * mlp_ratio), drop)
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        if shared_aln:  # a per-block offset on the modulation that the model computes once for all blocks
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)
        else:
            self.ada_lin = nn.Linear(dim, 6 * dim)

    def modulation(self, cond_BD: torch.Tensor, shared_B16D: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, 6, D): gamma1, gamma2, scale1, scale2, shift1, shift2."""
        if self.shared_aln:
            return self.ada_gss + shared_B16D
        return self.ada_lin(F.silu(cond_BD)).view(-1, 1, 6, self.dim)

    def forward(self, x_BLD: torch.Tensor, ada_B16D: torch.Tensor, attn_bias_11LL: torch.Tensor | None,
                kv_cache: LayerKVCache | None = None,
                context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                context_mask_B11T: torch.Tensor | None = None) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada_B16D.unbind(2)  # each (B, 1, D)
        h = self.attn(self.ln_wo_grad(x_BLD).mul(scale1 + 1).add(shift1), attn_bias_11LL, kv_cache)
        x_BLD = x_BLD + _drop_path(h.mul(gamma1), self.drop_path, self.training)
        if self.cross_attn is not None:
            if context_kv is None:
                context_kv = kv_cache.context_kv
            h = self.cross_attn(self.norm_cross(x_BLD), context_kv, context_mask_B11T)
            # gated like the self-attention's output: VAR starts every residual branch nearly closed (gates ~1e-5), and
            # an ungated cross-attention, the only open branch, held training on the unigram plateau for twice as
            # many steps as the pooled model (loss 5.37 vs 4.74 at step 200 of 700, three seeds each)
            x_BLD = x_BLD + _drop_path(h.mul(gamma1), self.drop_path, self.training)
        h = self.ffn(self.ln_wo_grad(x_BLD).mul(scale2 + 1).add(shift2))
        return x_BLD + _drop_path(h.mul(gamma2), self.drop_path, self.training)


@dataclass
class VARTransformerOutput(BaseOutput):
    """Output of :meth:`VARTransformer2DModel.forward`.

    Args:
        logits (`torch.Tensor` of shape `(B, L, V)`, or `(B, l, V)` for one sampling step): next-scale logits.
    """

    logits: torch.Tensor


@dataclass
class Modulations:
    """AdaLN modulations of every block and of the head for one condition batch (computed once per generation)."""

    blocks: list[torch.Tensor]  # each (B, 1, 6, D)
    head: torch.Tensor  # (B, 1, 2, D)

    def keep_rows(self, rows: int) -> Modulations:
        return Modulations(blocks=[m[:rows] for m in self.blocks], head=self.head[:rows])


class VARTransformer2DModel(StrictLoadingMixin, ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin):
    r"""GPT-style next-scale prediction transformer of VAR, conditioned on a text embedding (VAR-CLIP) or a class.

    Parameters:
        vocab_size (`int`, defaults to 4096): codebook size V of the VQ-VAE.
        latent_channels (`int`, defaults to 32): codebook vector width C of the VQ-VAE.
        patch_nums (`tuple[int]`, defaults to `(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)`): side of each scale.
        depth (`int`, defaults to 16): number of transformer blocks.
        embed_dim (`int`, defaults to 1024): width D.
        num_heads (`int`, defaults to 16): attention heads; must divide `embed_dim`.
        mlp_ratio (`float`, defaults to 4.0): feed-forward width as a multiple of D.
        norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon.
        shared_aln (`bool`, defaults to False): one AdaLN projection shared by all blocks (plus a learned
            per-block offset) instead of one per block.
        attn_l2_norm (`bool`, defaults to True): cosine attention with a learned per-head scale.
        condition_type (`str`, defaults to `"text"`): `"text"` (VAR-CLIP: a text embedding of width
            `text_embed_dim`, projected to D, with a learned null embedding for guidance) or `"class"` (VAR: a
            class embedding with `num_classes` classes plus a null class).
        text_embed_dim (`int`, defaults to 768): width E of the text embedding (CLIP ViT-L/14's projection).
        cross_attention_dim (`int`, optional): width H of the text encoder's hidden states. When set, every block
            cross-attends to the caption's token states after its self-attention (token-level conditioning); the
            unconditional branch attends to one learned null token. None (the default) is VAR-CLIP as published:
            the pooled embedding only.
        vocabulary (`list[str]`, optional): the words of the training captions (text models trained by this
            package record them); the pipelines warn about prompt words outside it. Not used by the model itself.
        known_captions (`list[str]`, optional): a sample of the training captions (text models trained by this
            package record up to 128); a LoRA run without replay data samples the model on them and holds them to
            its predictions, so an adapter keeps what the model knew. Not used by the model itself.
        num_classes (`int`, defaults to 1000): number of classes for `condition_type="class"`.
        cond_drop_rate (`float`, defaults to 0.1): share of the batch trained without condition, for guidance.
        drop_rate (`float`, defaults to 0.0): dropout after the attention projection and the feed-forward.
        attn_drop_rate (`float`, defaults to 0.0): dropout on the attention weights.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, increasing linearly to this rate.
        conditional_adaln (`bool`, defaults to True): every AdaLN (the blocks' and the head's) reads the condition,
            as VAR. False: they read one learned vector (`adaln_embed`), the same for every sample, and the condition
            enters by the start token (and, with `cross_attention_dim`, by cross-attention) only.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["AdaLNSelfAttnBlock"]
    # Logits stay in float32 under `dtype=torch.bfloat16`: guidance extrapolates them, and top-k/top-p
    # thresholds compare them, so their precision shapes the sampling distribution.
    _keep_in_fp32_modules = ["head"]
    # regional compilation (`compile_repeated_blocks(dynamic=True)`): the blocks compile once for every scale's length
    _repeated_blocks = ["AdaLNSelfAttnBlock"]

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 4096,
        latent_channels: int = 32,
        patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        depth: int = 16,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        shared_aln: bool = False,
        attn_l2_norm: bool = True,
        condition_type: str = "text",
        text_embed_dim: int = 768,
        cross_attention_dim: int | None = None,
        vocabulary: list[str] | None = None,
        known_captions: list[str] | None = None,
        num_classes: int = 1000,
        cond_drop_rate: float = 0.1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        conditional_adaln: bool = True,
    ):
        super().__init__()
        # every field checked first, so a corrupted or hostile config.json fails before anything is allocated
        check_transformer_config(
            vocab_size=vocab_size, latent_channels=latent_channels, patch_nums=patch_nums, depth=depth,
            embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps, shared_aln=shared_aln,
            attn_l2_norm=attn_l2_norm, condition_type=condition_type, text_embed_dim=text_embed_dim,
            cross_attention_dim=cross_attention_dim, num_classes=num_classes, cond_drop_rate=cond_drop_rate,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            conditional_adaln=conditional_adaln,
        )
        if vocabulary is not None and not (isinstance(vocabulary, list)
                                           and all(isinstance(w, str) for w in vocabulary)):
            raise ValueError(f"`vocabulary` must be a list of words or None, got {type(vocabulary).__name__}")
        if known_captions is not None and not (isinstance(known_captions, list)
                                               and all(isinstance(c, str) for c in known_captions)):
            raise ValueError(f"`known_captions` must be a list of captions or None, "
                             f"got {type(known_captions).__name__}")
        patch_nums = tuple(int(p) for p in patch_nums)
        D = embed_dim
        init_std = math.sqrt(1 / D / 3)

        # 1. token embedding: a scale's input is its C-dim latent map (the coarser scales' sum, area-downsampled)
        self.word_embed = nn.Linear(latent_channels, D)

        # 2. condition: projected text embedding (+ learned null) or class embedding (+ null class); with token-level
        #    conditioning also one learned null token, the unconditional branch's whole text
        if condition_type == "text":
            self.null_text_embed = nn.Parameter(torch.empty(1, text_embed_dim))
            nn.init.trunc_normal_(self.null_text_embed, std=init_std)
            self.text_proj = nn.Linear(text_embed_dim, D)
        else:
            self.class_embed = nn.Embedding(num_classes + 1, D)
            nn.init.trunc_normal_(self.class_embed.weight, std=init_std)
        if cross_attention_dim:
            self.null_text_tokens = nn.Parameter(torch.empty(1, 1, cross_attention_dim))
            nn.init.trunc_normal_(self.null_text_tokens, std=init_std)

        # without a conditional AdaLN, every block's modulation reads this one learned vector instead of the condition,
        # which then enters by the start token (and cross-attention) only
        self.adaln_embed = None if conditional_adaln else nn.Parameter(torch.empty(1, D))
        if self.adaln_embed is not None:
            nn.init.trunc_normal_(self.adaln_embed, std=init_std)

        # 3. positions: start-token position, absolute position of every token, and a level (scale) embedding
        self.pos_start = nn.Parameter(torch.empty(1, patch_nums[0] ** 2, D))
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_tokens, D))
        self.level_embed = nn.Embedding(len(patch_nums), D)
        for p in (self.pos_start, self.pos_embed, self.level_embed.weight):
            nn.init.trunc_normal_(p, std=init_std)

        # 4. blocks, with stochastic depth increasing linearly with depth
        self.shared_ada_lin = nn.Linear(D, 6 * D) if shared_aln else None
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            AdaLNSelfAttnBlock(D, num_heads, mlp_ratio, norm_eps, shared_aln, attn_l2_norm, drop_rate,
                               attn_drop_rate, dpr[i], cross_attention_dim)
            for i in range(depth)
        )

        # 5. head: AdaLN then a linear classifier over the codebook
        self.head_ln = nn.LayerNorm(D, eps=norm_eps, elementwise_affine=False)
        self.head_ada_lin = nn.Linear(D, 2 * D)
        self.head = nn.Linear(D, vocab_size)

        # 6. derived, never saved: scale index of each token and the block-causal mask used in training
        level_L = torch.cat([torch.full((pn * pn,), si) for si, pn in enumerate(patch_nums)])
        self.register_buffer("level_L", level_L, persistent=False)
        mask_LL = level_L.view(-1, 1) >= level_L.view(1, -1)  # a token sees its own and every coarser scale
        self.register_buffer("attn_bias_LL", torch.zeros(mask_LL.shape).masked_fill_(~mask_LL, -torch.inf),
                             persistent=False)

        self._init_weights()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""diffusers' ``from_pretrained`` (strict: config and weights must agree), also with a
        ``quantization_config`` (torchao, quanto: every linear layer but the float32 logits head is quantized).

        A folder saved after torchao quantization computes in the dtype it was quantized in; loading it in another
        ``torch_dtype`` (diffusers' torchao default is bfloat16) is refused with the dtype to pass.
        """
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        compute = model.pos_embed.dtype
        # quantized weights are tensor subclasses that keep the dtype they were quantized from; with the rest in
        # another dtype, cached sampling fails deep inside (the new keys and the KV cache disagree)
        quantized = {m.weight.dtype for m in model.modules()
                     if isinstance(m, nn.Linear) and type(m.weight) not in (torch.Tensor, nn.Parameter)}
        if quantized - {compute}:
            stored = next(iter(quantized - {compute}))
            raise ValueError(f"{cls.__name__} at {str(pretrained_model_name_or_path)!r}: its layers were quantized in "
                             f"{stored} but the rest loaded in {compute}; pass `torch_dtype={stored}`")
        return loaded

    @classmethod
    def from_single_file(cls, checkpoint, num_heads: int | None = None, patch_nums: tuple[int, ...] | None = None,
                         dtype: torch.dtype | None = None, **config_overrides):
        r"""Load an original transformer file, as ``var-clip convert-var-clip`` / ``convert-var`` read it: VAR-CLIP's
        ``ar-ckpt-*.pth`` (weights under ``['trainer']['var_wo_ddp']``) or a bare state dict, or VAR's ``var_d*.pth``.

        The file is read with ``torch.load(weights_only=True)`` after a look at its first bytes, every key is
        consumed and every shape checked; every hyperparameter comes from the file (``patch_nums`` from its per-token
        scale index; ``num_heads`` is needed only for checkpoints without L2-normalised attention, else heads =
        depth). The model equals the one a converted folder loads; ``dtype`` casts all but the float32 logits head.
        """
        return read_transformer_file(cls, checkpoint, num_heads=num_heads, patch_nums=patch_nums, dtype=dtype,
                                     **config_overrides)

    def get_parameter_or_buffer(self, target: str) -> torch.Tensor:
        """The parameter or buffer named ``target`` (a dotted path, as in ``state_dict``).

        accelerate's FSDP2 preparation asks the model for it while it loads the full weights into the sharded model
        (``--fsdp_cpu_ram_efficient_loading``, on by default in ``accelerate launch``): transformers' models have it,
        diffusers' do not, and accelerate's fallback fails on a top-level parameter such as ``pos_embed``.
        """
        try:
            return self.get_parameter(target)
        except AttributeError:
            return self.get_buffer(target)

    # -- derived sizes -------------------------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        """L = Σ pn²."""
        return sum(pn * pn for pn in self.config.patch_nums)

    @property
    def first_l(self) -> int:
        return self.config.patch_nums[0] ** 2

    @property
    def uses_text_tokens(self) -> bool:
        """Whether the model cross-attends to the caption's token states (token-level conditioning)."""
        return bool(self.config.cross_attention_dim)

    def _input_dtype(self, layer: nn.Module) -> torch.dtype:
        """The dtype ``layer`` computes in: its weights', unless they are stored in a storage-only dtype (fp8 under
        ``enable_layerwise_casting``, whose hook casts them to the compute dtype, which ``pos_embed`` keeps)."""
        dtype = layer.weight.dtype
        return dtype if dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64) else self.pos_embed.dtype

    def scale_slice(self, si: int) -> slice:
        begin = sum(pn * pn for pn in self.config.patch_nums[:si])
        return slice(begin, begin + self.config.patch_nums[si] ** 2)

    # -- initialisation (VAR's recipe, used when training from scratch) ------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02) -> None:
        D = self.config.embed_dim
        std = math.sqrt(1 / D / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
        self.head.weight.mul_(init_head)
        self.head_ada_lin.weight.mul_(init_adaln)
        self.head_ada_lin.bias.zero_()
        # Residual branches start small (GPT-2's 1/sqrt(2·depth)); gates start near zero so blocks begin as identity.
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * len(self.blocks)))
            block.ffn.fc2.weight.div_(math.sqrt(2 * len(self.blocks)))
            if block.cross_attn is not None:  # starts as identity, as the AdaLN-gated branches do (PixArt-α)
                block.cross_attn.proj.weight.zero_()
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                block.ada_lin.weight[2 * D:].mul_(init_adaln)
                block.ada_lin.weight[: 2 * D].mul_(init_adaln_gamma)

    # -- condition -----------------------------------------------------------------------------------------------------

    def embed_condition(self, text_embeds: torch.Tensor | None = None,
                        class_labels: torch.LongTensor | None = None) -> torch.Tensor:
        """Condition → (B, D): the start token and the input of every AdaLN."""
        if self.config.condition_type == "text":
            if text_embeds is None:
                raise ValueError("this transformer is text-conditioned: pass `text_embeds` of shape "
                                 "(B, text_embed_dim)")
            return self.text_proj(text_embeds.to(self._input_dtype(self.text_proj)))
        if class_labels is None:
            raise ValueError("this transformer is class-conditioned: pass `class_labels` of shape (B,)")
        return self.class_embed(class_labels)

    def null_condition(self, batch_size: int) -> torch.Tensor:
        """The unconditional input for guidance: the learned null text embedding (B, E) or the null class (B,)."""
        if self.config.condition_type == "text":
            return self.null_text_embed.expand(batch_size, -1)
        return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=self.level_L.device)

    def null_text_states(self, batch_size: int) -> tuple[torch.Tensor, torch.BoolTensor]:
        """The unconditional token sequence for guidance: one learned null token (B, 1, H) and its mask (B, 1)."""
        if not self.uses_text_tokens:
            raise ValueError("this transformer has no token-level conditioning (`cross_attention_dim` is None)")
        states = self.null_text_tokens.expand(batch_size, -1, -1)
        return states, torch.ones(batch_size, 1, dtype=torch.bool, device=states.device)

    def condition_dropout_mask(self, batch_size: int, generator: torch.Generator | None = None,
                               device: torch.device | str | None = None) -> torch.BoolTensor:
        """Which samples of a training batch lose their condition (classifier-free guidance training).

        Text (VAR-CLIP): exactly ``floor(B · cond_drop_rate)`` samples, chosen at random. Class (VAR): each sample
        independently with probability ``cond_drop_rate``.
        """
        device = device or self.level_L.device
        rate = self.config.cond_drop_rate
        if self.config.condition_type == "text":
            mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
            chosen = torch.randperm(batch_size, generator=generator, device=generator.device if generator else "cpu")
            mask[chosen[: int(batch_size * rate)].to(device)] = True
            return mask
        rand = torch.rand(batch_size, generator=generator, device=generator.device if generator else "cpu")
        return (rand < rate).to(device)

    def _text_context(self, encoder_hidden_states: torch.Tensor | None, encoder_attention_mask: torch.Tensor | None,
                      batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked token states (B, T, H) and their attention mask as an SDPA mask (B, 1, 1, T), True = attend."""
        H = self.config.cross_attention_dim
        if encoder_hidden_states is None:
            raise ValueError("this transformer cross-attends to the text: pass `encoder_hidden_states` (B, T, "
                             f"{H}) and `encoder_attention_mask` (B, T)")
        if (encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch_size
                or encoder_hidden_states.shape[2] != H):
            raise ValueError(f"`encoder_hidden_states` must be ({batch_size}, T, {H}), "
                             f"got {tuple(encoder_hidden_states.shape)}")
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.bool,
                                                device=encoder_hidden_states.device)
        if encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
            raise ValueError(f"`encoder_attention_mask` must be {tuple(encoder_hidden_states.shape[:2])}, "
                             f"got {tuple(encoder_attention_mask.shape)}")
        mask_BT = encoder_attention_mask.bool()
        if not mask_BT.any(dim=1).all():
            raise ValueError("every row of `encoder_attention_mask` must keep at least one token")
        # a tensor of its own, not a view: a compiled block then guards on its shape only, not on its base's
        return encoder_hidden_states, mask_BT[:, None, None, :].clone()

    def _drop_condition(self, cond_drop_mask, text_embeds, class_labels, encoder_hidden_states, encoder_attention_mask):
        """Replace the dropped samples' condition by the null one (the text's tokens by the null token)."""
        B = cond_drop_mask.shape[0]
        if self.config.condition_type == "class":
            return text_embeds, torch.where(cond_drop_mask, self.null_condition(B), class_labels), None, None
        text_embeds = torch.where(cond_drop_mask.view(B, 1), self.null_condition(B).to(text_embeds.dtype), text_embeds)
        if self.uses_text_tokens and encoder_hidden_states is not None:
            if encoder_attention_mask is None:
                encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.bool,
                                                    device=encoder_hidden_states.device)
            # the null token sits in the first slot; the rest of a dropped row is masked out
            null = self.null_text_tokens[:, 0].to(encoder_hidden_states.dtype)  # (1, H)
            states = encoder_hidden_states.clone()
            states[cond_drop_mask, 0] = null
            mask = encoder_attention_mask.bool().clone()
            mask[cond_drop_mask] = False
            mask[cond_drop_mask, 0] = True
            encoder_hidden_states, encoder_attention_mask = states, mask
        return text_embeds, class_labels, encoder_hidden_states, encoder_attention_mask

    # -- building blocks shared by training and sampling ---------------------------------------------------------------

    def _check_attention_backends(self, block_causal: bool, device: torch.device) -> None:
        """Refuse, before any block runs, an attention backend that would drop a mask this call needs (the
        block-causal mask of the teacher-forced pass, the caption's padding mask of cross-attention) or that has no
        kernel on this device. Cached sampling needs no self-attention mask, so there a mask-free backend (flash,
        sage) serves the models without cross-attention (VAR-CLIP as published, VAR)."""
        for block in self.blocks:
            for attn, needs_mask in ((block.attn, block_causal), (block.cross_attn, True)):
                if attn is None:
                    continue
                backend = active_attention_backend(attn)
                if needs_mask and backend not in MASKED_ATTENTION_BACKENDS:
                    mask = ("VAR's block-causal mask (teacher forcing; cached sampling needs none)"
                            if attn is block.attn else "the caption's padding mask (cross-attention)")
                    raise ValueError(f"attention backend {backend!r} cannot apply {mask}: choose one of "
                                     f"{', '.join(MASKED_ATTENTION_BACKENDS)} with `set_attention_backend`")
                if backend in CUDA_ONLY_ATTENTION_BACKENDS and device.type != "cuda":
                    raise ValueError(f"attention backend {backend!r} runs on CUDA only (torch has no such kernel on "
                                     f"{device.type}): choose 'native', '_native_math' or 'flex' there")

    def modulations(self, cond_BD: torch.Tensor) -> Modulations:
        """Every block's and the head's AdaLN scales, shifts and gates for the condition ``cond_BD`` (B, D); with
        ``conditional_adaln=False``, the same for every row (the learned ``adaln_embed``)."""
        if self.adaln_embed is not None:
            cond_BD = self.adaln_embed.expand(cond_BD.shape[0], -1)
        shared = (self.shared_ada_lin(F.silu(cond_BD)).view(-1, 1, 6, self.config.embed_dim)
                  if self.shared_ada_lin is not None else None)
        blocks = [block.modulation(cond_BD, shared) for block in self.blocks]
        head = self.head_ada_lin(F.silu(cond_BD)).view(-1, 1, 2, self.config.embed_dim)
        return Modulations(blocks=blocks, head=head)

    def _level_pos(self, tokens: slice) -> torch.Tensor:
        return self.level_embed(self.level_L[tokens]).unsqueeze(0) + self.pos_embed[:, tokens]  # (1, l, D)

    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """The first scale's input (B, pn_1², D): the condition itself, plus start and level positions."""
        B = cond_BD.shape[0]
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start
        return sos + self._level_pos(slice(0, self.first_l))

    def scale_input(self, next_BChw: torch.Tensor, si: int) -> torch.Tensor:
        """Scale ``si``'s latent input map (B, C, pn, pn) → its tokens (B, pn², D)."""
        x_BlC = next_BChw.flatten(2).transpose(1, 2)  # (B, C, pn, pn) -> (B, pn², C)
        return self.word_embed(x_BlC.to(self._input_dtype(self.word_embed))) + self._level_pos(self.scale_slice(si))

    def logits(self, h_BLD: torch.Tensor, head_B12D: torch.Tensor) -> torch.Tensor:
        scale, shift = head_B12D.unbind(2)
        h = self.head_ln(h_BLD).mul(scale + 1).add(shift)
        return self.head(h.to(self._input_dtype(self.head))).float()

    def new_kv_cache(self, batch_size: int, dtype: torch.dtype | None = None, device=None) -> KVCache:
        """An empty cache for one generation of ``batch_size`` rows (conditional and unconditional together)."""
        c = self.config
        # one slot more than L: the last scale then attends to a strict prefix like every other scale, so a compiled
        # block sees the same (non-contiguous) layout at every scale and needs no graph of its own for the last one
        return KVCache(c.depth, batch_size, c.num_heads, self.num_tokens + 1, c.embed_dim // c.num_heads,
                       dtype or self.dtype, device or self.device)

    # -- forward: teacher forcing (training) or one cached sampling step -----------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        class_labels: torch.LongTensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cond_drop_mask: torch.BoolTensor | None = None,
        kv_cache: KVCache | None = None,
        prune_ratio: float = 0.0,
        return_dict: bool = True,
    ):
        """Next-scale logits: teacher-forced for all L tokens, or, with ``kv_cache``, one scale of a generation.

        Args:
            hidden_states: teacher forcing: the inputs of scales 2..S, (B, L - pn_1², C), from
                :meth:`MultiScaleVQModel.indices_to_teacher_input`. Sampling: the current scale's latent input
                (B, C, pn, pn) from :meth:`MultiScaleVQModel.next_scale_input`, None at the first scale.
            text_embeds / class_labels: the condition (B, E) or (B,), as the config's `condition_type` says. When
                sampling, given at the first scale only (the cache keeps what they determine).
            encoder_hidden_states / encoder_attention_mask: with `cross_attention_dim`, the caption's token states
                (B, T, H) and which of them are real (B, T); likewise given at the first scale only when sampling.
            cond_drop_mask: optional (B,) bool; samples where it is True get the null condition. Build it with
                :meth:`condition_dropout_mask` for classifier-free guidance training; when sampling, it marks the
                unconditional rows of guidance (given at the first scale, with the condition).
            kv_cache: from :meth:`new_kv_cache`; each call predicts the scale after those already in it.
            prune_ratio: sampling only, FastVAR's cached token pruning (an approximation): this share of the scale's
                tokens skips the blocks and takes the previous scale's upsampled hidden states.

        All of the model's work runs inside this call, so accelerate's hooks (offloading, casting) see it.
        """
        if kv_cache is not None:
            if cond_drop_mask is not None:  # the unconditional rows of guidance
                text_embeds, class_labels, encoder_hidden_states, encoder_attention_mask = self._drop_condition(
                    cond_drop_mask, text_embeds, class_labels, encoder_hidden_states, encoder_attention_mask)
            logits = self._sampling_step(hidden_states, text_embeds, class_labels, encoder_hidden_states,
                                         encoder_attention_mask, kv_cache, prune_ratio)
        else:
            logits = self._teacher_forced(hidden_states, text_embeds, class_labels, encoder_hidden_states,
                                          encoder_attention_mask, cond_drop_mask)
        if not return_dict:
            return (logits,)
        return VARTransformerOutput(logits=logits)

    def _teacher_forced(self, x_BLC_wo_first_l, text_embeds, class_labels, encoder_hidden_states,
                        encoder_attention_mask, cond_drop_mask) -> torch.Tensor:
        L = self.num_tokens
        if x_BLC_wo_first_l is None or x_BLC_wo_first_l.shape[1:] != (L - self.first_l, self.config.latent_channels):
            shape = None if x_BLC_wo_first_l is None else tuple(x_BLC_wo_first_l.shape)
            raise ValueError(f"`hidden_states` must be (B, {L - self.first_l}, {self.config.latent_channels}), "
                             f"got {shape}")
        B = x_BLC_wo_first_l.shape[0]
        if cond_drop_mask is not None:
            text_embeds, class_labels, encoder_hidden_states, encoder_attention_mask = self._drop_condition(
                cond_drop_mask, text_embeds, class_labels, encoder_hidden_states, encoder_attention_mask)
        cond_BD = self.embed_condition(text_embeds, class_labels)
        context, mask_B11T = None, None
        if self.uses_text_tokens:
            context, mask_B11T = self._text_context(encoder_hidden_states, encoder_attention_mask, B)
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start
        x_BLD = (torch.cat((sos, self.word_embed(x_BLC_wo_first_l.to(cond_BD.dtype))), dim=1)
                 + self._level_pos(slice(0, L)))
        mods = self.modulations(cond_BD)
        self._check_attention_backends(block_causal=True, device=x_BLD.device)
        bias_11LL = self.attn_bias_LL[None, None]  # 4-D: no backend may read an (L, L) mask as a (B, L) padding mask
        for block, ada in zip(self.blocks, mods.blocks):
            context_kv = block.cross_attn.context_kv(context.to(self.pos_embed.dtype)) if context is not None else None
            x_BLD = block(x_BLD, ada, attn_bias_11LL=bias_11LL, context_kv=context_kv, context_mask_B11T=mask_B11T)
        return self.logits(x_BLD, mods.head)

    @torch.no_grad()
    def _sampling_step(self, next_BChw, text_embeds, class_labels, encoder_hidden_states, encoder_attention_mask,
                       cache: KVCache, prune_ratio: float) -> torch.Tensor:
        si = cache.scale_index
        if si >= len(self.config.patch_nums):
            raise ValueError(f"this cache has already generated all {si} scales")
        if si == 0:  # per generation: AdaLN modulations, the text's keys and values, and the start tokens
            cond_BD = self.embed_condition(text_embeds, class_labels)
            cache.modulations = self.modulations(cond_BD)
            if self.uses_text_tokens:
                context, cache.context_mask_B11T = self._text_context(encoder_hidden_states, encoder_attention_mask,
                                                                      cond_BD.shape[0])
                for block, layer in zip(self.blocks, cache.layers):
                    layer.context_kv = block.cross_attn.context_kv(context.to(self.pos_embed.dtype))
            x_BlD = self.start_tokens(cond_BD)
        else:
            if next_BChw is None:
                raise ValueError(f"scale {si} needs `hidden_states`: the latent input (B, C, pn, pn) of this scale")
            x_BlD = self.scale_input(next_BChw, si)
            if x_BlD.shape[0] < cache.batch_size:  # the guided rows see the same latent as the conditional ones
                x_BlD = x_BlD.repeat(cache.batch_size // x_BlD.shape[0], 1, 1)

        keep_idx_Bk = gather_idx = None
        if prune_ratio > 0:  # FastVAR: only the pivotal tokens run; the rest reuse the previous scale's states
            keep_idx_Bk = pivotal_tokens(x_BlD, prune_ratio)
            gather_idx = keep_idx_Bk.unsqueeze(-1).expand(-1, -1, x_BlD.shape[-1])
            h_prev = cache.hidden_BlD
            side, pn = round(h_prev.shape[1] ** 0.5), self.config.patch_nums[si]
            grid = h_prev.transpose(1, 2).reshape(h_prev.shape[0], -1, side, side).float()
            fill_BlD = F.interpolate(grid, size=(pn, pn), mode="bicubic").flatten(2).transpose(1, 2)
            x_BlD = x_BlD.gather(1, gather_idx)
        if getattr(self.blocks[0], "_compiled_call_impl", None) is not None:  # only compiled blocks read the marks
            _mark_block_inputs_dynamic(x_BlD, cache)
        self._check_attention_backends(block_causal=False, device=x_BlD.device)
        for block, ada, layer in zip(self.blocks, cache.modulations.blocks, cache.layers):
            x_BlD = block(x_BlD, ada, attn_bias_11LL=None, kv_cache=layer, context_mask_B11T=cache.context_mask_B11T)
        if keep_idx_Bk is not None:
            x_BlD = fill_BlD.to(x_BlD.dtype).scatter(1, gather_idx, x_BlD)
        cache.hidden_BlD = x_BlD
        cache.scale_index = si + 1
        return self.logits(x_BlD, cache.modulations.head)

