"""Analyses of trained VAR-CLIP models."""

from .word_position import (
    CaptionVariant,
    analyze_word_position,
    caption_list_variants,
    insert_word_variants,
    move_word_variants,
    phrase_order_variants,
    plot_similarities,
)

__all__ = [
    "CaptionVariant",
    "analyze_word_position",
    "caption_list_variants",
    "insert_word_variants",
    "move_word_variants",
    "phrase_order_variants",
    "plot_similarities",
]
