"""Atomic, resumable training checkpoints and atomic final outputs.

A checkpoint is a folder ``checkpoint-<step>`` holding

- what ``accelerate``'s ``save_state`` writes: the model (``model.safetensors``, or FSDP shards), the optimizer and the
  learning-rate scheduler (``*.bin``, read back with ``torch.load(weights_only=True)``), its own RNG record;
- ``rng_state_<rank>.safetensors`` + ``.json``: Python's, NumPy's and torch's global RNG states (CPU and CUDA) and
  every named training generator (condition dropout, ...), one pair per process;
- ``ema.safetensors`` + ``ema.json`` with ``--use_ema``;
- ``training_state.json``: step, data position and run signature. It is written last: a folder without it was never
  completed.

Nothing in a checkpoint is unpickled beyond tensors, so loading one cannot execute code. The folder is built as
``checkpoint-<step>.tmp``, every file is fsynced, and only then renamed into place, so a crash mid-save leaves the
previous checkpoints intact; old checkpoints are deleted only after the new one is complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..utils.atomic import atomic_open

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINING_STATE_NAME",
    "checkpoint_step",
    "is_complete_checkpoint",
    "check_checkpoint_state",
    "list_checkpoints",
    "resolve_resume_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "rotate_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
    "write_json_atomic",
    "publish_folder",
    "fsync_tree",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_NAME = "training_state.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------------
# Durable file-system helpers
# ----------------------------------------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some file systems refuse to open folders; the data itself is still synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (and ``root``), so a rename after it publishes durable data."""
    root = Path(root)
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (a temporary file next to ``path``, fsync, rename over ``path``)."""
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def publish_folder(staging: str | os.PathLike, output_dir: str | os.PathLike,
                   index_names: Sequence[str] = ("model_index.json", "config.json")) -> None:
    """Move every entry of a finished ``staging`` folder into ``output_dir`` without a loadable half state.

    The index entries (``model_index.json`` of a pipeline, ``config.json`` of a model) of ``output_dir`` are removed
    first and the new ones moved last, so at every instant ``output_dir`` is either the old model, or not loadable,
    or the new model. Each entry moves with one ``os.replace`` (same file system); other entries of ``output_dir``
    (checkpoints, logs, samples) are left alone.
    """
    staging, output_dir = Path(staging), Path(output_dir)
    fsync_tree(staging)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in index_names:
        index = output_dir / name
        if index.is_dir() and not index.is_symlink():
            shutil.rmtree(index)
        elif index.exists() or index.is_symlink():
            index.unlink()
    entries = sorted(staging.iterdir(), key=lambda p: (p.name in index_names, p.name))
    for entry in entries:
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            trash = output_dir / f".{entry.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(target, trash)
            os.replace(entry, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(entry, target)
    _fsync_path(output_dir)
    shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# RNG states as tensors + JSON (no pickle)
# ----------------------------------------------------------------------------------------------------------------------


def capture_rng_state(
    generators: dict[str, torch.Generator] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Python's, NumPy's, torch's (CPU and CUDA) global RNG states and the named generators' states."""
    tensors: dict[str, torch.Tensor] = {}
    py_version, py_internal, py_gauss = random.getstate()
    tensors["python_mt"] = torch.tensor(py_internal, dtype=torch.int64)
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    tensors["numpy_mt"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    tensors["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    for name, generator in (generators or {}).items():
        tensors[f"generator.{name}"] = generator.get_state()
    scalars = {"python_version": py_version, "python_gauss_next": py_gauss, "numpy_kind": np_kind,
               "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss),
               "numpy_cached_gaussian": float(np_cached),
               "generators": sorted((generators or {}).keys())}
    return tensors, scalars


def restore_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any],
                      generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate((scalars["python_version"], tuple(int(v) for v in tensors["python_mt"].tolist()),
                     scalars["python_gauss_next"]))
    np.random.set_state((scalars["numpy_kind"], tensors["numpy_mt"].numpy().astype(np.uint32), scalars["numpy_pos"],
                         scalars["numpy_has_gauss"], scalars["numpy_cached_gaussian"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda_states = [tensors[f"torch_cuda_{i}"] for i in range(torch.cuda.device_count()) if f"torch_cuda_{i}" in tensors]
    if cuda_states and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    for name, generator in (generators or {}).items():
        key = f"generator.{name}"
        if key not in tensors:
            raise ValueError(f"the checkpoint has no state for generator {name!r} (it has {scalars.get('generators')})")
        generator.set_state(tensors[key])


# ----------------------------------------------------------------------------------------------------------------------
# Finding checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def checkpoint_step(path: str | os.PathLike) -> int | None:
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A completed checkpoint: a ``checkpoint-<step>`` folder whose ``training_state.json`` parses."""
    path = Path(path)
    if checkpoint_step(path) is None or not path.is_dir():
        return False
    try:
        state = json.loads((path / TRAINING_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("complete") is True


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (by step); ``.tmp`` and unfinished folders are skipped."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: checkpoint_step(p))


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """``"latest"`` → the newest complete checkpoint in ``output_dir`` (None if there is none); a path → that
    checkpoint, which must be complete."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("no complete checkpoint in %s: starting a new run", output_dir)
            return None
        return found[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_dir() and (Path(output_dir) / path).is_dir():
        path = Path(output_dir) / path
    if not is_complete_checkpoint(path):
        raise ValueError(f"`--resume_from_checkpoint` {resume_from_checkpoint!r} is not a complete checkpoint folder "
                         f"(a 'checkpoint-<step>' folder with {TRAINING_STATE_NAME}); pass 'latest' or such a folder")
    return path


def check_checkpoint_state(path: str | os.PathLike, state: Any, max_train_steps: int | None = None) -> int:
    """Validate a checkpoint's ``training_state.json`` before resuming from it; returns its step.

    A ``checkpoint-N`` folder must record step N (a renamed or edited folder would otherwise resume at a step it
    does not hold), within ``[0, max_train_steps]``, at a data position of non-negative ints.
    """
    path = Path(path)
    where = f"`--resume_from_checkpoint` {str(path)!r}"
    if not isinstance(state, dict):
        raise ValueError(f"{where}: {TRAINING_STATE_NAME} is not a JSON object")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"{where}: {TRAINING_STATE_NAME} records step {step!r}, not an int")
    folder_step = checkpoint_step(path)
    if folder_step is not None and step != folder_step:
        raise ValueError(f"{where}: the folder is named for step {folder_step} but {TRAINING_STATE_NAME} records "
                         f"step {step}; the checkpoint was renamed or edited, resume from another one")
    if step < 0 or (max_train_steps is not None and step > max_train_steps):
        bound = "" if max_train_steps is None else f", {max_train_steps}"
        raise ValueError(f"{where}: records step {step}, outside [0{bound}] (`--max_train_steps` {max_train_steps}); "
                         f"resume from another checkpoint or raise --max_train_steps")
    position = state.get("position")
    if not isinstance(position, dict) or not all(
            isinstance(position.get(k), int) and not isinstance(position.get(k), bool) and position[k] >= 0
            for k in ("epoch", "batch_index")):
        raise ValueError(f"{where}: {TRAINING_STATE_NAME} records the data position {position!r}, not "
                         f"{{'epoch': int >= 0, 'batch_index': int >= 0}}")
    return step


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Keep the newest ``total_limit`` complete checkpoints; delete older ones and leftover ``.tmp`` folders."""
    output_dir = Path(output_dir)
    removed: list[Path] = []
    for leftover in output_dir.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    if total_limit is None:
        return removed
    complete = list_checkpoints(output_dir)
    for old in complete[: max(len(complete) - total_limit, 0)]:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------------


def _save_ema(ema, folder: Path) -> None:
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({f"shadow.{i}": p.detach().contiguous().cpu() for i, p in enumerate(shadow)}, folder / "ema.safetensors")
    state["num_shadow_params"] = len(shadow)
    (folder / "ema.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def _load_ema(ema, folder: Path) -> None:
    if not (folder / "ema.safetensors").is_file():
        raise ValueError(f"checkpoint {str(folder)!r} has no EMA weights; it was saved without `--use_ema`")
    state = json.loads((folder / "ema.json").read_text(encoding="utf-8"))
    tensors = load_file(folder / "ema.safetensors")
    count = state.pop("num_shadow_params")
    if count != len(ema.shadow_params):
        raise ValueError(f"checkpoint {str(folder)!r} has {count} EMA tensors, the model {len(ema.shadow_params)}")
    device = ema.shadow_params[0].device if ema.shadow_params else "cpu"
    state["shadow_params"] = [tensors[f"shadow.{i}"].to(device) for i in range(count)]
    ema.load_state_dict(state)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, training_state: dict[str, Any],
                    generators: dict[str, torch.Generator] | None = None, ema=None,
                    total_limit: int | None = None) -> Path:
    """Write ``output_dir/checkpoint-<step>`` atomically (every process must call this).

    ``training_state`` (JSON-serialisable) is stored as ``training_state.json`` with ``complete: true``, the last
    file written; the folder is renamed from ``checkpoint-<step>.tmp`` only after every file is fsynced. Then older
    checkpoints beyond ``total_limit`` are removed.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f"{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()

    # 1. model, optimizer, scheduler (and FSDP shards, a GradScaler) through accelerate
    accelerator.save_state(str(tmp), safe_serialization=True)
    # 2. RNG states of every process, as tensors + JSON
    tensors, scalars = capture_rng_state(generators)
    rank = accelerator.process_index
    save_file(tensors, tmp / f"rng_state_{rank}.safetensors")
    (tmp / f"rng_state_{rank}.json").write_text(json.dumps(scalars, indent=2), encoding="utf-8")
    # 3. EMA weights
    if ema is not None and accelerator.is_main_process:
        _save_ema(ema, tmp)
    accelerator.wait_for_everyone()

    # 4. the completion marker, then fsync and publish
    if accelerator.is_main_process:
        state = dict(training_state, step=int(step), complete=True, format_version=FORMAT_VERSION,
                     num_processes=accelerator.num_processes)
        write_json_atomic(tmp / TRAINING_STATE_NAME, state)
        fsync_tree(tmp)
        if final.exists():  # a re-run over an older run's checkpoint of the same step
            trash = output_dir / f".{final.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(output_dir)
        rotate_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | os.PathLike, generators: dict[str, torch.Generator] | None = None,
                    ema=None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, RNG states, generators and EMA from ``path``; return its training state."""
    path = Path(path)
    if not is_complete_checkpoint(path):
        raise ValueError(f"checkpoint {str(path)!r} is incomplete (no valid {TRAINING_STATE_NAME})")
    state = json.loads((path / TRAINING_STATE_NAME).read_text(encoding="utf-8"))
    accelerator.load_state(str(path))  # tensors by safetensors, optimizer/scheduler by torch.load(weights_only=True)
    rank = accelerator.process_index
    rng_file = path / f"rng_state_{rank}.safetensors"
    if rng_file.is_file():
        scalars = json.loads((path / f"rng_state_{rank}.json").read_text(encoding="utf-8"))
        restore_rng_state(load_file(rng_file), scalars, generators)
    elif generators:
        # a different process count: the global RNG states cannot carry over, the named generators restart seeded
        logger.warning("checkpoint %s has no RNG state for process %d; its generators are re-seeded", path, rank)
    if ema is not None:
        _load_ema(ema, path)
    return state
