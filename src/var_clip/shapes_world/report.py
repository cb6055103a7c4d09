"""Faithfulness report on the shapes world: how often a generated image shows what its caption says.

For seen and held-out prompts (``shapes_world.evaluation_prompts``) the pipeline draws several samples per prompt;
each image is scored against its caption by the shapes-world evaluator (colour, shape, position, size, relation,
whole caption), and the accuracies are reported per split (seen / held-out) and per group (one / two objects), at
the main guidance scale and, optionally, at several others.

    var-clip eval-shapes --output-dir report/                 # the embedded default model
    var-clip eval-shapes --model path/to/pipeline --samples-per-prompt 8 --guidance-scales 0,2,4,6
    var-clip eval-shapes --inpainting 12 --outpainting 12 --img2img 12   # also measure the edits (edit_report)
    var-clip eval-shapes --prompt "a red circle above a blue square" --samples-per-prompt 8   # also this caption

A ``--prompt`` is drawn at the seeds ``seed, seed + 1, ...``, the images ``var-clip generate PROMPT --num-images N
--seed SEED`` makes, so "right in 6 of seeds 0–7" reads off the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import PIL.Image
import torch
from tqdm.auto import tqdm

from ..utils.arguments import ArgumentParser, add_device_option, add_model_option, add_option, int_at_least
from ..utils.files import claim_output_folder, input_paths
from .captions import parse_caption
from .edit_report import evaluate_img2img, evaluate_inpainting, evaluate_outpainting, evaluate_reconstruction
from .evaluate import score_image, summarize_scores
from .extension import WorldExtension
from .prompts import evaluation_prompts
from .spec import IMAGE_SIZE

__all__ = ["evaluate_shapes", "evaluate_prompts", "score_prompt_at_seeds", "build_parser", "main"]

#: What eval-shapes writes into its --output-dir.
REPORT_FILES = re.compile(r"^(report\.json|samples\.png|inpainting\.png|prompts\.png)$")

SPLITS = {  # name -> (held_out, num_objects)
    "seen_one": (False, 1), "seen_two": (False, 2), "held_out_one": (True, 1), "held_out_two": (True, 2),
}


def evaluate_shapes(pipe, samples_per_prompt: int = 4, guidance_scale: float | None = None, seed: int = 0,
                    max_prompts: int | None = None, batch_size: int = 16, show_progress: bool = True,
                    **sampling_kwargs) -> tuple[dict, list]:
    """Generate and score. Returns the summary (``shapes_world.summarize_scores``) and the records
    ``(caption, scores, held_out, num_objects, image)`` (images for the sample grid).

    Sample ``j`` of prompt ``i`` uses a generator seeded ``seed + 1000·i + j``: reruns are identical, and a prompt's
    samples do not depend on the batch size.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"`samples_per_prompt` must be >= 1, got {samples_per_prompt}")
    if guidance_scale is not None:
        sampling_kwargs["guidance_scale"] = guidance_scale
    prompts = [(p, held_out, n) for held_out, n in SPLITS.values()
               for p in evaluation_prompts(held_out=held_out, num_objects=n)[:max_prompts]]
    records = _generate_and_score(pipe, prompts, samples_per_prompt=samples_per_prompt, seed=seed,
                                  batch_size=batch_size, show_progress=show_progress, extension=None,
                                  sampling_kwargs=sampling_kwargs)
    summary = summarize_scores([r[:4] for r in records])
    return summary, records


