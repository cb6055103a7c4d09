"""VAR-CLIP as diffusers modular blocks: the same images as VARCLIPPipeline, swappable blocks, guiders over scales."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance, SkipLayerGuidance
from diffusers.modular_pipelines import InputParam, ModularPipeline, ModularPipelineBlocks, OutputParam
from diffusers.utils import logging as diffusers_logging

from var_clip import (
    DEFAULT_MODEL,
    MultiScaleVQModel,
    VARCLIPBlocks,
    VARCLIPPipeline,
    VARTransformer2DModel,
    guider_interval,
)
from var_clip.modular_pipelines import guided_scales

from .conftest import REPO, assert_same_image

PROMPT = "a red circle at the top left"
S = 7  # the default model's scales


@pytest.fixture(autouse=True)
def _quiet_guiders():
    """diffusers warns on every guider it builds that guiders are experimental; the tests build many."""
    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    yield
    diffusers_logging.set_verbosity(previous)


@pytest.fixture(scope="module")
def classic() -> VARCLIPPipeline:
    pipe = VARCLIPPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def modular() -> ModularPipeline:
    pipe = VARCLIPBlocks().init_pipeline(DEFAULT_MODEL)
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cfg(scale: float, **kwargs) -> ClassifierFreeGuidance:
    """diffusers' guider in VAR's formulation, (1 + t)·cond − t·uncond."""
    return ClassifierFreeGuidance(guidance_scale=scale, use_original_formulation=True, **kwargs)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_loads_a_var_clip_folder(modular):
    assert type(modular) is ModularPipeline
    assert isinstance(modular.transformer, VARTransformer2DModel) and isinstance(modular.vqvae, MultiScaleVQModel)
    assert modular.tokenizer is not None and modular.text_encoder is not None
    # the default guider is VAR's guidance at the classic pipeline's default strength
    assert isinstance(modular.guider, ClassifierFreeGuidance)
    assert modular.guider.config.use_original_formulation and modular.guider.config.guidance_scale == 4.0
    assert list(VARCLIPBlocks().sub_blocks["next_scale"].sub_blocks) == ["predict", "guide", "sample", "accumulate"]
    assert "guidance_schedule" in VARCLIPBlocks().doc


# (classic pipeline's arguments, the modular pipeline's guider, its other arguments)
CASES = {
    "default": ({}, _cfg(4.0), {}),
    "no_guidance": ({"guidance_scale": 0.0}, _cfg(0.0), {}),
    "interval": ({"guidance_scale": 3.0, "guidance_interval": (2, 5)}, _cfg(3.0, **guider_interval(2, 5, S)), {}),
    "constant_negative": (
        {"guidance_scale": 2.0, "guidance_schedule": "constant", "negative_prompt": "a blue square"},
        _cfg(2.0), {"guidance_schedule": "constant", "negative_prompt": "a blue square"},
    ),
    "smooth_per_scale": (
        {"guidance_scale": 1.5, "more_smooth": True, "top_k": 0, "top_p": 0.8, "temperature": [1.0, 0.9] * 3 + [0.8]},
        _cfg(1.5), {"more_smooth": True, "top_k": 0, "top_p": 0.8, "temperature": [1.0, 0.9] * 3 + [0.8]},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_tokens_and_images_as_the_classic_pipeline(classic, modular, case):
    classic_kwargs, guider, modular_kwargs = CASES[case]
    modular.update_components(guider=guider)
    common = {"num_images_per_prompt": 2}
    seen = {}  # the classic pipeline's tokens, as its callback sees them after the last scale
    want_images = classic(PROMPT, generator=gen(1), **common, **classic_kwargs,
                          callback_on_step_end=lambda pipe, si, pn, tensors: seen.update(tensors),
                          callback_on_step_end_tensor_inputs=["tokens"]).images
    want_tokens = seen["tokens"]
    got = modular(prompt=PROMPT, generator=gen(1), **common, **modular_kwargs, output=["tokens", "images"])
    assert len(got["tokens"]) == S
    for si, (a, b) in enumerate(zip(got["tokens"], want_tokens)):
        assert torch.equal(a, b), f"{case}: tokens differ at scale {si}"
    for a, b in zip(got["images"], want_images):
        assert_same_image(a, b, case)


def test_per_image_generators_and_precomputed_embeddings(classic, modular):
    modular.update_components(guider=_cfg(4.0))
    embeddings = classic.encode_prompt([PROMPT, "a small green triangle"], do_classifier_free_guidance=False)
    kwargs = {"prompt_embeds": embeddings.prompt_embeds, "prompt_token_embeds": embeddings.prompt_token_embeds,
              "prompt_attention_mask": embeddings.prompt_attention_mask}
    want = classic(generator=[gen(5), gen(6)], output_type="tokens", **kwargs).images
    got = modular(generator=[gen(5), gen(6)], output="tokens", **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_a_pooled_only_model_from_a_saved_folder(tiny_pipe, tmp_path):
    """A transformer without token-level conditioning, loaded from the folder `save_pretrained` writes."""
    tiny_pipe.save_pretrained(tmp_path)
    pipe = VARCLIPBlocks().init_pipeline(tmp_path)
    pipe.load_components()
    pipe.update_components(guider=_cfg(3.0))
    pipe.set_progress_bar_config(disable=True)
    want = tiny_pipe(["a red circle", "red"], generator=gen(2), guidance_scale=3.0, output_type="tokens").images
    got = pipe(prompt=["a red circle", "red"], generator=gen(2), output="tokens")
    assert all(torch.equal(a, b) for a, b in zip(got, want))


# -- swapping one block ----------------------------------------------------------------------------------------------


class GreedySampler(ModularPipelineBlocks):
    """A user's sampler: the most likely token of the guided logits, no randomness."""

    @property
    def inputs(self):
        return [InputParam("logits_BlV", required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("idx_Bl")]

    def __call__(self, components, block_state, si, pn):
        block_state.idx_Bl = block_state.logits_BlV.argmax(dim=-1)
        return components, block_state


def test_a_swapped_sampler_changes_only_the_sampling(classic, modular):
    modular.update_components(guider=_cfg(4.0))
    blocks = VARCLIPBlocks()
    blocks.sub_blocks["next_scale"].sub_blocks["sample"] = GreedySampler()
    greedy = blocks.init_pipeline(DEFAULT_MODEL)
    greedy.update_components(**modular.components)  # the same loaded models, no second copy
    greedy.set_progress_bar_config(disable=True)

    a = greedy(prompt=PROMPT, generator=gen(1), output="tokens")
    b = greedy(prompt=PROMPT, generator=gen(2), output="tokens")
    assert all(torch.equal(x, y) for x, y in zip(a, b)), "greedy sampling does not depend on the seed"
    # the same as keeping only the top token in the classic pipeline, guidance and all
    want = classic(PROMPT, generator=gen(3), top_k=1, output_type="tokens").images
    assert all(torch.equal(x, y) for x, y in zip(a, want))
    sampled = modular(prompt=PROMPT, generator=gen(1), output="tokens")
    assert not all(torch.equal(x, y) for x, y in zip(a, sampled))
    # the swap changed that blocks object only
    assert type(VARCLIPBlocks().sub_blocks["next_scale"].sub_blocks["sample"]).__name__ == "VARCLIPLoopSampler"


# -- the guider over the scales ----------------------------------------------------------------------------------------


def test_guider_start_stop_are_fractions_of_the_scales():
    patch_nums = tuple(range(1, 11))  # ten scales
    assert guided_scales(_cfg(4.0, start=0.3, stop=0.8), patch_nums) == (3, 4, 5, 6, 7)
    assert guided_scales(_cfg(4.0), patch_nums) == tuple(range(10))
    assert guided_scales(_cfg(0.0), patch_nums) == ()  # VAR's formulation at scale 0 is no guidance
    assert guided_scales(ClassifierFreeGuidance(guidance_scale=1.0), patch_nums) == ()  # diffusers' at scale 1


def test_guider_interval_lands_on_the_scale_indices():
    # start_scale / S itself can round below the bound: 15 / 22 · 22 = 14.999..., guidance would begin at scale 14
    assert guided_scales(_cfg(4.0, start=15 / 22, stop=1.0), range(22))[0] == 14
    for num_scales in range(1, 17):
        for start in range(num_scales):
            for stop in range(start + 1, num_scales + 1):
                got = guided_scales(_cfg(4.0, **guider_interval(start, stop, num_scales)), range(num_scales))
                assert got == tuple(range(start, stop)), (start, stop, num_scales)


def test_diffusers_formulation_at_one_plus_t_is_vars_at_t(modular):
    modular.update_components(guider=_cfg(4.0))
    var = modular(prompt=PROMPT, generator=gen(4), output="tokens")
    modular.update_components(guider=ClassifierFreeGuidance(guidance_scale=5.0))  # uncond + 5·(cond − uncond)
    diffusers_form = modular(prompt=PROMPT, generator=gen(4), output="tokens")
    assert all(torch.equal(a, b) for a, b in zip(var, diffusers_form))


def test_the_unconditional_rows_end_with_the_last_guided_scale(classic, modular):
    """As in the classic pipeline: 2B rows through the last guided scale, B after it (the KV cache drops them)."""
    def rows_per_scale(pipe, call):
        rows = []
        handle = pipe.transformer.register_forward_hook(lambda module, args, out: rows.append(out.logits.shape[0]))
        try:
            call()
        finally:
            handle.remove()
        return rows

    modular.update_components(guider=_cfg(3.0, **guider_interval(2, 5, S)))
    got = rows_per_scale(modular, lambda: modular(prompt=PROMPT, generator=gen(0), output="tokens"))
    want = rows_per_scale(classic, lambda: classic(PROMPT, generator=gen(0), guidance_scale=3.0,
                                                   guidance_interval=(2, 5), output_type="tokens"))
    assert got == want == [2, 2, 2, 2, 2, 1, 1]
    # the linear ramp is 0 at scale 0: guidance on the first scale alone is no guidance, and no unconditional pass
    modular.update_components(guider=_cfg(3.0, **guider_interval(0, 1, S)))
    assert rows_per_scale(modular, lambda: modular(prompt=PROMPT, generator=gen(0), output="tokens")) == [1] * S


def test_guiders_that_change_the_model_are_refused(modular):
    modular.update_components(guider=SkipLayerGuidance(skip_layer_guidance_layers=[0]))
    with pytest.raises(ValueError, match="changes the model for its predictions"):
        modular(prompt=PROMPT, generator=gen(0), output="images")
    modular.update_components(guider=_cfg(4.0))


# -- errors ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=PROMPT, prompt_embeds=torch.zeros(1, 64)), "exactly one of `prompt` and `prompt_embeds`"),
    (dict(prompt=7), "`prompt` must be a str"),
    (dict(prompt=PROMPT, num_images_per_prompt=0), "`num_images_per_prompt` must be"),
    (dict(prompt=PROMPT, top_k=-1), "`top_k` must be"),
    (dict(prompt=PROMPT, top_p=[0.9] * 3), "`top_p` must be one value or a list of 7"),
    (dict(prompt=PROMPT, guidance_schedule="cosine"), "`guidance_schedule` must be one of"),
    (dict(prompt=PROMPT, generator=[gen(0), gen(1)]), "`generator` is a list of 2"),
    (dict(prompt=PROMPT, num_inference_steps=50), "`num_inference_steps`=50"),
    (dict(prompt=PROMPT, height=512), "`height`=512"),
    (dict(prompt=PROMPT, output_type="jpeg"), "`output_type` must be one of"),
])
def test_bad_inputs_raise_before_sampling(modular, kwargs, message):
    calls = []
    handle = modular.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=re.escape(message)):
            modular(**kwargs, output="images")
    finally:
        handle.remove()
    assert not calls, "the transformer ran before the error"


def test_a_pipeline_without_its_models_says_how_to_load_them():
    pipe = VARCLIPBlocks().init_pipeline(DEFAULT_MODEL)  # load_components() not called
    with pytest.raises(ValueError, match=re.escape("no transformer loaded: call `pipe.load_components()`")):
        pipe(prompt=PROMPT, output="images")


@pytest.mark.parametrize("args", [(3, 3, 7), (0, 8, 7), (-1, 2, 7), (1.5, 3, 7)])
def test_guider_interval_refuses_empty_or_outside_intervals(args):
    with pytest.raises(ValueError, match="`start_scale` and `stop_scale` must be scale indices"):
        guider_interval(*args)


def test_docs_example_runs():
    """docs/modular.md's example, as written."""
    text = (REPO / "docs" / "modular.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/modular.md has no python example"
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "docs/modular.md", "exec"), namespace)
    assert np.asarray(namespace["image"]).shape == (64, 64, 3)
