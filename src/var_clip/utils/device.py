"""Turning a command line's ``--device`` into a torch device."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; otherwise the torch device named.

    Raises:
        ValueError: ``device`` names no torch device.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"`device` must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1'; "
                         f"got {device!r}") from error
    if resolved.type == "meta":  # shapes without data: nothing could be computed or drawn
        raise ValueError("`device` 'meta' holds no data; pass 'auto', 'cpu', 'cuda' or 'cuda:1'")
    return resolved
