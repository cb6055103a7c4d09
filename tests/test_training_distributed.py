"""Two CPU processes (gloo): data parallelism sees the data of one process and resumes exactly; FSDP2 trains as data
parallelism does, resumes exactly from its sharded checkpoint and exports a pipeline that loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from var_clip import VARCLIPPipeline
from var_clip.shapes_world import generate_dataset
from var_clip.training import train_var
from var_clip.training.engine import read_log

from .conftest import make_tiny_text_encoder, make_tiny_tokenizer, make_tiny_vqvae, reset_accelerate_state

pytestmark = pytest.mark.slow


#: The FSDP2 settings of docs/training.md: the attention and MLP of every block are their own units (the AdaLN
#: modulations, computed once per forward outside the blocks, stay with the root); sharded checkpoints.
FSDP_LAUNCH = ["--use_fsdp", "--fsdp_version", "2", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
               "--fsdp_transformer_layer_cls_to_wrap", "SelfAttention,FeedForward",
               "--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_reshard_after_forward", "true"]
#: FSDP reduce-scatters the gradients and clips their norm from the shards: the sums may run in another order than
#: data parallelism's all-reduce. Two processes have measured bit-equal so far; a last-bit difference would grow by
#: Adam's normalisation over six steps to well under this.
FSDP_LOSS_TOLERANCE = 1e-5


def run_two_processes(args: list[str]) -> None:
    """Data parallelism on two CPU processes: torchrun, gloo (docs/training.md, 'Several CPU processes')."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
               "var_clip.training.train_var", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def run_two_fsdp_processes(args: list[str]) -> None:
    """The documented FSDP2 command on two CPU processes, through accelerate's CPU gate (tests/fsdp_on_cpu.py)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", *FSDP_LAUNCH,
               str(Path(__file__).with_name("fsdp_on_cpu.py")), "var_clip.training.train_var", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def write_inputs(folder: Path) -> None:
    """Sixteen shapes-world images and the tiny VQ-VAE, tokenizer and text encoder the trainer reads."""
    generate_dataset(folder / "shapes", 16, seed=2, show_progress=False)
    make_tiny_vqvae().save_pretrained(folder / "vqvae")
    tokenizer = make_tiny_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    make_tiny_text_encoder(tokenizer).save_pretrained(folder / "text_encoder")


def train_args(folder: Path, output: str, per_process_batch: int) -> list[str]:
    return ["--train_data_dir", str(folder / "shapes"), "--vqvae", str(folder / "vqvae"),
            "--text_encoder", str(folder / "text_encoder"), "--tokenizer", str(folder / "tokenizer"),
            "--output_dir", str(folder / output), "--dataset_cache_dir", str(folder / "hf-cache"),
            "--depth", "2", "--embed_dim", "32", "--num_heads", "2", "--drop_path_rate", "0",
            "--train_batch_size", str(per_process_batch), "--max_train_steps", "6", "--learning_rate", "3e-3",
            "--checkpointing_steps", "3", "--no_progress_bar"]


def untimed(records: list[dict]) -> list[dict]:
    """A log's records without their wall-clock step times (the one field a rerun does not repeat)."""
    return [{k: v for k, v in r.items() if k != "step_seconds"} for r in records]


def test_two_processes_see_the_data_of_one_and_resume_exactly(tmp_path):
    write_inputs(tmp_path)

    def args(output: str, per_process_batch: int) -> list[str]:
        return train_args(tmp_path, output, per_process_batch) + ["--use_ema"]

    # 2 processes × 2 images read the same global batches as 1 process × 4 images
    run_two_processes(args("ddp", 2))
    assert train_var.main(args("single", 4)) == 0
    ddp, single = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert [r["step"] for r in ddp] == list(range(1, 7))
    for a, b in zip(ddp, single):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    checkpoint = tmp_path / "ddp" / "checkpoint-3"
    assert (checkpoint / "rng_state_0.safetensors").is_file() and (checkpoint / "rng_state_1.safetensors").is_file()

    # drop the end of the run (its last checkpoint and the exported weights; the folder stays one var-clip wrote) and
    # resume it from step 3 on two processes: the same losses, bit for bit, and a new export
    exported = tmp_path / "ddp" / "transformer" / "diffusion_pytorch_model.safetensors"
    shutil.rmtree(tmp_path / "ddp" / "checkpoint-6")
    exported.unlink()
    run_two_processes(args("ddp", 2) + ["--resume_from_checkpoint", "latest"])
    assert untimed(read_log(tmp_path / "ddp")) == untimed(ddp)
    assert exported.is_file()


def test_fsdp2_trains_as_ddp_does_and_resumes_exactly_from_its_sharded_checkpoint(tmp_path):
    write_inputs(tmp_path)
    run_two_processes(train_args(tmp_path, "ddp", 2))
    run_two_fsdp_processes(train_args(tmp_path, "fsdp", 2))
    ddp, fsdp = read_log(tmp_path / "ddp"), read_log(tmp_path / "fsdp")
    assert [r["step"] for r in fsdp] == list(range(1, 7))
    for a, b in zip(fsdp, ddp):
        assert a["loss"] == pytest.approx(b["loss"], abs=FSDP_LOSS_TOLERANCE)

    # sharded: one file per process, no whole-model file
    checkpoint = tmp_path / "fsdp" / "checkpoint-3"
    assert sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp",
                                                                                            "__1_0.distcp"]
    assert not (checkpoint / "model.safetensors").exists()

    # the export gathers the full weights: they load as a pipeline, equal to data parallelism's within float rounding
    exported = tmp_path / "fsdp" / "transformer" / "diffusion_pytorch_model.safetensors"
    pipe = VARCLIPPipeline.from_pretrained(tmp_path / "fsdp")
    reference = VARCLIPPipeline.from_pretrained(tmp_path / "ddp").transformer.state_dict()
    for name, tensor in pipe.transformer.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-5, msg=name)
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images.shape[0] == 1

    # drop the end of the run and resume it from step 3's shards: the same losses, bit for bit, and a new export
    shutil.rmtree(tmp_path / "fsdp" / "checkpoint-6")
    exported.unlink()
    run_two_fsdp_processes(train_args(tmp_path, "fsdp", 2) + ["--resume_from_checkpoint", "latest"])
    assert untimed(read_log(tmp_path / "fsdp")) == untimed(fsdp)
    assert exported.is_file()


def test_fsdp_that_accelerate_does_not_shard_is_refused(tmp_path, monkeypatch):
    # what `accelerate launch --use_fsdp` leaves for a process it cannot shard (a CPU): no silent data parallelism
    write_inputs(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    reset_accelerate_state()
    try:
        with pytest.raises(ValueError, match="FSDP was asked for .* accelerate runs these processes as NO"):
            train_var.main(train_args(tmp_path, "refused", 2))
    finally:
        reset_accelerate_state()
    assert not (tmp_path / "refused" / "train_log.jsonl").exists()
