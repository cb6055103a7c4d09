r"""Generate many images: sharded across processes and machines with accelerate, resumable, evaluation-ready.

    var-clip generate-batch --prompts prompts.txt --num-images-per-prompt 4 --output-dir samples/
    accelerate launch -m var_clip.generate_batch --model var-d16 --class-labels 0-999 --per-class 50 \
        --output-dir fid-samples/ --npz

The work is a flat list of jobs (prompt index, image index), cut into fixed chunks of ``--batch-size`` consecutive
jobs; the chunks that still miss an image are shared between the processes. Every image draws from its own
``torch.Generator`` seeded from (``--seed``, prompt index, image index) only, and a chunk always holds the same jobs,
so the files do not depend on the number of processes, on which process made them, or on a restart. Each PNG is
written atomically; a rerun of the same command skips the images that exist and decode, so an interrupted run
resumes where it stopped. At the end the main process writes ``metadata.jsonl`` (one line per image, in job order),
which makes the folder a Hugging Face ``imagefolder`` dataset that ``var-clip train-var --train_data_dir`` reads,
and with ``--npz`` all images in one ``samples.npz`` (``arr_0``: uint8 N × H × W × 3, in job order), the layout of
OpenAI's guided-diffusion evaluator that VAR's FID protocol uses.

Legend: N images · H, W image size.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .utils.arguments import (
    OneLineParser,
    UsageError,
    add_dtype_option,
    add_model_option,
    add_option,
    int_at_least,
    is_main_process,
)
from .utils.atomic import TEMP_PREFIX, atomic_open

__all__ = [
    "GenerationJob",
    "RunSettings",
    "build_parser",
    "image_seed",
    "is_complete_png",
    "load_prompts",
    "main",
    "parse_class_labels",
    "plan_jobs",
]

METADATA_NAME = "metadata.jsonl"
SETTINGS_NAME = "generate_batch.json"
NPZ_NAME = "samples.npz"
# Every file generate-batch writes at the top of its folder (GenerationJob.file_name, unfinished atomic writes too)
OUTPUT_FILES = re.compile(rf"^(\d{{6,}}_\d{{3,}}\.png|{re.escape(METADATA_NAME)}|{re.escape(SETTINGS_NAME)}|"
                          rf"{re.escape(NPZ_NAME)}|{re.escape(TEMP_PREFIX)}.*)$")
#: The most images one folder holds (prompts or labels × images per prompt): every job is planned up front (about
#: 0.2 ms each), and FID protocols use 50,000.
MAX_IMAGES = 1_000_000


class GenerationError(Exception):
    """A failure of the work itself (exit code 1), reported as one line."""


# ----------------------------------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationJob:
    """One image to make: which condition, which of its images, the seed of its generator, its file."""

    prompt_index: int
    image_index: int
    condition: str | int  # the prompt, or the class label
    seed: int

    @property
    def file_name(self) -> str:
        return f"{self.prompt_index:06d}_{self.image_index:03d}.png"


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of one image's generator, a function of the three numbers only.

    numpy's ``SeedSequence`` hashes the triple, so neighbouring triples get unrelated streams and adding prompts or
    images per prompt never changes the seed of an existing image. 63 bits keep it a signed int64 in ``datasets``.
    """
    if min(seed, prompt_index, image_index) < 0:
        raise ValueError(f"`seed`, `prompt_index` and `image_index` must be >= 0, "
                         f"got {(seed, prompt_index, image_index)}")
    return int(np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def plan_jobs(conditions: Sequence[str | int], num_images_per_prompt: int, seed: int) -> list[GenerationJob]:
    """All jobs in their one fixed order: prompt by prompt, and within a prompt image by image."""
    return [GenerationJob(p, i, condition, image_seed(seed, p, i))
            for p, condition in enumerate(conditions) for i in range(num_images_per_prompt)]


def is_complete_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG that ends with its IEND chunk and decodes (PIL alone accepts a cut-off tail)."""
    import PIL.Image

    try:
        with open(path, "rb") as handle:
            handle.seek(-len(_PNG_END), os.SEEK_END)
            if handle.read() != _PNG_END:
                return False
        with PIL.Image.open(path) as image:
            if image.format != "PNG":
                return False
            image.load()
        return True
    except (OSError, ValueError, SyntaxError):  # PIL raises SyntaxError on some broken chunks
        return False


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk and its CRC: the last 12 bytes of every PNG


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def parse_class_labels(text: str) -> list[int]:
    """``"0-999"``, ``"1,5,9"`` or ``"0-9,20"`` → the labels in the order written (ranges inclusive)."""
    labels: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if sep else first)
        except ValueError:
            raise ValueError(f"`class_labels` must be ints and inclusive ranges like '0-999' or '1,5,9', "
                             f"got {text!r}") from None
        if low < 0 or high < low:
            raise ValueError(f"`class_labels` ranges must be 'low-high' with 0 <= low <= high, got {part.strip()!r}")
        if len(labels) + high - low + 1 > MAX_IMAGES:  # counted before the list is built
            raise ValueError(f"`class_labels` {text!r} names more than {MAX_IMAGES:,} labels")
        labels.extend(range(low, high + 1))
    return labels


def load_prompts(source: str, column: str = "prompt", split: str = "train") -> list[str]:
    """Read the prompts of a ``.txt`` file (one per non-empty line), a ``.jsonl`` or ``.csv`` file (``column``),
    a ``datasets`` folder (``save_to_disk`` output or a local dataset folder) or a Hub dataset name (``column``)."""
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".txt", ".jsonl", ".csv"):
        try:
            prompts = _read_prompt_file(path, suffix, column)
        except UnicodeDecodeError as error:
            raise ValueError(f"`prompts` file {source!r} is not UTF-8 text (byte {error.start}); save it as UTF-8"
                             ) from None
    elif path.is_file():
        raise ValueError(f"`prompts` file {source!r} must end in .txt, .jsonl or .csv (or be a dataset folder)")
    else:
        prompts = _load_dataset_column(source, column, split)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"{source!r}: prompts must be non-empty strings; entries {bad[:5]} are not")
    if not prompts:
        raise ValueError(f"`prompts` {source!r} holds no prompts")
    return [p.strip() for p in prompts]


def _read_prompt_file(path: Path, suffix: str, column: str) -> list[str]:
    """The prompts of a ``.txt``, ``.csv`` or ``.jsonl`` file; a format error names the file, the line and the fix."""
    source = str(path)
    with open(path, encoding="utf-8", newline="" if suffix == ".csv" else None) as handle:
        if suffix == ".txt":
            return [line.strip() for line in handle if line.strip()]
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise ValueError(f"`prompt_column` {column!r} is not a column of {source!r} "
                                 f"(columns: {reader.fieldnames})")
            prompts = []
            for row in reader:
                if not isinstance(row[column], str) or not row[column].strip():
                    raise ValueError(f"{source!r} line {reader.line_num} has no prompt in column {column!r}: "
                                     f"{row}; write one, or remove the line")
                prompts.append(row[column])
            return prompts
    from .utils.records import read_jsonl

    records = read_jsonl(path, [column], {column: str},
                         fix=f"every line needs a `{column}` string (or pass --prompt-column)")
    return [record[column] for record in records]


def _load_dataset_column(source: str, column: str, split: str) -> list:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"`prompts` {source!r} is not a .txt/.jsonl/.csv file; reading a dataset needs "
                         "`pip install datasets`") from None
    path = Path(source)
    try:
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            dataset = datasets.load_from_disk(str(path))
        elif path.is_dir() or (source.count("/") <= 1 and not path.suffix and not source.startswith((".", "/"))):
            dataset = datasets.load_dataset(str(source), split=split)
        else:
            raise ValueError(f"`prompts` {source!r} is neither a file, a folder nor a dataset name (owner/name)")
    except (OSError, ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        raise ValueError(f"could not load the dataset {source!r}: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                         " (offline? pass a local file or dataset folder)") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"`split` {split!r} is not in {source!r} (splits: {sorted(dataset)})")
        dataset = dataset[split]
    if column not in dataset.column_names:
        raise ValueError(f"`prompt_column` {column!r} is not a column of {source!r} (columns: {dataset.column_names})")
    return list(dataset[column])


# ----------------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """What decides the pixels of an image besides its seed; a folder holds the images of one setting only."""

    model: str
    dtype: str
    seed: int
    sampling: dict  # every declared sampling argument as used (var_clip.sampling.SAMPLING_OPTIONS), JSON-normalised
    conditions_sha256: str  # of the prompt or label list: index p must keep meaning the same prompt

    @classmethod
    def read(cls, path: Path) -> RunSettings | None:
        if not path.is_file():
            return None
        from .utils.records import read_json_object

        fix = "it is not the settings file generate-batch writes: choose a new --output-dir"
        saved = read_json_object(path, "--output-dir's settings file", fix)
        if "sampling" not in saved and {"guidance_scale", "top_k", "top_p"} <= set(saved):
            # a folder from before every sampling argument was recorded: those three, the others at their defaults
            from .sampling import SAMPLING_OPTIONS

            given = {key: saved.pop(key) for key in ("guidance_scale", "top_k", "top_p")}
            saved["sampling"] = as_json({o.name: given.get(o.name, o.default) for o in SAMPLING_OPTIONS})
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        if set(saved) != set(fields):
            raise ValueError(f"--output-dir's settings file {str(path)!r} has the keys {sorted(saved)}, not "
                             f"{sorted(fields)}; {fix}")
        return cls(**saved)

    def write(self, path: Path) -> None:
        with atomic_open(path, "w") as handle:
            json.dump(asdict(self), handle, indent=2, sort_keys=True)
            handle.write("\n")


def _conditions_digest(conditions: Sequence[str | int]) -> str:
    return hashlib.sha256(json.dumps(list(conditions)).encode()).hexdigest()


def _sampling_settings(pipeline_class: type, args: argparse.Namespace) -> dict:
    """The sampling values used: every declared sampling argument, the flags given, the pipeline's own defaults for
    the others."""
    from .sampling import SAMPLING_OPTIONS, given_sampling_options

    defaults = inspect.signature(pipeline_class.__call__).parameters
    given = given_sampling_options(args)
    return {o.name: given.get(o.name, defaults[o.name].default) for o in SAMPLING_OPTIONS}


def as_json(value):
    """``value`` as it reads back from JSON (tuples become lists, dict keys strings), so settings compare equal."""
    return json.loads(json.dumps(value))


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def _class_labels(text: str) -> list[int]:
    try:
        return parse_class_labels(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("`class_labels`", "labels")) from None


def build_parser() -> argparse.ArgumentParser:
    from .sampling import add_sampling_options

    p = OneLineParser(prog="var-clip generate-batch", description=__doc__)
    group = p.add_argument_group("what to generate (one of --prompts and --class-labels)")
    add_option(group, "prompts", metavar="PATH_OR_DATASET", default=None,
         help="a .txt file (one prompt per non-empty line), a .jsonl or .csv file, a `datasets` folder "
              "(save_to_disk or a local dataset) or a Hub dataset name; see --prompt-column and --split")
    add_option(group, "prompt-column", default="prompt",
         help="column of the prompts in .jsonl/.csv/datasets (default prompt)")
    add_option(group, "split", default="train", help="split of a dataset (default train)")
    add_option(group, "class-labels", type=_class_labels, default=None, metavar="LABELS",
         help="class labels for a class-conditional VAR model, e.g. 0-999 or 1,5,9 (VAR's FID protocol: 0-999)")
    add_option(group, "num-images-per-prompt", type=int_at_least(1), default=1,
         help="images per prompt or class (default 1); --per-class is the same option")
    add_option(group, "per-class", type=int_at_least(1), dest="num_images_per_prompt", help=argparse.SUPPRESS)

    group = p.add_argument_group("model and sampling")
    add_model_option(group)
    add_option(group, "batch-size", type=int_at_least(1), default=32,
         help="images per forward pass and process (default 32)")
    add_sampling_options(group)
    add_dtype_option(group)
    add_option(group, "seed", type=int_at_least(0), default=0,
         help="global seed; image i of prompt p uses a seed derived from (seed, p, i) only (default 0)")
    add_option(group, "threads", type=int_at_least(1), default=None,
         help="intra-op threads per process (default: OMP_NUM_THREADS when set, as `accelerate launch` sets it; "
              "else chosen by the work and the machine: every core when nothing else runs, else 1 for small models "
              "and batches and one per core for d16-sized ones)")

    group = p.add_argument_group("output")
    add_option(group, "output-dir", default=None, help="folder of the PNGs, metadata.jsonl and the .npz (created)")
    add_option(group, "npz", action="store_true",
         help=f"also write every image into OUTPUT_DIR/{NPZ_NAME} (arr_0: N×H×W×3 uint8)")
    add_option(group, "max-images", type=int_at_least(1), default=None,
         help="stop after about this many new images (at a batch boundary), e.g. to fit a time slot; rerun to go on")
    add_option(group, "no-progress-bar", action="store_true",
         help="no progress bar (the summary line is still printed)")
    return p


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


def _resolve_conditions(args: argparse.Namespace) -> list[str] | list[int]:
    if args.output_dir is None:
        raise UsageError("--output-dir is required")
    if (args.prompts is None) == (args.class_labels is None):
        raise UsageError("pass exactly one of --prompts and --class-labels")
    if args.class_labels is not None:
        return args.class_labels
    try:
        return load_prompts(args.prompts, args.prompt_column, args.split)
    except ValueError as error:
        raise UsageError(str(error).replace("`prompt_column`", "--prompt-column").replace("`split`", "--split")
                         .replace("`prompts`", "--prompts")) from None


def _check_model_kind(args: argparse.Namespace, class_mode: bool) -> None:
    """Catch a text model given class labels (or the reverse, or labels it lacks) before loading it."""
    import var_clip

    model = args.model
    config_path = Path(model or var_clip.DEFAULT_MODEL) / "transformer" / "config.json"
    if not config_path.is_file():
        return  # a Hub repo id: the pipeline says it
    from .utils.records import read_json_object

    config = read_json_object(config_path, "--model's transformer configuration",
                              "the model folder is damaged: convert or download it again")
    condition = config.get("condition_type", "text")
    if class_mode and condition != "class":
        raise UsageError(f"--class-labels needs a class-conditional VAR model (VARPipeline); --model "
                         f"{model or 'default'} is text-conditional: pass --prompts")
    if not class_mode and condition == "class":
        raise UsageError(f"--model {model} is class-conditional: pass --class-labels, not --prompts")
    n = config.get("num_classes")
    if class_mode and n is not None and max(args.class_labels) >= n:
        raise UsageError(f"--class-labels goes up to {max(args.class_labels)} but the model has {n} classes "
                         f"(0-{n - 1})")


def _load_pipeline(args: argparse.Namespace, pipeline_class: type, device):
    from .pipelines.loading import load_pipeline
    from .utils.pretrained import ModelLoadError

    try:
        pipe = load_pipeline(args.model, pipeline_class, args.dtype, str(device))
    except ModelLoadError as error:
        raise GenerationError(str(error)) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_output_dir(args: argparse.Namespace) -> Path:
    """The resolved ``--output-dir``, once it is proved to be generate-batch's: new, empty, or a folder it wrote (its
    marker or settings file, and nothing but its images, metadata and archive), and holding none of the inputs."""
    from .utils.files import MARKER_NAME, UnsafeOutputError, check_replaceable, input_paths, resolve_output_dir

    try:
        output_dir = resolve_output_dir(args.output_dir, "--output-dir")
        check_replaceable(output_dir, "--output-dir", input_paths(args, ("prompts", "model")), also_own=OUTPUT_FILES)
    except UnsafeOutputError as error:
        raise UsageError(str(error)) from None
    if output_dir.is_dir() and any(output_dir.iterdir()) and not any(
            (output_dir / name).is_file() for name in (MARKER_NAME, SETTINGS_NAME)):
        found = ", ".join(sorted(p.name for p in output_dir.iterdir())[:5])
        raise UsageError(f"--output-dir {str(output_dir)!r} is not a folder generate-batch wrote (it has no "
                         f"{SETTINGS_NAME}) and holds {found}; nothing was changed (choose a new folder)")
    return output_dir


def _check_settings(output_dir: Path, settings: RunSettings) -> None:
    saved = RunSettings.read(output_dir / SETTINGS_NAME)
    if saved is None or saved == settings:
        return
    changed = [k for k in asdict(settings) if k != "sampling" and getattr(saved, k) != getattr(settings, k)]
    changed += [k for k in settings.sampling if saved.sampling.get(k) != settings.sampling[k]]
    names = ["the prompts or labels" if k == "conditions_sha256" else f"--{k.replace('_', '-')}" for k in changed]
    raise UsageError(f"--output-dir {str(output_dir)!r} holds images made with other settings ({', '.join(names)} "
                     f"changed; see its {SETTINGS_NAME}): use the same settings to resume, or a new --output-dir")


def _generate_chunk(pipe, jobs: Sequence[GenerationJob], class_mode: bool, sampling: dict, device) -> list:
    import torch

    generators = [torch.Generator(device=device).manual_seed(job.seed) for job in jobs]
    conditions = [job.condition for job in jobs]
    # the tokens never depend on the chunk; the pixels would through the decoder's kernels, so it decodes one by one
    if class_mode:
        f_hat = pipe(class_labels=conditions, generator=generators, output_type="latent", **sampling).images
    else:
        f_hat = pipe(conditions, generator=generators, output_type="latent", **sampling).images
    return pipe.image_processor.postprocess(pipe.decode_reproducibly(f_hat), output_type="pil")


def _metadata_line(job: GenerationJob, class_mode: bool, sampling: dict) -> str:
    record = {"file_name": job.file_name, ("label" if class_mode else "text"): job.condition,
              "prompt_index": job.prompt_index, "image_index": job.image_index, "seed": job.seed, **as_json(sampling)}
    return json.dumps(record, ensure_ascii=False)


def _write_npz(output_dir: Path, jobs: Sequence[GenerationJob], show_progress: bool) -> Path:
    """Stack the PNGs (as written, so the .npz equals the files) into ``arr_0`` N × H × W × 3 uint8, in job order."""
    import PIL.Image
    from tqdm.auto import tqdm

    arr_NHW3 = None
    for n, job in enumerate(tqdm(jobs, desc="npz", unit="img", disable=not show_progress)):
        with PIL.Image.open(output_dir / job.file_name) as image:
            pixels = np.asarray(image.convert("RGB"))
        if arr_NHW3 is None:
            arr_NHW3 = np.empty((len(jobs), *pixels.shape), dtype=np.uint8)
        arr_NHW3[n] = pixels
    path = output_dir / NPZ_NAME
    with atomic_open(path, "wb") as handle:
        np.savez(handle, arr_0=arr_NHW3)
    return path


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object, parse_flag_from_env, reduce
    from tqdm.auto import tqdm

    # 1. the jobs, before anything heavy: bad inputs fail fast
    conditions = _resolve_conditions(args)
    class_mode = args.class_labels is not None
    if len(conditions) * args.num_images_per_prompt > MAX_IMAGES:
        raise UsageError(f"--num-images-per-prompt {args.num_images_per_prompt} × {len(conditions):,} "
                         f"{'labels' if class_mode else 'prompts'} is more than {MAX_IMAGES:,} images for one "
                         f"--output-dir; split the run into several folders")
    jobs = plan_jobs(conditions, args.num_images_per_prompt, args.seed)
    chunks = [jobs[i : i + args.batch_size] for i in range(0, len(jobs), args.batch_size)]
    output_dir = _check_output_dir(args)

    # 2. the settings that make the folder's images one set: a resume with other settings fails before loading
    from . import VARCLIPPipeline, VARPipeline

    _check_model_kind(args, class_mode)
    pipeline_class = VARPipeline if class_mode else VARCLIPPipeline
    sampling = _sampling_settings(pipeline_class, args)
    settings = RunSettings(model=str(Path(args.model).resolve()) if args.model and Path(args.model).is_dir()
                           else (args.model or "default"), dtype=args.dtype, seed=args.seed,
                           sampling=as_json(sampling), conditions_sha256=_conditions_digest(conditions))
    _check_settings(output_dir, settings)

    # 3. the pipeline on this process's device; without a GPU (or with ACCELERATE_USE_CPU) processes talk over gloo
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    pipe = _load_pipeline(args, pipeline_class, state.device)
    if state.is_main_process:
        from .utils.files import MARKER_NAME, hold_lock, write_marker

        hold_lock(output_dir, "--output-dir")  # one writer per folder (released when the command ends)
        if not (output_dir / MARKER_NAME).exists():
            write_marker(output_dir, "generate-batch")
        settings.write(output_dir / SETTINGS_NAME)
        for stale in output_dir.glob(TEMP_PREFIX + "*"):  # a killed run's unfinished writes
            stale.unlink()
    state.wait_for_everyone()

    # 4. which images are missing: each process checks a share of the chunks, all learn the union
    with state.split_between_processes(list(range(len(chunks)))) as mine:
        missing_mine = [(c, [n for n, job in enumerate(chunks[c]) if not is_complete_png(output_dir / job.file_name)])
                        for c in mine]
    missing = gather_object(missing_mine) if state.num_processes > 1 else missing_mine
    todo = sorted((c, positions) for c, positions in missing if positions)
    already = len(jobs) - sum(len(positions) for _, positions in todo)

    # 5. generate whole chunks (a chunk always holds the same jobs) and write the images that are missing; the
    #    pending chunks are split between the processes, and every process runs the same number of steps so that
    #    the per-step sum of new images (progress bar, --max-images) is one collective call
    started, made_total = time.perf_counter(), 0
    show = state.is_main_process and not args.no_progress_bar
    bar = tqdm(total=len(jobs), initial=already, unit="img", desc="generate-batch", disable=not show, smoothing=0.1)
    steps = math.ceil(len(todo) / state.num_processes)
    with state.split_between_processes(todo) as my_todo:
        for step in range(steps):
            made = 0
            if step < len(my_todo):
                c, positions = my_todo[step]
                images = _generate_chunk(pipe, chunks[c], class_mode, sampling, state.device)
                for n in positions:
                    with atomic_open(output_dir / chunks[c][n].file_name, "wb") as handle:
                        images[n].save(handle, format="PNG")
                made = len(positions)
            if state.num_processes > 1:
                made = int(reduce(torch.tensor([made], device=state.device), reduction="sum").item())
            made_total += made
            bar.update(made)
            if args.max_images is not None and made_total >= args.max_images:
                break
    bar.close()
    seconds = time.perf_counter() - started
    rate = f"{made_total / seconds:.2f} images/s" if made_total else "nothing to generate"
    state.wait_for_everyone()
    finished = already + made_total >= len(jobs)

    # 6. the main process writes metadata.jsonl (and the .npz) once every image is there
    if state.is_main_process:
        if not finished:
            print(f"generate-batch: stopped after {made_total} new images (--max-images) in {seconds:.1f} s "
                  f"({rate}), {already + made_total}/{len(jobs)} in {output_dir}; rerun the same command to continue")
            return 0
        missing = [job.file_name for job in jobs if not (output_dir / job.file_name).is_file()]
        if missing:
            raise GenerationError(f"{len(missing)} images are missing from {output_dir} (first: {missing[0]}); with "
                                  "several machines --output-dir must be a shared file system")
        with atomic_open(output_dir / METADATA_NAME, "w") as handle:
            handle.writelines(_metadata_line(job, class_mode, sampling) + "\n" for job in jobs)
        written = [METADATA_NAME]
        if args.npz:
            written.append(_write_npz(output_dir, jobs, show).name)
        print(f"generate-batch: {made_total} new + {already} existing = {len(jobs)} images in {seconds:.1f} s "
              f"({rate}, {state.num_processes} process{'es' if state.num_processes > 1 else ''}) → {output_dir} "
              f"({', '.join(written)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .utils.files import release_held_locks
    from .utils.threads import pinned_threads

    args = build_parser().parse_args(argv)
    try:
        with pinned_threads(args.threads):  # --threads, when given, wins over the pipelines' choice by the work
            return run(args)
    except UsageError as error:
        code, message = 2, str(error)
    except (GenerationError, ValueError, OSError) as error:
        code, message = 1, str(error)
    finally:
        release_held_locks()
    if is_main_process():
        print(f"var-clip generate-batch: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
