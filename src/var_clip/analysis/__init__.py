"""Analyses of trained VAR-CLIP models.

``word_position``: how the position of a word in a caption changes the CLIP text embedding and the generated images
(``var-clip word-position --help``). Names are imported from their submodule on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CaptionVariant": "word_position",
    "analyze_word_position": "word_position",
    "caption_list_variants": "word_position",
    "insert_word_variants": "word_position",
    "move_word_variants": "word_position",
    "phrase_order_variants": "word_position",
    "plot_similarities": "word_position",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
