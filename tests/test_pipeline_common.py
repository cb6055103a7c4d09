"""diffusers' common pipeline tests, in this project's words, for every var-clip pipeline.

diffusers runs one battery (`PipelineTesterMixin`) on each of its pipelines: same seed → same output, a batch with a
list of generators equals single runs, save → load, optional components, dict/tuple and pt/np/pil outputs,
callbacks, `encode_prompt` without the other components, variants, `from_pipe`, offloading, layerwise casting. Its
test file is not installed with diffusers, and it looks pipeline classes up in diffusers' own namespace, so it cannot
run on an out-of-tree pipeline; the same checks are written here, once, for each pipeline. A check that does not
apply to next-scale prediction is skipped with the reason (`NOT_APPLICABLE`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.callbacks import SDCFGCutoffCallback

from var_clip import (
    VARCLIPImg2ImgPipeline,
    VARCLIPInpaintPipeline,
    VARCLIPPipeline,
    VARInpaintPipeline,
    VARPipeline,
)

from .conftest import make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_transformer, make_tiny_vqvae


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _image(seed=0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _mask() -> PIL.Image.Image:
    m = np.zeros((16, 16), dtype=np.uint8)
    m[2:9, 3:12] = 255
    return PIL.Image.fromarray(m)


def _text_components(tokens: bool = False) -> dict:
    tokenizer = make_tiny_tokenizer()
    encoder = make_tiny_text_encoder(tokenizer)
    extra = {"cross_attention_dim": encoder.config.hidden_size} if tokens else {}
    return dict(tokenizer=tokenizer, text_encoder=encoder, transformer=make_tiny_transformer(**extra),
                vqvae=make_tiny_vqvae())


def _class_components() -> dict:
    return dict(transformer=make_tiny_transformer("class"), vqvae=make_tiny_vqvae())


@dataclass
class Case:
    """One pipeline under test: its class, tiny real components, and the inputs of one call and of a batch of 3."""

    cls: type
    components: Callable[[], dict]
    inputs: Callable[[], dict]
    batch_inputs: Callable[[], dict]

    @property
    def text(self) -> bool:
        return hasattr(self.cls, "encode_prompt")

    def pipe(self, **overrides):
        pipe = self.cls(**{**self.components(), **overrides})
        pipe.set_progress_bar_config(disable=True)
        return pipe


PROMPTS = ["a red circle", "a blue square", "a green triangle"]
CASES = {
    "text": Case(VARCLIPPipeline, _text_components, lambda: {"prompt": "a red circle"},
                 lambda: {"prompt": PROMPTS}),
    "text_tokens": Case(VARCLIPPipeline, lambda: _text_components(tokens=True), lambda: {"prompt": "a red circle"},
                        lambda: {"prompt": PROMPTS}),
    "class": Case(VARPipeline, _class_components, lambda: {"class_labels": 3}, lambda: {"class_labels": [3, 5, 7]}),
    "inpaint": Case(VARCLIPInpaintPipeline, _text_components,
                    lambda: {"prompt": "a red circle", "image": _image(), "mask_image": _mask()},
                    lambda: {"prompt": PROMPTS, "image": _image(), "mask_image": _mask()}),
    "img2img": Case(VARCLIPImg2ImgPipeline, _text_components,
                    lambda: {"prompt": "a red circle", "image": _image(), "strength": 0.5},
                    lambda: {"prompt": PROMPTS, "image": _image(), "strength": 0.5}),
    "class_inpaint": Case(VARInpaintPipeline, _class_components,
                          lambda: {"class_labels": 3, "image": _image(), "mask_image": _mask()},
                          lambda: {"class_labels": [3, 5, 7], "image": _image(), "mask_image": _mask()}),
}
TEXT_CASES = [name for name, case in CASES.items() if case.text]


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


def run(pipe, inputs: dict, seed=0, **kwargs):
    return pipe(**inputs, generator=gen(seed), output_type=kwargs.pop("output_type", "pt"), **kwargs).images


# ----------------------------------------------------------------------------------------------------------------------
# Determinism, batches, outputs
# ----------------------------------------------------------------------------------------------------------------------


def test_same_seed_same_output_and_another_seed_differs(case):
    pipe = case.pipe()
    a, b = run(pipe, case.inputs()), run(pipe, case.inputs())
    assert a.shape == (1, 3, 16, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, run(pipe, case.inputs(), seed=1))


def test_batch_with_a_list_of_generators_equals_single_runs(case):
    pipe = case.pipe()
    inputs = case.batch_inputs()
    batch = pipe(**inputs, generator=[gen(i) for i in range(3)], output_type="pt").images
    key = "prompt" if case.text else "class_labels"
    for i in range(3):
        single = pipe(**{**inputs, key: inputs[key][i]}, generator=gen(i), output_type="pt").images
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_images_per_prompt", [1, 2])
def test_num_images_per_prompt(case, num_images_per_prompt):
    pipe = case.pipe()
    for inputs, prompts in ((case.inputs(), 1), (case.batch_inputs(), 3)):
        images = run(pipe, inputs, num_images_per_prompt=num_images_per_prompt)
        assert images.shape == (prompts * num_images_per_prompt, 3, 16, 16)


def test_dict_and_tuple_outputs_are_equal(case):
    pipe = case.pipe()
    as_dict = run(pipe, case.inputs())
    as_tuple = pipe(**case.inputs(), generator=gen(), output_type="pt", return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict, atol=0, rtol=0)


def test_pt_np_pil_outputs_are_the_same_image(case):
    pipe = case.pipe()
    pt = run(pipe, case.inputs(), output_type="pt")
    np_ = run(pipe, case.inputs(), output_type="np")
    pil = run(pipe, case.inputs(), output_type="pil")
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_, atol=1e-6)
    assert np.abs(np.asarray(pil[0], dtype=np.float32) / 255 - np_[0]).max() <= 1 / 255 + 1e-6


def test_cfg_changes_the_logits_and_keeps_the_output_shape(case):
    pipe = case.pipe()
    logits = {}

    def last_logits(scale):
        def callback(p, si, pn, tensors):
            logits[scale] = tensors["logits_BlV"]
            return {}
        return callback

    guided = run(pipe, case.inputs(), guidance_scale=3.0, callback_on_step_end=last_logits(3.0),
                 callback_on_step_end_tensor_inputs=["logits_BlV"])
    plain = run(pipe, case.inputs(), guidance_scale=0.0, callback_on_step_end=last_logits(0.0),
                callback_on_step_end_tensor_inputs=["logits_BlV"])
    assert guided.shape == plain.shape
    assert logits[3.0].shape == logits[0.0].shape and not torch.allclose(logits[3.0], logits[0.0])


# ----------------------------------------------------------------------------------------------------------------------
# Components, saving and loading
# ----------------------------------------------------------------------------------------------------------------------


def test_components_are_the_init_arguments(case):
    pipe = case.pipe()
    params = set(inspect.signature(case.cls.__init__).parameters) - {"self"}
    assert set(pipe.components) == params
    rebuilt = case.cls(**pipe.components)
    rebuilt.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(rebuilt, case.inputs()), run(pipe, case.inputs()), atol=0, rtol=0)


def test_save_load_gives_the_same_output(case, tmp_path):
    pipe = case.pipe()
    expected = run(pipe, case.inputs())
    pipe.save_pretrained(tmp_path)
    loaded = case.cls.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, case.inputs()), expected, atol=0, rtol=0)


def test_save_load_optional_components(case, tmp_path):
    if not case.text:
        pytest.skip("the class-conditional pipelines have no optional components (a transformer and a VQ-VAE)")
    full = case.pipe()
    inputs = case.inputs()
    e = full.encode_prompt(inputs.pop("prompt"))
    embeds = dict(prompt_embeds=e.prompt_embeds, prompt_token_embeds=e.prompt_token_embeds,
                  prompt_attention_mask=e.prompt_attention_mask)
    embeds = {k: v for k, v in embeds.items() if v is not None}
    expected = run(full, {**inputs, **embeds})
    without_text = case.cls(**{**full.components, "text_encoder": None, "tokenizer": None})
    without_text.save_pretrained(tmp_path)
    loaded = case.cls.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder is None and loaded.tokenizer is None
    torch.testing.assert_close(run(loaded, {**inputs, **embeds}), expected, atol=0, rtol=0)


def test_variants_save_load_and_a_missing_variant_is_an_error(case, tmp_path):
    pipe = case.pipe()
    pipe.save_pretrained(tmp_path, variant="fp16")
    names = {p.name for p in tmp_path.rglob("*.safetensors")}
    assert names and all(".fp16." in name for name in names), names
    loaded = case.cls.from_pretrained(tmp_path, variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, case.inputs()), run(pipe, case.inputs()), atol=0, rtol=0)
    with pytest.raises(ValueError, match="variant"):
        case.cls.from_pretrained(tmp_path, variant="bf16")


def test_dtype_per_component(case, tmp_path):
    case.pipe().save_pretrained(tmp_path)
    pipe = case.cls.from_pretrained(tmp_path, dtype={"transformer": torch.bfloat16, "default": torch.float32})
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vqvae.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    assert torch.isfinite(run(pipe, case.inputs())).all()


def test_to_device_and_dtype(case):
    pipe = case.pipe().to("cpu")
    assert all(c.device.type == "cpu" for c in pipe.components.values() if isinstance(c, torch.nn.Module))
    pipe.to(torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vqvae.decoder.conv_in.weight.dtype == torch.bfloat16
    # as with from_pretrained(dtype=...): the nearest-code search and the logits stay in float32 (editing needs it)
    assert pipe.transformer.head.weight.dtype == pipe.vqvae.quantize.embedding.weight.dtype == torch.float32
    assert torch.isfinite(run(pipe, case.inputs())).all()


def test_from_pipe_between_the_pipelines_of_one_kind_keeps_the_output(case):
    pipe = case.pipe()
    expected = run(pipe, case.inputs())
    family = (VARCLIPPipeline, VARCLIPInpaintPipeline, VARCLIPImg2ImgPipeline) if case.text else (VARPipeline,
                                                                                                  VARInpaintPipeline)
    for other_cls in family:
        other = other_cls.from_pipe(pipe)
        assert other.transformer is pipe.transformer and other.vqvae is pipe.vqvae
        back = case.cls.from_pipe(other)
        back.set_progress_bar_config(disable=True)
        torch.testing.assert_close(run(back, case.inputs()), expected, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Callbacks, prompts, memory features
# ----------------------------------------------------------------------------------------------------------------------


def test_callback_receives_every_tensor_input_it_names(case):
    pipe = case.pipe()
    names = list(pipe._callback_tensor_inputs)
    seen = []

    def callback(p, si, pn, tensors):
        assert set(tensors) == set(names)
        seen.append(si)
        return {}

    expected = run(pipe, case.inputs())
    images = run(pipe, case.inputs(), callback_on_step_end=callback, callback_on_step_end_tensor_inputs=names)
    assert seen == list(range(pipe.num_timesteps))
    torch.testing.assert_close(images, expected, atol=0, rtol=0)


def test_cfg_cutoff_callback_equals_an_earlier_guidance_stop(case):
    pipe = case.pipe()
    S = pipe.num_timesteps
    cut = run(pipe, case.inputs(), guidance_scale=3.0, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5))
    assert not pipe.do_classifier_free_guidance
    stopped = run(pipe, case.inputs(), guidance_scale=3.0, guidance_interval=(0, S // 2 + 1))
    torch.testing.assert_close(cut, stopped, atol=0, rtol=0)


@pytest.mark.parametrize("name", TEXT_CASES)
@pytest.mark.parametrize("with_negative", [False, True])
def test_encode_prompt_works_in_isolation(name, with_negative):
    """diffusers' check: `encode_prompt` on the text components alone (guidance on), then the other components alone
    given its outputs, equal the full pipeline. Without a negative prompt the null condition is left to the
    transformer, which applies its learned one when the embeddings come back."""
    case = CASES[name]
    components = case.components()
    text_only = case.cls(**{k: (v if k in ("text_encoder", "tokenizer") else None) for k, v in components.items()})
    negative = {"negative_prompt": "a blue square"} if with_negative else {}
    e = text_only.encode_prompt("a red circle", do_classifier_free_guidance=True, **negative)
    if not with_negative:
        assert e.negative_prompt_embeds is None and e.negative_prompt_token_embeds is None
    else:
        assert e.negative_prompt_embeds is not None
    no_text = case.cls(**{k: (None if k in ("text_encoder", "tokenizer") else v) for k, v in components.items()})
    no_text.set_progress_bar_config(disable=True)
    embeds = {k: v for k, v in e._asdict().items() if v is not None}
    if not no_text.transformer.uses_text_tokens:
        embeds = {k: v for k, v in embeds.items() if "token" not in k and "mask" not in k}
    inputs = {k: v for k, v in case.inputs().items() if k != "prompt"}
    full = case.cls(**components)
    full.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(no_text, {**inputs, **embeds}, guidance_scale=3.0),
                               run(full, {**case.inputs(), **negative}, guidance_scale=3.0), atol=1e-4, rtol=1e-4)


def test_model_cpu_offload_keeps_the_output(case):
    pipe = case.pipe()
    expected = run(pipe, case.inputs())
    pipe.enable_model_cpu_offload(device="cpu")
    torch.testing.assert_close(run(pipe, case.inputs()), expected, atol=0, rtol=0)
    torch.testing.assert_close(run(pipe, case.inputs()), expected, atol=0, rtol=0)  # twice: the hooks stay valid


def test_layerwise_casting_inference(case):
    pipe = case.pipe()
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    images = run(pipe, case.inputs())
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


# ----------------------------------------------------------------------------------------------------------------------
# diffusers' names for what next-scale prediction fixes: accepted with the model's values, refused with the way out
# ----------------------------------------------------------------------------------------------------------------------


def test_height_width_and_steps_are_accepted_with_the_models_values(case):
    pipe = case.pipe()
    S = len(pipe.transformer.config.patch_nums)
    torch.testing.assert_close(run(pipe, case.inputs(), height=16, width=16, num_inference_steps=S),
                               run(pipe, case.inputs()), atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"height": 32}, r"`height`=32: .*16×16.*leave `height` and `width` out"),
        ({"width": 512}, r"`width`=512: .*16×16.*leave `height` and `width` out"),
        ({"num_inference_steps": 50}, r"`num_inference_steps`=50: next-scale prediction takes one step per scale, 4 "
                                      r"for this model \(patch_nums \(1, 2, 3, 4\)\), so leave it out"),
    ],
)
def test_other_height_width_or_steps_name_what_to_do_instead(case, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(case.pipe(), case.inputs(), **kwargs)


def test_a_size_the_vqvae_does_not_make_names_patch_nums():
    with pytest.raises(ValueError, match="fixed by the VQ-VAE's patch_nums"):
        run(CASES["text"].pipe(), CASES["text"].inputs(), height=32)
    with pytest.raises(ValueError, match="keeps the input image's size"):
        run(CASES["img2img"].pipe(), CASES["img2img"].inputs(), width=32)


# ----------------------------------------------------------------------------------------------------------------------
# What does not apply
# ----------------------------------------------------------------------------------------------------------------------

#: diffusers' common tests that have nothing to act on in a next-scale pipeline, with the reason.
NOT_APPLICABLE = {
    "test_latents_input": "no initial noise: each scale's tokens are drawn from the generator (a callback may edit "
                          "`latents`, see test_diffusers_contract.py)",
    "test_karras_schedulers_shape": "no scheduler: one step per scale",
    "test_attention_slicing_forward_pass": "attention slicing is a UNet feature (no var-clip component has "
                                           "`set_attention_slice`); the kernel is chosen with diffusers' "
                                           "`set_attention_backend` (test_attention_backends.py)",
    "test_xformers_attention_forwardGenerator_pass": "needs xformers on a CUDA device; where a mask is needed the "
                                                     "transformer accepts only backends that apply it as SDPA does "
                                                     "(test_attention_backends.py)",
    "test_vae_slicing / test_vae_tiling": "the VQ-VAE decodes one fixed-size latent per image; there are no tiles",
    "test_freeu / test_fused_qkv_projections": "UNet / attention-processor features; the blocks already fuse QKV",
    "test_ip_adapter*": "no image-prompt adapter for VAR",
    "test_float16_inference / test_save_load_float16": "needs an accelerator (diffusers runs them on GPU only); "
                                                       "bfloat16 is covered by test_dtype_per_component",
    "test_sequential_cpu_offload_forward_pass": "needs an accelerator: on a CPU-only machine the execution device "
                                                "is the offload device (model offloading is covered above)",
    "test_StableDiffusionMixin_component": "not a Stable Diffusion pipeline",
}


@pytest.mark.parametrize("test_name", list(NOT_APPLICABLE))
def test_not_applicable(test_name):
    pytest.skip(NOT_APPLICABLE[test_name])