def evaluate_prompts(pipe, prompts: list[str], extension: WorldExtension | None = None,
                     samples_per_prompt: int = 4, seed: int = 0, batch_size: int = 16, show_progress: bool = True,
                     **sampling_kwargs) -> tuple[dict, list]:
    """Generate and score any one- or two-object prompts, with a scorer that knows ``extension``'s words (e.g. the
    prompts of ``shapes_world.extension_prompts``, to measure a concept a LoRA adapter was taught).

    Seeds as :func:`evaluate_shapes`; every prompt counts as seen. Returns the summary (``summary["seen"]["all"]``
    holds the accuracies, ``summary["by_prompt"]`` each prompt's) and the records
    ``(caption, scores, held_out, num_objects, image)``.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"`samples_per_prompt` must be >= 1, got {samples_per_prompt}")
    jobs = [(p, False, parse_caption(p, extension).num_objects) for p in prompts]
    records = _generate_and_score(pipe, jobs, samples_per_prompt=samples_per_prompt, seed=seed,
                                  batch_size=batch_size, show_progress=show_progress, extension=extension,
                                  sampling_kwargs=sampling_kwargs)
    return summarize_scores([r[:4] for r in records]), records


def score_prompt_at_seeds(pipe, prompt: str, num_images: int = 8, seed: int = 0, batch_size: int = 16,
                          show_progress: bool = False, **sampling_kwargs) -> dict:
    """Draw ``prompt`` at the seeds ``seed … seed + num_images - 1`` (image ``j`` with a generator seeded ``seed +
    j``, as ``var-clip generate --num-images --seed`` draws them) and score each image against it.

    Returns ``{"prompt", "seeds", "right", "num_images", "accuracy": {metric: fraction or None}, "verdicts",
    "images"}``: ``right`` counts the images whose whole caption holds. Raises ``ValueError`` for a caption the
    shapes world cannot score.
    """
    if num_images < 1:
        raise ValueError(f"`num_images` must be >= 1, got {num_images}")
    num_objects = parse_caption(prompt).num_objects
    records = _generate_and_score(pipe, [(prompt, False, num_objects)], samples_per_prompt=num_images, seed=seed,
                                  batch_size=batch_size, show_progress=show_progress, extension=None,
                                  sampling_kwargs=sampling_kwargs)
    group = summarize_scores([r[:4] for r in records])["all"]["all"]
    verdicts = [r[1] for r in records]
    return {"prompt": prompt, "seeds": [seed, seed + num_images - 1], "right": sum(bool(v["caption"]) for v in verdicts),
            "num_images": num_images, "accuracy": {k: v for k, v in group.items() if k != "num_samples"},
            "verdicts": verdicts, "images": [r[4] for r in records]}


def _generate_and_score(pipe, prompts: list[tuple[str, bool, int]], *, samples_per_prompt: int, seed: int,
                        batch_size: int, show_progress: bool, extension: WorldExtension | None,
                        sampling_kwargs: dict) -> list:
    """``(caption, scores, held_out, num_objects, image)`` for every sample of every ``(prompt, held_out,
    num_objects)``; sample ``j`` of prompt ``i`` is drawn with the seed ``seed + 1000·i + j``."""
    jobs = [(p, held_out, n, seed + 1000 * i + j)
            for i, (p, held_out, n) in enumerate(prompts) for j in range(samples_per_prompt)]
    records = []
    bar = tqdm(total=len(jobs), desc="eval-shapes", disable=not show_progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(job_seed) for *_, job_seed in chunk]
        images = pipe([c[0] for c in chunk], generator=generators, **sampling_kwargs).images
        for (prompt, held_out, n, _), image in zip(chunk, images):
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):  # the evaluator reads the spec's 64 × 64 canvas
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), resample=PIL.Image.Resampling.BOX)
            records.append((prompt, score_image(image, prompt, extension), held_out, n, image))
        bar.update(len(chunk))
    bar.close()
    return records


def headline(summary: dict) -> dict:
    """Whole-caption accuracy of the four report groups."""
    return {
        "seen_one_object": summary["seen"]["one_object"]["caption"],
        "seen_two_objects": summary["seen"]["two_objects"]["caption"],
        "held_out_one_object": summary["held_out"]["one_object"]["caption"],
        "held_out_two_objects": summary["held_out"]["two_objects"]["caption"],
    }


def sample_grid(records: list, per_group: int = 8):
    from ..utils.image_grid import make_image_grid

    chosen = []
    for held_out, n in SPLITS.values():
        group = [r for r in records if r[2] == held_out and r[3] == n]
        step = max(1, len(group) // per_group)
        chosen += group[::step][:per_group]
    images = [r[4].resize((128, 128), resample=0) for r in chosen]
    captions = [("[right] " if r[1]["caption"] else "[wrong] ") + r[0] + (" [held out]" if r[2] else "")
                for r in chosen]
    return make_image_grid(images, captions=captions, cols=per_group)


def inpainting_grid(records: list, per_row: int = 8):
    """Source images and their inpainted results, alternating, with the prompt and the verdict under each result."""
    from ..utils.image_grid import make_image_grid

    chosen = records[:: max(1, len(records) // per_row)][:per_row]
    images, captions = [], []
    for prompt, source, result, correct in chosen:
        images += [source.resize((128, 128), resample=0), result.resize((128, 128), resample=0)]
        captions += ["input (dark: masked)", ("[right] " if correct else "[wrong] ") + prompt]
    return make_image_grid(images, captions=captions, cols=min(per_row, len(images)))


def prompts_grid(results: list[dict]):
    """Each ``--prompt``'s images in a row, the seed and the verdict under each."""
    from ..utils.image_grid import make_image_grid

    images, captions = [], []
    for result in results:
        for j, (image, verdict) in enumerate(zip(result["images"], result["verdicts"])):
            images.append(image.resize((128, 128), resample=0))
            captions.append(f"{'[right]' if verdict['caption'] else '[wrong]'} seed {result['seeds'][0] + j}")
    return make_image_grid(images, captions=captions, cols=max(r["num_images"] for r in results))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="var-clip eval-shapes", description=__doc__)
    add_model_option(p)
    add_option(p, "output-dir", default="shapes_report",
               help="where report.json and samples.png go (default shapes_report)")
    add_option(p, "samples-per-prompt", type=int_at_least(1), default=4,
               help="samples per prompt (default 4, the spec's minimum)")
    add_option(p, "guidance-scale", type=float, default=None, help="main guidance scale (default: the pipeline's)")
    add_option(p, "guidance-scales", default=None,
               help="comma-separated extra guidance scales to sweep, e.g. 0,2,4,6 (whole-caption accuracy each)")
    add_option(p, "top-k", type=int_at_least(0), default=None, help="top-k (default: the pipeline's)")
    add_option(p, "top-p", type=float, default=None, help="top-p (default: the pipeline's)")
    add_option(p, "seed", type=int, default=0, help="base seed (default 0)")
    add_option(p, "max-prompts", type=int_at_least(1), default=None,
               help="use only the first N prompts of each group (quick runs)")
    add_option(p, "batch-size", type=int_at_least(1), default=16, help="images per pipeline call (default 16)")
    add_option(p, "inpainting", type=int_at_least(0), default=0, metavar="N",
               help="also inpaint a random new object (colour, shape and relation drawn from the world, seeded) into "
                    "the masked half of N shapes-world images and score it")
    add_option(p, "cell-threshold", type=float, default=0.5,
               help="inpainting: a token cell straddling the mask is regenerated above this masked share (default 0.5)")
    add_option(p, "outpainting", type=int_at_least(0), default=0, metavar="N",
               help="also extend N scenes by 64 px to the right with a red circle and score it")
    add_option(p, "img2img", type=int_at_least(0), default=0, metavar="N",
               help="also re-prompt N scenes at every strength (adherence vs similarity)")
    add_option(p, "reconstruction", type=int_at_least(0), default=0, metavar="N",
               help="also score the VQ-VAE's reconstructions of N random seen scenes against their captions: what "
                    "survives the tokenizer, the ceiling of the other figures")
    add_option(p, "prompt", action="append", default=None, metavar="TEXT",
               help="also score this caption of the shapes world at the seeds seed … seed + samples-per-prompt - 1 "
                    "(as var-clip generate --num-images --seed draws them); repeat for several")
    add_device_option(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..pipelines import VARCLIPPipeline
    from ..pipelines.loading import load_pipeline

    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.cell_threshold < 1.0:
        parser.error("--cell-threshold must be in [0, 1)")
    sweep = []
    if args.guidance_scales:
        try:
            sweep = [float(g) for g in args.guidance_scales.split(",") if g.strip()]
        except ValueError:
            parser.error(f"--guidance-scales must be comma-separated numbers, got {args.guidance_scales!r}")
        if any(g < 0 for g in sweep):
            parser.error("--guidance-scales must be >= 0")
    for prompt in args.prompt or ():
        try:
            parse_caption(prompt)
        except ValueError as error:
            parser.error(f"--prompt {prompt!r} is not a caption of the shapes world: {error}")
    try:
        out = claim_output_folder(args.output_dir, "--output-dir", "eval-shapes", input_paths(args, ("model",)),
                                  own_files=REPORT_FILES)
        pipe = load_pipeline(args.model, VARCLIPPipeline, "float32", args.device)
        pipe.set_progress_bar_config(disable=True)
        kwargs = {k: v for k, v in (("top_k", args.top_k), ("top_p", args.top_p)) if v is not None}
        common = dict(samples_per_prompt=args.samples_per_prompt, seed=args.seed, max_prompts=args.max_prompts,
                      batch_size=args.batch_size, **kwargs)
        summary, records = evaluate_shapes(pipe, guidance_scale=args.guidance_scale, **common)
        report = {
            "model": args.model or "default", "samples_per_prompt": args.samples_per_prompt, "seed": args.seed,
            "guidance_scale": args.guidance_scale, "whole_caption_accuracy": headline(summary), "accuracy": summary,
            "guidance_sweep": {},
        }
        for g in sweep:
            report["guidance_sweep"][str(g)] = headline(evaluate_shapes(pipe, guidance_scale=g, **common)[0])
        inpainting_records = []
        edit_kwargs = dict(samples_per_image=args.samples_per_prompt, seed=args.seed, **kwargs)
        if args.guidance_scale is not None:
            edit_kwargs["guidance_scale"] = args.guidance_scale
        if args.inpainting:
            report["inpainting"], inpainting_records = evaluate_inpainting(
                pipe, num_images=args.inpainting, cell_threshold=args.cell_threshold, **edit_kwargs)
        if args.outpainting:
            report["outpainting"], _ = evaluate_outpainting(pipe, num_images=args.outpainting, **edit_kwargs)
        if args.img2img:
            report["img2img"] = evaluate_img2img(pipe, num_images=args.img2img, **edit_kwargs)
        if args.reconstruction:
            report["reconstruction"] = evaluate_reconstruction(pipe.vqvae, args.reconstruction, seed=args.seed)
        sampling = {k: v for k, v in edit_kwargs.items() if k not in ("samples_per_image", "seed")}
        prompt_results = [score_prompt_at_seeds(pipe, prompt, args.samples_per_prompt, args.seed, args.batch_size,
                                                **sampling) for prompt in args.prompt or ()]
        if prompt_results:
            report["prompts"] = [{k: v for k, v in r.items() if k != "images"} for r in prompt_results]
        # write into a temporary folder, then move the finished files into place
        tmp = Path(tempfile.mkdtemp(prefix=".eval_shapes_", dir=out))
        try:
            (tmp / "report.json").write_text(json.dumps(report, indent=1))
            sample_grid(records).save(tmp / "samples.png")
            names = ["report.json", "samples.png"]
            if inpainting_records:
                inpainting_grid(inpainting_records).save(tmp / "inpainting.png")
                names.append("inpainting.png")
            if prompt_results:
                prompts_grid(prompt_results).save(tmp / "prompts.png")
                names.append("prompts.png")
            for name in names:
                os.replace(tmp / name, out / name)
            for stale in [p for p in out.iterdir() if REPORT_FILES.match(p.name) and p.name not in names]:
                stale.unlink()  # an earlier report's grid, not of this one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except ValueError as e:
        print(f"var-clip eval-shapes: error: {e}", file=sys.stderr)
        return 1
    acc = report["whole_caption_accuracy"]
    print("whole-caption accuracy: "
          + ", ".join(f"{k} {v:.0%}" if v is not None else f"{k} n/a" for k, v in acc.items()))
    for g, a in report["guidance_sweep"].items():
        print(f"  guidance {g}: " + ", ".join(f"{k} {v:.0%}" for k, v in a.items() if v is not None))
    if "inpainting" in report:
        r = report["inpainting"]
        print(f"inpainting: caption with the new object in the mask {r['caption_with_new_object_in_mask']:.0%} "
              f"(the only object there {r['caption_with_only_new_object_in_mask']:.0%}), kept "
              f"half of the generated latent {r['kept_latent_psnr_median']:.1f} dB median "
              f"({r['kept_redrawn_share']:.0%} redrawn), largest change outside the mask {r['max_unmasked_change']}; "
              "by relation of the new object: "
              + ", ".join(f"{k} {v:.0%}" for k, v in r["by_relation"].items()))
    if "outpainting" in report:
        r = report["outpainting"]
        print(f"outpainting: red circle in the new area {r['red_circle_in_new_area']:.0%}, seam step "
              f"{r['seam_step']:.1f} (columns elsewhere {r['median_column_step']:.1f}), largest change of the original "
              f"{r['max_original_change']}")
    if "img2img" in report:
        for strength, r in report["img2img"]["strengths"].items():
            print(f"img2img strength {strength}: new caption {r['new_caption']:.0%}, input caption "
                  f"{r['input_caption']:.0%}, PSNR to the input {r['psnr_to_input']:.1f} dB")
    if "reconstruction" in report:
        r = report["reconstruction"]
        print(f"VQ-VAE reconstructions of {r['num_images']} scenes: whole caption one object "
              f"{r['one_object']['caption']:.0%}, two objects {r['two_objects']['caption']:.0%} (shape "
              f"{r['one_object']['shape']:.0%} / {r['two_objects']['shape']:.0%})")
    for r in report.get("prompts", ()):
        print(f"{r['prompt']!r}: right in {r['right']} of {r['num_images']} (seeds {r['seeds'][0]}–{r['seeds'][1]})")
    print(f"wrote {out / 'report.json'} and {out / 'samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
