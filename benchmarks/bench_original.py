"""var-clip against the original VAR-CLIP sampler on the same weights, in one run: seconds per call of each, the
speedup, and whether the two make the same images.

    python benchmarks/bench_original.py --original-code ../VAR-CLIP                 # d16, fp32 and bf16, 1 image
    python benchmarks/bench_original.py --original-code ../VAR-CLIP --batch-sizes 1,8 --runs 5
    python benchmarks/bench_original.py --original-code ../VAR-CLIP --device cuda --dtypes bf16,fp16 --batch-sizes 64

``--original-code`` is a checkout of the original repository (github.com/daixiangzi/VAR-CLIP), read and never
changed; its ``models`` package needs only torch, numpy and huggingface_hub. Both sides get the same random weights
of VAR-CLIP's shapes at ``--depth`` (width 64 · depth, VAR's 256-px VQ-VAE, or the scales of ``--patch-nums``):
var-clip builds them with a fixed seed, and the original code loads them through
``var_clip.original_format.transformer_to_original`` / ``vqvae_to_original`` with ``strict=True``.

Each side runs in its own process (its peak resident memory is its own): median seconds of ``--runs`` calls of
``autoregressive_infer_cfg`` (original) and of the pipeline (var-clip) after a warm-up call, guidance 4, top-k 900,
top-p 0.95, from the same pooled text embeddings. Precision: var-clip's weights in the dtype (the quantizer and logits
head stay float32, as ``from_pretrained(dtype=...)`` keeps them); the original in float32, under ``torch.autocast``
for bf16 / fp16 (it has no other reduced-precision path). Threads: each side as a user gets it (torch's default
for the original, var-clip's choice by the work). "same images" reruns both greedily (top-k 1) once in fp32 and
prints the largest pixel difference.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GUIDANCE, TOP_K, TOP_P = 4.0, 900, 0.95  # the original's demo settings (cfg 4), which var-clip's defaults follow


def build_var_clip(depth: int, patch_nums: tuple[int, ...], device: str):
    """var-clip's transformer and VQ-VAE with the seeded random weights both sides share, float32 on ``device``."""
    from var_clip import MultiScaleVQModel, VARTransformer2DModel

    torch.manual_seed(0)
    transformer = VARTransformer2DModel(depth=depth, embed_dim=64 * depth, num_heads=depth, text_embed_dim=768,
                                        patch_nums=patch_nums)
    vqvae = MultiScaleVQModel(patch_nums=patch_nums)
    return transformer.eval().to(device), vqvae.eval().to(device)


def text_embeds(batch: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(batch, 768, generator=generator), dim=-1).to(device)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_var_clip(args, dtype_name: str, batch: int, greedy: bool) -> tuple[list[float], np.ndarray]:
    from var_clip import VARCLIPPipeline

    transformer, vqvae = build_var_clip(args.depth, args.patch_nums, args.device)
    pipe = VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vqvae=vqvae)
    pipe = pipe.to(dtype=DTYPES[dtype_name])  # keeps the float32 quantizer and logits head
    pipe.set_progress_bar_config(disable=True)
    embeds = text_embeds(batch, args.device)
    top_k, top_p = (1, 0.0) if greedy else (TOP_K, TOP_P)

    def call(seed: int) -> torch.Tensor:
        return pipe(prompt_embeds=embeds, guidance_scale=GUIDANCE, top_k=top_k, top_p=top_p, output_type="pt",
                    generator=torch.Generator(args.device).manual_seed(seed)).images

    return time_calls(call, 1 if greedy else args.runs, args.device)


def run_original(args, dtype_name: str, batch: int, greedy: bool) -> tuple[list[float], np.ndarray]:
    from var_clip.original_format import transformer_to_original, vqvae_to_original

    transformer, vqvae = build_var_clip(args.depth, args.patch_nums, "cpu")
    var_state, vae_state = transformer_to_original(transformer), vqvae_to_original(vqvae)
    del transformer, vqvae
    sys.path.insert(0, str(args.original_code))
    from models import build_vae_var  # the original code's package (it turns off nn init globally: built last here)

    vae, var = build_vae_var(V=4096, Cvae=32, ch=160, share_quant_resi=4, device=args.device,
                             patch_nums=args.patch_nums, n_cond_embed=768, depth=args.depth, shared_aln=False)
    vae.load_state_dict(vae_state, strict=True)
    var.load_state_dict(var_state, strict=True)
    vae.eval(), var.eval()
    var.rng = torch.Generator(device=args.device)  # the original makes its generator on the GPU whenever one exists
    embeds = text_embeds(batch, args.device)
    top_k, top_p = (1, 0.0) if greedy else (TOP_K, TOP_P)
    device_type = torch.device(args.device).type
    precision = (nullcontext() if dtype_name == "fp32"
                 else torch.autocast(device_type, dtype=DTYPES[dtype_name]))

    def call(seed: int) -> torch.Tensor:
        with precision:
            return var.autoregressive_infer_cfg(B=batch, label_B=embeds, g_seed=seed, cfg=GUIDANCE, top_k=top_k,
                                                top_p=top_p)

    return time_calls(call, 1 if greedy else args.runs, args.device)


