"""Hard negative captions: every edit contradicts the caption, and none creates a held-out composition."""

from __future__ import annotations

import numpy as np
import pytest

from var_clip import shapes_world as sw
from var_clip.training.hard_negatives import attribute_pairs, caption_hard_negatives

SEEN = {(c, s) for c in sw.COLORS for s in sw.SHAPES} - set(sw.HELD_OUT_PAIRS)


def negatives(caption: str, k: int = 8, seed: int = 0) -> list[str]:
    return caption_hard_negatives(caption, k, np.random.default_rng(seed), sw.COLORS, sw.SHAPES, SEEN)


def test_relation_edits_cover_antonym_argument_swap_and_attribute_swaps():
    found = set(negatives("a red circle above a blue square"))
    assert {"a red circle below a blue square", "a blue square above a red circle",
            "a blue circle above a red square", "a red square above a blue circle"} <= found


def test_swapping_relation_arguments_keeps_prefixes_and_fixes_articles():
    found = negatives("a photo of a purple square to the left of an orange square.")
    assert "a photo of an orange square to the left of a purple square." in found


@pytest.mark.parametrize("caption, expected", [
    ("a small blue square on the left", {"a large blue square on the left", "a small blue square on the right"}),
    ("a large yellow triangle at the top", {"a small yellow triangle at the top", "a large yellow triangle at the bottom"}),
])
def test_spatial_and_size_words_become_their_opposites(caption, expected):
    assert expected <= set(negatives(caption))


def test_edits_never_return_the_caption_or_a_held_out_pair():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sw.sample_scene(rng)
        caption = sw.caption_variants(scene)[0]
        for edited in negatives(caption):
            assert edited.lower() != caption.lower()
            assert attribute_pairs([edited]) <= SEEN, (caption, edited)


def test_count_determinism_and_captions_without_editable_words():
    assert len(negatives("a red circle", k=2)) == 2
    assert negatives("a red circle", seed=3) == negatives("a red circle", seed=3)
    assert negatives("a dog on a sofa") == []
    assert negatives("a red circle", k=0) == []
    with pytest.raises(ValueError, match="num_negatives"):
        negatives("a red circle", k=-1)


def test_attribute_pairs_reads_colour_shape_bigrams():
    assert attribute_pairs(["a red circle above a small blue square", "a green triangle"]) == {
        ("red", "circle"), ("blue", "square"), ("green", "triangle")}
