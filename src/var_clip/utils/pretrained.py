"""Pretrained models named by a folder or a Hub repo id: the error that names the argument (:class:`ModelLoadError`),
failures of the network told apart from those of the files (:func:`is_network_error`), and CLIP's text tower.

Torch and transformers are imported only when a model is loaded, so the command line starts without them. Loading a
whole pipeline for a command (:func:`var_clip.pipelines.loading.load_pipeline`) sits above, beside the pipelines.
"""

from __future__ import annotations

import os

__all__ = ["ModelLoadError", "is_network_error", "load_clip_text_encoder"]

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
