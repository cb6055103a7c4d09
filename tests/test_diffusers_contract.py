"""The pipeline contract diffusers users rely on (as diffusers' own common pipeline tests describe it)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from diffusers.callbacks import SDCFGCutoffCallback

from var_clip import VARCLIPImg2ImgPipeline, VARCLIPInpaintPipeline, VARCLIPPipeline

from .conftest import REPO


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_cfg_cutoff_callback_equals_an_earlier_guidance_stop(tiny_pipe):
    S = len(tiny_pipe.transformer.config.patch_nums)
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=0.5)  # after scale S // 2, no more guidance
    a = tiny_pipe("a red circle", generator=gen(3), guidance_scale=3.0, callback_on_step_end=cutoff,
                  output_type="pt").images
    assert tiny_pipe.guidance_scale == 0.0 and not tiny_pipe.do_classifier_free_guidance
    assert tiny_pipe.num_timesteps == S
    b = tiny_pipe("a red circle", generator=gen(3), guidance_scale=3.0, guidance_interval=(0, S // 2 + 1),
                  output_type="pt").images
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert tiny_pipe.guidance_scale == 3.0


def test_guidance_is_on_by_one_definition(tiny_pipe):
    """An empty guidance interval turns guidance off as a scale of 0 does: no unconditional rows, the same tokens,
    and the pipeline's diffusers-facing `guidance_scale` / `do_classifier_free_guidance` say so during the call."""
    seen = []

    def record(pipe, si, pn, tensors):
        seen.append((pipe.guidance_scale, pipe.do_classifier_free_guidance))
        return {}

    off = tiny_pipe("a red circle", generator=gen(1), guidance_scale=0.0, output_type="tokens").images
    empty = tiny_pipe("a red circle", generator=gen(1), guidance_scale=3.0, guidance_interval=(0, 0),
                      output_type="tokens", callback_on_step_end=record).images
    assert all(torch.equal(a, b) for a, b in zip(off, empty))
    assert set(seen) == {(0.0, False)}
    tiny_pipe("a red circle", generator=gen(1), guidance_scale=3.0, callback_on_step_end=record)
    assert seen[-1] == (3.0, True)


def test_a_callback_may_change_the_guidance_scale_mid_generation(tiny_pipe):
    """Doubling `_guidance_scale` after scale 1 doubles the weight t of the later scales."""
    seen = []

    def callback(pipe, si, pn, tensors):
        seen.append(tensors["logits_BlV"].clone())
        if si == 1:
            pipe._guidance_scale = 4.0
        return {}

    tokens = tiny_pipe("a red circle", generator=gen(0), guidance_scale=2.0, top_k=1, output_type="tokens",
                       callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["logits_BlV"]).images
    cond, uncond = tiny_pipe.encode_prompt("a red circle")[:2]
    x = tiny_pipe.vqvae.indices_to_teacher_input(tokens)
    tr = tiny_pipe.transformer
    with torch.no_grad():
        lc, lu = tr(x, text_embeds=cond).logits, tr(x, text_embeds=uncond).logits
    S = len(tr.config.patch_nums)
    for si, guided in enumerate(seen):
        t = (2.0 if si <= 1 else 4.0) * si / (S - 1)
        sl = tr.scale_slice(si)
        torch.testing.assert_close(guided, (1 + t) * lc[:, sl] - t * lu[:, sl], atol=1e-4, rtol=1e-4)


def test_latents_are_the_accumulated_latent_and_output_type_latent_returns_it(tiny_pipe):
    seen = []
    latent = tiny_pipe("a red circle", generator=gen(1), output_type="latent",
                       callback_on_step_end=lambda p, si, pn, t: seen.append(t["latents"].clone()),
                       callback_on_step_end_tensor_inputs=["latents"]).images
    torch.testing.assert_close(latent, seen[-1], atol=0, rtol=0)
    pixels = tiny_pipe("a red circle", generator=gen(1), output_type="pt").images
    decoded = tiny_pipe.image_processor.postprocess(tiny_pipe.vqvae.decode_latent(latent).float(), output_type="pt")
    torch.testing.assert_close(decoded, pixels, atol=0, rtol=0)


