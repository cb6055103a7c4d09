"""Teach the embedded default model a word it never saw with a LoRA adapter, and measure what it learned and forgot.

The shapes world's objects are 12-30 px; the concept is a new size, **huge** (34-38 px), plus a second adapter for
**tiny** (8-10 px). Each adapter trains on 100 captioned images of its concept (``generate_dataset(...,
extension=...)``, the world's caption templates) and 400 ordinary world images that keep the rest of the world in
view, with ``train-var --lora_rank``. Then, with the default sampling settings and 4 samples per prompt:

- concept accuracy before and after (``evaluate_prompts`` with a scorer that knows the new word);
- whole-caption accuracy on the seen prompts of ``eval-shapes`` before, with the adapter, and after
  ``unload_lora_weights()`` (whose images must equal the base model's bit for bit);
- both adapters at once with ``set_adapters``;
- adapter size against the transformer's, and training time;
- the VQ-VAE's ceiling for each concept (and for a new colour, pink): the share of re-encoded concept images
  that still score correct. No adapter on the transformer can draw what the VQ-VAE cannot decode.

    python examples/lora_new_concept.py --workdir runs/lora_concept
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import var_clip
from var_clip import VARCLIPPipeline
from var_clip import shapes_world as sw
from var_clip.evaluation import evaluate_prompts, evaluate_shapes, extension_prompts
from var_clip.loaders import LORA_WEIGHT_NAME

CONCEPTS = {
    "huge": sw.WorldExtension(sizes={"huge": (34, 38)}),
    "tiny": sw.WorldExtension(sizes={"tiny": (8, 10)}),
}
PINK = sw.WorldExtension(colors={"pink": (255, 105, 180)})


def prior_samples(pipe: VARCLIPPipeline, folder: Path, num_images: int, seed: int) -> Path:
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
               seed: int) -> Path:
    """One imagefolder: ``num_concept`` images of the concept and a copy of the ``replay`` imagefolder."""
    folder = workdir / f"data-{name}"
    if (folder / "metadata.jsonl").is_file():
        return folder
    parts = {"concept": sw.generate_dataset(workdir / f"parts-{name}-concept", num_concept, seed=seed,
                                             extension=extension, show_progress=False)}
    if replay is not None:
        parts["replay"] = replay
    staging = workdir / f".data-{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lines = []
    for prefix, part in parts.items():
        for line in (part / "metadata.jsonl").read_text().splitlines():
            record = json.loads(line)
            shutil.copy(part / record["file_name"], staging / f"{prefix}-{record['file_name']}")
            record["file_name"] = f"{prefix}-{record['file_name']}"
            lines.append(json.dumps(record) + "\n")
        if prefix == "concept":
            shutil.rmtree(part)
    (staging / "metadata.jsonl").write_text("".join(lines))
    os.replace(staging, folder)
    return folder


@torch.no_grad()
def vqvae_ceiling(pipe: VARCLIPPipeline, extension: sw.WorldExtension, num_images: int = 100, seed: int = 7) -> float:
    """Share of concept images that still score correct (whole caption) after the VQ-VAE encodes and decodes them."""
    rng = np.random.default_rng(seed)
    correct = 0
    for _ in range(num_images):
        scene = sw.sample_extension_scene(rng, extension)
        image = np.asarray(sw.render_scene(scene, extension), dtype=np.float32)
        x = torch.from_numpy(image).permute(2, 0, 1)[None] / 127.5 - 1  # (1, 3, H, W) in [-1, 1]
        decoded = pipe.vqvae.decode_indices(pipe.vqvae.encode_indices(x))
        rgb = ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        correct += bool(sw.score_image(rgb, scene.caption, extension)["caption"])
    return correct / num_images


def seen_accuracy(pipe: VARCLIPPipeline) -> tuple[dict, list]:
    summary, records = evaluate_shapes(pipe, show_progress=False)
    seen = summary["seen"]
    return {"seen_one": seen["one_object"]["caption"], "seen_two": seen["two_objects"]["caption"],
            "seen_all": seen["all"]["caption"]}, records


def concept_accuracy(pipe: VARCLIPPipeline, extension: sw.WorldExtension) -> dict:
    summary, _ = evaluate_prompts(pipe, extension_prompts(extension), extension, show_progress=False)
    row = summary["seen"]["all"]
    return {"caption": row["caption"], "size": row["size"], "color": row["color"], "shape": row["shape"],
            "num_samples": row["num_samples"]}


def train(workdir: Path, name: str, data: Path, steps: int, args) -> tuple[Path, float]:
    from var_clip.training import train_var

    output = workdir / f"lora-{name}"
    if (output / LORA_WEIGHT_NAME).is_file():
        return output, json.loads((output / "train_time.json").read_text())["seconds"]
    argv = ["--pretrained_pipeline", var_clip.DEFAULT_MODEL, "--train_data_dir", str(data), "--output_dir",
            str(output), "--cache_dir", str(workdir / "cache"), "--lora_rank", str(args.lora_rank),
            "--train_batch_size", str(args.train_batch_size), "--max_train_steps", str(steps),
            "--checkpointing_steps", str(steps), "--mixed_precision", args.mixed_precision, "--no_progress_bar"]
    start = time.perf_counter()
    train_var.main(argv)
    seconds = time.perf_counter() - start
    (output / "train_time.json").write_text(json.dumps({"seconds": seconds}))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return output, seconds


def images_of(records: list) -> list[str]:
    """A digest of every image, to compare runs bit for bit."""
    import hashlib

    return [hashlib.sha256(np.asarray(r[4]).tobytes()).hexdigest() for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/lora_concept"))
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--max_train_steps", type=int, nargs="+", default=[600, 300],
                        help="optimizer steps per concept (in the order huge, tiny), or one value for all")
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="bf16")
    parser.add_argument("--num_concept_images", type=int, default=100)
    parser.add_argument("--num_replay_images", type=int, default=400)
    parser.add_argument("--replay", choices=("prior", "world", "none"), default="prior",
                        help="prior: the base model's own samples for world captions (prior preservation); world: "
                             "rendered world images; none: concept images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare_only", action="store_true",
                        help="measure the base model and write the replay images, then stop (a rerun reuses both)")
    args = parser.parse_args(argv)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    pipe = VARCLIPPipeline.from_pretrained(var_clip.DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    results: dict = {"settings": vars(args) | {"workdir": str(workdir)}}

    # 1. the VQ-VAE's ceiling: what the decoder can draw at all
    results["vqvae_ceiling"] = {name: vqvae_ceiling(pipe, ext) for name, ext in {**CONCEPTS, "pink": PINK}.items()}
    print("VQ-VAE ceiling:", results["vqvae_ceiling"], flush=True)

    # 2. the base model
    base_file = workdir / "base.json"
    if not base_file.is_file():
        seen, base_records = seen_accuracy(pipe)
        base = {"seen": seen, "pink": concept_accuracy(pipe, PINK),
                **{name: concept_accuracy(pipe, ext) for name, ext in CONCEPTS.items()}}
        base_file.write_text(json.dumps({**base, "images": images_of(base_records)}, indent=1))
    results["base"] = json.loads(base_file.read_text())
    base_images = results["base"].pop("images")
    print("base:", results["base"], flush=True)

    # 3. train one adapter per concept
    adapters = {}
    steps = args.max_train_steps * len(CONCEPTS) if len(args.max_train_steps) == 1 else args.max_train_steps
    replay = None
    if args.replay == "prior":
        replay = prior_samples(pipe, workdir / "replay-prior", args.num_replay_images, args.seed + 1)
    elif args.replay == "world":
        replay = workdir / "replay-world"
        if not (replay / "metadata.jsonl").is_file():
            sw.generate_dataset(replay, args.num_replay_images, seed=args.seed + 1, show_progress=False)
    if args.prepare_only:
        return 0
    for (name, ext), num_steps in zip(CONCEPTS.items(), steps):
        data = build_data(workdir, name, ext, args.num_concept_images, replay, args.seed)
        adapters[name], seconds = train(workdir, name, data, num_steps, args)
        results.setdefault("train_seconds", {})[name] = seconds
        print(f"trained {name} in {seconds:.0f} s", flush=True)

    transformer_bytes = os.path.getsize(Path(var_clip.DEFAULT_MODEL) / "transformer" / "diffusion_pytorch_model.safetensors")
    results["size"] = {name: {"adapter_bytes": os.path.getsize(path / LORA_WEIGHT_NAME),
                              "transformer_bytes": transformer_bytes,
                              "share": os.path.getsize(path / LORA_WEIGHT_NAME) / transformer_bytes}
                       for name, path in adapters.items()}

    # 4. each adapter alone, then unloaded, then both together
    for name, ext in CONCEPTS.items():
        pipe.load_lora_weights(adapters[name], adapter_name=name)
        seen, _ = seen_accuracy(pipe)
        results[f"with_{name}"] = {"seen": seen, name: concept_accuracy(pipe, ext)}
        print(f"with {name}:", results[f"with_{name}"], flush=True)
        pipe.unload_lora_weights()
        _, after = seen_accuracy(pipe)
        results[f"unloaded_{name}_identical"] = images_of(after) == base_images
    for name in CONCEPTS:
        pipe.load_lora_weights(adapters[name], adapter_name=name)
    pipe.set_adapters(list(CONCEPTS), adapter_weights=[1.0] * len(CONCEPTS))
    seen, _ = seen_accuracy(pipe)
    results["with_both"] = {"seen": seen, **{name: concept_accuracy(pipe, ext) for name, ext in CONCEPTS.items()}}
    print("with both:", results["with_both"], flush=True)
    pipe.unload_lora_weights()

    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(table(results))
    return 0


def table(results: dict) -> str:
    """The measurements as a markdown table (whole-caption accuracy unless the row says otherwise)."""
    pct = lambda v: "–" if v is None else f"{100 * v:.0f} %"  # noqa: E731
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
                     f"{size['adapter_bytes'] / 1024:.0f} KiB = {100 * size['share']:.1f} % of the transformer "
                     f"({size['transformer_bytes'] / 2**20:.1f} MiB); images after `unload_lora_weights()` identical "
                     f"to the base model's: {results.get(f'unloaded_{name}_identical', 'not checked')}")
    lines.append("- VQ-VAE ceiling (re-encoded concept images still correct): " + ", ".join(
        f"{name} {pct(v)}" for name, v in results["vqvae_ceiling"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
