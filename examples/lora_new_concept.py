"""Teach the embedded default model a word it never saw with a LoRA adapter, and measure what it learned and forgot.

The shapes world's objects are 12-30 px; the concept is a new size, **huge** (34-38 px), plus a second adapter for
**tiny** (9-11 px). Each adapter trains with ``train-var --lora_rank 8 --train_text_encoder --keep_known_captions``
on 100 captioned images of its concept in the world's caption templates
(``shapes_world.generate_dataset(..., extension=WorldExtension(sizes=...))``), each repeated ``--concept_repeats``
times, plus 2000 rendered world images that keep the rest of the world in view (``--replay world``; ``prior`` replays
the base model's own samples instead, as DreamBooth). Then, with the pipeline's default sampling settings:

- concept accuracy before and after (``shapes_world.report.evaluate_prompts`` on ``shapes_world.extension_prompts``,
  scored by an evaluator that knows the new word), and the base model's accuracy on the same prompts with the
  nearest size it knows ("large" for huge) as the reference;
- whole-caption accuracy on the seen prompts of ``var-clip eval-shapes`` (same prompts, same seeds) before, with
  the adapter, and after ``unload_lora_weights()``, whose images must equal the base model's bit for bit: forgetting;
- both adapters at once with ``set_adapters``;
- adapter size against the transformer's, and training time (wall time of the ``train-var`` command);
- the VQ-VAE's ceiling for each concept and for a new colour, pink: the share of concept images that still score
  correct after the VQ-VAE encodes and decodes them. No adapter on the transformer draws what the VQ-VAE cannot.

Every stage is kept in ``--workdir`` (base measurement, replay images, data, adapters), so a rerun continues where
an interrupted one stopped; a workdir written with other settings is refused. The results go to ``results.json``
and a markdown table to the terminal.

    python examples/lora_new_concept.py --workdir runs/lora_concept                 # the measurement (~15 min, two CPU cores)
    python examples/lora_new_concept.py --workdir runs/lora_quick --quick           # smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file

import var_clip
from var_clip import shapes_world as sw
from var_clip.loaders import LORA_WEIGHT_NAME
from var_clip.pipelines.loading import load_pipeline
from var_clip.pipelines.next_scale import image_to_tensor
from var_clip.shapes_world.report import evaluate_prompts
from var_clip.training.samples import tensor_to_pil
from var_clip.utils.atomic import atomic_open
from var_clip.utils.image_grid import make_image_grid

CONCEPTS = {
    "huge": sw.WorldExtension(sizes={"huge": (34, 38)}),
    "tiny": sw.WorldExtension(sizes={"tiny": (9, 11)}),
}
PINK = sw.WorldExtension(colors={"pink": (255, 105, 180)})
# the nearest size the base model knows: its accuracy on the concept's prompts with this word is the reference
KNOWN_NEIGHBOUR = {"huge": "large", "tiny": "small"}

# defaults of the measurement and of a --quick smoke run; a flag given on the command line wins over both
FULL = {"max_train_steps": [600, 600], "train_batch_size": 16, "num_concept_images": 100, "concept_repeats": 10,
        "num_replay_images": 2000, "samples_per_prompt": 8, "max_prompts": None, "ceiling_images": 100}
QUICK = {"max_train_steps": [2], "train_batch_size": 4, "num_concept_images": 8, "concept_repeats": 2,
         "num_replay_images": 8, "samples_per_prompt": 1, "max_prompts": 2, "ceiling_images": 8}


def write_json(path: Path, data) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(json.dumps(data, indent=1))


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def prior_samples(pipe, folder: Path, num_images: int, seed: int) -> Path:
    """The base model's own samples for ordinary world captions, as an imagefolder (DreamBooth's prior preservation:
    training on them asks the adapter to leave the model's behaviour on everything else as it was)."""
    if (folder / "metadata.jsonl").is_file():
        return folder
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    captions = [sw.sample_scene(rng).caption for _ in range(num_images)]
    lines = []
    for start in range(0, num_images, 16):
        batch = captions[start : start + 16]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))]
        for i, (caption, image) in enumerate(zip(batch, pipe(batch, generator=generators).images)):
            name = f"{start + i:06d}.png"
            image.save(staging / name)
            lines.append(json.dumps({"file_name": name, "text": caption}) + "\n")
    (staging / "metadata.jsonl").write_text("".join(lines))
    os.replace(staging, folder)
    return folder


