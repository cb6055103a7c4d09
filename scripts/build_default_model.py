"""Rebuild the embedded default model from scratch: shapes-world data → CLIP → VQ-VAE → VAR-CLIP → evaluation → card.

    python scripts/build_default_model.py --workdir runs/default_model --output src/var_clip/default_model

Every stage uses the package's own entry points (`var-clip train-clip`, `train-vqvae`, `train-var`, `eval-shapes`)
and is skipped when its output already exists, so an interrupted build resumes where it stopped (`--fresh` starts
over). The finished pipeline folder, with its model card, replaces `--output` only once it is complete. The
default settings fit in about two hours on two CPU cores; `--scale 0.1` makes a quick smoke build.

`--conditioning pooled` trains VAR-CLIP as published (the pooled CLIP embedding only) instead of the default
token-level conditioning; `--components FOLDER` takes the text encoder, tokenizer and VQ-VAE of an existing pipeline
folder instead of training them, so two builds can differ only in the transformer (the conditioning ablation).

The long run, one stage at a time: each stage trains a finished folder's transformer on (`--steps`, 4,000 by
default: about 70 minutes on two CPU cores with bf16 units, 3 hours without) on scenes it has not seen, and ships a
finished model whose `training_history.json` records every stage behind it; the next stage continues from that
folder.

    python scripts/build_default_model.py --continue_from src/var_clip/default_model --workdir runs/stage --output runs/next
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a clone without installing

from var_clip.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P  # noqa: E402

# The recipe. Steps are multiplied by --scale.
DATA = dict(num_images=20000, seed=1)
CLIP = dict(steps=1500, batch=128, lr=1e-3, width=128, layers=3, heads=4, projection=64, vision_width=128,
            vision_layers=3, patch=8, hard_negatives=3)
VQVAE = dict(steps=2400, batch=32, lr=1.5e-3, ch=32, ch_mult=(1, 1, 2, 2), vocab=512, latent=16,
             patch_nums=(1, 2, 3, 4, 5, 6, 8))
VAR = dict(steps=3000, batch=32, lr=1e-3, depth=6, width=192, heads=6, cond_drop=0.1, label_smoothing=0.0,
           scale_loss_weighting="tokens")
# --continue_from: the long run, in stages. Each stage trains the transformer of a finished pipeline folder (its other
# components are kept, the architecture is unchanged) for `steps` more on `num_images` new scenes (data seed
# DATA["seed"] + the stage's number), with a warm restart: linear warm-up to `lr`, then cosine decay to 0, so every
# stage ends in a finished model that ships. A stage fits in one sitting of a 2-core CPU; the next stage continues
# from the shipped folder, whose HISTORY file records the stages behind it. The target: 27,000 steps after the
# base build's 3,000, 960,000 images, 10x the base build.
STAGE = dict(steps=4000, lr=3e-4, warmup=100, scheduler="cosine", num_images=40000)
HISTORY = "training_history.json"
# the shipped base build's transformer stage and where it ran (docs/default_model_timings.json)
BASE_TRANSFORMER_MINUTES, BASE_HARDWARE = 47, "2 CPU cores (bf16 autocast)"
EVAL = dict(samples_per_prompt=4, guidance_scale=DEFAULT_GUIDANCE_SCALE, top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P)
MAX_MB = 25.0


def run_stage(name: str, out: Path, module: str, argv: list[str], log: dict) -> None:
    """Run one trainer in its own process (each gets a fresh accelerate state, e.g. its own mixed precision)."""
    marker = out / "stage_complete.json"
    if marker.exists():
        print(f"[{name}] done already ({out})", flush=True)
        return
    if out.exists():
        argv = argv + ["--resume_from_checkpoint", "latest"]
    print(f"[{name}] {' '.join(argv)}", flush=True)
    t = time.time()
    code = subprocess.run([sys.executable, "-m", module, *argv]).returncode
    if code:
        raise SystemExit(f"[{name}] failed with exit code {code}")
    log[name] = round(time.time() - t)
    marker.write_text(json.dumps({"seconds": log[name]}))


def steps_of(args, n: int) -> str:
    return str(max(1, round(n * args.scale)))


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def train_clip_and_vqvae(work: Path, data: Path, steps, common: list[str], log: dict) -> None:
    # 2. CLIP: its text tower and tokenizer become the pipeline's text encoder
    c = CLIP
    run_stage("clip", work / "clip", "var_clip.training.train_clip", [
        "--train_data_dir", str(data), "--output_dir", str(work / "clip"), "--resolution", "64",
        "--train_batch_size", str(c["batch"]), "--learning_rate", str(c["lr"]), "--max_train_steps", steps(c["steps"]),
        "--text_width", str(c["width"]), "--text_layers", str(c["layers"]), "--text_heads", str(c["heads"]),
        "--projection_dim", str(c["projection"]), "--vision_width", str(c["vision_width"]),
        "--vision_layers", str(c["vision_layers"]), "--patch_size", str(c["patch"]),
        "--hard_negatives", str(c["hard_negatives"]), "--validation_steps", "500", "--checkpointing_steps", "500", "--checkpoints_total_limit", "1", *common], log)

    # 3. VQ-VAE: 64 × 64 images, 8× downsampling, scales up to 8 × 8
    v = VQVAE
    run_stage("vqvae", work / "vqvae", "var_clip.training.train_vqvae", [
        "--train_data_dir", str(data), "--output_dir", str(work / "vqvae"), "--train_batch_size", str(v["batch"]),
        "--learning_rate", str(v["lr"]), "--max_train_steps", steps(v["steps"]), "--ch", str(v["ch"]),
        "--ch_mult", *map(str, v["ch_mult"]), "--num_res_blocks", "1", "--vocab_size", str(v["vocab"]),
        "--latent_channels", str(v["latent"]), "--patch_nums", *map(str, v["patch_nums"]), "--using_znorm",
        "--checkpointing_steps", "500", "--checkpoints_total_limit", "1", *common], log)



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/default_model", help="data, runs and checkpoints (default runs/default_model)")
    parser.add_argument("--output", default=str(REPO / "src" / "var_clip" / "default_model"),
                        help="where the finished pipeline folder goes (default: the package's default_model)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (0.1: a smoke build)")
    parser.add_argument("--fresh", action="store_true", help="delete --workdir first")
    parser.add_argument("--num_images", type=int, default=None,
                        help=f"training images (default {DATA['num_images']}; {STAGE['num_images']} new ones per stage "
                             "with --continue_from)")
    parser.add_argument("--conditioning", choices=("tokens", "pooled"), default="tokens",
                        help="tokens (default): cross-attention to the caption's token states; pooled: VAR-CLIP as published")
    parser.add_argument("--components", default=None,
                        help="reuse this pipeline folder's text encoder, tokenizer and VQ-VAE (skips their stages)")
    parser.add_argument("--continue_from", "--continue-from", default=None,
                        help="the long run's next stage: train this pipeline folder's transformer on (its other "
                             f"components are kept) for --steps more steps on {STAGE['num_images']} new images")
    parser.add_argument("--steps", type=int, default=STAGE["steps"],
                        help=f"with --continue_from: the stage's steps (default {STAGE['steps']}, times --scale)")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be > 0")
    if args.continue_from and args.components:
        parser.error("--continue_from keeps that folder's components: leave out --components")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.num_images is None:
        args.num_images = (STAGE if args.continue_from else DATA)["num_images"]
    if args.num_images < 1:
        parser.error(f"--num_images must be >= 1, got {args.num_images}")

    from var_clip import VARCLIPPipeline, shapes_world
    from var_clip.shapes_world.report import evaluate_shapes
    from var_clip.utils.files import MARKER_NAME, check_replaceable, resolve_output_dir, write_marker

    work = resolve_output_dir(args.workdir, "--workdir")
    output = resolve_output_dir(args.output, "--output")
    if output.exists():  # replaced at the end: refuse now, before hours of training, if it is not a pipeline folder
        check_replaceable(output, "--output", protected=[work], also_own=re.compile(rf"^{re.escape(HISTORY)}$"))
    if args.fresh and work.exists():  # --fresh deletes only a workdir this recipe made (it holds the marker)
        if not (work / MARKER_NAME).is_file() and any(work.iterdir()):
            raise SystemExit(f"--workdir {work} was not made by this recipe (no {MARKER_NAME}); --fresh deletes only "
                             "such a folder: remove it yourself or choose another --workdir")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_marker(work, "build_default_model")
    log_path = work / "timings.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    steps = lambda n: steps_of(args, n)  # noqa: E731
    # bf16 autocast where the hardware has bf16 units (about 1.7× faster on CPUs with AVX512-BF16; the quantizer and
    # the losses stay in float32), float32 elsewhere: a CPU that emulates bf16 trains an order of magnitude slower
    common = ["--report_to", "none", "--mixed_precision", "auto", "--seed", "0"]

    history = []  # the stages behind the folder a stage continues from
    if args.continue_from:
        if not (work / "base").is_dir():  # the run's own copy: resumes never see a changed folder
            shutil.copytree(args.continue_from, work / ".base.partial", dirs_exist_ok=True)
            os.replace(work / ".base.partial", work / "base")
        history = read_history(work / "base")
    stage = len(history) + 1
    stage_steps = int(steps(args.steps))
    stage_warmup = min(int(steps(STAGE["warmup"])), stage_steps)
    data_seed = DATA["seed"] + stage if args.continue_from else DATA["seed"]

    # 1. data (a stage's scenes are new: its own seed)
    data = work / "data"
    if not (data / "metadata.jsonl").exists():
        t = time.time()
        shapes_world.generate_dataset(data, num_images=args.num_images, seed=data_seed)
        log["data"] = round(time.time() - t)
    if args.continue_from or args.components:
        components = work / "base" if args.continue_from else Path(args.components)
        missing = [c for c in ("text_encoder", "tokenizer", "vqvae") if not (components / c).is_dir()]
        if missing:
            raise SystemExit(f"--components {components} lacks {missing}: give a VARCLIPPipeline folder")
        text_encoder, tokenizer, vqvae = components / "text_encoder", components / "tokenizer", components / "vqvae"
    else:
        text_encoder, tokenizer, vqvae = work / "clip" / "text_encoder", work / "clip" / "tokenizer", work / "vqvae"
        train_clip_and_vqvae(work, data, steps, common, log)

    # 4. VAR-CLIP transformer on the frozen VQ-VAE and text tower, with cached tokens and embeddings
    r = VAR
    var_argv = ["--train_data_dir", str(data), "--output_dir", str(work / "var"), "--cache_dir", str(work / "cache"),
                "--train_batch_size", str(r["batch"]), "--cond_drop_rate", str(r["cond_drop"]),
                "--label_smoothing", str(r["label_smoothing"]), "--scale_loss_weighting", r["scale_loss_weighting"],
                "--checkpointing_steps", "250" if args.continue_from else "500", "--checkpoints_total_limit", "1",
                *common]
    if args.continue_from:
        c = STAGE
        var_argv += ["--pretrained_pipeline", str(components), "--learning_rate", str(c["lr"]),
                     "--lr_scheduler", c["scheduler"],
                     "--lr_warmup_steps", str(stage_warmup), "--max_train_steps", str(stage_steps)]
    else:
        var_argv += ["--vqvae", str(vqvae), "--text_encoder", str(text_encoder), "--tokenizer", str(tokenizer),
                     "--conditioning", args.conditioning, "--depth", str(r["depth"]), "--embed_dim", str(r["width"]),
                     "--num_heads", str(r["heads"]), "--learning_rate", str(r["lr"]), "--max_train_steps", steps(r["steps"])]
    run_stage("var", work / "var", "var_clip.training.train_var", var_argv, log)
    log_path.write_text(json.dumps(log, indent=1))

    # 5. export, evaluate what ships, write the card; the folder replaces --output only when complete
    import torch

    output = Path(args.output)
    tmp = Path(tempfile.mkdtemp(prefix=".default_model_", dir=output.parent))
    try:
        VARCLIPPipeline.from_pretrained(work / "var", dtype=torch.float32).save_pretrained(tmp)
        ship_folder(tmp)
        # what is evaluated is exactly what ships: the half-precision transformer, loaded back into float32
        pipe = VARCLIPPipeline.from_pretrained(tmp, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        t = time.time()
        summary, _ = evaluate_shapes(pipe, samples_per_prompt=EVAL["samples_per_prompt"],
                                     guidance_scale=EVAL["guidance_scale"], top_k=EVAL["top_k"], top_p=EVAL["top_p"])
        log["eval"] = round(time.time() - t)
        (work / "eval_summary.json").write_text(json.dumps(summary, indent=1))
        if args.continue_from:  # the stages behind the folder, this one last: the next stage continues from it
            history = history + [stage_record(args, stage, stage_steps, stage_warmup, data_seed, work)]
            (tmp / HISTORY).write_text(json.dumps(history, indent=1) + "\n")
        write_card_and_publish(args, pipe, summary, log, tmp, output, history)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log_path.write_text(json.dumps(log, indent=1))
    print(f"wrote {output} ({folder_mb(output):.1f} MB); timings (s): {log}")
    print(json.dumps({k: summary[k]["one_object"]["caption"] for k in ("seen", "held_out")}))
    return 0


def read_history(folder: Path) -> list[dict]:
    """The long-run stages behind a pipeline folder (its HISTORY file; none: the base build alone), checked."""
    path = folder / HISTORY
    if not path.is_file():
        return []
    if path.stat().st_size > 1_000_000:
        raise SystemExit(f"{path} is over 1 MB: not a training history this recipe wrote")
    try:
        history = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"{path} is not valid JSON: {error}") from None
    fields = {"stage": int, "steps": int, "batch": int, "lr": float, "warmup": int, "scheduler": str,
              "num_images": int, "data_seed": int, "hours": float, "hardware": str}
    if not isinstance(history, list):
        raise SystemExit(f"{path}: expected a list of stages, got {type(history).__name__}")
    for number, entry in enumerate(history, start=1):
        ok = isinstance(entry, dict) and set(entry) == set(fields) and entry["stage"] == number and all(
            isinstance(entry[k], t if t is not float else (int, float)) and not isinstance(entry[k], bool)
            for k, t in fields.items())
        if not ok or not all(entry[k] >= 0 and (entry[k] > 0 or k in ("warmup", "hours"))
                             for k, t in fields.items() if t is not str) or not math.isfinite(entry["lr"]) \
                or not math.isfinite(entry["hours"]):
            raise SystemExit(f"{path}: stage {number} is not a record this recipe writes (fields {sorted(fields)}, "
                             "numbered from 1, finite numbers > 0)")
    return history


def ship_folder(folder: Path) -> None:
    """Make a saved pipeline folder fit to ship: the transformer's weights in float16 (half the bytes; loading casts
    them back to the requested dtype), and no trace of the folder it was built in (``_name_or_path``)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(state, weights, metadata={"format": "pt"})
    # the folder it was saved from (``_name_or_path``), and the tokenizer's load-time `local_files_only` (it records
    # whether HF_HUB_OFFLINE was set on the build machine)
    for config in [folder / "model_index.json", *folder.glob("*/config.json"), *folder.glob("*/tokenizer_config.json")]:
        data = json.loads(config.read_text())
        dropped = [data.pop(key) for key in ("_name_or_path", "local_files_only") if key in data]
        if dropped:
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def transformer_training(args, history: list[dict]) -> str:
    """The card's transformer line: the base build, then every stage of the long run behind the folder."""
    base_steps = VAR["steps"] if args.continue_from else steps_of(args, VAR["steps"])  # the base build ran in full
    text = (f"{base_steps} steps × {VAR['batch']} images, lr {VAR['lr']} decayed linearly, "
            f"{int(VAR['cond_drop'] * 100)} % condition dropout")
    if not history:
        return text
    text += " (the base build)"
    for h in history:
        text += (f"; then long-run stage {h['stage']}: {h['steps']} steps × {h['batch']} images on {h['num_images']} "
                 f"new scenes (seed {h['data_seed']}) from the previous float16 weights, warm-up to lr {h['lr']} over "
                 f"{h['warmup']} steps, cosine decay to 0")
    steps = int(base_steps) + sum(h["steps"] for h in history)
    images = int(base_steps) * VAR["batch"] + sum(h["steps"] * h["batch"] for h in history)
    ratio = images / (int(base_steps) * VAR["batch"])
    return text + f". In all {steps} steps, {images:,} images ({ratio:.1f}× the base build)"


