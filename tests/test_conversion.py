"""The conversion scripts: parity after conversion, refusal of bad files, atomic output, variants, model cards."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from var_clip import VARCLIPPipeline, VARPipeline
from var_clip.original_format import transformer_to_original, vqvae_to_original

from .conftest import REPO, make_tiny_tokenizer, make_tiny_transformer, make_tiny_vqvae

SCRIPTS = REPO / "conversion_scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_var_clip = _script("convert_var_clip_to_diffusers")
convert_var = _script("convert_var_to_diffusers")


def _run(script, argv, capsys) -> tuple[int, str, str]:
    rc = script.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _leftovers(parent: Path, name: str) -> list[str]:
    """The output folder and any hidden temporary folder of it."""
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def _save_clip(folder: Path, projection_dim: int) -> Path:
    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=projection_dim,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conversion")


@pytest.fixture(scope="module")
def tiny_text_pair(work):
    """A tiny text-conditional transformer and VQ-VAE, and their original-format files."""
    transformer, vqvae = make_tiny_transformer(), make_tiny_vqvae()
    var_path, vae_path = work / "tiny-ar-ckpt-last.pth", work / "tiny-vae.pth"
    torch.save({"trainer": {"var_wo_ddp": transformer_to_original(transformer)}, "epoch": 3}, var_path)
    torch.save(vqvae_to_original(vqvae), vae_path)
    return transformer, vqvae, var_path, vae_path


@pytest.fixture(scope="module")
def tiny_class_pair(work):
    """A tiny class-conditional transformer (like var_d16.pth: a bare state dict) and VQ-VAE."""
    transformer, vqvae = make_tiny_transformer("class", seed=1), make_tiny_vqvae()
    var_path, vae_path = work / "tiny-var_d2.pth", work / "tiny-vae-class.pth"
    torch.save(transformer_to_original(transformer), var_path)
    torch.save(vqvae_to_original(vqvae), vae_path)
    return transformer, vqvae, var_path, vae_path


@pytest.fixture(scope="module")
def clip16(work) -> Path:
    return _save_clip(work / "clip16", 16)


@pytest.fixture(scope="module")
def parity_converted(parity_dir, work, tmp_path_factory):
    """shared/parity converted in-process by the script's main(), with a local CLIP text encoder."""
    out = work / "parity-pipeline"
    rc = convert_var_clip.main(["--var_checkpoint", str(parity_dir / "var.pth"), "--vae_checkpoint",
                                str(parity_dir / "vae.pth"), "--patch_nums", "1,2,3,4", "--output_dir", str(out),
                                "--text_encoder", str(_save_clip(work / "clip32", 32))])
    assert rc == 0
    return out


def _parity_checks(folder: Path, parity_dir: Path) -> None:
    config = json.loads((parity_dir / "config.json").read_text())
    ref = load_file(parity_dir / "reference.safetensors")
    pipe = VARCLIPPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    for si, idx in enumerate(pipe.vqvae.encode_indices(ref["image"])):
        assert torch.equal(idx, ref[f"indices_{si}"]), f"scale {si} differs"
    out = pipe(prompt_embeds=ref["text_embeds"], guidance_scale=config["cfg"], top_k=1, output_type="pt").images
    torch.testing.assert_close(out, ref["generated_top1"], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Parity after conversion
# ----------------------------------------------------------------------------------------------------------------------


def test_parity_checkpoint_converted_in_process_matches_reference(parity_converted, parity_dir):
    _parity_checks(parity_converted, parity_dir)
    pipe = VARCLIPPipeline.from_pretrained(parity_converted)
    assert pipe.text_encoder is not None and pipe.text_encoder.config.projection_dim == 32
    assert sorted(p.name for p in parity_converted.iterdir()) == [
        ".var-clip-output", "README.md", "model_index.json", "text_encoder", "tokenizer", "transformer", "vqvae"]
    assert not list(parity_converted.rglob("*.bin")) and not list(parity_converted.rglob("*.pth"))


@pytest.mark.slow  # a subprocess launch
def test_parity_checkpoint_converted_by_subprocess_matches_reference(parity_dir, tmp_path):
    out = tmp_path / "pipeline"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "convert_var_clip_to_diffusers.py"), "--var_checkpoint",
         str(parity_dir / "var.pth"), "--vae_checkpoint", str(parity_dir / "vae.pth"), "--patch_nums", "1,2,3,4",
         "--output_dir", str(out), "--text_encoder", "none"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # the inferred configuration is printed as a table, and the check generated an image
    assert re.search(r"depth / width / heads\s+2 / 64 / 2", proc.stdout)
    assert "generated a 64×64 image" in proc.stdout
    assert json.loads((out / "model_index.json").read_text())["text_encoder"] == [None, None]
    _parity_checks(out, parity_dir)