def test_a_callback_can_edit_latents(tiny_pipe):
    def zero_last(pipe, si, pn, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if si == pipe.num_timesteps - 1 else {}

    latent = tiny_pipe("a red circle", generator=gen(1), output_type="latent", callback_on_step_end=zero_last,
                       callback_on_step_end_tensor_inputs=["latents"]).images
    assert torch.count_nonzero(latent) == 0


def test_a_callback_returning_an_unknown_key_is_an_error(tiny_pipe):
    with pytest.raises(ValueError, match="returned \\['latent'\\]"):
        tiny_pipe("a red circle", callback_on_step_end=lambda p, si, pn, t: {"latent": None})


def test_encode_prompt_on_a_pipeline_with_only_the_text_components(tiny_pipe, tiny_token_pipe, tmp_path):
    for name, pipe in (("pooled", tiny_pipe), ("tokens", tiny_token_pipe)):
        pipe.save_pretrained(tmp_path / name)
        text_only = VARCLIPPipeline.from_pretrained(tmp_path / name, transformer=None, vqvae=None)
        e = text_only.encode_prompt("a red circle", do_classifier_free_guidance=False)
        full = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
        torch.testing.assert_close(e.prompt_embeds, full.prompt_embeds)
        if name == "tokens":
            torch.testing.assert_close(e.prompt_token_embeds, full.prompt_token_embeds)
            images = pipe(prompt_embeds=e.prompt_embeds, prompt_token_embeds=e.prompt_token_embeds,
                          prompt_attention_mask=e.prompt_attention_mask, generator=gen(), output_type="pt").images
            torch.testing.assert_close(images, pipe("a red circle", generator=gen(), output_type="pt").images)


def test_from_pipe_between_all_text_pipelines_shares_components_and_images(tiny_pipe):
    base = tiny_pipe("a red circle", generator=gen(2), output_type="pt").images
    for cls in (VARCLIPInpaintPipeline, VARCLIPImg2ImgPipeline, VARCLIPPipeline):
        other = cls.from_pipe(tiny_pipe)
        assert other.transformer is tiny_pipe.transformer and other.vqvae is tiny_pipe.vqvae
        back = VARCLIPPipeline.from_pipe(other)
        torch.testing.assert_close(back("a red circle", generator=gen(2), output_type="pt").images, base,
                                   atol=0, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_pipe", "tiny_token_pipe"])
def test_layerwise_casting_fp8_storage_bf16_compute(fixture, request):
    """Weights stored in float8, computed in bfloat16: logits close to the bfloat16 model's, images generated."""
    pipe = request.getfixturevalue(fixture)
    bf16 = pipe.transformer.to(torch.bfloat16)
    tokens = pipe("a red circle", generator=gen(), top_k=1, output_type="tokens").images
    x = pipe.vqvae.indices_to_teacher_input(tokens)
    e = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
    cond = dict(text_embeds=e.prompt_embeds)
    if e.prompt_token_embeds is not None:
        cond.update(encoder_hidden_states=e.prompt_token_embeds, encoder_attention_mask=e.prompt_attention_mask)
    with torch.no_grad():
        reference = bf16(x, **cond).logits
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert pipe.transformer.blocks[0].attn.mat_qkv.weight.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        logits = pipe.transformer(x, **cond).logits
    # fp8 keeps 3 mantissa bits: a few percent of the logits' spread
    assert (logits - reference).abs().mean() < 0.1 * reference.std()
    images = pipe("a red circle", generator=gen(), output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_from_pipe_keeps_dtypes_and_the_float32_modules_quietly(tiny_pipe, tmp_path, caplog):
    import logging

    tiny_pipe.save_pretrained(tmp_path)
    bf16 = VARCLIPPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        inpaint = VARCLIPInpaintPipeline.from_pipe(bf16)
        VARCLIPInpaintPipeline.from_pipe(tiny_pipe)
    assert not [r for r in caplog.records if "float32" in r.getMessage()]
    assert inpaint.transformer.dtype == torch.bfloat16 and inpaint.transformer.head.weight.dtype == torch.float32
    assert inpaint.vqvae.quantize.embedding.weight.dtype == torch.float32


def test_a_long_prompt_gets_one_warning_naming_the_dropped_words(tiny_pipe, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        tiny_pipe(" ".join(["red circle"] * 60), generator=gen(), output_type="tokens")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "was dropped" in messages[0], messages


def test_diffusers_generic_loaders_fail_inside_diffusers_and_the_readme_names_what_works(tiny_pipe, tmp_path):
    """diffusers looks a folder's pipeline class up in its own namespace (DiffusionPipeline) or in its own task
    mappings (AutoPipeline), before any var-clip code runs, and offers no public way to register another; changing
    these errors would mean patching diffusers. They are pinned here (a diffusers release that opens a way makes this
    fail), and the README says what to call instead."""
    tiny_pipe.save_pretrained(tmp_path)
    with pytest.raises(AttributeError, match="has no attribute VARCLIPPipeline"):
        DiffusionPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="AutoPipeline can't find a pipeline linked to VARCLIPPipeline"):
        AutoPipelineForText2Image.from_pretrained(tmp_path)
    assert type(VARCLIPPipeline.from_pretrained(tmp_path)) is VARCLIPPipeline  # the call that works
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for fact in ("`DiffusionPipeline.from_pretrained(folder)` without `custom_pipeline`",
                 "`AutoPipelineForText2Image`", "`custom_pipeline=custom_pipeline_file(folder)`",
                 "`VARCLIPPipeline.from_pretrained(folder)`"):
        assert fact in readme, fact
