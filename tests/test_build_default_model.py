"""The default model's recipe, scripts/build_default_model.py: the long run's stages continue a pipeline folder, and
the folder they write records the stages behind it, which the next stage reads and extends."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from var_clip import VARCLIPPipeline

from .conftest import make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_transformer, make_tiny_vqvae

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_default_model.py"


def load_script():
    spec = importlib.util.spec_from_file_location("build_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_folder(path: Path) -> Path:
    tokenizer = make_tiny_tokenizer()
    text_encoder = make_tiny_text_encoder(tokenizer)
    VARCLIPPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vqvae=make_tiny_vqvae(),
                    transformer=make_tiny_transformer(cross_attention_dim=text_encoder.config.hidden_size)
                    ).save_pretrained(path)
    return path


def run_stage(base: Path, work: Path, output: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--continue_from", str(base), "--workdir", str(work), "--output",
               str(output), "--steps", "2", "--num_images", "32"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(work.parent / "hf-home"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_stages_chain_their_history_into_the_folder_and_its_card(tmp_path):
    base = tiny_folder(tmp_path / "base")
    run_stage(base, tmp_path / "work1", tmp_path / "stage1")
    # the next stage continues from the folder it replaces (as from the package's own default model)
    run_stage(tmp_path / "stage1", tmp_path / "work2", tmp_path / "stage1")
    stage2 = tmp_path / "stage1"

    history = json.loads((stage2 / "training_history.json").read_text())
    assert [h["stage"] for h in history] == [1, 2]
    assert [h["data_seed"] for h in history] == [2, 3]  # every stage trains on new scenes
    assert all(h["steps"] == 2 and h["num_images"] == 32 and h["scheduler"] == "cosine" for h in history)
    card = (stage2 / "README.md").read_text()
    assert "long-run stage 1: 2 steps" in card and "long-run stage 2: 2 steps" in card
    assert "In all 3004 steps" in card
    # the stage's folder loads as a pipeline, its transformer trained on from the base's
    assert VARCLIPPipeline.from_pretrained(stage2).transformer.config.depth == 2


def test_a_history_that_is_not_the_recipes_is_refused(tmp_path):
    build = load_script()
    assert build.read_history(tmp_path) == []  # none: the base build alone
    good = dict(stage=1, steps=1800, batch=32, lr=3e-4, warmup=100, scheduler="cosine", num_images=40000,
                data_seed=2, hours=1.3, hardware="2 CPU cores")
    (tmp_path / build.HISTORY).write_text(json.dumps([good]))
    assert build.read_history(tmp_path) == [good]
    for bad in ([dict(good, stage=2)], [dict(good, steps=-1)], [dict(good, lr=float("nan"))], [dict(good, extra=1)],
                [dict(good, steps=True)], {"stage": 1}, [good, dict(good, stage=3)]):
        (tmp_path / build.HISTORY).write_text(json.dumps(bad))
        with pytest.raises(SystemExit, match="training_history.json"):
            build.read_history(tmp_path)
    (tmp_path / build.HISTORY).write_bytes(b"\xff\xfe")
    with pytest.raises(SystemExit, match="not valid JSON"):
        build.read_history(tmp_path)
