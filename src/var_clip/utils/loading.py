"""Loading a pipeline for a command: a folder, a Hub repo id, or the embedded default model.

Torch and diffusers are imported only when a pipeline is loaded, so the command line starts without them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ModelLoadError", "is_network_error", "load_clip_text_encoder", "load_pipeline"]

# Exception classes from these packages' modules are network failures (huggingface_hub's transport raises httpx's
# or requests' errors, which are not OSError).
_NETWORK_MODULES = ("httpx", "httpx2", "requests", "urllib3", "huggingface_hub")


class ModelLoadError(ValueError):
    """A model that cannot be loaded from what was given; the message names the argument and the cause."""


def is_network_error(error: BaseException) -> bool:
    """Whether ``error`` is a failure to reach the network (the Hub), not a problem of the files."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in _NETWORK_MODULES and cls.__name__.endswith(("Error", "Timeout"))
               and cls.__name__ not in ("HFValidationError",) and not issubclass(cls, ValueError)
               for cls in type(error).__mro__[:-2])


def _hide_loading_progress_bars() -> None:
    """Loading a pipeline folder takes a fraction of a second: no per-component progress bars for it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(model: str | os.PathLike | None, cls=None, dtype: str = "float32", device: str | None = "cpu",
                  flag: str = "--model"):
    """Load a pipeline folder, a Hub repo id, or (``model=None``) the embedded default model, as ``cls`` (default
    :class:`~var_clip.VARCLIPPipeline`) in ``dtype`` (``"float32"``, ``"bf16"``, ...) on ``device`` (``"auto"``:
    CUDA when available).

    Raises :class:`ModelLoadError` naming ``flag`` for a path that is no pipeline folder, files that do not load, or
    a device that is not there; network failures are re-raised as they are, for the caller to report.
    """
    import var_clip

    from .device import resolve_device
    from .dtypes import torch_dtype

    if cls is None:
        from ..pipelines import VARCLIPPipeline as cls
    source = str(model) if model is not None else var_clip.DEFAULT_MODEL
    if model is None and not Path(source).is_dir():
        raise ModelLoadError(f"the embedded default model is not installed at {source}; pass {flag} PATH_OR_REPO")
    if model is not None:
        if Path(source).is_dir() and not (Path(source) / "model_index.json").is_file():
            raise ModelLoadError(f"{flag} {source!r} is not a pipeline folder (it has no model_index.json)")
        if not Path(source).is_dir() and (source.count("/") != 1 or Path(source).suffix):
            raise ModelLoadError(f"{flag} {source!r} is neither a folder nor a Hub repo id (owner/name)")
    try:
        if Path(source).is_dir():  # a download keeps its progress bars
            _hide_loading_progress_bars()
        pipe = cls.from_pretrained(source, dtype=torch_dtype(dtype))
    except (OSError, ValueError) as e:  # missing files, a config that disagrees with its weights; not the network
        if is_network_error(e):
            raise
        raise ModelLoadError(f"could not load {flag} {source!r}: {' '.join(str(e).split())}") from None
    try:
        pipe = pipe.to(resolve_device(device))
    except (RuntimeError, AssertionError) as e:
        raise ModelLoadError(f"--device {device!r} is not available: {str(e).splitlines()[0]}") from None
    return pipe


def load_clip_text_encoder(source: str | os.PathLike, label: str):
    """A CLIP text tower with projection (``CLIPTextModelWithProjection``, float32, eval mode) and its
    ``CLIPTokenizer``, from a folder or a Hub repo id; ``label`` names the argument in the error.

    Raises :class:`ModelLoadError` when either cannot be loaded (missing files, no network, not a CLIP model).
    """
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    try:
        text_encoder = CLIPTextModelWithProjection.from_pretrained(str(source), dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{label} could not be loaded as a CLIP text model with projection and its tokenizer: "
                             f"{first}") from None
    return text_encoder.eval(), tokenizer
