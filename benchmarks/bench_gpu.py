"""GPU benchmark: images/s and peak memory of VAR-CLIP d16 and d30 (random weights of the released shapes), eager and
compiled, fp16 and bf16; model and group offloading (memory saved, time paid); inpainting and generate-batch once.

    python benchmarks/bench_gpu.py --original-code ../VAR-CLIP   # the whole plan below
    python benchmarks/bench_gpu.py --configs d16 --batch-sizes 64 --dtypes bf16 --modes eager
    python benchmarks/bench_gpu.py --parts grid --json gpu.json  # one part: grid, original, offload, inpaint, batch
    python benchmarks/bench_gpu.py --device cpu --configs d2 --batch-sizes 1,2 --runs 1   # the flow, on a CPU

1. grid: every config × dtype × mode (eager; compiled = ``pipe.compile_repeated_blocks()``, regional torch.compile
   with dynamic shapes, its compile time reported apart) × batch size: seconds per call and images/s (median of
   ``--runs`` calls after a warm-up call), peak memory (``torch.cuda.max_memory_allocated`` over the setting,
   weights included).
2. original: with ``--original-code DIR``, the original sampler against var-clip on the same weights
   (``bench_original.py``), the first config at the largest batch, every dtype.
3. offload: the first config at the largest batch, the first dtype, eager: no offloading, ``enable_model_cpu_offload``
   and ``enable_group_offload`` (block level, one block per group, on a CUDA stream): peak memory and seconds per
   call, and against no offloading the memory saved and the time paid.
4. inpaint: ``VARCLIPInpaintPipeline`` on the first config, dtype and largest batch, a centred square mask.
5. batch: ``var-clip generate-batch`` on a class-conditional VAR of the first config's shape (saved to a
   temporary folder), ``4 × largest batch`` images at the largest batch size: images/s from its summary.

Guidance 4, top-k 900, top-p 0.95 throughout (the authors' settings). The weights are random and built on the
device itself (no download, seconds even for d30). Lines are printed as each setting finishes, so a run cut short
still reports what it measured; ``--json`` is rewritten after every setting.

The original code runs as it comes: float32 weights, under ``torch.autocast`` for bf16 and fp16, with flash-attn or
xformers if they are installed (its own choice).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from var_clip.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P

PARTS = ("grid", "original", "offload", "inpaint", "batch")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build(config: str, dtype: torch.dtype, device: str, condition_type: str = "text"):
    """VAR-CLIP (or class-conditional VAR) with VAR's shapes at depth N: width 64·N, N heads, the 256-px VQ-VAE;
    random weights created directly on ``device``."""
    from var_clip import MultiScaleVQModel, VARCLIPPipeline, VARPipeline, VARTransformer2DModel

    depth = int(config.removeprefix("d"))
    torch.manual_seed(0)
    with torch.device(device):
        transformer = VARTransformer2DModel(depth=depth, embed_dim=64 * depth, num_heads=depth, text_embed_dim=768,
                                            condition_type=condition_type, num_classes=1000).eval()
        vqvae = MultiScaleVQModel().eval()
    if condition_type == "class":
        pipe = VARPipeline(transformer=transformer, vqvae=vqvae)
    else:
        pipe = VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vqvae=vqvae)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=dtype)  # the pipelines' `to` keeps the float32 quantizer and logits head


def call_kwargs(batch: int, device: str) -> dict:
    embeds = torch.nn.functional.normalize(torch.randn(batch, 768, generator=torch.Generator().manual_seed(0)), dim=-1)
    return dict(prompt_embeds=embeds.to(device), guidance_scale=DEFAULT_GUIDANCE_SCALE, top_k=DEFAULT_TOP_K,
                top_p=DEFAULT_TOP_P, output_type="pt")


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def fresh_memory(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None


def time_calls(call, runs: int, device: str) -> tuple[float, float]:
    """(first call's seconds, median of the next ``runs``): the first pays warm-up and compilation."""
    times = []
    for i in range(runs + 1):
        synchronize(device)
        t = time.perf_counter()
        call(i)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[1:])


class Report:
    """Results printed as they come and kept in one JSON file, rewritten after each."""

    def __init__(self, path: Path | None):
        self.path, self.results = path, []

    def add(self, part: str, line: str, **figures) -> None:
        self.results.append(dict(part=part, **figures))
        print(line, flush=True)
        if self.path is not None:
            self.path.write_text(json.dumps(self.results, indent=1) + "\n")


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None else format(value, spec)


