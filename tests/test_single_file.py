"""from_single_file: the original checkpoints load as the converter reads them, with the same safety and outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from var_clip import (
    MultiScaleVQModel,
    VARCLIPImg2ImgPipeline,
    VARCLIPInpaintPipeline,
    VARCLIPPipeline,
    VARInpaintPipeline,
    VARPipeline,
    VARTransformer2DModel,
)
from var_clip.conversion import convert_original_checkpoints
from var_clip.original_format import OriginalCheckpointError, transformer_to_original, vqvae_to_original

from .conftest import TEXT_DIM, make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_transformer, make_tiny_vqvae
from .test_original_format import _Payload


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _config(model) -> dict:
    return {k: v for k, v in json.loads(model.to_json_string()).items() if not k.startswith("_")}


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert _config(a) == _config(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def parity_folder(parity_dir, tmp_path_factory):
    """The parity files converted by the converter (no text encoder), to compare the single-file loads against."""
    out = tmp_path_factory.mktemp("single-file") / "converted"
    convert_original_checkpoints(parity_dir / "var.pth", parity_dir / "vae.pth", out, text_encoder=None, check=False)
    return out


@pytest.fixture(scope="module")
def reference(parity_dir):
    return json.loads((parity_dir / "config.json").read_text()), load_file(parity_dir / "reference.safetensors")


# ----------------------------------------------------------------------------------------------------------------------
# Parity: the same models as a converted folder, the same outputs as the original code
# ----------------------------------------------------------------------------------------------------------------------


def test_models_from_single_file_equal_the_converted_folder(parity_dir, parity_folder, reference):
    config, ref = reference
    transformer = VARTransformer2DModel.from_single_file(parity_dir / "var.pth")
    vqvae = MultiScaleVQModel.from_single_file(parity_dir / "vae.pth", patch_nums=transformer.config.patch_nums)
    assert_same_model(transformer, VARTransformer2DModel.from_pretrained(parity_folder, subfolder="transformer"))
    assert_same_model(vqvae, MultiScaleVQModel.from_pretrained(parity_folder, subfolder="vqvae"))
    for si, idx in enumerate(vqvae.encode_indices(ref["image"])):
        assert torch.equal(idx, ref[f"indices_{si}"]), f"scale {si} differs"
    x = vqvae.indices_to_teacher_input([ref[f"indices_{si}"] for si in range(len(vqvae.config.patch_nums))])
    with torch.no_grad():
        logits = transformer(x, text_embeds=ref["text_embeds"]).logits
    torch.testing.assert_close(logits, ref["teacher_logits"], atol=1e-4, rtol=0)


def test_pipeline_from_single_file_matches_the_reference_and_the_converted_folder(parity_dir, parity_folder, reference):
    config, ref = reference
    pipe = VARCLIPPipeline.from_single_file(parity_dir / "var.pth", parity_dir / "vae.pth", text_encoder=None,
                                            tokenizer=None)
    converted = VARCLIPPipeline.from_pretrained(parity_folder)
    assert_same_model(pipe.transformer, converted.transformer)
    assert_same_model(pipe.vqvae, converted.vqvae)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt_embeds=ref["text_embeds"], guidance_scale=config["cfg"], top_k=1, output_type="pt").images
    torch.testing.assert_close(out, ref["generated_top1"], atol=1e-4, rtol=0)


def test_pipeline_from_single_file_with_a_text_encoder_generates_from_prompts(parity_dir, tmp_path):
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    for cls in (VARCLIPPipeline, VARCLIPInpaintPipeline, VARCLIPImg2ImgPipeline):
        pipe = cls.from_single_file(parity_dir / "var.pth", parity_dir / "vae.pth", text_encoder=encoder,
                                    tokenizer=tokenizer)
        assert type(pipe) is cls and pipe.text_encoder is encoder and pipe.tokenizer is tokenizer
    pipe.set_progress_bar_config(disable=True)
    image = VARCLIPPipeline.from_pipe(pipe)("a red circle", generator=gen(), output_type="pt").images
    # a folder holding the CLIP model and its tokenizer is read by the converter's own text-encoder loader
    encoder.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    from_folder = VARCLIPPipeline.from_single_file(parity_dir / "var.pth", parity_dir / "vae.pth",
                                                   text_encoder=tmp_path / "clip")
    from_folder.set_progress_bar_config(disable=True)
    torch.testing.assert_close(from_folder("a red circle", generator=gen(), output_type="pt").images, image,
                               atol=0, rtol=0)


def test_dtype_keeps_the_float32_modules(parity_dir):
    pipe = VARCLIPPipeline.from_single_file(parity_dir / "var.pth", parity_dir / "vae.pth", text_encoder=None,
                                            tokenizer=None, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.transformer.head.weight.dtype == torch.float32
    assert pipe.vqvae.quantize.embedding.weight.dtype == torch.float32
    assert pipe.vqvae.decoder.conv_in.weight.dtype == torch.bfloat16
    t = VARTransformer2DModel.from_single_file(parity_dir / "var.pth", dtype=torch.bfloat16)
    assert t.blocks[0].attn.mat_qkv.weight.dtype == torch.bfloat16 and t.head.weight.dtype == torch.float32


@pytest.fixture(scope="module")
def class_files(tmp_path_factory):
    """A tiny class-conditional transformer saved as VAR's bare ``var_d*.pth`` state dict, and its VQ-VAE."""
    work = tmp_path_factory.mktemp("class-single-file")
    transformer, vqvae = make_tiny_transformer("class", seed=1), make_tiny_vqvae()
    torch.save(transformer_to_original(transformer), work / "var_d2.pth")
    torch.save(vqvae_to_original(vqvae), work / "vae.pth")
    return work