def time_calls(call, runs: int, device: str) -> tuple[list[float], np.ndarray]:
    """Seconds of ``runs`` calls after a warm-up call, and the last call's images (B, 3, H, W) in [0, 1]."""
    times, images = [], None
    with torch.no_grad():
        for i in range(runs + 1):
            synchronize(device)
            t = time.perf_counter()
            images = call(i)
            synchronize(device)
            if i:
                times.append(time.perf_counter() - t)
    return times, images.float().cpu().numpy()


def run_single(args) -> None:
    """One side, one setting, in this process: prints a JSON line (and saves the images for the greedy check)."""
    side, dtype_name, batch, greedy, images_path = args.single
    runner = run_original if side == "original" else run_var_clip
    threads = torch.get_num_threads()
    times, images = runner(args, dtype_name, int(batch), greedy == "1")
    if images_path != "-":
        np.save(images_path, images)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(side=side, dtype=dtype_name, batch=int(batch), s_per_call=statistics.median(times),
                          threads_before_call=threads, peak_rss_mib=peak_mib)))


def in_subprocess(args, side: str, dtype_name: str, batch: int, greedy: bool = False,
                  images_path: str = "-") -> dict:
    command = [sys.executable, __file__, "--original-code", str(args.original_code), "--depth", str(args.depth),
               "--patch-nums", ",".join(map(str, args.patch_nums)), "--runs", str(args.runs), "--device", args.device,
               "--single", side, dtype_name, str(batch), str(int(greedy)), images_path]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{side} {dtype_name} batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original-code", type=Path, required=True, metavar="DIR",
                        help="a checkout of the original VAR-CLIP repository (its models/ package is imported)")
    parser.add_argument("--depth", type=int, default=16, help="transformer depth (default 16; width 64 · depth)")
    parser.add_argument("--patch-nums", default="1,2,3,4,5,6,8,10,13,16",
                        help="the scales (default VAR's ten, 256 px); e.g. 1,2,3,4 for a quick 64-px run")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16 (default fp32,bf16)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated images per call (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per side and setting after a warm-up")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-check", action="store_true", help="skip the greedy same-images check")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--single", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.original_code / "models" / "var.py").is_file():
        parser.error(f"--original-code {str(args.original_code)!r} has no models/var.py: give a checkout of the "
                     "original VAR-CLIP repository")
    try:
        args.patch_nums = tuple(int(p) for p in args.patch_nums.split(","))
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        parser.error("--patch-nums and --batch-sizes take comma-separated integers")
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    if not args.dtypes or set(args.dtypes) - set(DTYPES):
        parser.error(f"--dtypes takes {', '.join(DTYPES)}, got {','.join(args.dtypes) or 'nothing'}")
    if args.depth < 1 or args.runs < 1 or not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--depth, --runs and --batch-sizes take integers of at least 1")
    if list(args.patch_nums) != sorted(set(args.patch_nums)) or args.patch_nums[0] < 1:
        parser.error(f"--patch-nums must increase from at least 1, got {args.patch_nums}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.single:
        run_single(args)
        return
    print(f"depth {args.depth} (width {64 * args.depth}), scales {args.patch_nums}, {args.device}; median of "
          f"{args.runs} calls after a warm-up, each side in its own process")
    print("| dtype | batch | original s / call | var-clip s / call | speedup | original peak MiB | var-clip peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for dtype_name in args.dtypes:
        for batch in args.batch_sizes:
            original = in_subprocess(args, "original", dtype_name, batch)
            ours = in_subprocess(args, "var-clip", dtype_name, batch)
            speedup = original["s_per_call"] / ours["s_per_call"]
            results.append(dict(dtype=dtype_name, batch=batch, original=original, var_clip=ours, speedup=speedup))
            print(f"| {dtype_name} | {batch} | {original['s_per_call']:.3f} | {ours['s_per_call']:.3f} | "
                  f"{speedup:.2f}× | {original['peak_rss_mib']:.0f} | {ours['peak_rss_mib']:.0f} |", flush=True)
    if not args.no_check:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            paths = {side: str(Path(tmp) / f"{side}.npy") for side in ("original", "var-clip")}
            for side, path in paths.items():
                in_subprocess(args, side, "fp32", 1, greedy=True, images_path=path)
            difference = float(np.abs(np.load(paths["original"]) - np.load(paths["var-clip"])).max())
        print(f"\nsame images: greedy (top-k 1) fp32 images differ by at most {difference:.2g} (pixels in [0, 1])")
        results.append(dict(check="greedy fp32 max abs difference", value=difference))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