def build_data(workdir: Path, name: str, extension: sw.WorldExtension, num_concept: int, replay: Path | None,
               seed: int, repeats: int = 1) -> Path:
    """One imagefolder: ``num_concept`` images of the concept, each ``repeats`` times (the concept's share of the
    batches, without more images of it), and a copy of the ``replay`` imagefolder."""
    folder = workdir / f"data-{name}"
    if (folder / "metadata.jsonl").is_file():
        return folder
    concept = workdir / f".concept-{name}"
    shutil.rmtree(concept, ignore_errors=True)
    parts = {"concept": sw.generate_dataset(concept, num_concept, seed=seed, extension=extension,
                                             show_progress=False)}
    if replay is not None:
        parts["replay"] = replay
    staging = workdir / f".data-{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lines = []
    for prefix, part in parts.items():
        for copy in range(repeats if prefix == "concept" else 1):
            tag = f"{prefix}{copy}" if prefix == "concept" else prefix
            for line in (part / "metadata.jsonl").read_text().splitlines():
                record = json.loads(line)
                shutil.copy(part / record["file_name"], staging / f"{tag}-{record['file_name']}")
                record["file_name"] = f"{tag}-{record['file_name']}"
                lines.append(json.dumps(record) + "\n")
    (staging / "metadata.jsonl").write_text("".join(lines))
    os.replace(staging, folder)
    shutil.rmtree(concept)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def vqvae_ceiling(pipe, extension: sw.WorldExtension, num_images: int, seed: int = 7) -> float:
    """Share of concept images that still score correct (whole caption) after the VQ-VAE encodes and decodes them."""
    rng = np.random.default_rng(seed)
    side = pipe.vqvae.sample_size
    correct = 0
    for _ in range(num_images):
        scene = sw.sample_extension_scene(rng, extension)
        image = sw.render_scene(scene, extension)
        if side != sw.IMAGE_SIZE:  # a model of another resolution: its VQ-VAE sees the scene at its own side
            image = image.resize((side, side), resample=PIL.Image.Resampling.BICUBIC)
        x_13HW = image_to_tensor(image) * 2 - 1
        (redrawn,) = tensor_to_pil(pipe.vqvae.decode_indices(pipe.vqvae.encode_indices(x_13HW.to(pipe.vqvae.device))))
        if side != sw.IMAGE_SIZE:  # the evaluator reads the spec's 64 × 64 canvas
            redrawn = redrawn.resize((sw.IMAGE_SIZE, sw.IMAGE_SIZE), resample=PIL.Image.Resampling.BOX)
        correct += bool(sw.score_image(redrawn, scene.caption, extension)["caption"])
    return correct / num_images


def seen_accuracy(pipe, args) -> tuple[dict, list[str]]:
    """Whole-caption accuracy on the seen prompts of ``eval-shapes`` (its prompts and seeds), and image digests."""
    prompts = (sw.evaluation_prompts(held_out=False, num_objects=1)[: args.max_prompts]
               + sw.evaluation_prompts(held_out=False, num_objects=2)[: args.max_prompts])
    summary, records = evaluate_prompts(pipe, prompts, samples_per_prompt=args.samples_per_prompt, seed=args.seed,
                                        show_progress=False)
    seen = summary["seen"]
    accuracy = {"seen_one": seen["one_object"]["caption"], "seen_two": seen["two_objects"]["caption"],
                "seen_all": seen["all"]["caption"]}
    return accuracy, [hashlib.sha256(np.asarray(r[4]).tobytes()).hexdigest() for r in records]


def prompt_accuracy(pipe, prompts: list[str], extension: sw.WorldExtension | None, args) -> dict:
    """Accuracy over ``prompts`` (``args.samples_per_prompt`` each, the measurement's seed), per attribute."""
    summary, _ = evaluate_prompts(pipe, prompts, extension, samples_per_prompt=args.samples_per_prompt,
                                  seed=args.seed, show_progress=False)
    row = summary["seen"]["all"]
    return {key: row[key] for key in ("caption", "size", "color", "shape", "num_samples")}


def concept_accuracy(pipe, extension: sw.WorldExtension, args) -> dict:
    return prompt_accuracy(pipe, sw.extension_prompts(extension)[: args.max_prompts], extension, args)