def test_class_conditional_var_files_equal_the_converted_folder(class_files, tmp_path):
    var_path, vae_path = class_files / "var_d2.pth", class_files / "vae.pth"
    convert_original_checkpoints(var_path, vae_path, tmp_path / "converted", condition_type="class", check=False)
    converted = VARPipeline.from_pretrained(tmp_path / "converted")
    pipe = VARPipeline.from_single_file(var_path, vae_path, num_heads=2)
    assert_same_model(pipe.transformer, converted.transformer)
    assert_same_model(pipe.vqvae, converted.vqvae)
    for p in (pipe, converted):
        p.set_progress_bar_config(disable=True)
    torch.testing.assert_close(pipe(class_labels=[1, 3], generator=gen(), output_type="pt").images,
                               converted(class_labels=[1, 3], generator=gen(), output_type="pt").images, atol=0, rtol=0)
    assert type(VARInpaintPipeline.from_single_file(var_path, vae_path, num_heads=2)) is VARInpaintPipeline


# ----------------------------------------------------------------------------------------------------------------------
# Safety and errors: as the converter's
# ----------------------------------------------------------------------------------------------------------------------


def test_a_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "ar-ckpt-last.pth"
    torch.save({"trainer": {"var_wo_ddp": {"x": _Payload(str(marker))}}}, evil)
    vae = tmp_path / "vae.pth"
    torch.save(vqvae_to_original(make_tiny_vqvae()), vae)
    with pytest.raises(OriginalCheckpointError, match="needs code to unpickle"):
        VARTransformer2DModel.from_single_file(evil)
    with pytest.raises(ValueError, match="needs code to unpickle"):
        VARCLIPPipeline.from_single_file(evil, vae, text_encoder=None, tokenizer=None)
    assert not marker.exists()


def test_every_key_is_consumed(tmp_path):
    sd = transformer_to_original(make_tiny_transformer())
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "var.pth")
    with pytest.raises(OriginalCheckpointError, match="unexpected keys: \\['extra.weight'\\]"):
        VARTransformer2DModel.from_single_file(tmp_path / "var.pth")
    vae = vqvae_to_original(make_tiny_vqvae())
    del vae["quant_conv.bias"]
    torch.save(vae, tmp_path / "vae.pth")
    with pytest.raises(OriginalCheckpointError, match="missing keys: \\['quant_conv.bias'\\]"):
        MultiScaleVQModel.from_single_file(tmp_path / "vae.pth", patch_nums=(1, 2, 3, 4))


