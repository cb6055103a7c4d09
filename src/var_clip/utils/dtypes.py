"""The one map of weight precisions, by the names the commands take.

The generation, captioning and batch commands take torch's names (``--dtype bfloat16``); the conversion takes the
diffusers variant names (``--dtype bf16``), which are also the suffixes of the files it writes. Both resolve here.
Torch is imported only when a name is resolved, so the command line can list the choices without loading it.
"""

from __future__ import annotations

__all__ = ["DTYPE_NAMES", "VARIANT_DTYPE_NAMES", "cast_keeping_fp32_modules", "has_native_bf16", "torch_dtype"]

#: ``--dtype`` choices of the commands that load a model, torch's own names.
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: diffusers variant name (the conversion's ``--dtype``) → torch's name.
VARIANT_DTYPE_NAMES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str):
    """``"bfloat16"`` or ``"bf16"`` → ``torch.bfloat16``; a ValueError lists the names there are."""
    full = VARIANT_DTYPE_NAMES.get(name, name)
    if full not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {[*DTYPE_NAMES, *VARIANT_DTYPE_NAMES]}, got {name!r}")
    import torch

    return getattr(torch, full)


def cast_keeping_fp32_modules(module, dtype) -> None:
    """Cast ``module``'s floating weights and buffers to ``dtype`` in place, except those under the submodules its
    class keeps in float32 (``_keep_in_fp32_modules``: the transformer's head, the quantizer's codebook), as diffusers
    does when loading with ``dtype=``; ``module.to(dtype)`` would cast those too, and a half-precision copy would
    lose them for good."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not any(k in name.split(".") for k in keep):
            tensor.data = tensor.data.to(dtype)


def has_native_bf16(device_type: str) -> bool:
    """Whether bfloat16 matmuls run on ``device_type``'s own bf16 units, so that bf16 autocast speeds training up.

    A CPU without AVX512-BF16 or AMX emulates bf16 by converting every operand: there bf16 autocast is an order of
    magnitude *slower* than float32 (measured on two AVX2 cores: 27.5 s against 2.5 s for one training step of the
    default model), while CPUs with the instructions run it about twice as fast as float32.
    """
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check is not None and torch.backends.mkldnn.is_available() and check())
    return False