def run_grid(args, report: Report) -> None:
    print("\n| config | dtype | mode | batch | s / call | images/s | peak MiB | compile s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for config in args.configs:
        for dtype_name in args.dtypes:
            for mode in args.modes:
                fresh_memory(args.device)
                pipe = build(config, DTYPES[dtype_name], args.device)
                if mode == "compiled":
                    pipe.compile_repeated_blocks()
                for batch in args.batch_sizes:
                    kwargs = call_kwargs(batch, args.device)
                    fresh_memory(args.device)
                    first, median = time_calls(
                        lambda i: pipe(generator=torch.Generator(args.device).manual_seed(i), **kwargs),
                        args.runs, args.device)
                    compile_s = first - median if mode == "compiled" else None
                    peak = peak_mib(args.device)
                    report.add("grid", f"| {config} | {dtype_name} | {mode} | {batch} | {median:.3f} | "
                                       f"{batch / median:.2f} | {fmt(peak)} | {fmt(compile_s, '.1f')} |",
                               config=config, dtype=dtype_name, mode=mode, batch=batch, s_per_call=median,
                               images_per_s=batch / median, peak_mib=peak, compile_s=compile_s)
                del pipe


def run_original(args, report: Report) -> None:
    """The original sampler against var-clip on the same weights (``bench_original.py``), first config, largest
    batch, every dtype; each side in its own process."""
    if args.original_code is None:
        print("\noriginal code: skipped (pass --original-code DIR, a checkout of the original VAR-CLIP repository)")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_original

    config, batch = args.configs[0], max(args.batch_sizes)
    options = bench_original.parse_args(["--original-code", str(args.original_code), "--depth", config[1:],
                                         "--runs", str(args.runs), "--device", args.device])
    print(f"\n{config}, batch {batch}, eager, against the original code:\n"
          "| dtype | original images/s | var-clip images/s | speedup |\n| --- | --- | --- | --- |")
    for dtype_name in args.dtypes:
        original = bench_original.in_subprocess(options, "original", dtype_name, batch)
        ours = bench_original.in_subprocess(options, "var-clip", dtype_name, batch)
        speedup = original["s_per_call"] / ours["s_per_call"]
        report.add("original", f"| {dtype_name} | {batch / original['s_per_call']:.2f} | "
                               f"{batch / ours['s_per_call']:.2f} | {speedup:.2f}× |",
                   config=config, dtype=dtype_name, batch=batch, original_s_per_call=original["s_per_call"],
                   var_clip_s_per_call=ours["s_per_call"], speedup=speedup)


def run_offload(args, report: Report) -> None:
    config, dtype_name, batch = args.configs[0], args.dtypes[0], max(args.batch_sizes)
    print(f"\n{config}, {dtype_name}, batch {batch}, eager:\n"
          "| offloading | s / call | peak MiB | memory saved MiB | time paid s |\n| --- | --- | --- | --- | --- |")
    device = torch.device(args.device)
    baseline = None
    for offload in ("none", "model", "group"):
        fresh_memory(args.device)
        if offload == "none":
            pipe = build(config, DTYPES[dtype_name], args.device)
        else:  # built on the device (fast), then handed to the offloading hooks from the CPU
            pipe = build(config, DTYPES[dtype_name], args.device).to("cpu")
            fresh_memory(args.device)
            if offload == "model":
                pipe.enable_model_cpu_offload(device=device)
            else:
                pipe.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1,
                                          use_stream=device.type == "cuda")
        kwargs = call_kwargs(batch, args.device)
        fresh_memory(args.device)
        _, median = time_calls(lambda i: pipe(generator=torch.Generator(args.device).manual_seed(i), **kwargs),
                               args.runs, args.device)
        peak = peak_mib(args.device)
        if offload == "none":
            baseline = (median, peak)
        saved = None if peak is None or baseline[1] is None else baseline[1] - peak
        paid = median - baseline[0]
        report.add("offload", f"| {offload} | {median:.3f} | {fmt(peak)} | {fmt(saved)} | {paid:+.3f} |",
                   config=config, dtype=dtype_name, batch=batch, offload=offload, s_per_call=median, peak_mib=peak,
                   memory_saved_mib=saved, time_paid_s=paid)
        del pipe