def test_wrong_files_are_named(parity_dir, tmp_path):
    pointer = tmp_path / "var.pth"
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(OriginalCheckpointError, match="Git LFS pointer"):
        VARTransformer2DModel.from_single_file(pointer)
    with pytest.raises(OriginalCheckpointError, match="holds a VQ-VAE.*MultiScaleVQModel.from_single_file"):
        VARTransformer2DModel.from_single_file(parity_dir / "vae.pth")
    with pytest.raises(OriginalCheckpointError, match="holds a VAR transformer.*VARTransformer2DModel.from_single_fi"):
        MultiScaleVQModel.from_single_file(parity_dir / "var.pth")
    with pytest.raises(ValueError, match="swapped"):
        VARCLIPPipeline.from_single_file(parity_dir / "vae.pth", parity_dir / "var.pth", text_encoder=None,
                                         tokenizer=None)
    with pytest.raises(ValueError, match="text-conditional VAR-CLIP transformer.*VARCLIPPipeline.from_single_file"):
        VARPipeline.from_single_file(parity_dir / "var.pth", parity_dir / "vae.pth")


def test_class_files_in_the_text_pipeline_name_the_class_pipeline(class_files):
    with pytest.raises(ValueError, match="class-conditional VAR transformer.*VARPipeline.from_single_file"):
        VARCLIPPipeline.from_single_file(class_files / "var_d2.pth", class_files / "vae.pth", text_encoder=None,
                                         tokenizer=None)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "needs the text encoder, which the original VAR-CLIP files do not hold: pass `text_encoder`"),
        ({"text_encoder": None}, "needs the text encoder"),
        ({"tokenizer": None}, "needs the text encoder"),
        ({"text_encoder": None, "tokenizer": make_tiny_tokenizer()}, "together"),
        ({"text_encoder": torch.nn.Linear(2, 2), "tokenizer": make_tiny_tokenizer()}, "CLIPTextModelWithProjection"),
        ({"text_encoder": "some/folder", "tokenizer": make_tiny_tokenizer()}, "brings its own tokenizer"),
    ],
)
def test_missing_or_wrong_text_components_are_named_before_reading_the_files(tmp_path, kwargs, message):
    # the files do not exist: the text components are checked first
    with pytest.raises(ValueError, match=message):
        VARCLIPPipeline.from_single_file(tmp_path / "missing.pth", tmp_path / "missing-vae.pth", **kwargs)


def test_a_text_encoder_of_the_wrong_width_is_refused(parity_dir):
    tokenizer = make_tiny_tokenizer()
    encoder = make_tiny_text_encoder(tokenizer)  # projects to TEXT_DIM, the parity transformer expects 32
    assert TEXT_DIM != 32
    with pytest.raises(ValueError, match=f"projects to {TEXT_DIM} dims"):
        VARCLIPPipeline.from_single_file(parity_dir / "var.pth", parity_dir / "vae.pth", text_encoder=encoder,
                                         tokenizer=tokenizer)


@pytest.mark.slow
def test_full_size_d16_pair_loads_as_its_converted_folder(tmp_path):
    from .full_size import write_var_clip_d16_pair

    var_path, vae_path = write_var_clip_d16_pair(tmp_path / "original")
    convert_original_checkpoints(var_path, vae_path, tmp_path / "converted", text_encoder=None, check=False)
    pipe = VARCLIPPipeline.from_single_file(var_path, vae_path, text_encoder=None, tokenizer=None)
    converted = VARCLIPPipeline.from_pretrained(tmp_path / "converted")
    assert pipe.vqvae.sample_size == 256 and pipe.transformer.config.depth == 16
    assert_same_model(pipe.transformer, converted.transformer)
    assert_same_model(pipe.vqvae, converted.vqvae)