def test_class_conditional_conversion_matches_in_memory_pipeline(tiny_class_pair, tmp_path, capsys):
    transformer, vqvae, var_path, vae_path = tiny_class_pair
    out = tmp_path / "var"
    rc, stdout, err = _run(convert_var, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                         "--output_dir", out], capsys)
    assert rc == 0, err
    assert "class label, 10 classes" in stdout
    converted = VARPipeline.from_pretrained(out)
    direct = VARPipeline(transformer=transformer, vqvae=vqvae)
    for pipe in (converted, direct):
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=[3, 7], guidance_scale=2.0, top_k=8, output_type="pt")
    a = converted(generator=torch.Generator().manual_seed(5), **kwargs).images
    b = direct(generator=torch.Generator().manual_seed(5), **kwargs).images
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_plain_attention_needs_num_heads(tmp_path, capsys):
    """Without L2-norm attention the head count is not in the checkpoint: --num_heads supplies it."""
    transformer, vqvae = make_tiny_transformer("class", attn_l2_norm=False, num_heads=4), make_tiny_vqvae()
    torch.save(transformer_to_original(transformer), tmp_path / "var.pth")
    torch.save(vqvae_to_original(vqvae), tmp_path / "vae.pth")
    common = ["--var_checkpoint", tmp_path / "var.pth", "--vae_checkpoint", tmp_path / "vae.pth", "--skip_check"]
    rc, stdout, _ = _run(convert_var, [*common, "--output_dir", tmp_path / "guessed"], capsys)
    assert rc == 0 and "assuming VAR's heads = depth = 2" in stdout
    rc, stdout, _ = _run(convert_var, [*common, "--output_dir", tmp_path / "given", "--num_heads", "4"], capsys)
    assert rc == 0 and "assuming" not in stdout
    converted = VARPipeline.from_pretrained(tmp_path / "given")
    assert converted.transformer.config.num_heads == 4
    direct = VARPipeline(transformer=transformer, vqvae=vqvae)
    for pipe in (converted, direct):
        pipe.set_progress_bar_config(disable=True)
    a = converted(class_labels=1, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = direct(class_labels=1, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: one clear line, exit status 1, and no output folder
# ----------------------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code (creates a marker file); a safe loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _bad_files(case: str, tmp_path: Path, var_path: Path, vae_path: Path) -> tuple[Path, Path]:
    bad = tmp_path / "bad.pth"
    if case == "truncated":
        data = var_path.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        return bad, vae_path
    if case == "html":
        bad.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>403</body></html>\n")
        return var_path, bad
    if case == "lfs_pointer":
        bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234567\n")
        return var_path, bad
    if case == "empty":
        bad.write_bytes(b"")
        return bad, vae_path
    if case == "missing":
        return tmp_path / "nowhere.pth", vae_path
    if case == "swapped":
        return vae_path, var_path
    if case == "vae_twice":
        return vae_path, vae_path
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("truncated", ["var_checkpoint", "damaged or truncated"]),
        ("html", ["vae_checkpoint", "HTML page"]),
        ("lfs_pointer", ["vae_checkpoint", "Git LFS pointer"]),
        ("empty", ["var_checkpoint", "empty"]),
        ("missing", ["var_checkpoint", "does not exist"]),
        ("swapped", ["swapped", "var_checkpoint", "vae_checkpoint"]),
        ("vae_twice", ["var_checkpoint", "holds a VQ-VAE"]),
    ],
)
def test_bad_checkpoint_files_are_named_and_nothing_is_written(case, expected, tiny_text_pair, tmp_path, capsys):
    _, _, var_path, vae_path = tiny_text_pair
    var_arg, vae_arg = _bad_files(case, tmp_path, var_path, vae_path)
    out = tmp_path / "out"
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", var_arg, "--vae_checkpoint", vae_arg, "--output_dir",
                                         out, "--text_encoder", "none"], capsys)
    assert rc == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    assert _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_pickle_payload_is_refused_without_running(legacy, tiny_text_pair, tmp_path, capsys):
    _, _, _, vae_path = tiny_text_pair
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "ar-ckpt-last.pth"
    payload = {"trainer": {"var_wo_ddp": {"pos_1LC": _Payload(marker)}}}
    if legacy:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, evil)
    assert not marker.exists()
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", evil, "--vae_checkpoint", vae_path, "--output_dir",
                                         tmp_path / "out", "--text_encoder", "none"], capsys)
    assert rc == 1 and "var_checkpoint" in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert _leftovers(tmp_path, "out") == []


