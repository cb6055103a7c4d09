"""The training machinery shared by the VQ-VAE, CLIP and VAR-CLIP entry points.

Each entry point builds a :class:`TrainingTask` (the trainable model, its loss, its data, how to export the result)
and hands it to :func:`run_training`, which owns everything else: the ``accelerate`` setup (devices, mixed precision,
gradient accumulation, data parallelism), AdamW with VAR's no-weight-decay groups, the learning-rate schedule, EMA,
the resumable data order, atomic checkpoints and resume, the JSONL/TensorBoard logs, sample grids and the final
atomic ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..utils.arguments import add_option, finite_floats_only
from ..utils.dtypes import has_native_bf16
from ..utils.files import (
    MARKER_NAME,
    check_replaceable,
    hold_lock,
    input_paths,
    release_lock,
    resolve_output_dir,
    write_marker,
)
from .checkpointing import (
    capture_rng_state,
    check_checkpoint_state,
    list_checkpoints,
    load_checkpoint,
    publish_folder,
    resolve_resume_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .data import DataPosition, ResumableSampler, iterate_batches, make_dataloader
from .metrics_log import LOG_FILE_NAME, MetricsLog, read_log

__all__ = [
    "MIXED_PRECISION_CHOICES",
    "REPORT_TO_CHOICES",
    "LR_SCHEDULERS",
    "LOG_FILE_NAME",
    "add_data_arguments",
    "add_training_arguments",
    "check_training_arguments",
    "claim_output_dir",
    "release_output_dir",
    "configure_logging",
    "trainer_main",
    "create_accelerator",
    "build_optimizer",
    "trainable_parameters",
    "TrainingTask",
    "TrainingResult",
    "MetricsLog",
    "run_training",
    "read_log",
]

logger = logging.getLogger(__name__)


def _log_main(message: str, *args: Any, level: int = logging.INFO) -> None:
    """Log once, from the main process (every process runs the same loop)."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        logger.log(level, message, *args)

MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16", "auto")
REPORT_TO_CHOICES = ("tensorboard", "none")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
STAGING_NAME = ".final.tmp"


