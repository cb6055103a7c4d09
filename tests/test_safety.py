"""Nothing lost, nothing leaked: every refusal leaves the user's files as they were, every error is one line.

One section per defect class: destructive output folders, publishing, concurrent writers, tampered checkpoints,
configs that disagree with their weights, one-line errors at the edges, output files.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import HfApi

import var_clip.hub as hub
from var_clip import MultiScaleVQModel, VARTransformer2DModel
from var_clip.cli import describe_failure, main
from var_clip.models.strict_loading import ConfigMismatchError, check_transformer_config
from var_clip.original_format import transformer_to_original, vqvae_to_original
from var_clip.training import train_vqvae
from var_clip.training.checkpointing import check_checkpoint_state
from var_clip.training.data import ImageCaptionDataset, ImageTransform, load_image_caption_dataset
from var_clip.training.engine import claim_output_dir, release_output_dir
from var_clip.utils.files import (
    LOCK_NAME,
    MARKER_NAME,
    OutputLock,
    OutputLockedError,
    UnsafeOutputError,
    check_replaceable,
    resolve_output_dir,
    save_image,
)

from .conftest import REPO, make_tiny_transformer, make_tiny_vqvae


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "conversion_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_var_clip = _script("convert_var_clip_to_diffusers")


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content: what "nothing was changed" compares."""
    return {p.relative_to(folder).as_posix(): p.read_bytes().hex() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("\\chapter{Four years of work}")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "main.py").write_text("print('mine')")
    return _tree(folder)


def _one_line_error(err: str) -> None:
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("original")
    torch.save({"trainer": {"var_wo_ddp": transformer_to_original(make_tiny_transformer())}}, folder / "var.pth")
    torch.save(vqvae_to_original(make_tiny_vqvae()), folder / "vae.pth")
    return folder / "var.pth", folder / "vae.pth"