def reference_accuracy(pipe, name: str, args) -> dict:
    """The base model on the concept's prompts with the nearest size it knows ("a large red circle" for "a huge red
    circle"): how often it gets a caption of this kind right with a word it was trained on."""
    prompts = [p.replace(name, KNOWN_NEIGHBOUR[name]) for p in sw.extension_prompts(CONCEPTS[name])][: args.max_prompts]
    return prompt_accuracy(pipe, prompts, None, args)


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def train(workdir: Path, name: str, data: Path, steps: int, model: str, args) -> tuple[Path, float]:
    """``var-clip train-var --lora_rank`` on ``data``; returns the adapter folder and the command's wall time."""
    output, timing = workdir / f"lora-{name}", workdir / f"lora-{name}.json"
    if (output / LORA_WEIGHT_NAME).is_file() and timing.is_file():
        return output, json.loads(timing.read_text())["seconds"]
    command = [sys.executable, "-m", "var_clip.training.train_var", "--pretrained_pipeline", model,
               "--train_data_dir", str(data), "--output_dir", str(output), "--cache_dir", str(workdir / "cache"),
               "--lora_rank", str(args.lora_rank), "--train_batch_size", str(args.train_batch_size),
               "--max_train_steps", str(steps), "--checkpointing_steps", str(steps),
               "--resume_from_checkpoint", "latest", "--mixed_precision", args.mixed_precision, "--seed",
               str(args.seed), "--label_smoothing", str(args.label_smoothing), "--no_progress_bar"]
    command += ["--train_text_encoder"] if args.train_text_encoder else []
    command += ["--keep_known_captions"] if args.keep_known_captions else []
    command += ["--learning_rate", str(args.learning_rate)]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    write_json(timing, {"seconds": seconds, "steps": steps})
    return output, seconds


def adapter_size(adapter: Path, transformer) -> dict:
    adapter_params = sum(t.numel() for t in load_file(adapter / LORA_WEIGHT_NAME).values())
    base_params = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
    base_bytes = sum(p.numel() * p.element_size() for n, p in transformer.named_parameters() if "lora_" not in n)
    adapter_bytes = os.path.getsize(adapter / LORA_WEIGHT_NAME)
    return {"adapter_params": adapter_params, "transformer_params": base_params, "adapter_bytes": adapter_bytes,
            "transformer_bytes": base_bytes, "share": adapter_bytes / base_bytes}


