"""The one text encoding the pipelines and the trainer share: what ``encode_prompt`` gives is ``encode_text``'s."""

from __future__ import annotations

import logging

import torch

from var_clip.text_encoding import encode_text, text_max_length


def test_encode_prompt_is_encode_text_on_the_pipelines_components(tiny_pipe, tiny_token_pipe):
    prompts = ["a red circle", "a blue square on the left"]
    for pipe in (tiny_pipe, tiny_token_pipe):
        with torch.no_grad():
            e = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
            embeds_BE, states_BTH, mask_BT = encode_text(pipe.tokenizer, pipe.text_encoder, prompts, "cpu")
        assert torch.equal(e.prompt_embeds, embeds_BE)
        assert torch.allclose(embeds_BE.norm(dim=-1), torch.ones(2))  # L2-normalised, as VAR-CLIP conditions on
        assert mask_BT.dtype == torch.bool and states_BTH.shape[:2] == mask_BT.shape
        assert states_BTH.shape[1] == int(mask_BT.sum(dim=1).max())  # cut to the longest prompt
        if pipe.transformer.uses_text_tokens:
            assert torch.equal(e.prompt_token_embeds, states_BTH) and torch.equal(e.prompt_attention_mask, mask_BT)


def test_the_context_length_is_the_shorter_of_tokenizer_and_text_encoder(tiny_pipe, caplog):
    tokenizer, text_encoder = tiny_pipe.tokenizer, tiny_pipe.text_encoder
    limit = text_max_length(tokenizer, text_encoder)
    assert limit == min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    assert text_max_length(None, None) == 77 and text_max_length(tokenizer, None) == tokenizer.model_max_length
    with caplog.at_level(logging.WARNING), torch.no_grad():
        encode_text(tokenizer, text_encoder, [" ".join(["red circle"] * 60)], "cpu")
    assert len(caplog.records) == 1 and "was dropped" in caplog.records[0].getMessage()