def test_wrong_kind_of_checkpoint_points_to_the_other_script(tiny_text_pair, tiny_class_pair, tmp_path, capsys):
    _, _, text_var, text_vae = tiny_text_pair
    _, _, class_var, class_vae = tiny_class_pair
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", class_var, "--vae_checkpoint", class_vae,
                                         "--output_dir", tmp_path / "a", "--text_encoder", "none"], capsys)
    assert rc == 1 and "class-conditional" in err and "var-clip convert-var" in err and "convert-var-clip" not in err
    rc, _, err = _run(convert_var, ["--var_checkpoint", text_var, "--vae_checkpoint", text_vae,
                                    "--output_dir", tmp_path / "b"], capsys)
    assert rc == 1 and "text-conditional" in err and "var-clip convert-var-clip" in err
    assert _leftovers(tmp_path, "a") == _leftovers(tmp_path, "b") == []


def test_leftover_and_missing_keys_are_listed(tiny_text_pair, tmp_path, capsys):
    transformer, _, _, vae_path = tiny_text_pair
    sd = transformer_to_original(transformer)
    sd["extra.weight"] = torch.zeros(1)
    del sd["head.bias"]
    torch.save(sd, tmp_path / "var.pth")
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", tmp_path / "var.pth", "--vae_checkpoint", vae_path,
                                         "--output_dir", tmp_path / "out", "--text_encoder", "none"], capsys)
    assert rc == 1 and "var_checkpoint" in err
    assert "missing keys: ['head.bias']" in err and "unexpected keys: ['extra.weight']" in err
    assert _leftovers(tmp_path, "out") == []


def test_text_encoder_of_the_wrong_width_is_refused(tiny_text_pair, work, tmp_path, capsys):
    _, _, var_path, vae_path = tiny_text_pair
    clip8 = _save_clip(tmp_path / "clip8", 8)
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                         "--output_dir", tmp_path / "out", "--text_encoder", clip8], capsys)
    assert rc == 1 and "text_encoder" in err and "projects to 8 dims" in err and "expects text embeddings of 16" in err
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                         "--output_dir", tmp_path / "out", "--text_encoder", tmp_path / "no" / "such"],
                      capsys)
    assert rc == 1 and "neither an existing folder nor a Hub id" in err
    assert _leftovers(tmp_path, "out") == []