# ----------------------------------------------------------------------------------------------------------------------
# Command-line arguments shared by every entry point
# ----------------------------------------------------------------------------------------------------------------------


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    add_option(group, "train-data-dir", type=str, default=None,
                       help="an imagefolder dataset: images + metadata.jsonl with `file_name` and `text` (class "
                            "subfolders give labels)")
    add_option(group, "caption-file", type=str, default=None,
                       help="VAR-CLIP's caption file instead: lines 'relative/path.JPEG: caption'")
    add_option(group, "image-root", type=str, default=None,
                       help="folder the caption file's paths are relative to (default: its folder or parent)")
    add_option(group, "image-column", type=str, default="image", help="the dataset's image column (default image)")
    add_option(group, "caption-column", type=str, default="text", help="the dataset's caption column (default text)")
    add_option(group, "max-train-samples", type=int, default=None, help="use only the first N samples")
    add_option(group, "dataset-cache-dir", type=str, default=None, help="cache folder of `datasets`")
    add_option(group, "resolution", type=int, default=None,
                       help="training image side (default: what the model takes)")
    add_option(group, "crop", choices=("center", "random"), default="center",
                       help="square crop after the resize (center keeps caption positions true)")
    add_option(group, "resize-ratio", type=float, default=1.0,
                       help="resize the shorter side to ratio × resolution before cropping (VAR uses 1.125 with "
                            "random crops)")
    add_option(group, "random-flip", action="store_true",
                       help="random horizontal flips (off by default: captions name left and right)")
    add_option(group, "dataloader-num-workers", type=int, default=0,
               help="processes that load and augment images (default 0: the training process itself)")


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    learning_rate: float | None,
    weight_decay: float,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.95,
    max_grad_norm: float = 1.0,
    lr_scheduler: str = "cosine",
    train_batch_size: int = 16,
) -> None:
    """Optimisation, precision, checkpointing and logging flags (defaults differ per model); every float flag of
    ``parser`` takes finite numbers only."""
    finite_floats_only(parser)
    add_option(parser, "output-dir", type=str, required=True,
                        help="where the trained model, checkpoints, logs and samples are written")
    add_option(parser, "seed", type=int, default=0, help="seeds initialisation, data order and augmentation")

    group = parser.add_argument_group("optimisation")
    add_option(group, "train-batch-size", type=int, default=train_batch_size, help="batch size per process")
    add_option(group, "gradient-accumulation-steps", type=int, default=1,
               help="batches whose gradients add up before one optimizer step (default 1)")
    add_option(group, "max-train-steps", type=int, default=None,
                       help="optimizer steps (overrides --num_train_epochs)")
    add_option(group, "num-train-epochs", type=int, default=1, help="passes over the data (default 1)")
    add_option(group, "learning-rate", type=float, default=learning_rate,
               help="peak learning rate" + (f" (default {learning_rate})" if learning_rate is not None else
                                            " (default: chosen by the trainer, printed at the start)"))
    add_option(group, "lr-scheduler", choices=LR_SCHEDULERS, default=lr_scheduler,
               help=f"learning-rate schedule after the warm-up (default {lr_scheduler})")
    add_option(group, "lr-warmup-steps", type=int, default=None,
                       help="linear warm-up steps (default: 2%% of the steps, as VAR's ep/50)")
    add_option(group, "adam-beta1", type=float, default=adam_beta1, help=f"AdamW's β1 (default {adam_beta1})")
    add_option(group, "adam-beta2", type=float, default=adam_beta2, help=f"AdamW's β2 (default {adam_beta2})")
    add_option(group, "adam-weight-decay", type=float, default=weight_decay,
               help=f"AdamW's decoupled weight decay (default {weight_decay})")
    add_option(group, "adam-epsilon", type=float, default=1e-8, help="AdamW's ε (default 1e-8)")
    add_option(group, "max-grad-norm", type=float, default=max_grad_norm, help="0 disables clipping")
    add_option(group, "use-ema", action="store_true", help="keep an exponential moving average of the weights "
                                                              "and export it")
    add_option(group, "ema-decay", type=float, default=0.9999,
               help="the moving average's decay per step (default 0.9999)")

    group = parser.add_argument_group("speed")
    add_option(group, "mixed-precision", choices=MIXED_PRECISION_CHOICES, default="no",
                       help="bf16 (CPU or GPU), fp16 (GPU, with a gradient scaler), or auto: bf16 where the hardware "
                            "computes it natively (GPUs from Ampere on, CPUs with AVX512-BF16 or AMX), else no")
    add_option(group, "allow-tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    add_option(group, "torch-compile", action="store_true", help="compile the trained model with torch.compile")

    group = parser.add_argument_group("checkpoints and logs")
    add_option(group, "checkpointing-steps", type=int, default=500,
                       help="save a resumable checkpoint every N optimizer steps (0: never)")
    add_option(group, "checkpoints-total-limit", type=int, default=None, help="keep only the last K checkpoints")
    add_option(group, "resume-from-checkpoint", type=str, default=None,
                       help="'latest' (the newest complete checkpoint in --output_dir, if any) or a checkpoint folder")
    add_option(group, "report-to", choices=REPORT_TO_CHOICES, default="none",
                       help="log to TensorBoard (pip install tensorboard) besides train_log.jsonl")
    add_option(group, "tracker-project-name", type=str, default=None,
               help="the TensorBoard run's project name (default: the trainer's name)")
    add_option(group, "validation-steps", type=int, default=0,
                       help="write samples / validation metrics every N steps and at the end (0: only at the end)")
    add_option(group, "no-progress-bar", action="store_true", help="disable the tqdm progress bar")


def check_training_arguments(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first bad flag."""
    positive = ("train_batch_size", "gradient_accumulation_steps", "num_train_epochs")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"`--max_train_steps` must be >= 1, got {args.max_train_steps}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise ValueError(f"`--learning_rate` must be > 0, got {args.learning_rate}")
    for name in ("checkpointing_steps", "validation_steps", "dataloader_num_workers"):
        if getattr(args, name, 0) < 0:
            raise ValueError(f"`--{name}` must be >= 0, got {getattr(args, name)}")
    if args.lr_warmup_steps is not None and args.lr_warmup_steps < 0:
        raise ValueError(f"`--lr_warmup_steps` must be >= 0, got {args.lr_warmup_steps}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"`--checkpoints_total_limit` must be >= 1, got {args.checkpoints_total_limit}")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"`--ema_decay` must be in [0, 1], got {args.ema_decay}")
    if args.max_grad_norm < 0:
        raise ValueError(f"`--max_grad_norm` must be >= 0, got {args.max_grad_norm}")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("`--mixed_precision fp16` needs a CUDA GPU (its gradient scaler); use 'bf16' on CPU")
    if args.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as error:
            raise ValueError("`--report_to tensorboard` needs TensorBoard: pip install tensorboard "
                             "(or pip install 'var-clip[train]'), or pass --report_to none") from error
    if hasattr(args, "resize_ratio") and args.resize_ratio < 1.0:
        raise ValueError(f"`--resize_ratio` must be >= 1.0, got {args.resize_ratio}")
    if hasattr(args, "train_data_dir") and (args.train_data_dir is None) == (args.caption_file is None):
        raise ValueError("pass exactly one of `--train_data_dir` and `--caption_file`")


# ----------------------------------------------------------------------------------------------------------------------
# Accelerator, optimizer
# ----------------------------------------------------------------------------------------------------------------------


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines with time and source for a command-line run; accelerate's per-file save messages stay quiet."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(max(level, logging.WARNING))


def trainer_main(build_parser: Callable[[], argparse.ArgumentParser], train: Callable[[argparse.Namespace], Any],
                 argv: list[str] | None = None) -> int:
    """A trainer's command line: parse ``argv``, log as a command does, train; 0 when it finished."""
    args = build_parser().parse_args(argv)
    configure_logging()
    train(args)
    # The trained model is garbage now, but kept alive by reference cycles (hooks that capture their module): an FSDP
    # model holds its process group through its device mesh, and a gloo group freed only at interpreter shutdown can
    # abort the process ("terminate called without an active exception") after the run succeeded. Free it now.
    gc.collect()
    return 0


def create_accelerator(args: argparse.Namespace, project_name: str):
    """An ``Accelerator`` for the flags: precision, accumulation, trackers writing under ``output_dir/logs``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = resolve_output_dir(args.output_dir, "--output_dir")
    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs"))
    mixed_precision = resolve_mixed_precision(args.mixed_precision)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project_config,
    )
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        claim_output_dir(output_dir, protected=input_paths(args))
    if args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name or project_name, config=config)
    return accelerator


def resolve_mixed_precision(requested: str) -> str:
    """accelerate's ``mixed_precision`` for ``--mixed_precision``: ``auto`` becomes bf16 where the device computes it
    natively and ``no`` elsewhere; bf16 asked for on a CPU that only emulates it is kept, with a warning."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "auto":
        chosen = "bf16" if has_native_bf16(device_type) else "no"
        _log_main("--mixed_precision auto: %s on this %s", chosen, device_type.upper())
        return chosen
    if requested == "bf16" and device_type == "cpu" and not has_native_bf16("cpu"):
        _log_main("--mixed_precision bf16: this CPU has no bf16 units (AVX512-BF16 or AMX) and emulates bf16, which "
                  "makes training many times slower than float32; use --mixed_precision auto or no",
                  level=logging.WARNING)
    return requested


def build_optimizer(model: nn.Module, args: argparse.Namespace, no_decay_keys: Sequence[str] = (),
                    learning_rate: float | None = None) -> torch.optim.AdamW:
    """AdamW with two groups, as VAR: no weight decay on biases, 1-D tensors (norms, gains) and ``no_decay_keys``
    (positional and level embeddings, learned null condition, attention scales). torch's default implementation:
    the fused one measured no faster on two CPU cores (`benchmarks/bench_training.py --optimizers default fused`).
    The peak ``learning_rate`` is ``--learning_rate`` unless given.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith("bias") or any(key in name for key in no_decay_keys):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": args.adam_weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = learning_rate if learning_rate is not None else args.learning_rate
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr,
                             betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


# ----------------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------------


LossFn = Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainingTask:
    """What one kind of training supplies to :func:`run_training`.

    Attributes:
        name: a short name (``"vqvae"``, ``"clip"``, ``"var"``) for trackers and the progress bar.
        model: the trainable module (not yet prepared).
        loss_fn: ``(prepared model, batch) -> (scalar loss, {metric: float})``; batches come from ``dataset`` through
            ``collate_fn`` (CPU tensors: the loss moves what it needs).
        dataset: a map-style dataset addressed by the ``(index, epoch)`` keys of :class:`ResumableSampler`.
        export: ``(unwrapped model, staging folder) -> None`` writes the final ``save_pretrained`` output (with the
            EMA weights swapped in under ``--use_ema``).
        validate: optional ``(unwrapped model, step, output_dir) -> {metric: float}``, run on the main process every
            ``--validation_steps`` and at the end (EMA weights swapped in), e.g. writing a sample grid.
        after_step: optional ``(unwrapped model) -> None`` after every optimizer step (e.g. CLIP's temperature clamp).
        generators: named ``torch.Generator`` the loss draws from; their states go into every checkpoint.
        no_decay_keys: parameter-name substrings excluded from weight decay.
        index_names: the final output's index files, moved last (see :func:`publish_folder`).
        collate_fn: how examples become a batch.
        learning_rate: the peak learning rate, when the trainer derives it from the run (default ``--learning_rate``).
    """

    name: str
    model: nn.Module
    loss_fn: LossFn
    dataset: Any
    export: Callable[[nn.Module, Path], None]
    validate: Callable[[nn.Module, int, Path], dict[str, float]] | None = None
    after_step: Callable[[nn.Module], None] | None = None
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    no_decay_keys: Sequence[str] = ()
    index_names: Sequence[str] = ("model_index.json", "config.json")
    collate_fn: Callable | None = None
    learning_rate: float | None = None


@dataclass
class TrainingResult:
    output_dir: Path
    global_step: int
    losses: list[float]


def _signature(args: argparse.Namespace, sampler: ResumableSampler) -> dict[str, Any]:
    """What a checkpoint must agree on with the resuming run for the data position to mean the same samples."""
    return {"seed": args.seed, "dataset_size": sampler.num_samples, "global_batch_size": sampler.global_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps}


def _check_signature(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    for key, value in current.items():
        if key in saved.get("signature", {}) and saved["signature"][key] != value:
            raise ValueError(f"`--resume_from_checkpoint` {str(path)!r} was saved with "
                             f"{key}={saved['signature'][key]}, "
                             f"this run has {key}={value}: resume with the same seed, data, batch size and "
                             "accumulation (or start a new --output_dir)")


def _compute(accelerator) -> dict[str, Any]:
    """What else can decide a step's float results, bit for bit: the device type and, on a CPU, torch's thread count
    (kernels that split a sum by thread; the transformer's own layers avoid them in float32, see
    :class:`~var_clip.models.var_transformer.ThreadInvariantLayerNorm`)."""
    return {"device_type": accelerator.device.type, "torch_threads": torch.get_num_threads()}


def _warn_on_other_compute(saved: Any, current: dict[str, Any], path: Path) -> None:
    """A resume on other hardware or, on a CPU, with another thread count works, but is no longer the same run."""
    if not isinstance(saved, dict):
        return  # a checkpoint of an older version
    if saved.get("device_type") != current["device_type"]:
        _log_main("%s was written on %s, this run is on %s: it continues the run, but not bit for bit as the "
                  "earlier device would have", path, saved.get("device_type"), current["device_type"],
                  level=logging.WARNING)
    elif current["device_type"] == "cpu" and saved.get("torch_threads") != current["torch_threads"]:
        _log_main("%s was written by a run with %s CPU threads, this one has %d: CPU kernels that split a sum by "
                  "thread (torch's LayerNorm backward, bf16 autocast) can change the trained weights' last bits, so "
                  "the continuation may differ from the %s-thread run's (set OMP_NUM_THREADS=%s to continue it "
                  "exactly)", path, saved.get("torch_threads"), current["torch_threads"], saved.get("torch_threads"),
                  saved.get("torch_threads"), level=logging.WARNING)


def claim_output_dir(output_dir: str | os.PathLike, flag: str = "--output_dir",
                     protected: Sequence[str | os.PathLike] = ()) -> Path:
    """Make ``output_dir`` this run's (main process): refuse a folder var-clip did not write (the user's files are at
    stake: the final export replaces entries of the same name) or one that is or holds an input in ``protected`` (the
    pipeline being fine-tuned), take its lock (one writer per folder) and mark it.

    The lock is released by :func:`release_output_dir` (at the end of :func:`run_training`), when a ``var-clip``
    command ends, or when the process exits.
    """
    output_dir = resolve_output_dir(output_dir, flag)
    check_replaceable(output_dir, flag, protected)
    hold_lock(output_dir, flag)
    if not (output_dir / MARKER_NAME).exists():
        write_marker(output_dir, "training")
    return output_dir


def release_output_dir(output_dir: str | os.PathLike) -> None:
    release_lock(Path(output_dir).expanduser().resolve())


def run_training(args: argparse.Namespace, accelerator, task: TrainingTask) -> TrainingResult:
    """Train ``task.model`` for ``--max_train_steps`` optimizer steps (or ``--num_train_epochs``), resumably.

    Returns the output folder, the final step and the losses logged by this call (one per optimizer step). The
    output folder's lock (taken by :func:`create_accelerator`) is released when it returns or fails.
    """
    try:
        return _train(args, accelerator, task)
    finally:
        release_output_dir(args.output_dir)


def _train(args: argparse.Namespace, accelerator, task: TrainingTask) -> TrainingResult:
    from accelerate.utils import DistributedType, parse_flag_from_env
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    output_dir = Path(args.output_dir)
    P = accelerator.num_processes
    is_fsdp = accelerator.distributed_type == DistributedType.FSDP
    if not is_fsdp and parse_flag_from_env("ACCELERATE_USE_FSDP"):
        # accelerate (1.15) shards only on accelerator devices: CPU processes asked for FSDP would silently train as
        # data parallelism, each with the whole model, optimizer and gradients
        raise ValueError(f"FSDP was asked for (`accelerate launch --use_fsdp`), but accelerate runs these processes as "
                         f"{accelerator.distributed_type.value}: it shards only on GPUs (and other accelerators); on "
                         "CPUs train with data parallelism (docs/training.md, 'Several CPU processes')")
    if is_fsdp and args.use_ema:
        raise ValueError("`--use_ema` keeps a full copy of the weights on one process and does not work with FSDP's "
                         "sharded parameters: train without it, or with data parallelism (DDP)")
    if is_fsdp and task.validate is not None:
        # sampling on one process needs the whole model, which FSDP keeps sharded across processes
        _log_main("validation samples are skipped under FSDP", level=logging.WARNING)
        task.validate = None

    # 1. data order: seeded, sharded over processes, resumable at any batch
    sampler = ResumableSampler(len(task.dataset), args.train_batch_size, seed=args.seed, num_replicas=P,
                               rank=accelerator.process_index)
    kwargs = {"collate_fn": task.collate_fn} if task.collate_fn is not None else {}
    loader = make_dataloader(task.dataset, sampler, num_workers=args.dataloader_num_workers,
                             pin_memory=torch.cuda.is_available(), **kwargs)
    steps_per_epoch = math.ceil(sampler.batches_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    warmup = args.lr_warmup_steps if args.lr_warmup_steps is not None else round(0.02 * max_steps)

    # 2. optimizer, schedule (stepped once per process by accelerate, hence × P), EMA
    model = task.model
    model.train()
    optimizer = build_optimizer(model, args, task.no_decay_keys, task.learning_rate)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=warmup * P,
                                 num_training_steps=max_steps * P)
    ema = None
    if args.use_ema:
        ema = EMAModel(trainable_parameters(model), decay=args.ema_decay)
    if args.torch_compile:
        model.compile()
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.to(accelerator.device)

    # 3. resume
    log = MetricsLog(output_dir / LOG_FILE_NAME, enabled=accelerator.is_main_process)
    global_step, position = 0, DataPosition()
    checkpoint = resolve_resume_checkpoint(output_dir, args.resume_from_checkpoint)
    signature = _signature(args, sampler)
    if checkpoint is not None:
        saved = json.loads((checkpoint / "training_state.json").read_text(encoding="utf-8"))
        check_checkpoint_state(checkpoint, saved, max_steps)
        _check_signature(saved, signature, checkpoint)
        _warn_on_other_compute(saved.get("compute"), _compute(accelerator), checkpoint)
        state = load_checkpoint(accelerator, checkpoint, task.generators, ema)
        global_step, position = int(state["step"]), DataPosition.from_dict(state["position"])
        if position.batch_index >= sampler.batches_per_epoch:
            raise ValueError(f"`--resume_from_checkpoint` {str(checkpoint)!r} records batch {position.batch_index} "
                             f"of an epoch of {sampler.batches_per_epoch} batches")
        log.truncate_after(global_step)
        _log_main("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, global_step, position.epoch,
                  position.batch_index)
    else:
        if list_checkpoints(output_dir):
            raise ValueError(f"`--output_dir` {str(output_dir)!r} holds checkpoints of an earlier run: pass "
                             "`--resume_from_checkpoint latest` to continue it, or choose a new `--output_dir`")
        log.reset()

    # 4. train
    total_batch = sampler.global_batch_size * args.gradient_accumulation_steps
    _log_main("training %s: %d samples, %d steps, %d images per step (%d per process × %d processes × %d "
              "accumulation)", task.name, sampler.num_samples, max_steps, total_batch, args.train_batch_size, P,
              args.gradient_accumulation_steps)
    progress = tqdm(total=max_steps, initial=global_step, desc=f"train {task.name}",
                    disable=args.no_progress_bar or not accelerator.is_local_main_process)
    batches = iterate_batches(loader, sampler, position)
    losses: list[float] = []
    micro_losses: list[float] = []
    micro_metrics: dict[str, list[float]] = {}
    last_step_end = time.perf_counter()
    while global_step < max_steps:
        batch_epoch = position.epoch
        batch, position = next(batches)
        with accelerator.accumulate(model):
            loss, metrics = task.loss_fn(model, batch)
            accelerator.backward(loss)
            grad_norm = None
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        # the loss and metrics averaged over all processes, in one gather
        local = torch.tensor([loss.item(), *(float(v) for v in metrics.values())], device=accelerator.device)
        averaged = accelerator.gather(local.reshape(1, -1)).mean(dim=0).tolist()
        micro_losses.append(averaged[0])
        for key, value in zip(metrics, averaged[1:]):
            micro_metrics.setdefault(key, []).append(value)
        if not accelerator.sync_gradients:
            continue

        # one optimizer step done
        global_step += 1
        if ema is not None:
            ema.step(trainable_parameters(unwrapped))
        if task.after_step is not None:
            task.after_step(unwrapped)
        record = {"step": global_step, "epoch": batch_epoch, "loss": sum(micro_losses) / len(micro_losses),
                  "lr": lr_scheduler.get_last_lr()[0]}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        record.update({k: sum(v) / len(v) for k, v in micro_metrics.items()})
        # wall-clock time since the previous step ended (its checkpoint and validation included): the log's sum is
        # what the run cost, however often it was resumed (a resumed run's log drops the interrupted steps)
        now = time.perf_counter()
        record["step_seconds"] = round(now - last_step_end, 4)
        last_step_end = now
        micro_losses, micro_metrics = [], {}
        losses.append(record["loss"])
        log.write(record)
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=global_step)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")

        if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
            training_state = {"position": position.to_dict(), "signature": signature,
                              "epoch_samples_seen": position.batch_index * sampler.global_batch_size,
                              "compute": _compute(accelerator)}
            save_checkpoint(accelerator, output_dir, global_step, training_state, task.generators, ema,
                            args.checkpoints_total_limit)
        if task.validate is not None and args.validation_steps and global_step % args.validation_steps == 0 \
                and global_step < max_steps:
            _validate(accelerator, task, unwrapped, ema, global_step, output_dir)
    progress.close()

    # 5. final validation and export (EMA weights if any), written aside and published atomically
    if task.validate is not None:
        _validate(accelerator, task, unwrapped, ema, global_step, output_dir)
    accelerator.wait_for_everyone()
    final = unwrapped
    if is_fsdp:  # gather the full weights (every process takes part) into an unsharded copy on the main process
        full_state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            final = _fresh_copy(unwrapped)
            final.load_state_dict(full_state)
    if accelerator.is_main_process:
        staging = output_dir / STAGING_NAME
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with _ema_weights(final, ema):
            task.export(final, staging)
        publish_folder(staging, output_dir, task.index_names)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainingResult(output_dir=output_dir, global_step=global_step, losses=losses)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (and EMA averages): those that require grad. A LoRA run freezes the base
    model, so its EMA holds the adapters only."""
    return [p for p in model.parameters() if p.requires_grad]


def _fresh_copy(model: nn.Module) -> nn.Module:
    """A new, unsharded instance of ``model``'s class and config (diffusers and transformers models)."""
    if hasattr(type(model), "from_config") and not hasattr(model.config, "to_dict"):
        return type(model).from_config(model.config)
    return type(model)(model.config)


class _ema_weights:
    """Swap the EMA weights into ``model`` for the duration of the block (no-op without EMA)."""

    def __init__(self, model: nn.Module, ema):
        self.model, self.ema = model, ema

    def __enter__(self):
        if self.ema is not None:
            self.ema.store(trainable_parameters(self.model))
            self.ema.copy_to(trainable_parameters(self.model))

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(trainable_parameters(self.model))


def _validate(accelerator, task: TrainingTask, unwrapped: nn.Module, ema, step: int, output_dir: Path) -> None:
    """Run ``task.validate`` on the main process without touching the training's RNG streams or train mode."""
    if accelerator.is_main_process:
        rng_tensors, rng_scalars = capture_rng_state(task.generators)
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            with _ema_weights(unwrapped, ema), torch.no_grad():
                metrics = task.validate(unwrapped, step, output_dir) or {}
        finally:
            unwrapped.train(was_training)
            restore_rng_state(rng_tensors, rng_scalars, task.generators)
        if metrics:
            accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=step)
            logger.info("step %d validation: %s", step, metrics)
    accelerator.wait_for_everyone()
