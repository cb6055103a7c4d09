"""Parity with the original VAR-CLIP code on its own checkpoints (reference vectors in shared/parity)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from var_clip import VARCLIPPipeline
from var_clip.original_format import load_original_state_dict, transformer_from_original, vqvae_from_original


@pytest.fixture(scope="module")
def parity(parity_dir):
    config = json.loads((parity_dir / "config.json").read_text())
    patch_nums = tuple(int(p) for p in config["patch_nums"].split(","))
    vqvae = vqvae_from_original(load_original_state_dict(parity_dir / "vae.pth"), patch_nums=patch_nums,
                                share_quant_resi=config["share_quant_resi"])
    transformer = transformer_from_original(load_original_state_dict(parity_dir / "var.pth"))
    return config, vqvae, transformer, load_file(parity_dir / "reference.safetensors")


def test_inferred_config_matches_reference(parity):
    config, vqvae, transformer, _ = parity
    assert transformer.config.depth == config["depth"]
    assert transformer.config.num_heads == config["heads"]
    assert transformer.config.embed_dim == config["width"]
    assert transformer.config.vocab_size == vqvae.config.vocab_size == config["vocab"]
    assert transformer.config.latent_channels == vqvae.config.latent_channels == config["cvae"]
    assert transformer.config.text_embed_dim == config["cond"]
    assert transformer.config.shared_aln == config["shared_aln"]
    assert transformer.config.attn_l2_norm == (not config["no_l2_norm"])
    assert vqvae.config.ch == config["ch"] and vqvae.sample_size == config["image_size"]


def test_indices_exactly_equal(parity):
    _, vqvae, _, ref = parity
    indices = vqvae.encode_indices(ref["image"])
    assert len(indices) == len(vqvae.config.patch_nums)
    for si, idx in enumerate(indices):
        assert idx.dtype == torch.int64
        assert torch.equal(idx, ref[f"indices_{si}"]), f"scale {si} differs"


def test_decoded_images_match(parity):
    _, vqvae, _, ref = parity
    recon = vqvae.decode_indices([ref[f"indices_{si}"] for si in range(len(vqvae.config.patch_nums))])
    torch.testing.assert_close(recon, ref["recon"], atol=1e-4, rtol=0)


def test_teacher_input_and_logits_match(parity):
    _, vqvae, transformer, ref = parity
    idx = [ref[f"indices_{si}"] for si in range(len(vqvae.config.patch_nums))]
    x = vqvae.indices_to_teacher_input(idx)
    torch.testing.assert_close(x, ref["teacher_input"], atol=1e-5, rtol=0)
    with torch.no_grad():
        logits = transformer(x, text_embeds=ref["text_embeds"]).logits
    torch.testing.assert_close(logits, ref["teacher_logits"], atol=1e-4, rtol=0)


def test_generation_top1_matches(parity):
    config, vqvae, transformer, ref = parity
    pipe = VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vqvae=vqvae)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt_embeds=ref["text_embeds"], guidance_scale=config["cfg"], top_k=1, output_type="pt").images
    torch.testing.assert_close(out, ref["generated_top1"], atol=1e-4, rtol=0)


def test_generation_top1_matches_after_save_and_load(parity, tmp_path):
    config, vqvae, transformer, ref = parity
    VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vqvae=vqvae).save_pretrained(tmp_path)
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    pipe = VARCLIPPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt_embeds=ref["text_embeds"], guidance_scale=config["cfg"], top_k=1, output_type="pt").images
    torch.testing.assert_close(out, ref["generated_top1"], atol=1e-4, rtol=0)