def test_bad_patch_nums_are_refused(tiny_text_pair, tmp_path, capsys):
    _, _, var_path, vae_path = tiny_text_pair
    argv = ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path, "--output_dir", tmp_path / "out",
            "--text_encoder", "none", "--patch_nums"]
    rc, _, err = _run(convert_var_clip, [*argv, "1,3,2"], capsys)
    assert rc == 1 and "patch_nums must be strictly increasing" in err
    rc, _, err = _run(convert_var_clip, [*argv, "1,2,3,4,5"], capsys)
    assert rc == 1 and "contradicts the checkpoint" in err
    assert _leftovers(tmp_path, "out") == []


def test_failed_check_leaves_nothing(tiny_text_pair, tmp_path, capsys):
    """Weights that load but cannot generate (NaN) fail the final check: no folder appears."""
    transformer, _, _, vae_path = tiny_text_pair
    sd = transformer_to_original(transformer)
    sd["head.weight"] = torch.full_like(sd["head.weight"], float("nan"))
    torch.save(sd, tmp_path / "var.pth")
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", tmp_path / "var.pth", "--vae_checkpoint", vae_path,
                                         "--output_dir", tmp_path / "out", "--text_encoder", "none"], capsys)
    assert rc == 1 and "failed its check" in err and "non-finite logits" in err
    assert _leftovers(tmp_path, "out") == []


def test_interrupted_conversion_leaves_nothing(tiny_text_pair, tmp_path, capsys, monkeypatch):
    import var_clip.conversion.check as conversion_check

    _, _, var_path, vae_path = tiny_text_pair

    def interrupted(*args, **kwargs):
        assert _leftovers(tmp_path, "out")[0].startswith(".out.partial-")  # mid-way, only the hidden folder exists
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion_check, "check_pipeline_folder", interrupted)
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                         "--output_dir", tmp_path / "out", "--text_encoder", "none"], capsys)
    assert rc == 130 and "interrupted" in err
    assert _leftovers(tmp_path, "out") == []


# ----------------------------------------------------------------------------------------------------------------------
# --overwrite
# ----------------------------------------------------------------------------------------------------------------------


def test_overwrite_semantics(tiny_text_pair, tmp_path, capsys):
    _, _, var_path, vae_path = tiny_text_pair
    out = tmp_path / "out"
    argv = ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path, "--output_dir", out, "--text_encoder", "none",
            "--skip_check"]
    rc, _, err = _run(convert_var_clip, argv, capsys)  # a first conversion
    assert rc == 0, err
    (out / "transformer" / "config.json").write_text("{}")  # marks the previous conversion
    previous = sorted(p.name for p in out.iterdir())

    rc, _, err = _run(convert_var_clip, argv, capsys)  # refused without --overwrite
    assert rc == 1 and "output_dir" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == previous

    bad = ["--var_checkpoint", tmp_path / "missing.pth", *argv[2:]]
    rc, _, _ = _run(convert_var_clip, [*bad, "--overwrite"], capsys)  # a failed conversion keeps the old folder
    assert rc == 1 and (out / "transformer" / "config.json").read_text() == "{}"

    rc, _, err = _run(convert_var_clip, [*argv, "--overwrite"], capsys)  # a pipeline folder var-clip wrote: replaced
    assert rc == 0, err
    assert (out / "transformer" / "config.json").read_text() != "{}" and (out / "model_index.json").exists()
    assert _leftovers(tmp_path, "out") == ["out"]
    VARCLIPPipeline.from_pretrained(out)

    (out / "notes.txt").write_text("mine")  # anything else in it: refused, nothing deleted
    rc, _, err = _run(convert_var_clip, [*argv, "--overwrite"], capsys)
    assert rc == 1 and "not a folder var-clip wrote" in err and "notes.txt" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "model_index.json").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(convert_var_clip, [*argv[:4], "--output_dir", empty, *argv[6:]], capsys)  # empty: no flag needed
    assert rc == 0, err
    assert (empty / "model_index.json").exists()


