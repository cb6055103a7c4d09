"""Token-level text conditioning: cross-attention to the caption's token states, next to the pooled embedding."""

from __future__ import annotations

import pytest
import torch

from var_clip import VARCLIPPipeline
from var_clip.models.var_transformer import ThreadInvariantLayerNorm

from .conftest import TEXT_DIM, make_tiny_transformer, make_tiny_vqvae

H = 12  # hidden width of the text states in the model-level tests


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def teacher_batch(B=3, seed=0):
    torch.manual_seed(seed)
    vq = make_tiny_vqvae()
    idx = vq.encode_indices(torch.rand(B, 3, 16, 16) * 2 - 1)
    return vq, idx, vq.indices_to_teacher_input(idx)


def text_inputs(B=3, T=5, seed=0):
    g = gen(seed)
    pooled = torch.nn.functional.normalize(torch.randn(B, TEXT_DIM, generator=g), dim=-1)
    states = torch.randn(B, T, H, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False  # rows of different lengths
    mask[2, 1:] = False
    return dict(text_embeds=pooled, encoder_hidden_states=states, encoder_attention_mask=mask)


@pytest.mark.parametrize("variant", [dict(), dict(shared_aln=True), dict(attn_l2_norm=False),
                                     dict(conditional_adaln=False)])
def test_kv_cached_sampling_equals_teacher_forcing_with_tokens(variant):
    """The cross-attention keys/values computed once per generation give the teacher-forced logits at every scale."""
    tr = make_tiny_transformer(cross_attention_dim=H, **variant)
    vq, idx, x = teacher_batch()
    cond = text_inputs()
    with torch.no_grad():
        full = tr(x, **cond).logits
        cache = tr.new_kv_cache(3)
        f_hat, step_in = torch.zeros(3, 8, 4, 4), None
        for si in range(len(tr.config.patch_nums)):
            logits = tr(step_in, **(cond if si == 0 else {}), kv_cache=cache).logits
            torch.testing.assert_close(logits, full[:, tr.scale_slice(si)], atol=1e-5, rtol=1e-5)
            f_hat, step_in = vq.next_scale_input(si, f_hat, vq.quantize.indices_to_embedding(idx[si]))
        # the text's keys and values were computed once, at the first scale
        assert all(layer.context_kv[0].shape == (3, 2, 5, 16) for layer in cache.layers)


def test_masked_tokens_and_padding_change_nothing():
    tr = make_tiny_transformer(cross_attention_dim=H)
    _, _, x = teacher_batch()
    cond = text_inputs()
    padded = dict(cond, encoder_hidden_states=torch.cat((cond["encoder_hidden_states"], torch.randn(3, 4, H)), 1),
                  encoder_attention_mask=torch.cat((cond["encoder_attention_mask"], torch.zeros(3, 4, dtype=torch.bool)), 1))
    garbage = dict(cond, encoder_hidden_states=cond["encoder_hidden_states"].clone())
    garbage["encoder_hidden_states"][2, 1:] = 1e3  # masked-out positions
    with torch.no_grad():
        a = tr(x, **cond).logits
        torch.testing.assert_close(tr(x, **padded).logits, a)
        torch.testing.assert_close(tr(x, **garbage).logits, a)
        # while a real token does matter
        other = dict(cond, encoder_hidden_states=cond["encoder_hidden_states"] + 0.5)
        assert not torch.allclose(tr(x, **other).logits, a)


def test_condition_dropout_uses_the_null_embedding_and_the_null_token():
    tr = make_tiny_transformer(cross_attention_dim=H, cond_drop_rate=0.5)
    _, _, x = teacher_batch(B=4)
    cond = text_inputs(B=4)
    drop = torch.tensor([True, False, True, False])
    null_states, null_mask = tr.null_text_states(4)
    null = dict(text_embeds=tr.null_condition(4), encoder_hidden_states=null_states, encoder_attention_mask=null_mask)
    with torch.no_grad():
        dropped = tr(x, **cond, cond_drop_mask=drop).logits
        torch.testing.assert_close(dropped[drop], tr(x, **null).logits[drop])
        torch.testing.assert_close(dropped[~drop], tr(x, **cond).logits[~drop])


def test_bad_token_inputs_are_refused():
    tr = make_tiny_transformer(cross_attention_dim=H)
    _, _, x = teacher_batch()
    cond = text_inputs()
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        tr(x, text_embeds=cond["text_embeds"])
    with pytest.raises(ValueError, match=r"must be \(3, T, 12\)"):
        tr(x, text_embeds=cond["text_embeds"], encoder_hidden_states=torch.randn(3, 5, 7))
    empty = dict(cond, encoder_attention_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one token"):
        tr(x, **empty)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        make_tiny_transformer("class", cross_attention_dim=H)


def test_without_conditional_adaln_the_caption_enters_by_the_start_token_and_cross_attention_only(tmp_path):
    tr = make_tiny_transformer(cross_attention_dim=H, conditional_adaln=False)
    _, _, x = teacher_batch()
    cond = text_inputs()
    # every row gets the same modulation, whatever its caption (or the null condition)
    mods = tr.modulations(tr.embed_condition(cond["text_embeds"]))
    for ada in (*mods.blocks, mods.head):
        assert torch.equal(ada, ada[:1].expand_as(ada))
    with torch.no_grad():
        a = tr(x, **cond).logits
        # the pooled embedding still steers, through the start token: the first scale's logits change with it
        other_pooled = dict(cond, text_embeds=torch.roll(cond["text_embeds"], 1, dims=0))
        assert not torch.allclose(tr(x, **other_pooled).logits[:, :1], a[:, :1])
    # a conditional AdaLN has no such vector, and the state dict says which model it is
    assert make_tiny_transformer(cross_attention_dim=H).adaln_embed is None
    assert "adaln_embed" in tr.state_dict()
    tr.save_pretrained(tmp_path)
    loaded = type(tr).from_pretrained(tmp_path)
    assert loaded.config.conditional_adaln is False
    torch.testing.assert_close(loaded(x, **cond).logits, a)


def test_transformers_the_original_code_cannot_read_are_not_written_in_its_layout():
    from var_clip.original_format import transformer_to_original

    for kwargs in (dict(cross_attention_dim=H), dict(conditional_adaln=False)):
        with pytest.raises(ValueError, match="cannot be written in its layout"):
            transformer_to_original(make_tiny_transformer(**kwargs))


def test_the_cross_attention_layernorm_is_torchs_but_its_gradients_ignore_the_thread_count():
    """Same outputs and input gradient as nn.LayerNorm; scale and shift gradients equal to its up to rounding and the
    same at one and two threads (torch's CPU kernel sums them per thread), at the default model's size."""
    torch.manual_seed(0)
    norm = ThreadInvariantLayerNorm(192, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    reference = torch.nn.LayerNorm(192, eps=1e-6)
    reference.load_state_dict(norm.state_dict())
    x, grad = torch.randn(32, 155, 192), torch.randn(32, 155, 192)

    def run(module, threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            module.zero_grad()
            x_in = x.clone().requires_grad_()
            out = module(x_in)
            out.backward(grad)
            return out.detach(), x_in.grad, module.weight.grad.clone(), module.bias.grad.clone()
        finally:
            torch.set_num_threads(before)

    one, two, ref = run(norm, 1), run(norm, 2), run(reference, 1)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert torch.equal(one[0], ref[0]) and torch.equal(one[1], ref[1])
    torch.testing.assert_close(one[2], ref[2], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(one[3], ref[3], rtol=1e-5, atol=1e-3)
    with torch.no_grad():  # inference is torch's own kernel
        assert torch.equal(norm(x), reference(x))
    assert isinstance(make_tiny_transformer(cross_attention_dim=H).blocks[0].norm_cross, ThreadInvariantLayerNorm)


def test_pooled_only_transformer_has_no_cross_attention():
    tr = make_tiny_transformer()
    assert not tr.uses_text_tokens
    assert not any("cross" in name or "null_text_tokens" in name for name in tr.state_dict())


def test_pipeline_prompt_equals_precomputed_embeddings(tiny_token_pipe):
    pipe = tiny_token_pipe
    e = pipe.encode_prompt(["a red circle", "red"], num_images_per_prompt=2)
    assert e.prompt_embeds.shape == (4, TEXT_DIM) and e.prompt_token_embeds.shape[::2] == (4, 32)
    # the states are cut to the longest prompt, and the shorter prompt's padding is masked
    assert e.prompt_attention_mask[0].all() and not e.prompt_attention_mask[2].all()
    assert e.negative_prompt_token_embeds.shape == (4, 1, 32)  # the learned null token
    a = pipe(["a red circle", "red"], num_images_per_prompt=2, generator=gen(3), output_type="pt").images
    b = pipe(prompt_embeds=e.prompt_embeds[::2], prompt_token_embeds=e.prompt_token_embeds[::2],
             prompt_attention_mask=e.prompt_attention_mask[::2], num_images_per_prompt=2, generator=gen(3),
             output_type="pt").images
    torch.testing.assert_close(a, b)


def test_pipeline_guidance_uses_token_states(tiny_token_pipe):
    """Guided logits are (1 + t)·cond − t·uncond, each branch with its own token states."""
    pipe, seen = tiny_token_pipe, []
    tokens = pipe("a red circle", negative_prompt="a blue square", generator=gen(0), guidance_scale=2.0, top_k=1,
                  output_type="tokens", callback_on_step_end_tensor_inputs=["logits_BlV"],
                  callback_on_step_end=lambda p, si, pn, t: seen.append(t["logits_BlV"].clone())).images
    e = pipe.encode_prompt("a red circle", negative_prompt="a blue square")
    x = pipe.vqvae.indices_to_teacher_input(tokens)
    tr, S = pipe.transformer, len(pipe.transformer.config.patch_nums)
    with torch.no_grad():
        lc = tr(x, text_embeds=e.prompt_embeds, encoder_hidden_states=e.prompt_token_embeds,
                encoder_attention_mask=e.prompt_attention_mask).logits
        lu = tr(x, text_embeds=e.negative_prompt_embeds, encoder_hidden_states=e.negative_prompt_token_embeds,
                encoder_attention_mask=e.negative_prompt_attention_mask).logits
    for si, guided in enumerate(seen):
        t, sl = 2.0 * si / (S - 1), tr.scale_slice(si)
        torch.testing.assert_close(guided, (1 + t) * lc[:, sl] - t * lu[:, sl], atol=1e-4, rtol=1e-4)


def test_token_pipeline_save_load_round_trip(tiny_token_pipe, tmp_path):
    a = tiny_token_pipe("a red circle", generator=gen(1), output_type="pt").images
    tiny_token_pipe.save_pretrained(tmp_path)
    loaded = VARCLIPPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.transformer.config.cross_attention_dim == 32
    torch.testing.assert_close(loaded("a red circle", generator=gen(1), output_type="pt").images, a, atol=0, rtol=0)


def test_token_pipeline_needs_token_states_with_prompt_embeds(tiny_token_pipe, tiny_pipe):
    e = tiny_token_pipe.encode_prompt("a red circle")
    with pytest.raises(ValueError, match="prompt_token_embeds"):
        tiny_token_pipe(prompt_embeds=e.prompt_embeds)
    with pytest.raises(ValueError, match="token-level conditioning"):
        tiny_pipe(prompt_embeds=e.prompt_embeds, prompt_token_embeds=e.prompt_token_embeds)
    with pytest.raises(ValueError, match=r"must be a tensor \(1, T, 32\)"):
        tiny_token_pipe(prompt_embeds=e.prompt_embeds, prompt_token_embeds=torch.randn(1, 3, 5))


def test_editing_pipelines_accept_token_conditioning(tiny_token_pipe):
    from var_clip import VARCLIPImg2ImgPipeline, VARCLIPInpaintPipeline

    image = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(16, 16)
    mask[:, 8:] = 1
    inpaint = VARCLIPInpaintPipeline.from_pipe(tiny_token_pipe)
    out = inpaint("a red circle", image=image, mask_image=mask, generator=gen(), output_type="pt").images
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out[..., :8], image[..., :8], atol=1e-6, rtol=0)
    img2img = VARCLIPImg2ImgPipeline.from_pipe(tiny_token_pipe)
    assert img2img("a red circle", image=image, strength=0.5, generator=gen(), output_type="pt").images.shape == (1, 3, 16, 16)
