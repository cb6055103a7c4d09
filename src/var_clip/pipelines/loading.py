"""Loading a pipeline for a command: a folder, a Hub repo id, or the embedded default model.

The commands' one way to get a pipeline, so that every ``--model``, ``--dtype`` and ``--device`` is checked the same
way and a failure is one :class:`~var_clip.utils.pretrained.ModelLoadError` that names the option.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from .. import DEFAULT_MODEL
from ..utils.device import resolve_device
from ..utils.dtypes import torch_dtype
from ..utils.pretrained import ModelLoadError, is_network_error
from .pipeline_var_clip import VARCLIPPipeline

__all__ = ["load_pipeline"]


def _hide_loading_progress_bars() -> None:
    """Loading a pipeline folder takes a fraction of a second: no per-component progress bars for it."""
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
    if cls is None:
        cls = VARCLIPPipeline
    source = str(model) if model is not None else DEFAULT_MODEL
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
