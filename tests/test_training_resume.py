"""Resuming reproduces the uninterrupted run exactly; a crash while saving leaves the previous checkpoint usable."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from var_clip import VARCLIPPipeline
from var_clip.shapes_world import generate_dataset
from var_clip.training import train_var
from var_clip.training.checkpointing import list_checkpoints
from var_clip.training.engine import read_log

from .conftest import (
    killed_after_checkpoint,
    make_tiny_text_encoder,
    make_tiny_tokenizer,
    make_tiny_vqvae,
    reset_accelerate_state,
)

STEPS = 6


# every trainer builds an Accelerator; each test starts from a fresh accelerate state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    generate_dataset(root / "shapes", 16, seed=1, show_progress=False)
    make_tiny_vqvae().save_pretrained(root / "vqvae")
    tokenizer = make_tiny_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    make_tiny_text_encoder(tokenizer).save_pretrained(root / "text_encoder")
    return root


def var_args(workdir: Path, output: str, checkpointing_steps: int, **extra: str) -> list[str]:
    """A run that exercises every random stream: condition dropout (its own generator), stochastic depth (torch's
    global RNG), random crops and flips (per-sample generators), EMA, gradient accumulation across an epoch
    boundary (16 images, 4 per batch, 2 batches per step: step 3 ends mid-epoch), and sampling during training."""
    args = {
        "--train_data_dir": workdir / "shapes", "--output_dir": workdir / output, "--vqvae": workdir / "vqvae",
        "--text_encoder": workdir / "text_encoder", "--tokenizer": workdir / "tokenizer",
        "--dataset_cache_dir": workdir / "hf-cache", "--depth": 2, "--embed_dim": 32, "--num_heads": 2,
        "--cond_drop_rate": 0.5, "--drop_path_rate": 0.3, "--crop": "random", "--resize_ratio": 1.25,
        "--train_batch_size": 4, "--gradient_accumulation_steps": 2, "--max_train_steps": STEPS,
        "--learning_rate": 2e-3, "--lr_warmup_steps": 2, "--checkpointing_steps": checkpointing_steps,
        "--validation_steps": 2, "--validation_prompts": "a red circle",
    }
    args.update({f"--{k}": v for k, v in extra.items()})
    flat = [str(x) for key, value in args.items() for x in (key, value)]
    return flat + ["--use_ema", "--random_flip", "--no_progress_bar"]


@pytest.fixture(scope="module")
def uninterrupted(workdir) -> Path:
    assert train_var.main(var_args(workdir, "full", checkpointing_steps=3)) == 0
    return workdir / "full"


def losses_of(output_dir: Path) -> list[float]:
    records = read_log(output_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    return [r["loss"] for r in records]


def assert_same_result(run: Path, reference: Path) -> None:
    assert losses_of(run) == losses_of(reference)  # bit-identical, not merely close
    final = load_file(run / "transformer" / "diffusion_pytorch_model.safetensors")
    expected = load_file(reference / "transformer" / "diffusion_pytorch_model.safetensors")
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)  # the exported EMA weights too


def test_interrupted_then_resumed_run_matches_the_uninterrupted_one(workdir, uninterrupted, monkeypatch):
    with killed_after_checkpoint(monkeypatch, step=3):
        train_var.main(var_args(workdir, "resumed", checkpointing_steps=3))
    assert [p.name for p in list_checkpoints(workdir / "resumed")] == ["checkpoint-3"]
    state = json.loads((workdir / "resumed" / "checkpoint-3" / "training_state.json").read_text())
    assert state["position"] == {"epoch": 1, "batch_index": 2}  # 6 batches of 4 consumed: mid-epoch

    reset_accelerate_state()
    assert train_var.main(var_args(workdir, "resumed", checkpointing_steps=3, resume_from_checkpoint="latest")) == 0
    assert_same_result(workdir / "resumed", uninterrupted)


def test_crash_while_saving_keeps_the_previous_checkpoint_and_latest_resumes_from_it(workdir, uninterrupted,
                                                                                       monkeypatch):
    real_save_state = Accelerator.save_state
    calls = []

    def save_state_then_crash(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        result = real_save_state(self, output_dir, **kwargs)  # model, optimizer and scheduler are written...
        if len(calls) == 2:
            raise OSError("simulated crash in the middle of writing checkpoint-4")  # ...the rest never is
        return result

    monkeypatch.setattr(Accelerator, "save_state", save_state_then_crash)
    with pytest.raises(OSError, match="simulated crash"):
        train_var.main(var_args(workdir, "crashed", checkpointing_steps=2, checkpoints_total_limit=1))
    monkeypatch.undo()

    out = workdir / "crashed"
    partial = out / "checkpoint-4.tmp"
    assert (partial / "model.safetensors").is_file() and not (partial / "training_state.json").exists()
    assert not (out / "checkpoint-4").exists()
    # the old checkpoint is still there (deletion waits for a complete new one) and is what `latest` picks
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "model_index.json").exists()  # no final output from a failed run

    reset_accelerate_state()
    args = var_args(workdir, "crashed", checkpointing_steps=2, checkpoints_total_limit=1,
                    resume_from_checkpoint="latest")
    assert train_var.main(args) == 0
    assert_same_result(out, uninterrupted)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-6"]  # total limit 1; the .tmp leftover removed
    assert not partial.exists()


def test_checkpoint_files_load_without_executing_code(uninterrupted):
    from accelerate.utils import load as accelerate_load

    checkpoint = uninterrupted / "checkpoint-3"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors" in names and "ema.safetensors" in names and "training_state.json" in names
    for path in checkpoint.iterdir():
        if path.suffix == ".bin":
            torch.load(path, weights_only=True)  # optimizer and scheduler: tensors and plain containers only
        elif path.suffix == ".pkl":
            accelerate_load(path)  # accelerate's own RNG record, read with weights_only=True
        else:
            assert path.suffix in (".safetensors", ".json"), path


def test_resume_refuses_a_different_batch_size(workdir, uninterrupted):
    args = var_args(workdir, "full", checkpointing_steps=3, train_batch_size=2, resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="global_batch_size"):
        train_var.main(args)


def test_resume_with_another_thread_count_says_it_is_no_longer_the_same_run(workdir, uninterrupted, caplog):
    state = json.loads((workdir / "full" / "checkpoint-3" / "training_state.json").read_text())
    assert state["compute"] == {"device_type": "cpu", "torch_threads": torch.get_num_threads()}
    threads = torch.get_num_threads()
    other = workdir / "other-threads"
    shutil.copytree(workdir / "full" / "checkpoint-3", other / "checkpoint-3")
    torch.set_num_threads(threads + 1)
    try:
        with caplog.at_level(logging.WARNING, logger="var_clip.training.engine"):
            assert train_var.main(var_args(workdir, "other-threads", checkpointing_steps=0,
                                           resume_from_checkpoint="latest")) == 0
    finally:
        torch.set_num_threads(threads)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"with {threads} CPU threads, this one has {threads + 1}" in m and f"OMP_NUM_THREADS={threads}" in m
               for m in warnings), warnings


@pytest.mark.parametrize("conditioning", ["pooled", "tokens"])
def test_token_cache_is_built_once_and_trains_like_encoding_on_the_fly(workdir, conditioning):
    """The cache holds exactly what on-the-fly encoding gives: the pooled embeddings and, for token-level
    conditioning, the token states (padded and masked) — so the losses agree, with condition dropout on."""
    common = dict(cond_drop_rate=0.25 if conditioning == "tokens" else 0.0, drop_path_rate=0.0, crop="center",
                  resize_ratio=1.0, gradient_accumulation_steps=1, validation_steps=0, conditioning=conditioning)
    plain = [a for a in var_args(workdir, f"no-cache-{conditioning}", 0, **common) if a not in ("--random_flip", "--use_ema")]
    assert train_var.main(plain) == 0
    for attempt in range(2):
        reset_accelerate_state()
        cached = [a for a in var_args(workdir, f"cache-{conditioning}-{attempt}", 0, cache_dir=workdir / f"tokens-{conditioning}", **common)
                  if a not in ("--random_flip", "--use_ema")]
        assert train_var.main(cached) == 0
        files = list((workdir / f"tokens-{conditioning}").glob("var-tokens-*.safetensors"))
        if conditioning == "tokens":
            pipe = VARCLIPPipeline.from_pretrained(workdir / f"cache-{conditioning}-{attempt}")
            assert pipe.transformer.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
        assert len(files) == 1
        if attempt == 0:
            mtime = files[0].stat().st_mtime_ns
        else:
            assert files[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
        torch.testing.assert_close(torch.tensor(losses_of(workdir / f"cache-{conditioning}-{attempt}")),
                                   torch.tensor(losses_of(workdir / f"no-cache-{conditioning}")), rtol=0, atol=1e-5)


def test_cache_with_random_augmentation_is_rejected(workdir):
    with pytest.raises(ValueError, match="--cache_dir"):
        train_var.main(var_args(workdir, "bad", 0, cache_dir=workdir / "tokens"))