def stage_record(args, stage: int, steps: int, warmup: int, data_seed: int, work: Path) -> dict:
    """This stage's entry of the HISTORY file: its recipe, and its time from the trainer's log (each step records the
    seconds since the previous one, so a resumed stage is timed by its steps, not by the last process's clock)."""
    import torch

    from var_clip.training.metrics_log import logged_time, read_log
    from var_clip.utils.dtypes import has_native_bf16

    t = logged_time(read_log(work / "var"))
    seconds = t.seconds + (t.untimed_steps * t.median if t.median is not None else 0.0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hardware = f"one {torch.cuda.get_device_name()}" if device == "cuda" else f"{os.cpu_count()} CPU cores"
    hardware += " (bf16 autocast)" if has_native_bf16(device) else " (float32)"  # what --mixed_precision auto chose
    return dict(stage=stage, steps=steps, batch=VAR["batch"], lr=STAGE["lr"], warmup=warmup, scheduler=STAGE["scheduler"],
                num_images=args.num_images, data_seed=data_seed, hours=round(seconds / 3600, 2), hardware=hardware)


def training_time(args, log: dict, history: list[dict]) -> str:
    """The card's time: the base build's stages, or the long run's stages behind the folder."""
    if not history:
        minutes = sum(log.values()) / 60
        return (f"{minutes:.0f} minutes for the stages run here (the text encoder and VQ-VAE were reused from an "
                "earlier build of this recipe)" if args.components else f"{minutes:.0f} minutes (all stages)")
    stages = ", ".join(f"stage {h['stage']} {h['hours']:.1f} h on {h['hardware']}" for h in history)
    return f"the base build's transformer {BASE_TRANSFORMER_MINUTES} minutes; the long run's {stages}"


def write_card_and_publish(args, pipe, summary: dict, log: dict, tmp: Path, output: Path, history: list[dict]) -> None:
    from huggingface_hub import ModelCardData

    from var_clip import shapes_world
    from var_clip.conversion import render_model_card

    def pct(split: str, metric: str) -> str:
        value = summary[split]["all"][metric]
        return "n/a" if value is None else f"{100 * value:.1f} %"

    tc, vc = pipe.transformer.config, pipe.vqvae.config
    count = lambda m: f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"  # noqa: E731
    import var_clip

    card = render_model_card(
        "default_model.md",
        ModelCardData(library_name="var-clip", license="mit", pipeline_tag="text-to-image",
                      tags=["var-clip", "text-to-image", "next-scale-prediction", "shapes-world"]),
        conditioning=(f"conditioned on the pooled text embedding ({'AdaLN, ' if tc.conditional_adaln else ''}start "
                      "token) and, by cross-attention in every block, on the caption's token states"
                      if tc.cross_attention_dim else
                      "conditioned on the pooled text embedding only (VAR-CLIP as published)"),
        depth=tc.depth, embed_dim=tc.embed_dim, num_heads=tc.num_heads, patch_nums=list(tc.patch_nums),
        image_size=pipe.vqvae.sample_size, vocab_size=vc.vocab_size, latent_channels=vc.latent_channels,
        transformer_params=count(pipe.transformer), vqvae_params=count(pipe.vqvae),
        text_encoder_description=f"CLIP text tower, {CLIP['layers']} layers, width {CLIP['width']}, trained "
                                 f"contrastively on the shapes world with {CLIP['hard_negatives']} hard negative captions per image",
        text_embed_dim=tc.text_embed_dim, num_train_images=DATA["num_images"] + sum(h["num_images"] for h in history),
        dataset_seed="; ".join([f"{DATA['seed']}" + (f" for the base build's {DATA['num_images']}" if history else "")]
                               + [f"{h['data_seed']} for stage {h['stage']}'s {h['num_images']}" for h in history]),
        vqvae_training=f"{steps_of(args, VQVAE['steps'])} steps × {VQVAE['batch']} images, lr {VQVAE['lr']}",
        transformer_training=transformer_training(args, history),
        training_hardware=" and ".join(dict.fromkeys([BASE_HARDWARE, *(h["hardware"] for h in history)])),
        training_time=training_time(args, log, history),
        num_samples_per_prompt=EVAL["samples_per_prompt"],
        num_seen_prompts=sum(len(shapes_world.evaluation_prompts(False, n)) for n in (1, 2)),
        num_heldout_prompts=sum(len(shapes_world.evaluation_prompts(True, n)) for n in (1, 2)),
        guidance_scale=EVAL["guidance_scale"], top_k=EVAL["top_k"], top_p=EVAL["top_p"],
        accuracy={s: {m: pct(split, m) for m in ("color", "shape", "size", "position", "relation", "caption")}
                  for s, split in (("seen", "seen"), ("heldout", "held_out"))},
        var_clip_version=var_clip.__version__,
    )
    card.save(tmp / "README.md")
    size = folder_mb(tmp)
    if size > MAX_MB:
        raise SystemExit(f"the pipeline folder is {size:.1f} MB, over the {MAX_MB} MB budget of the package")
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as error:  # unsafe folders, bad settings: one line, not a traceback
        sys.exit(f"build_default_model: error: {error}")
