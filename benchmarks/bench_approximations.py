"""What the opt-in approximations buy and cost: speed on d16, faithfulness and image similarity on the default model.

    python benchmarks/bench_approximations.py                   # all settings below
    python benchmarks/bench_approximations.py --skip-speed      # only the default-model measurements

Settings (each against the exact sampler with the same seeds):
- ``no-guidance-last``: guidance, and its unconditional pass, stops before the last scale (Switti);
- ``no-guidance-last-2``: ... before the last two scales;
- ``prune``: FastVAR-style token pruning at the two largest scales;
- ``both``: ``no-guidance-last`` and ``prune`` together.

Printed per setting: seconds per d16 call (random weights, 256 px, batch 1, fp32, median of ``--runs`` after a
warm-up) and its speedup; on the embedded default model the whole-caption accuracy of the shapes-world report
(four groups), the share of tokens equal to the exact sampler's and the PSNR of the images against the exact ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def settings(patch_nums) -> dict[str, dict]:
    S = len(patch_nums)
    prune = {patch_nums[-2]: 0.4, patch_nums[-1]: 0.5}
    return {
        "exact": {},
        "no-guidance-last": dict(guidance_interval=(0, S - 1)),
        "no-guidance-last-2": dict(guidance_interval=(0, S - 2)),
        "prune": dict(prune_ratios=prune),
        "both": dict(guidance_interval=(0, S - 1), prune_ratios=prune),
    }


def d16_speed(runs: int) -> dict[str, float]:
    from var_clip import MultiScaleVQModel, VARCLIPPipeline, VARTransformer2DModel
    from var_clip.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P

    torch.manual_seed(0)
    transformer = VARTransformer2DModel(depth=16, embed_dim=1024, num_heads=16, text_embed_dim=768).eval()
    pipe = VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vqvae=MultiScaleVQModel().eval())
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.nn.functional.normalize(torch.randn(1, 768, generator=torch.Generator().manual_seed(0)), dim=-1)
    seconds = {}
    for name, extra in settings(transformer.config.patch_nums).items():
        times = []
        for i in range(runs + 1):
            t = time.perf_counter()
            pipe(prompt_embeds=embeds, guidance_scale=DEFAULT_GUIDANCE_SCALE, top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P,
                 output_type="pt",
                 generator=torch.Generator().manual_seed(i), **extra)
            if i:
                times.append(time.perf_counter() - t)
        seconds[name] = statistics.median(times)
    return seconds


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def default_model_costs(samples_per_prompt: int) -> dict[str, dict]:
    import var_clip
    from var_clip import VARCLIPPipeline
    from var_clip import shapes_world as sw
    from var_clip.shapes_world.report import evaluate_shapes, headline

    pipe = VARCLIPPipeline.from_pretrained(var_clip.DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for held in (False, True) for n in (1, 2) for p in sw.evaluation_prompts(held, n)]
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(len(prompts))]  # noqa: E731
    exact_tokens = pipe(prompts, generator=generators(), output_type="tokens").images
    exact_images = np.asarray(pipe(prompts, generator=generators(), output_type="np").images * 255).round()
    results = {}
    for name, extra in settings(pipe.transformer.config.patch_nums).items():
        summary, _ = evaluate_shapes(pipe, samples_per_prompt=samples_per_prompt, show_progress=False, **extra)
        tokens = pipe(prompts, generator=generators(), output_type="tokens", **extra).images
        images = np.asarray(pipe(prompts, generator=generators(), output_type="np", **extra).images * 255).round()
        same = torch.cat([(a == b).flatten() for a, b in zip(exact_tokens, tokens)]).float().mean().item()
        results[name] = dict(accuracy=headline(summary), same_tokens=same,
                             psnr_db=float(np.mean([psnr(a, b) for a, b in zip(exact_images, images)])))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed d16 calls per setting after a warm-up")
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--skip-speed", action="store_true", help="skip the d16 timings")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    speed = {} if args.skip_speed else d16_speed(args.runs)
    costs = default_model_costs(args.samples_per_prompt)
    groups = ("seen_one_object", "seen_two_objects", "held_out_one_object", "held_out_two_objects")
    print(f"{'setting':20} {'d16 s':>7} {'speedup':>8} {'seen 1':>7} {'seen 2':>7} {'held 1':>7} {'held 2':>7} "
          f"{'same tok':>9} {'PSNR dB':>8}")
    for name, c in costs.items():
        s = speed.get(name)
        speed_cols = f"{s:>7.2f} {speed['exact'] / s:>7.2f}×" if s else f"{'':>7} {'':>8}"
        acc = " ".join(f"{c['accuracy'][g]:>7.0%}" for g in groups)
        print(f"{name:20} {speed_cols} {acc} {c['same_tokens']:>9.1%} {c['psnr_db']:>8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"d16_seconds": speed, "default_model": costs}, f, indent=1)


if __name__ == "__main__":
    main()
