"""Prompts with words the model never saw in training get one warning naming them; known words stay quiet."""

from __future__ import annotations

import logging

import torch

from var_clip.vocabulary import build_vocabulary, caption_words, unknown_words


def test_words_and_vocabulary():
    assert caption_words("A red circle, left of the BLUE square!") == ["a", "red", "circle", "left", "of", "the", "blue", "square"]
    assert build_vocabulary(["a red circle", "A blue circle."]) == ["a", "blue", "circle", "red"]
    assert unknown_words(["a red fox", "a fox and a cat"], ["a", "red"]) == ["fox", "and", "cat"]


def test_pipeline_warns_once_naming_the_unknown_words(tiny_pipe, caplog):
    tiny_pipe.transformer.register_to_config(vocabulary=["a", "circle", "red"])
    with caplog.at_level(logging.WARNING):
        tiny_pipe(["a red fox", "a fox"], generator=torch.Generator().manual_seed(0), output_type="tokens")
    warnings = [r.getMessage() for r in caplog.records if "never saw" in r.getMessage()]
    assert len(warnings) == 1 and "'fox'" in warnings[0] and "a circle red" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tiny_pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="tokens")
    assert not [r for r in caplog.records if "never saw" in r.getMessage()]


def test_models_without_a_vocabulary_never_warn(tiny_pipe, caplog):
    assert tiny_pipe.transformer.config.vocabulary is None
    with caplog.at_level(logging.WARNING):
        tiny_pipe("a zebra", generator=torch.Generator().manual_seed(0), output_type="tokens")
    assert not [r for r in caplog.records if "never saw" in r.getMessage()]