def run_inpaint(args, report: Report) -> None:
    from var_clip import VARCLIPInpaintPipeline

    config, dtype_name, batch = args.configs[0], args.dtypes[0], max(args.batch_sizes)
    fresh_memory(args.device)
    pipe = VARCLIPInpaintPipeline.from_pipe(build(config, DTYPES[dtype_name], args.device))
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(256, 256)
    mask[64:192, 64:192] = 1.0  # regenerate the centre quarter
    kwargs = dict(call_kwargs(batch, args.device), image=image, mask_image=mask)
    fresh_memory(args.device)
    _, median = time_calls(lambda i: pipe(generator=torch.Generator(args.device).manual_seed(i), **kwargs),
                           args.runs, args.device)
    peak = peak_mib(args.device)
    report.add("inpaint", f"\ninpainting, {config}, {dtype_name}, batch {batch}: {median:.3f} s per call, "
                          f"{batch / median:.2f} images/s, peak {fmt(peak)} MiB",
               config=config, dtype=dtype_name, batch=batch, s_per_call=median, images_per_s=batch / median,
               peak_mib=peak)
    del pipe


def run_batch(args, report: Report) -> None:
    config, dtype_name, batch = args.configs[0], args.dtypes[0], max(args.batch_sizes)
    images = 4 * batch
    with tempfile.TemporaryDirectory() as tmp:
        build(config, DTYPES[dtype_name], args.device, condition_type="class").save_pretrained(Path(tmp) / "model")
        fresh_memory(args.device)
        command = [sys.executable, "-m", "var_clip.generate_batch", "--model", str(Path(tmp) / "model"),
                   "--class-labels", f"0-{images - 1}", "--batch-size", str(batch), "--dtype", dtype_name,
                   "--output-dir", str(Path(tmp) / "out"), "--no-progress-bar"]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"generate-batch failed:\n{done.stderr[-3000:]}")
    match = re.search(r"in ([\d.]+) s \(([\d.]+) images/s", done.stdout)
    seconds, rate = float(match.group(1)), float(match.group(2))
    report.add("batch", f"\ngenerate-batch, class-conditional {config}, {dtype_name}, {images} images at batch {batch}:"
                        f" {rate:.2f} images/s ({seconds:.1f} s, loading excluded, PNG writing included)",
               config=config, dtype=dtype_name, batch=batch, images=images, seconds=seconds, images_per_s=rate)


def _list(text: str, allowed, name: str, parser) -> list[str]:
    values = [v for v in text.split(",") if v]
    bad = [v for v in values if (not re.fullmatch(r"d[1-9]\d*", v) if allowed is None else v not in allowed)]
    if not values or bad:
        choices = "dN, e.g. d16,d30" if allowed is None else ", ".join(allowed)
        parser.error(f"{name}: {', '.join(bad) or 'nothing'} given; choose from {choices}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="d16,d30", help="comma-separated dN (VAR-CLIP's shapes at depth N)")
    parser.add_argument("--batch-sizes", default="1,16,64", help="comma-separated images per call")
    parser.add_argument("--dtypes", default="bf16,fp16", help="comma-separated: bf16, fp16, fp32")
    parser.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per setting after a warm-up (default 3)")
    parser.add_argument("--device", default="cuda",
                        help="torch device (default cuda; cpu runs the flow, at small sizes)")
    parser.add_argument("--original-code", type=Path, metavar="DIR",
                        help="a checkout of the original VAR-CLIP repository: part 'original' compares with it")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file (rewritten after each setting)")
    args = parser.parse_args(argv)
    args.configs = _list(args.configs, None, "--configs", parser)
    args.dtypes = _list(args.dtypes, tuple(DTYPES), "--dtypes", parser)
    args.modes = _list(args.modes, ("eager", "compiled"), "--modes", parser)
    args.parts = _list(args.parts, PARTS, "--parts", parser)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        parser.error(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.runs < 1:
        parser.error("--batch-sizes and --runs take integers of at least 1")
    if args.original_code is not None and not (args.original_code / "models" / "var.py").is_file():
        parser.error(f"--original-code {str(args.original_code)!r} has no models/var.py: give a checkout of the "
                     "original VAR-CLIP repository")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is not a torch device")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (this benchmark measures a GPU; --device cpu runs its flow)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; configs {args.configs}, batches {args.batch_sizes}, dtypes "
          f"{args.dtypes}, modes {args.modes}, {args.runs} timed calls per setting")
    report = Report(args.json)
    runners = {"grid": run_grid, "original": run_original, "offload": run_offload, "inpaint": run_inpaint,
               "batch": run_batch}
    for part in args.parts:
        runners[part](args, report)


if __name__ == "__main__":
    main()