def _convert(checkpoints, output_dir, *extra, capsys):
    var_path, vae_path = checkpoints
    rc = convert_var_clip.main(["--var_checkpoint", str(var_path), "--vae_checkpoint", str(vae_path),
                                "--output_dir", str(output_dir), "--text_encoder", "none", "--skip_check", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------------------------------------------------
# Data loss: --overwrite replaces only a folder var-clip wrote
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_dir", [".", "", "./", "sub/.."])
def test_conversion_refuses_the_current_folder_and_empty_paths(output_dir, checkpoints, tmp_path, capsys,
                                                               monkeypatch):
    before = _user_folder(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    rc, _, err = _convert(checkpoints, output_dir, "--overwrite", capsys=capsys)
    assert rc == 1 and "output_dir" in err
    assert "current folder" in err or "empty path" in err
    _one_line_error(err)
    assert _tree(tmp_path / "work") == before  # thesis.tex and sub/main.py are still there, unchanged


def test_conversion_refuses_home_root_and_their_parents(checkpoints, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home" / "me"
    before = _user_folder(home)
    monkeypatch.setenv("HOME", str(home))
    for output_dir, what in (("~", "home folder"), (str(home.parent), "home folder or holds it"), ("/", "root")):
        rc, _, err = _convert(checkpoints, output_dir, "--overwrite", capsys=capsys)
        assert rc == 1 and what in err, err
    assert _tree(home) == before


def test_overwrite_refuses_a_folder_var_clip_did_not_write(checkpoints, tmp_path, capsys):
    before = _user_folder(tmp_path / "papers")
    rc, _, err = _convert(checkpoints, tmp_path / "papers", "--overwrite", capsys=capsys)
    assert rc == 1 and "not a folder var-clip wrote" in err and "thesis.tex" in err and "sub/" in err
    _one_line_error(err)
    assert _tree(tmp_path / "papers") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["papers"]  # no staging left behind

    # a pipeline folder with a user's file inside a component: refused too
    rc, _, err = _convert(checkpoints, tmp_path / "pipe", capsys=capsys)
    assert rc == 0, err
    (tmp_path / "pipe" / "vqvae" / "notes.tex").write_text("mine")
    rc, _, err = _convert(checkpoints, tmp_path / "pipe", "--overwrite", capsys=capsys)
    assert rc == 1 and "vqvae/notes.tex" in err
    assert (tmp_path / "pipe" / "vqvae" / "notes.tex").read_text() == "mine"


def test_symlinked_output_folder_is_resolved_and_reported(checkpoints, tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    rc, out, err = _convert(checkpoints, tmp_path / "link", capsys=capsys)
    assert rc == 0, err
    assert f"resolves to {tmp_path / 'real'}" in out and f"wrote {tmp_path / 'real'}" in out
    assert (tmp_path / "real" / "model_index.json").exists() and (tmp_path / "link").is_symlink()


def test_check_replaceable_accepts_what_var_clip_writes(tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoint-4").mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl", "training_state.json"):
        (folder / "checkpoint-4" / name).write_text("x")
    (folder / "samples").mkdir()
    (folder / "train_log.jsonl").write_text("")
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.safetensors").write_text("")
    check_replaceable(folder, "--output_dir")
    (folder / "checkpoint-4" / "thesis.tex").write_text("mine")
    with pytest.raises(UnsafeOutputError, match=r"checkpoint-4/thesis.tex"):
        check_replaceable(folder, "--output_dir")
    with pytest.raises(UnsafeOutputError, match="--output_dir must name a folder"):
        resolve_output_dir("  ", "--output_dir")


def test_trainer_refuses_a_foreign_output_folder_and_writes_nothing(tmp_path, capsys, fresh_accelerate_state):
    before = _user_folder(tmp_path / "papers")
    rc = main(["train-vqvae", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "papers"),
               "--max_train_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "not a folder var-clip wrote" in err and "thesis.tex" in err
    assert _tree(tmp_path / "papers") == before


# ----------------------------------------------------------------------------------------------------------------------
# Leak: publishing publishes only what is inside, and no pickles
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def published(checkpoints, tmp_path, capsys, monkeypatch):
    """A converted folder with a card, and the Hub calls a push would make."""
    rc, _, err = _convert(checkpoints, tmp_path / "pipe", capsys=capsys)
    assert rc == 0, err
    (tmp_path / "pipe" / "README.md").write_text("# card\n")
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw)) or "ok")
    return types.SimpleNamespace(folder=tmp_path / "pipe", calls=calls)


def test_push_refuses_symlinks_leaving_the_folder(published, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_token=abc")
    (published.folder / "transformer" / "notes.json").symlink_to(secret)
    (published.folder / "extra").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match=r"symlinks to outside the folder \['extra', 'transformer/notes.json'\]"):
        hub.push_pipeline_to_hub(published.folder, "someone/repo")
    assert published.calls == []  # nothing was asked of the Hub, so nothing was uploaded


@pytest.mark.parametrize("name,write", [
    ("transformer/weights.BIN", lambda p: torch.save({"w": torch.zeros(2)}, p)),
    ("transformer/legacy.data", lambda p: torch.save({"w": torch.zeros(2)}, p, _use_new_zipfile_serialization=False)),
    ("vqvae/codes.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)),
    ("vqvae/state.json", lambda p: Path(p).write_bytes(__import__("pickle").dumps({"a": 1}, protocol=0))),
])
def test_push_finds_pickles_by_content_not_suffix(name, write, published):
    write(published.folder / name)
    with pytest.raises(ValueError, match="pickle-format files") as info:
        hub.push_pipeline_to_hub(published.folder, "someone/repo")
    assert name in str(info.value) and published.calls == []


def test_push_uploads_exactly_the_checked_files(published):
    assert hub.push_pipeline_to_hub(published.folder, "someone/repo") == "ok"
    upload = published.calls[-1][1]
    assert MARKER_NAME not in [p.replace("[[]", "[") for p in upload["allow_patterns"]]
    assert "model_index.json" in upload["allow_patterns"]
    assert not hub.is_pickle_file(published.folder / "vqvae" / "diffusion_pytorch_model.safetensors")


# ----------------------------------------------------------------------------------------------------------------------
# Concurrent runs: one writer per output folder
# ----------------------------------------------------------------------------------------------------------------------


def _lock_held_by(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_second_trainer_on_one_output_dir_is_refused(tmp_path, capsys, fresh_accelerate_state):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_held_by(tmp_path / "run", holder.pid)
        rc = main(["train-vqvae", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"),
                   "--max_train_steps", "1"])
        err = capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert rc == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in err
    _one_line_error(err)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # no log, no checkpoint, no marker


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock_held_by(tmp_path / "run", dead.pid)
    folder = claim_output_dir(tmp_path / "run")
    try:
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert (folder / MARKER_NAME).exists()
    finally:
        release_output_dir(folder)
    assert not (folder / LOCK_NAME).exists()
    # a lock from another host is never taken over: its pid means nothing here
    _lock_held_by(tmp_path / "other", 12345, host="elsewhere")
    with pytest.raises(OutputLockedError, match="host elsewhere.*delete the lock file"):
        OutputLock(tmp_path / "other").acquire()


# ----------------------------------------------------------------------------------------------------------------------
# Tampered checkpoint state
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder,step,max_steps,match", [
    ("checkpoint-2", -2, 10, "named for step 2 but"),
    ("checkpoint--2", -2, 10, r"outside \[0, 10\]"),
    ("checkpoint-2", 2, 1, r"outside \[0, 1\]"),
    ("checkpoint-99999999999", 99999999999, 10, "outside"),
    ("checkpoint-2", "2", 10, "not an int"),
    ("checkpoint-2", True, 10, "not an int"),
])
def test_checkpoint_state_is_checked_against_its_folder_and_the_run(folder, step, max_steps, match, tmp_path):
    state = {"step": step, "position": {"epoch": 0, "batch_index": 0}, "complete": True}
    with pytest.raises(ValueError, match=match):
        check_checkpoint_state(tmp_path / folder, state, max_steps)
    state["step"] = 2
    state["position"] = {"epoch": -1, "batch_index": 0}
    with pytest.raises(ValueError, match="data position"):
        check_checkpoint_state(tmp_path / "checkpoint-2", state, 10)


def test_resume_from_a_tampered_checkpoint_is_refused(tmp_path, fresh_accelerate_state):
    from var_clip.shapes_world import generate_dataset

    from .test_training import TINY_VQVAE

    data = generate_dataset(tmp_path / "shapes", 8, seed=0, show_progress=False)
    argv = ["--train_data_dir", str(data), "--output_dir", str(tmp_path / "run"), "--dataset_cache_dir",
            str(tmp_path / "hf"), "--max_train_steps", "2", "--train_batch_size", "4", "--learning_rate", "1e-3",
            "--checkpointing_steps", "1", "--no_progress_bar", "--num_validation_images", "0", *TINY_VQVAE]
    assert train_vqvae.main(argv) == 0
    state_file = tmp_path / "run" / "checkpoint-2" / "training_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(dict(state, step=-2)))
    before = _tree(tmp_path / "run")
    with pytest.raises(ValueError, match="named for step 2 but training_state.json records step -2"):
        train_vqvae.main([*argv, "--resume_from_checkpoint", "latest"])
    assert _tree(tmp_path / "run") == before  # no checkpoint--2, no log lines, the model untouched
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # and the lock was released


# ----------------------------------------------------------------------------------------------------------------------
# Strict loading and validated configs
# ----------------------------------------------------------------------------------------------------------------------


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes,match", [
    ({"num_res_blocks": 2}, "missing from the weights"),  # one block more: would stay random
    ({"share_quant_resi": 2}, r"in the weights but not in the model .*quantize.phis.2"),  # fewer φs: dropped
    ({"latent_channels": 16}, "expected shape"),
])
def test_vqvae_whose_config_disagrees_with_its_weights_fails_to_load(changes, match, tmp_path):
    make_tiny_vqvae().save_pretrained(tmp_path)
    MultiScaleVQModel.from_pretrained(tmp_path)  # agreeing: loads
    _edit_config(tmp_path, **changes)
    with pytest.raises(ConfigMismatchError, match=match):
        MultiScaleVQModel.from_pretrained(tmp_path)


def test_the_transformer_loads_strictly(tmp_path):
    make_tiny_transformer().save_pretrained(tmp_path)
    model, info = VARTransformer2DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and model.config.depth == 2
    _edit_config(tmp_path, depth=1)  # one block fewer: its weights would be dropped
    with pytest.raises(ConfigMismatchError, match=r"in the weights but not in the model.*blocks\.1\."):
        VARTransformer2DModel.from_pretrained(tmp_path)
    _edit_config(tmp_path, depth=2, cross_attention_dim=8)  # cross-attention the weights do not have
    with pytest.raises(ConfigMismatchError, match=r"missing from the weights.*cross_attn"):
        VARTransformer2DModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("changes,match", [
    ({"quant_resi": math.nan}, "quant_resi"),  # NaN would silently turn φ off
    ({"beta": math.inf}, "beta"),
    ({"vocab_size": 10**12}, "vocab_size"),
    ({"ch_mult": [1, 2, 10**6]}, "ch_mult"),
    ({"patch_nums": [1, 2, 2]}, "strictly increasing"),
    ({"quant_conv_kernel_size": 2}, "odd"),
    ({"using_sa": "no"}, "using_sa"),
    ({"dropout": 1.0}, "dropout"),
])
def test_vqvae_config_is_validated_before_allocating(changes, match):
    kwargs = dict(vocab_size=64, latent_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=(1, 2, 4))
    kwargs.update(changes)
    with pytest.raises(ValueError, match=match):
        MultiScaleVQModel(**kwargs)


TRANSFORMER_CONFIG = dict(vocab_size=64, latent_channels=8, patch_nums=(1, 2, 3, 4), depth=2, embed_dim=32,
                          num_heads=2, mlp_ratio=4.0, norm_eps=1e-6, shared_aln=False, attn_l2_norm=True,
                          condition_type="text", text_embed_dim=16, cross_attention_dim=None, num_classes=1000,
                          cond_drop_rate=0.1, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)


@pytest.mark.parametrize("changes,match", [
    ({"mlp_ratio": math.nan}, "mlp_ratio"),
    ({"norm_eps": 0.0}, "norm_eps"),
    ({"cond_drop_rate": math.nan}, "cond_drop_rate"),
    ({"depth": 0}, "depth"),
    ({"depth": 10**6}, "depth"),
    ({"embed_dim": 30, "num_heads": 4}, "must divide"),
    ({"embed_dim": 16384, "depth": 512}, "parameters"),
    ({"patch_nums": [1, 2, 4096]}, "patch_nums"),
    ({"condition_type": "image"}, "condition_type"),
    ({"cross_attention_dim": 8, "condition_type": "class"}, "cross_attention_dim"),
    ({"shared_aln": 1}, "shared_aln"),
    ({"vocab_size": 64.5}, "vocab_size"),
])
def test_check_transformer_config(changes, match):
    check_transformer_config(**TRANSFORMER_CONFIG)
    with pytest.raises(ValueError, match=match):
        check_transformer_config(**dict(TRANSFORMER_CONFIG, **changes))


# ----------------------------------------------------------------------------------------------------------------------
# One-line errors at the edges
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    return str(tmp_path / "pipe")


def test_unreachable_hub_is_one_line(tmp_path, capsys, monkeypatch):
    import requests

    def model_info(self, repo_id, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api/models/owner/name")

    monkeypatch.setattr(HfApi, "model_info", model_info)
    rc = main(["generate", "x", "--model", "owner/name", "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "Hugging Face Hub cannot be reached" in err and "HF_HUB_OFFLINE=1" in err
    _one_line_error(err)
    with pytest.raises(requests.exceptions.ConnectionError):  # --debug: the traceback
        main(["generate", "x", "--model", "owner/name", "-o", str(tmp_path / "o.png"), "--debug"])
    assert not (tmp_path / "o.png").exists()


def test_offline_error_reads_right_whether_or_not_hf_hub_offline_is_set(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: pytest.fail("the Hub was asked although offline"))
    rc = main(["generate", "x", "--model", "owner/name", "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "HF_HUB_OFFLINE is set" in err and "unset HF_HUB_OFFLINE" in err
    assert "set HF_HUB_OFFLINE=1" not in err
    _one_line_error(err)


def test_output_path_is_checked_before_any_compute(model_dir, tmp_path, capsys, monkeypatch):
    import var_clip.cli as cli

    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "folder.png").mkdir()
    for output, code, message in ((tmp_path / "missing" / "o.png", 1, "does not exist"),
                                  (tmp_path / "folder.png", 1, "is a folder"),
                                  (tmp_path / "o.gif2", 2, "must end with one of")):
        rc = main(["generate", "x", "--model", model_dir, "-o", str(output)])
        err = capsys.readouterr().err
        assert rc == code and message in err and "--output" in err, err
        _one_line_error(err)
    PIL.Image.new("RGB", (16, 16), "red").save(tmp_path / "scene.png")
    rc = main(["img2img", "x", "--model", model_dir, "--image", str(tmp_path / "scene.png"), "-o",
               str(tmp_path / "scene.png")])  # an output that is an input
    err = capsys.readouterr().err
    assert rc == 1 and "--output" in err and "is the input" in err
    (tmp_path / "scene.png").unlink()
    rc = main(["generate", "x", "--model", model_dir, "-o", str(tmp_path / "o.png"), "--save-progress",
               str(tmp_path / "missing" / "p.png")])
    assert rc == 1 and "--save-progress" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "pipe"]


def test_decompression_bomb_and_truncated_inputs_are_one_line(model_dir, tmp_path, capsys, monkeypatch):
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    rc = main(["img2img", "x", "--model", model_dir, "--image", str(tmp_path / "big.png"), "-o",
               str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "--image" in err and "decompression bomb" in err and "MAX_IMAGE_PIXELS" in err
    _one_line_error(err)
    assert not (tmp_path / "o.png").exists()


def test_expected_failure_kinds_name_cause_and_fix():
    missing = ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard")
    assert "pip install 'var-clip[train]'" in describe_failure(missing)
    assert "fewer images" in describe_failure(MemoryError())
    assert "thesis.tex" in describe_failure(PermissionError(13, "Permission denied", "/x/thesis.tex"))
    assert describe_failure(KeyError("bug")) is None  # an unexpected error keeps its traceback


def test_delegated_failures_exit_1_with_one_line(capsys, monkeypatch):
    import var_clip.training.train_clip as train_clip

    def needs_datasets(argv):
        raise ModuleNotFoundError("No module named 'datasets'", name="datasets")

    monkeypatch.setattr(train_clip, "main", needs_datasets)
    assert main(["train-clip", "--output_dir", "x"]) == 1
    err = capsys.readouterr().err
    assert "missing optional dependency: datasets" in err and "pip install" in err
    _one_line_error(err)


def _imagefolder(folder: Path, lines: list[str], images: dict[str, PIL.Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for name, image in images.items():
        image.save(folder / name)
    (folder / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


def test_training_data_errors_name_the_file_and_line(tmp_path, monkeypatch):
    good = '{"file_name": "a.png", "text": "a red circle"}'
    bad = _imagefolder(tmp_path / "bad", [good, '{"file_name": "b.png", "text": '], {"a.png": PIL.Image.new("RGB", (8, 8))})
    with pytest.raises(ValueError, match=r"bad/metadata.jsonl line 2 is not JSON"):
        load_image_caption_dataset(bad, cache_dir=tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_caption_dataset(tmp_path / "empty", cache_dir=tmp_path / "cache")

    images = {"a.png": PIL.Image.new("RGB", (32, 32), "red"), "b.png": PIL.Image.new("RGB", (32, 32))}
    folder = _imagefolder(tmp_path / "cut", [good, '{"file_name": "b.png", "text": "x"}'], images)
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])  # truncated
    examples = ImageCaptionDataset(load_image_caption_dataset(folder, cache_dir=tmp_path / "cache"), ImageTransform(8))
    order = {examples.image_path(i): i for i in range(2)}
    examples[order[str(folder / "a.png")]]
    with pytest.raises(ValueError, match=r"training image .*cut/b.png \(sample \d\) cannot be used: .*truncated"):
        examples[order[str(folder / "b.png")]]
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 600)  # a 32×32 image is now a bomb (> 1×, < 2× the limit)
    with pytest.raises(ValueError, match=r"cut/a.png .*decompression bomb"):
        examples[order[str(folder / "a.png")]]


def test_trainer_data_error_is_one_line(tmp_path, capsys, fresh_accelerate_state):
    _imagefolder(tmp_path / "data", ['{"file_name": "a.png", "text": "x"}', "not json"],
                 {"a.png": PIL.Image.new("RGB", (8, 8))})
    rc = main(["train-vqvae", "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"),
               "--max_train_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "metadata.jsonl line 2 is not JSON" in err
    _one_line_error(err)
    assert not (tmp_path / "run" / LOCK_NAME).exists()


# ----------------------------------------------------------------------------------------------------------------------
# Output files: the user's permissions, atomic, in the format the suffix names
# ----------------------------------------------------------------------------------------------------------------------


def test_output_files_respect_umask_and_suffix(model_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        assert main(["generate", "x", "--model", model_dir, "-o", str(tmp_path / "o.jpg")]) == 0
        assert main(["generate", "x", "--model", model_dir, "-o", str(tmp_path / "o.png")]) == 0
    finally:
        os.umask(previous)
    for name, image_format, magic in (("o.jpg", "JPEG", b"\xff\xd8"), ("o.png", "PNG", b"\x89PNG")):
        path = tmp_path / name
        assert (path.stat().st_mode & 0o777) == 0o644  # like any file of the user's, not mkstemp's 0600
        assert path.read_bytes().startswith(magic) and PIL.Image.open(path).format == image_format
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jpg", "o.png", "pipe"]  # no temporary files left


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "o.png"
    PIL.Image.new("RGB", (4, 4), "red").save(path)
    before = path.read_bytes()

    class Broken:
        mode = "RGB"

        def save(self, *args, **kwargs):
            Path(args[0]).write_bytes(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_image(Broken(), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


# ----------------------------------------------------------------------------------------------------------------------
# No file runs code: weights checked by content before any library unpickles them, no code downloaded or trusted
# ----------------------------------------------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this touches ``path``: the proof that a file ran code while it was loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_eval_fid_never_hands_a_pickle_to_torch_fidelity(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchmetrics")
    import pickle

    import torchmetrics.image.fid

    from var_clip.metrics import fid as fid_cli

    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=images)
    argv = ["--generated", str(tmp_path / "a.npz"), "--reference", str(tmp_path / "a.npz"), "--no-progress-bar"]
    ran = tmp_path / "ran"
    received = []

    class LikeTorchFidelity:  # torch-fidelity is not installed here; it unpickles the file as this does
        def __init__(self, feature, feature_extractor_weights_path, **kwargs):
            received.append(torch.load(feature_extractor_weights_path, weights_only=False))
            raise OSError("stop here")

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setattr(torchmetrics.image.fid, "FrechetInceptionDistance", LikeTorchFidelity)
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": _RunsCode(ran)}))
    torch.save({"w": torch.ones(2), "bad": _RunsCode(ran)}, tmp_path / "evil_zip.pth")
    torch.save({"w": _RunsCode(ran)}, tmp_path / "evil.pt")  # not TorchScript: refused before torch.jit.load
    for name in ("evil.pth", "evil_zip.pth", "evil.pt"):
        assert fid_cli.main([*argv, "--inception-weights", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert "--inception-weights" in err and len(err.strip().splitlines()) == 1, err
    assert not ran.exists() and received == []

    # plain tensors reach torch-fidelity as a copy var-clip wrote (from a .pth or a .safetensors)
    import safetensors.torch

    torch.save({"w": torch.arange(3.0)}, tmp_path / "good.pth")
    safetensors.torch.save_file({"w": torch.arange(3.0)}, tmp_path / "good.safetensors")
    for name in ("good.pth", "good.safetensors"):
        assert fid_cli.main([*argv, "--inception-weights", str(tmp_path / name)]) == 1  # our stand-in stops there
        assert "could not get the Inception weights" in capsys.readouterr().err
    assert len(received) == 2 and all(torch.equal(r["w"], torch.arange(3.0)) for r in received)


@pytest.fixture
def saved_pipeline(tmp_path):
    from var_clip import VARCLIPPipeline

    from .conftest import make_tiny_text_encoder, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    VARCLIPPipeline(tokenizer=tokenizer, text_encoder=make_tiny_text_encoder(tokenizer),
                    transformer=make_tiny_transformer(), vqvae=make_tiny_vqvae()).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_trust_remote_code_only_for_var_clips_own_code(saved_pipeline, tmp_path):
    from diffusers import DiffusionPipeline

    from var_clip import VARCLIPPipeline

    folder = hub.check_no_remote_code(saved_pipeline)
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=hub.custom_pipeline_file(folder),
                                             trust_remote_code=True)
    assert type(pipe) is VARCLIPPipeline

    # a component whose code ships with the folder: diffusers would import transformer/evil.py
    index = json.loads((saved_pipeline / "model_index.json").read_text())
    (saved_pipeline / "model_index.json").write_text(json.dumps({**index, "transformer": ["evil", "Model"]}))
    (saved_pipeline / "transformer" / "evil.py").write_text("import os\n")
    (saved_pipeline / "text_encoder" / "helper.so").write_bytes(b"\x7fELF")
    config = json.loads((saved_pipeline / "text_encoder" / "config.json").read_text())
    (saved_pipeline / "text_encoder" / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    torch.save({"w": torch.zeros(1)}, saved_pipeline / "vqvae" / "extra.safetensors.json")
    with pytest.raises(ValueError) as info:
        hub.check_no_remote_code(saved_pipeline)
    message = str(info.value)
    for found in ("'transformer' comes from 'evil'", "transformer/evil.py is code", "text_encoder/helper.so is code",
                  "text_encoder/config.json has an `auto_map`", "vqvae/extra.safetensors.json is a pickle"):
        assert found in message, message
    (saved_pipeline / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="names the pipeline 'StableDiffusionPipeline'"):
        hub.check_no_remote_code(saved_pipeline)


def test_snapshot_selects_no_code_files():
    files = ["model_index.json", "README.md", "transformer/config.json",
             "transformer/diffusion_pytorch_model.safetensors", "transformer/modeling.py", "pipeline.py",
             "tokenizer/spiece.model", "lib/_ext.so", "run.sh", "notebook.ipynb", "docs/sample.png",
             "tokenizer/vocab.json", "tokenizer/merges.txt", "__pycache__/x.cpython-312.pyc", ".hidden.json"]
    chosen = hub.select_files(files)
    assert chosen == ["README.md", "docs/sample.png", "model_index.json", "tokenizer/merges.txt",
                      "tokenizer/spiece.model", "tokenizer/vocab.json", "transformer/config.json",
                      "transformer/diffusion_pytorch_model.safetensors"]


# ----------------------------------------------------------------------------------------------------------------------
# Ownership everywhere output is written: never over an input, never into a user's folder
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_train_var_refuses_to_write_over_its_pretrained_pipeline(lora, model_dir, tmp_path, capsys,
                                                                 fresh_accelerate_state):
    data = _imagefolder(tmp_path / "data", ['{"file_name": "a.png", "text": "a red circle"}'],
                        {"a.png": PIL.Image.new("RGB", (16, 16), "red")})
    before = _tree(Path(model_dir))
    for output in (model_dir, str(Path(model_dir) / "..")):  # the pipeline itself, or a folder holding it
        rc = main(["train-var", "--pretrained_pipeline", model_dir, "--output_dir", output, "--train_data_dir",
                   str(data), "--max_train_steps", "1", "--no_progress_bar", *(["--lora_rank", "2"] if lora else [])])
        err = capsys.readouterr().err
        assert rc == 1 and "--output_dir" in err and "is or contains the input" in err, err
        _one_line_error(err)
    assert _tree(Path(model_dir)) == before


@pytest.mark.parametrize("argv", [
    ["eval-shapes", "--max-prompts", "1", "--samples-per-prompt", "1", "--output-dir"],
    ["word-position", "--filler", "a circle", "--key_word", "red", "--output_dir"],
    ["phrase-position", "--samples-per-prompt", "1", "--output-dir"],
])
def test_report_commands_write_only_into_a_folder_they_own(argv, model_dir, tmp_path, capsys):
    model = ["--model", model_dir]
    before = _user_folder(tmp_path / "papers")
    (tmp_path / "papers" / "report.json").write_text("my report")
    assert main([*argv, str(tmp_path / "papers"), *model]) in (1, 2)
    err = capsys.readouterr().err
    assert "not a folder var-clip wrote" in err and "thesis.tex" in err, err
    _one_line_error(err)
    assert main([*argv, model_dir, *model]) in (1, 2)  # the model itself
    assert "is or contains the input" in capsys.readouterr().err
    assert _tree(tmp_path / "papers") == {**before, "report.json": b"my report".hex()}


def test_lora_weights_are_saved_only_into_a_folder_var_clip_owns(tiny_pipe, tmp_path):
    from peft.utils import get_peft_model_state_dict

    from var_clip.loaders import lora_config

    tiny_pipe.transformer.add_adapter(lora_config(tiny_pipe.transformer, rank=2), adapter_name="a")
    layers = get_peft_model_state_dict(tiny_pipe.transformer, adapter_name="a")
    before = _user_folder(tmp_path / "papers")
    with pytest.raises(UnsafeOutputError, match="not a folder var-clip wrote: it holds sub/, thesis.tex"):
        tiny_pipe.save_lora_weights(tmp_path / "papers", transformer_lora_layers=layers)
    assert _tree(tmp_path / "papers") == before
    with pytest.raises(ValueError, match="`weight_name` must be a file name"):
        tiny_pipe.save_lora_weights(tmp_path / "new", transformer_lora_layers=layers, weight_name="../escape.safetensors")
    path = tiny_pipe.save_lora_adapter_weights(tmp_path / "new", adapter_name="a")
    assert path.parent == tmp_path / "new" and tiny_pipe.save_lora_adapter_weights(tmp_path / "new", "a") == path


# ----------------------------------------------------------------------------------------------------------------------
# Finite numbers only, checked where they enter
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_sampling_arguments_are_refused_where_they_enter(value, tiny_pipe):
    for name in ("guidance_scale", "temperature"):
        with pytest.raises(ValueError, match=f"`{name}` must be .*finite|`{name}` must be a number"):
            tiny_pipe("a red circle", **{name: value}, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("argv", [
    ["generate", "x", "--guidance-scale", "inf"],
    ["generate-batch", "--prompts", "p.txt", "--output-dir", "o", "--guidance-scale", "inf"],
    ["train-var", "--output_dir", "o", "--learning_rate", "nan"],
    ["train-vqvae", "--output_dir", "o", "--adam_beta1", "inf"],
    ["train-clip", "--output_dir", "o", "--max_grad_norm=-inf"],
])
def test_non_finite_options_are_refused_by_the_parser(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "finite number" in err.splitlines()[-1], err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------------
# Images read as the user sees them
# ----------------------------------------------------------------------------------------------------------------------


def test_images_are_read_as_a_viewer_shows_them(tmp_path):
    from var_clip.utils.image_files import ImageReadError, read_image

    # a phone photo stored sideways: 6 = rotate 90° clockwise to view; the viewer sees it 4 wide and 2 high
    stored = PIL.Image.new("RGB", (2, 4), "blue")
    stored.putpixel((0, 0), (255, 0, 0))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.png", exif=exif)
    seen = read_image(tmp_path / "phone.png", "--image")
    assert seen.size == (4, 2) and seen.getpixel((3, 0)) == (255, 0, 0)  # the red corner is now top right

    # 16-bit greyscale: scaled to 8 bits, not clipped to white
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    PIL.Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert PIL.Image.open(tmp_path / "deep.png").mode == "I;16"
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "deep.png", "--mask", "L")), ramp // 257)

    # transparency over white, not the colour hidden under transparent pixels
    PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert read_image(tmp_path / "clear.png", "--image").getpixel((0, 0)) == (255, 255, 255)

    # values with no stated range are refused, not guessed
    PIL.Image.fromarray(np.ones((2, 2), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match=r"--image .*float.tif.* 'F' image .*8- or 16-bit PNG"):
        read_image(tmp_path / "float.tif", "--image")


@pytest.mark.slow  # a subprocess launch
def test_special_files_are_refused_without_blocking(model_dir, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    result = subprocess.run([sys.executable, "-m", "var_clip.cli", "img2img", "x", "--model", model_dir, "--image",
                             str(tmp_path / "pipe.png"), "-o", str(tmp_path / "o.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "is a FIFO (named pipe)" in result.stderr
    _one_line_error(result.stderr)
    from var_clip import VARCLIPPipeline

    with pytest.raises(ValueError, match="LoRA file .* is a FIFO"):
        VARCLIPPipeline.lora_state_dict(tmp_path / "pipe.png")
    # training images: a FIFO would block the data loader for ever
    data = _imagefolder(tmp_path / "data", ['{"file_name": "a.png", "text": "x"}'], {"a.png": PIL.Image.new("RGB", (8, 8))})
    os.mkfifo(data / "b.png")
    with pytest.raises(ValueError, match=r"training image .*data/b.png' is a FIFO"):
        load_image_caption_dataset(data, cache_dir=tmp_path / "cache")
    (tmp_path / "captions.txt").write_text("data/a.png: x\ndata/b.png: y\n")
    with pytest.raises(ValueError, match=r"training image .*data/b.png' is a FIFO"):
        load_image_caption_dataset(caption_file=tmp_path / "captions.txt", image_root=tmp_path)
    for device, kind in (("/dev/zero", "a device"), (str(tmp_path), "a folder")):
        assert main(["img2img", "x", "--model", model_dir, "--image", device, "-o", str(tmp_path / "o.png")]) == 1
        assert kind in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------------------------------------------------------------
# One line per input-format error, naming the file, the line and the fix
# ----------------------------------------------------------------------------------------------------------------------


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name,content,message", [
    ("p.jsonl", '{"prompt": "a red circle"}\n{"prompt": \n',
     r"p.jsonl line 2 is not JSON .*every line needs a `prompt` string"),
    ("p.jsonl", '\n{"prompt": 7}\n', r"p.jsonl line 2: `prompt` must be a string, got 7"),
    ("p.jsonl", '["a red circle"]\n', r"p.jsonl line 1 is not a JSON object"),
    ("p.csv", 'prompt,n\na red circle,1\n,2\n', r"p.csv' line 3 has no prompt in column 'prompt'"),
    ("p.txt", b"a red circle\n\xe9\n", r"p.txt' is not UTF-8 text \(byte 13\); save it as UTF-8"),
])
def test_generate_batch_prompt_file_errors_name_file_and_line(name, content, message, model_dir, tmp_path, capsys):
    prompts = _write(tmp_path / name, content)
    rc = main(["generate-batch", "--model", model_dir, "--prompts", str(prompts), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err
    _one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_settings_and_metadata_files_errors_name_file_and_line(model_dir, tmp_path, capsys):
    prompts = _write(tmp_path / "p.txt", "a red circle\n")
    _write(tmp_path / "o" / "generate_batch.json", '{"model": ')
    rc = main(["generate-batch", "--model", model_dir, "--prompts", str(prompts), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "settings file" in err and "generate_batch.json' is not JSON" in err
    assert "new --output-dir" in err
    _one_line_error(err)

    pytest.importorskip("torchmetrics")
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for lines, message in (('{"file_name": "a.png"}\n{"text": "x"}\n', "line 2 has no `file_name`"),
                           ('{"file_name": "../p.txt"}\n', "is not inside"),
                           ('{"file_name": 3}\n', "line 1: `file_name` must be a string")):
        _write(tmp_path / "gen" / "metadata.jsonl", lines)
        rc = main(["eval-fid", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "gen")])
        err = capsys.readouterr().err
        assert rc == 1 and "gen/metadata.jsonl" in err and message in err, err
        _one_line_error(err)
    from var_clip.metrics.clip_score import _prompts

    _write(tmp_path / "gen" / "metadata.jsonl", '{"file_name": "a.png", "text": "x"}\n{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl line 2 has no `text` .*--prompt-column"):
        _prompts(tmp_path / "gen", "text")


def test_eval_fid_output_json_never_replaces_an_input(tmp_path, capsys):
    pytest.importorskip("torchmetrics")
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=images)
    before = (tmp_path / "a.npz").read_bytes()
    for target in (tmp_path / "a.npz", tmp_path / "missing" / "fid.json"):
        rc = main(["eval-fid", "--generated", str(tmp_path / "a.npz"), "--reference", str(tmp_path / "a.npz"),
                   "--output-json", str(target)])
        err = capsys.readouterr().err
        assert rc == 1 and "--output-json" in err, err
        _one_line_error(err)
    assert (tmp_path / "a.npz").read_bytes() == before


def test_lora_header_that_is_not_json_is_one_line(tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    save_file({"transformer.text_proj.lora_A.weight": torch.zeros(2, 16)}, tmp_path / "a.safetensors",
              metadata={"lora_adapter_metadata": "{not json"})
    with pytest.raises(ValueError, match=r"a.safetensors': its `lora_adapter_metadata` header is not JSON"):
        tiny_pipe.load_lora_weights(tmp_path / "a.safetensors")


# ----------------------------------------------------------------------------------------------------------------------
# Bounds before allocation: sizes from files and command lines are checked first, in one line naming them
# ----------------------------------------------------------------------------------------------------------------------


def test_an_npz_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path, capsys):
    pytest.importorskip("torchmetrics")
    import io
    import tracemalloc
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (1_000_000, 256, 256, 3)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("arr_0.npy", header.getvalue() + bytes(1000))
    tracemalloc.start()
    try:
        rc = main(["eval-fid", "--generated", str(tmp_path / "huge.npz"), "--reference", str(tmp_path / "huge.npz")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert rc == 1 and "claims the shape (1000000, 256, 256, 3)" in err and "holds 1,000 bytes" in err, err
    _one_line_error(err)
    assert peak < 100_000_000


@pytest.mark.parametrize("argv,message", [
    (["generate-batch", "--class-labels", "0-999999999", "--output-dir", "o"], "names more than 1,000,000 labels"),
    (["generate-batch", "--prompts", "p.txt", "--num-images-per-prompt", "999999", "--output-dir", "o"],
     "--num-images-per-prompt 999999 × 2 prompts is more than 1,000,000 images"),
    (["generate", "x", "--num-images", "100000", "-o", "o.png"], "--num-images 100000 is more than 256"),
])
def test_counts_from_the_command_line_are_bounded_first(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    try:
        rc = main(argv)
    except SystemExit as exit_:  # an argument the parser refuses
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


def test_generate_seeds_and_devices_found_beyond_the_issue(model_dir, tmp_path, capsys):
    # a seed beyond 64 bits: refused by the parser, not an "Overflow when unpacking long long" from torch
    with pytest.raises(SystemExit):
        main(["generate", "x", "--model", model_dir, "--seed", str(2**70), "-o", str(tmp_path / "o.png")])
    assert "--seed: must be an int in" in capsys.readouterr().err
    # --device auto reached torch.Generator as "auto"; meta computes nothing
    assert main(["generate", "x", "--model", model_dir, "--device", "auto", "-o", str(tmp_path / "o.png")]) == 0
    assert main(["generate", "x", "--model", model_dir, "--device", "meta", "-o", str(tmp_path / "m.png")]) == 1
    err = capsys.readouterr().err
    assert "`device` 'meta' holds no data" in err.splitlines()[-1]
    assert not (tmp_path / "m.png").exists()