def test_overwrite_refuses_to_delete_its_inputs(tiny_text_pair, tmp_path, capsys):
    import shutil

    _, _, var_path, vae_path = tiny_text_pair
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(var_path, out / "var.pth")
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", out / "var.pth", "--vae_checkpoint", vae_path,
                                         "--output_dir", out, "--text_encoder", "none", "--overwrite"], capsys)
    assert rc == 1 and "would overwrite or delete the input" in err
    assert (out / "var.pth").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_variants_are_saved_and_load(dtype, torch_dtype, tiny_text_pair, clip16, tmp_path, capsys):
    transformer, vqvae, var_path, vae_path = tiny_text_pair
    out = tmp_path / "out"
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                         "--output_dir", out, "--text_encoder", clip16, "--dtype", dtype], capsys)
    assert rc == 0, err
    weights = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert weights == [f"text_encoder/model.{dtype}.safetensors",
                       f"transformer/diffusion_pytorch_model.{dtype}.safetensors",
                       f"vqvae/diffusion_pytorch_model.{dtype}.safetensors"]
    pipe = VARCLIPPipeline.from_pretrained(out, variant=dtype, dtype=torch_dtype)
    assert pipe.text_encoder.dtype == torch_dtype
    # the modules the models keep in float32 (logits head, codebook) are saved in float32, the rest in half
    for name, model, reference in (("transformer", pipe.transformer, transformer), ("vqvae", pipe.vqvae, vqvae)):
        keep = type(model)._keep_in_fp32_modules
        saved = load_file(out / name / f"diffusion_pytorch_model.{dtype}.safetensors")
        for key, value in reference.state_dict().items():
            if not value.is_floating_point():
                continue
            kept = any(k in key.split(".") for k in keep)
            assert saved[key].dtype == (torch.float32 if kept else torch_dtype), key
            assert torch.equal(saved[key], value if kept else value.to(torch_dtype)), key
            assert model.state_dict()[key].dtype == (torch.float32 if kept else torch_dtype), key


# ----------------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------------


def _snippet(card: str) -> str:
    """The usage snippet: the first Python block of the card."""
    return re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)


def _run_snippet(code: str, cwd: Path, monkeypatch) -> None:
    monkeypatch.chdir(cwd)
    exec(compile(code, "README.md", "exec"), {"__name__": "__card__"})


def test_card_front_matter_and_provenance(parity_converted, parity_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(parity_converted / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "var-clip" and data["pipeline_tag"] == "text-to-image"
    assert data["license"] == "mit" and "text-to-image" in data["tags"]
    assert "base_model" not in data  # the tiny parity model is not the released architecture
    import hashlib

    sha = hashlib.sha256((parity_dir / "var.pth").read_bytes()).hexdigest()
    assert sha in card.text and "not the one of the released VAR-CLIP d16" in card.text
    assert "cfg = 4" in card.text and "top_k` / `top_p` | 900 / 0.95" in card.text


def test_card_snippet_runs_with_text_encoder(parity_converted, tmp_path, monkeypatch):
    card = (parity_converted / "README.md").read_text()
    code = _snippet(card)
    assert f'snapshot("{parity_converted}")' in code  # not pushed: the snippet names the local folder
    _run_snippet(code, tmp_path, monkeypatch)
    assert (tmp_path / "var_clip_sample.png").exists()


def test_card_snippet_runs_without_text_encoder(tiny_text_pair, clip16, tmp_path, capsys, monkeypatch):
    from var_clip.conversion import DEFAULT_TEXT_ENCODER

    _, _, var_path, vae_path = tiny_text_pair
    out = tmp_path / "out"
    rc, _, err = _run(convert_var_clip, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                         "--output_dir", out, "--text_encoder", "none", "--dtype", "bf16"], capsys)
    assert rc == 0, err
    code = _snippet((out / "README.md").read_text())
    assert DEFAULT_TEXT_ENCODER in code and 'variant="bf16"' in code
    _run_snippet(code.replace(DEFAULT_TEXT_ENCODER, str(clip16)), tmp_path, monkeypatch)
    assert (tmp_path / "var_clip_sample.png").exists()


def test_class_card_snippet_runs(tiny_class_pair, tmp_path, capsys, monkeypatch):
    from huggingface_hub import ModelCard

    _, _, var_path, vae_path = tiny_class_pair
    out = tmp_path / "out"
    rc, _, err = _run(convert_var, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                    "--output_dir", out, "--skip_check"], capsys)
    assert rc == 0, err
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "unconditional-image-generation" and "class-conditional" in card.data.tags
    assert "top_p=0.96" in card.text and "guidance_scale=1.5" in card.text  # VAR's FID settings
    _run_snippet(_snippet(card.text), tmp_path, monkeypatch)
    assert (tmp_path / "var_sample.png").exists()


