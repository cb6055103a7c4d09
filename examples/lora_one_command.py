"""Measure the one documented LoRA command on the embedded default model, for concepts of different kinds.

Each concept is a handful of captioned images made by ``shapes_world.generate_dataset(..., extension=...)``, and is
taught with nothing but

    var-clip train-var --pretrained_pipeline <default model> --train_data_dir DATA --lora_rank 8 --output_dir OUT

(the trainer chooses the rest from the data and prints it). Then, with the pipeline's default sampling settings:

- the new phrase: the share of samples of ``extension_prompts`` whose new attribute is right (the place's region,
  the new size) and whose whole caption is right, scored by an evaluator that knows the new words;
- the seen prompts of ``var-clip eval-shapes`` (same prompts, same seeds), with the adapter and without, and after
  ``unload_lora_weights()`` (compared bit for bit with the base model's images);
- the command's wall time, the CPU load around it (the machine may be shared) and the thread count.

Concepts: ``corner`` (a new place phrase: "in the top left corner", "in the bottom right corner", 120 images),
``huge`` (a new size word, 34-38 px, 100 images) and ``ball`` (a new word for a known thing: "ball" for "circle",
100 images; its prompts put the ball at each world position). Every stage is kept in ``--workdir``, so a rerun continues; a
workdir written with other settings is refused. ``--extra`` passes flags to the command (to compare a setting).

    python examples/lora_one_command.py --workdir runs/lora_one_command                # both concepts
    python examples/lora_one_command.py --workdir runs/lora_quick --quick                # smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import var_clip
from var_clip import shapes_world as sw
from var_clip.loaders import LORA_WEIGHT_NAME
from var_clip.pipelines.loading import load_pipeline
from var_clip.shapes_world.report import evaluate_prompts
from var_clip.utils.atomic import atomic_open

CONCEPTS = {
    "corner": (sw.WorldExtension(positions={"top left corner": ("top", "left"),
                                            "bottom right corner": ("bottom", "right")}), 120, "position"),
    "huge": (sw.WorldExtension(sizes={"huge": (34, 38)}), 100, "size"),
    "ball": (sw.WorldExtension(synonyms={"ball": "circle"}), 100, "shape"),
}
FULL = {"samples_per_prompt": 8, "max_prompts": None, "num_images": None, "extra": []}
QUICK = {"samples_per_prompt": 1, "max_prompts": 2, "num_images": 8,
         "extra": ["--max_train_steps", "2", "--prior_images", "4", "--train_batch_size", "4"]}


def write_json(path: Path, data) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(json.dumps(data, indent=1))


def seen_accuracy(pipe, args) -> tuple[dict, list[str]]:
    """Whole-caption accuracy on the seen prompts of ``eval-shapes`` (its prompts and seeds), and image digests."""
    prompts = (sw.evaluation_prompts(held_out=False, num_objects=1)[: args.max_prompts]
               + sw.evaluation_prompts(held_out=False, num_objects=2)[: args.max_prompts])
    summary, records = evaluate_prompts(pipe, prompts, samples_per_prompt=args.samples_per_prompt, seed=args.seed,
                                        show_progress=False)
    seen = summary["seen"]
    accuracy = {"one": seen["one_object"]["caption"], "two": seen["two_objects"]["caption"],
                "all": seen["all"]["caption"]}
    return accuracy, [hashlib.sha256(np.asarray(r[4]).tobytes()).hexdigest() for r in records]


def concept_accuracy(pipe, name: str, args) -> dict:
    """The new phrase on its prompts: the new attribute right, and the whole caption right."""
    extension, _, attribute = CONCEPTS[name]
    prompts = sw.extension_prompts(extension)[: args.max_prompts]
    summary, _ = evaluate_prompts(pipe, prompts, extension, samples_per_prompt=args.samples_per_prompt,
                                  seed=args.seed, show_progress=False)
    row = summary["seen"]["all"]
    return {"phrase": row[attribute], "caption": row["caption"], "num_samples": row["num_samples"]}


def train(workdir: Path, name: str, data: Path, model: str, args) -> dict:
    """The documented command on ``data``; returns its wall time and the load around it."""
    output, timing = workdir / f"lora-{name}", workdir / f"lora-{name}.json"
    if (output / LORA_WEIGHT_NAME).is_file() and timing.is_file():
        return json.loads(timing.read_text())
    shutil.rmtree(output, ignore_errors=True)
    launcher = [shutil.which("var-clip")] if shutil.which("var-clip") else [sys.executable, "-m", "var_clip.cli"]
    command = [*launcher, "train-var", "--pretrained_pipeline", model, "--train_data_dir", str(data),
               "--lora_rank", "8", "--output_dir", str(output), *args.extra]
    print("$", " ".join(command[len(launcher):]), flush=True)
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(workdir / f"lora-{name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds say what the command costs whatever else runs: on two idle cores the wall time is about half
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    record = {"seconds": seconds, "cpu_seconds": cpu, "load_before": load_before, "load_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "command": command[1:]}
    write_json(timing, record)
    return record


def table(results: dict) -> str:
    def pct(value):
        return "–" if value is None else f"{100 * value:.0f} %"

    lines = ["| concept (images) | new phrase right: base → adapter | whole caption: base → adapter "
             "| seen prompts: base → adapter | training time (load) |",
             "| --- | --- | --- | --- | --- |"]
    base = results["base"]
    for name, run in results["concepts"].items():
        load = f"{run['train']['load_before'][0]:.1f}-{run['train']['load_after'][0]:.1f}"
        cpu = f", {run['train']['cpu_seconds'] / 60:.1f} CPU-min" if "cpu_seconds" in run["train"] else ""
        lines.append(
            f"| {name} ({run['num_images']}) | {pct(base[name]['phrase'])} → **{pct(run['concept']['phrase'])}** | "
            f"{pct(base[name]['caption'])} → {pct(run['concept']['caption'])} | {pct(base['seen']['all'])} → "
            f"{pct(run['seen']['all'])} | {run['train']['seconds'] / 60:.1f} min (load {load}{cpu}) |")
    lines.append("")
    for name, run in results["concepts"].items():
        lines.append(f"- {name}: seen prompts one object {pct(base['seen']['one'])} → {pct(run['seen']['one'])}, two "
                     f"objects {pct(base['seen']['two'])} → {pct(run['seen']['two'])}; images after "
                     f"`unload_lora_weights()` identical to the base model's: {run['unloaded_identical']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/lora_one_command"))
    p.add_argument("--concepts", nargs="+", choices=tuple(CONCEPTS), default=list(CONCEPTS))
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK} (flags given win)")
    p.add_argument("--samples_per_prompt", type=int, default=None, help=f"default {FULL['samples_per_prompt']}")
    p.add_argument("--max_prompts", type=int, default=None, help="only the first N prompts of each set")
    p.add_argument("--num_images", type=int, default=None,
                   help="images per concept (default: 120 corner, 100 huge and ball)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=None,
                   help="flags passed on to train-var after the documented ones (must come last)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "concepts")}
    settings_file = workdir / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != json.loads(json.dumps(settings)):
        raise SystemExit(f"{workdir} holds a run with other settings ({settings_file}); choose a new --workdir")
    write_json(settings_file, settings)

    pipe = load_pipeline(None, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    # the concept prompts name words the base model never saw, on purpose: no warning for every batch of them
    logging.getLogger("var_clip.pipelines.pipeline_var_clip").setLevel(logging.ERROR)

    # 1. the base model, measured once per workdir (image digests kept to compare the unloaded model with)
    base_file = workdir / "base.json"
    base = json.loads(base_file.read_text()) if base_file.is_file() else {}
    if "seen" not in base:
        base["seen"], base["images"] = seen_accuracy(pipe, args)
    for name in args.concepts:
        base.setdefault(name, concept_accuracy(pipe, name, args))
    write_json(base_file, base)
    print("base:", {k: v for k, v in base.items() if k != "images"}, flush=True)

    # 2. each concept: its data, the one command, its measurement
    results = {"settings": settings, "base": {k: v for k, v in base.items() if k != "images"}, "concepts": {}}
    for name in args.concepts:
        extension, num_images, _ = CONCEPTS[name]
        num_images = args.num_images or num_images
        data = workdir / f"data-{name}"
        if not (data / "metadata.jsonl").is_file():
            shutil.rmtree(data, ignore_errors=True)
            sw.generate_dataset(data, num_images, seed=args.seed, extension=extension, show_progress=False)
        timing = train(workdir, name, data, var_clip.DEFAULT_MODEL, args)
        print(f"trained {name} in {timing['seconds']:.0f} s (load {timing['load_before'][0]:.1f} → "
              f"{timing['load_after'][0]:.1f})", flush=True)
        pipe.load_lora_weights(workdir / f"lora-{name}", adapter_name=name)
        seen, _ = seen_accuracy(pipe, args)
        run = {"num_images": num_images, "train": timing, "seen": seen, "concept": concept_accuracy(pipe, name, args)}
        pipe.unload_lora_weights()
        run["unloaded_identical"] = seen_accuracy(pipe, args)[1] == base["images"]
        results["concepts"][name] = run
        print(f"{name}:", {k: v for k, v in run.items() if k != "train"}, flush=True)

    write_json(workdir / "results.json", results)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