def picture(pipe, adapters: dict[str, Path], path: Path, seed: int) -> None:
    """One image per prompt (rows) and per model (columns: base, each adapter, all adapters), same seeds."""
    prompts = [f"a {word} {colour} {shape}" for word in CONCEPTS
               for colour, shape in (("red", "circle"), ("blue", "square"), ("yellow", "triangle"))]
    columns = {"base": []} | {f"+ {name}": [name] for name in adapters} | {"+ both": list(adapters)}
    grid = {}
    for column, names in columns.items():
        for name in names:
            pipe.load_lora_weights(adapters[name], adapter_name=name)
        if names:
            pipe.set_adapters(names, adapter_weights=[1.0] * len(names))
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        grid[column] = pipe(prompts, generator=generators).images
        if names:
            pipe.unload_lora_weights()
    images = [grid[column][row] for row in range(len(prompts)) for column in columns]
    captions = [f"{prompts[row]} ({column})" for row in range(len(prompts)) for column in columns]
    image = make_image_grid(images, captions, cols=len(columns), cell_size=128)
    with atomic_open(path) as handle:
        image.save(handle, format="PNG")


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def table(results: dict) -> str:
    """The measurements as a markdown table (whole-caption accuracy unless the row says otherwise)."""
    def pct(value):
        return "–" if value is None else f"{100 * value:.0f} %"

    columns = [("base model", results["base"])] + [(f"+ {n} adapter", results[f"with_{n}"]) for n in CONCEPTS]
    columns.append(("+ both (`set_adapters`, 1.0 each)", results["with_both"]))
    rows = []
    for name in CONCEPTS:
        rows.append((f"new concept '{name}': whole caption", [pct(c.get(name, {}).get("caption")) for _, c in columns]))
        rows.append((f"new concept '{name}': size right", [pct(c.get(name, {}).get("size")) for _, c in columns]))
    for key, label in (("seen_one", "seen prompts, one object"), ("seen_two", "seen prompts, two objects"),
                       ("seen_all", "seen prompts, all")):
        rows.append((label, [pct(c["seen"][key]) for _, c in columns]))
    lines = ["| | " + " | ".join(name for name, _ in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    lines.append("")
    for name in CONCEPTS:
        size = results["size"][name]
        lines.append(f"- {name}: trained in {results['train_seconds'][name]:.0f} s; adapter "
                     f"{size['adapter_params']:,} parameters, {size['adapter_bytes'] / 1024:.0f} KiB = "
                     f"{100 * size['share']:.2f} % of the transformer ({size['transformer_bytes'] / 2**20:.1f} MiB); "
                     f"images after `unload_lora_weights()` identical to the base model's: "
                     f"{results[f'unloaded_{name}_identical']}")
    for name, ref in results["base"].get("reference", {}).items():
        lines.append(f"- reference: the base model on the same prompts with '{KNOWN_NEIGHBOUR[name]}' instead of "
                     f"'{name}': whole caption {pct(ref['caption'])}, size right {pct(ref['size'])}")
    lines.append("- VQ-VAE ceiling (re-encoded concept images still correct): " + ", ".join(
        f"{name} {pct(v)}" for name, v in results["vqvae_ceiling"].items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/lora_concept"))
    p.add_argument("--model", default=None, help="pipeline folder or Hub repo id (default: the embedded default model)")
    p.add_argument("--device", default="cpu", help="device of the measurements (training picks its own)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {', '.join(f'{k} {v}' for k, v in QUICK.items())} (flags given win)")
    p.add_argument("--lora_rank", type=int, default=8)
    p.add_argument("--train_batch_size", type=int, default=None, help=f"default {FULL['train_batch_size']}")
    p.add_argument("--max_train_steps", type=int, nargs="+", default=None,
                   help=f"optimizer steps per concept (in the order {', '.join(CONCEPTS)}), or one value for all "
                        f"(default {' '.join(map(str, FULL['max_train_steps']))})")
    p.add_argument("--mixed_precision", choices=("no", "bf16"), default="bf16")
    p.add_argument("--label_smoothing", type=float, default=0.0,
                   help="as the base model was trained (the default model's recipe: 0; train-var's default is 0.1)")
    p.add_argument("--num_concept_images", type=int, default=None, help=f"default {FULL['num_concept_images']}")
    p.add_argument("--concept_repeats", type=int, default=None,
                   help="each concept image appears this many times in the training data, which sets the concept's "
                        f"share of the batches (default {FULL['concept_repeats']})")
    p.add_argument("--train_text_encoder", action=argparse.BooleanOptionalAction, default=True,
                   help="adapters on the text encoder too (train-var --train_text_encoder): it has never read the "
                        "new word")
    p.add_argument("--keep_known_captions", action=argparse.BooleanOptionalAction, default=True,
                   help="train-var --keep_known_captions: replay captions keep the base model's predictions")
    p.add_argument("--learning_rate", type=float, default=2e-3,
                   help="twice train-var's LoRA default: --keep_known_captions holds the known captions, so the "
                        "concept can move faster (measured: 1e-3 learns less, 4e-3 forgets more)")
    p.add_argument("--num_replay_images", type=int, default=None, help=f"default {FULL['num_replay_images']}")
    p.add_argument("--replay", choices=("prior", "world", "none"), default="world",
                   help="prior: the base model's own samples for world captions (prior preservation); world: "
                        "rendered world images; none: concept images only")
    p.add_argument("--samples_per_prompt", type=int, default=None, help=f"default {FULL['samples_per_prompt']}")
    p.add_argument("--max_prompts", type=int, default=None,
                   help="use only the first N prompts of each prompt set (default: all)")
    p.add_argument("--ceiling_images", type=int, default=None, help=f"default {FULL['ceiling_images']}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evaluate", type=Path, default=None, metavar="ADAPTER",
                   help="only score one adapter folder or file (or `base`) on --concept's prompts and the seen prompts, "
                        "and print one JSON line (e.g. an adapter trained by hand on this workdir's data-<concept>)")
    p.add_argument("--concept", choices=tuple(CONCEPTS), default="huge", help="the concept --evaluate scores")
    p.add_argument("--prepare_only", action="store_true",
                   help="measure the base model and write the replay images, then stop (a rerun reuses both)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.max_train_steps) not in (1, len(CONCEPTS)):
        parser.error(f"--max_train_steps takes one value or {len(CONCEPTS)} (one per concept)")
    for key in ("lora_rank", "train_batch_size", "num_concept_images", "concept_repeats", "samples_per_prompt",
                "ceiling_images"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1")
    if min(args.max_train_steps) < 1 or (args.max_prompts is not None and args.max_prompts < 1):
        parser.error("--max_train_steps and --max_prompts must be >= 1")
    if args.replay != "none" and args.num_replay_images < 1:
        parser.error("--num_replay_images must be >= 1 (or --replay none)")
    return args


def evaluate_one(args) -> int:
    """``--evaluate``: the concept's and the seen prompts' accuracy with one adapter (or none), as one JSON line."""
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    logging.getLogger("var_clip.pipelines.pipeline_var_clip").setLevel(logging.ERROR)
    if str(args.evaluate) != "base":
        pipe.load_lora_weights(args.evaluate, adapter_name="evaluated")
    seen, _ = seen_accuracy(pipe, args)
    print(json.dumps({"adapter": str(args.evaluate), args.concept: concept_accuracy(pipe, CONCEPTS[args.concept], args),
                      "seen": seen}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.evaluate is not None:
        return evaluate_one(args)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "device", "prepare_only")}
    settings_file = workdir / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"{workdir} holds a run with other settings ({settings_file}); choose a new --workdir")
    write_json(settings_file, settings)

    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    model = args.model or var_clip.DEFAULT_MODEL
    # the concept prompts name a word the model never saw, on purpose: no warning for every batch of them
    logging.getLogger("var_clip.pipelines.pipeline_var_clip").setLevel(logging.ERROR)
    results: dict = {"settings": settings}

    # 1. the VQ-VAE's ceiling: what the decoder can draw at all
    results["vqvae_ceiling"] = {name: vqvae_ceiling(pipe, ext, args.ceiling_images)
                                for name, ext in {**CONCEPTS, "pink": PINK}.items()}
    print("VQ-VAE ceiling:", results["vqvae_ceiling"], flush=True)

    # 2. the base model, measured once per workdir (image digests kept to compare the unloaded model with)
    base_file = workdir / "base.json"
    if not base_file.is_file():
        seen, digests = seen_accuracy(pipe, args)
        base = {"seen": seen, "pink": concept_accuracy(pipe, PINK, args),
                **{name: concept_accuracy(pipe, ext, args) for name, ext in CONCEPTS.items()},
                "reference": {name: reference_accuracy(pipe, name, args) for name in CONCEPTS}}
        write_json(base_file, {**base, "images": digests})
    results["base"] = json.loads(base_file.read_text())
    base_images = results["base"].pop("images")
    print("base:", results["base"], flush=True)

    # 3. replay data, then one adapter per concept
    replay = None
    if args.replay == "prior":
        replay = prior_samples(pipe, workdir / "replay-prior", args.num_replay_images, args.seed + 1)
    elif args.replay == "world":
        replay = workdir / "replay-world"
        if not (replay / "metadata.jsonl").is_file():
            shutil.rmtree(replay, ignore_errors=True)
            sw.generate_dataset(replay, args.num_replay_images, seed=args.seed + 1, show_progress=False)
    if args.prepare_only:
        return 0
    steps = args.max_train_steps * len(CONCEPTS) if len(args.max_train_steps) == 1 else args.max_train_steps
    adapters = {}
    for (name, ext), num_steps in zip(CONCEPTS.items(), steps):
        data = build_data(workdir, name, ext, args.num_concept_images, replay, args.seed, args.concept_repeats)
        adapters[name], seconds = train(workdir, name, data, num_steps, model, args)
        results.setdefault("train_seconds", {})[name] = seconds
        print(f"trained {name} ({num_steps} steps) in {seconds:.0f} s", flush=True)
    results["size"] = {name: adapter_size(path, pipe.transformer) for name, path in adapters.items()}

    # 4. each adapter alone, then unloaded (the base model bit for bit), then both together
    for name, ext in CONCEPTS.items():
        pipe.load_lora_weights(adapters[name], adapter_name=name)
        seen, _ = seen_accuracy(pipe, args)
        results[f"with_{name}"] = {"seen": seen, name: concept_accuracy(pipe, ext, args)}
        print(f"with {name}:", results[f"with_{name}"], flush=True)
        pipe.unload_lora_weights()
        results[f"unloaded_{name}_identical"] = seen_accuracy(pipe, args)[1] == base_images
    for name in CONCEPTS:
        pipe.load_lora_weights(adapters[name], adapter_name=name)
    pipe.set_adapters(list(CONCEPTS), adapter_weights=[1.0] * len(CONCEPTS))
    seen, _ = seen_accuracy(pipe, args)
    results["with_both"] = {"seen": seen, **{name: concept_accuracy(pipe, ext, args) for name, ext in CONCEPTS.items()}}
    print("with both:", results["with_both"], flush=True)
    pipe.unload_lora_weights()

    picture(pipe, adapters, workdir / "concepts.png", args.seed)
    write_json(workdir / "results.json", results)
    print(table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'concepts.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
