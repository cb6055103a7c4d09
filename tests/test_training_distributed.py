"""Data parallelism on two CPU processes (torchrun + gloo): same data as one process, exact resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from var_clip.shapes_world import generate_dataset
from var_clip.training import train_var
from var_clip.training.engine import read_log

from .conftest import make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_vqvae

pytestmark = pytest.mark.slow


def run_two_processes(args: list[str]) -> None:
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
               "var_clip.training.train_var", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def test_two_processes_see_the_data_of_one_and_resume_exactly(tmp_path):
    generate_dataset(tmp_path / "shapes", 16, seed=2, show_progress=False)
    make_tiny_vqvae().save_pretrained(tmp_path / "vqvae")
    tokenizer = make_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    make_tiny_text_encoder(tokenizer).save_pretrained(tmp_path / "text_encoder")

    def args(output: str, per_process_batch: int) -> list[str]:
        return ["--train_data_dir", str(tmp_path / "shapes"), "--vqvae", str(tmp_path / "vqvae"),
                "--text_encoder", str(tmp_path / "text_encoder"), "--tokenizer", str(tmp_path / "tokenizer"),
                "--output_dir", str(tmp_path / output), "--dataset_cache_dir", str(tmp_path / "hf-cache"),
                "--depth", "2", "--embed_dim", "32", "--num_heads", "2", "--drop_path_rate", "0",
                "--train_batch_size", str(per_process_batch), "--max_train_steps", "6", "--learning_rate", "3e-3",
                "--checkpointing_steps", "3", "--use_ema", "--no_progress_bar"]

    # 2 processes × 2 images read the same global batches as 1 process × 4 images
    run_two_processes(args("ddp", 2))
    assert train_var.main(args("single", 4)) == 0
    ddp, single = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert [r["step"] for r in ddp] == list(range(1, 7))
    for a, b in zip(ddp, single):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    checkpoint = tmp_path / "ddp" / "checkpoint-3"
    assert (checkpoint / "rng_state_0.safetensors").is_file() and (checkpoint / "rng_state_1.safetensors").is_file()

    # drop the end of the run and resume it from step 3 on two processes: the same losses, bit for bit
    shutil.rmtree(tmp_path / "ddp" / "checkpoint-6")
    (tmp_path / "ddp" / "model_index.json").unlink()
    run_two_processes(args("ddp", 2) + ["--resume_from_checkpoint", "latest"])
    assert read_log(tmp_path / "ddp") == ddp
    assert (tmp_path / "ddp" / "model_index.json").is_file()