def test_default_model_card_template_renders_every_placeholder():
    from huggingface_hub import ModelCardData

    from var_clip.conversion import ConversionError, render_model_card

    template = "default_model.md"  # a template shipped in the package
    data = ModelCardData(library_name="var-clip", license="mit", pipeline_tag="text-to-image",
                         tags=["var-clip", "text-to-image", "shapes-world"])
    accuracy = {k: {m: "50.0 %" for m in ("color", "shape", "size", "position", "relation", "caption")}
                for k in ("seen", "heldout")}
    fields = dict(conditioning="token-level", depth=4, embed_dim=256, num_heads=4, patch_nums="1,2,3,4", image_size=64, vocab_size=512,
                  latent_channels=16, transformer_params="3.2M", vqvae_params="1.1M", text_embed_dim=64,
                  text_encoder_description="a small CLIP text tower", num_train_images=20000, dataset_seed=0,
                  vqvae_training="…", transformer_training="…", training_hardware="2 CPU cores",
                  training_time="3 h", num_samples_per_prompt=4, num_seen_prompts=40, num_heldout_prompts=12,
                  guidance_scale=4.0, top_k=0, top_p=0.0, accuracy=accuracy, var_clip_version="0.1.0")
    card = render_model_card(template, data, **fields)
    assert card.data.pipeline_tag == "text-to-image" and "{{" not in card.text and "{%" not in card.text
    assert "var_clip.DEFAULT_MODEL" in card.text and "| held out | 50.0 %" in card.text
    del fields["num_heldout_prompts"]
    with pytest.raises(ConversionError, match="num_heldout_prompts"):
        render_model_card(template, data, **fields)


# ----------------------------------------------------------------------------------------------------------------------
# Full size (slow)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_d16_pair_converts_and_loads(tmp_path, capsys):
    from .full_size import write_var_clip_d16_pair

    var_path, vae_path = write_var_clip_d16_pair(tmp_path / "original")
    out = tmp_path / "var-clip-d16"
    rc, stdout, err = _run(convert_var_clip, ["--var_checkpoint", var_path, "--vae_checkpoint", vae_path,
                                              "--output_dir", out, "--text_encoder", "none"], capsys)
    assert rc == 0, err
    assert re.search(r"depth / width / heads\s+16 / 1024 / 16", stdout) and "generated a 256×256 image" in stdout
    pipe = VARCLIPPipeline.from_pretrained(out)
    assert pipe.transformer.config.text_embed_dim == 768 and tuple(pipe.vqvae.config.ch_mult) == (1, 1, 2, 2, 4)
    assert pipe.vqvae.sample_size == 256
    assert os.path.getsize(out / "transformer" / "diffusion_pytorch_model.safetensors") > 1_000_000_000


def test_model_card_templates_ship_in_the_package(tmp_path):
    from var_clip.conversion import MODEL_CARDS_DIR, ConversionError, model_card_template

    assert MODEL_CARDS_DIR.is_dir()  # where the wheel maps it is tests/test_packaging.py's
    for name in ("var_clip_d16.md", "var_class_conditional.md", "default_model.md"):
        assert model_card_template(name) == MODEL_CARDS_DIR / name
    own = tmp_path / "card.md"
    own.write_text("{{ card_data }}")
    assert model_card_template(own) == own  # a file is taken as it is
    with pytest.raises(ConversionError, match="var_clip_d16.md"):
        model_card_template("no_such_card.md")
