"""Intra-op threads chosen by the work: seconds per call with torch's default count and with the automatic choice,
on an idle machine and with one core kept busy by a busy-loop process this benchmark starts (and stops) itself.

    python benchmarks/bench_threads.py                          # default model (4 images) and d16 (1 image)
    python benchmarks/bench_threads.py --models default --runs 10
    python benchmarks/bench_threads.py --sweep                  # 1 thread vs all cores as the work grows

"before" is torch's default count, kept for the call (what every call ran with before the automatic choice);
"after" is the automatic choice (`var_clip.utils.threads.threads_for_work`). Figures are medians over ``--runs``
calls after a warm-up call, the two settings alternating call by call so that a change in the machine's other load
reaches both. d16 is VAR-CLIP d16 at 256 px with random weights; the default model is the embedded one. Guidance 4,
top-k 900, top-p 0.95, fp32.

``--sweep`` times one thread against torch's default count for models of growing size (the default model's VQ-VAE
and scales with wider and deeper transformers, and VAR's 256 px family), printing the work of each call
(transformer parameters × tokens per image × rows) beside the ratio. Where two threads start to beat one is twice
``var_clip.utils.threads.WORK_PER_THREAD`` (a call runs one thread per ``WORK_PER_THREAD`` of work).

The machine's load average is printed with every condition: "idle" means only that this benchmark runs no busy loop.
Unset OMP_NUM_THREADS / MKL_NUM_THREADS first: with either set the automatic choice defers to it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build_pipeline  # noqa: E402  (VAR's family with random weights, as bench_inference)

from var_clip.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P  # noqa: E402
from var_clip.utils import threads  # noqa: E402

BATCH = {"default": 4, "d16": 1}  # the cases: the default model's 4-image grid, one d16 image


@contextmanager
def busy_cores(count: int):
    """Keep ``count`` cores busy with pure-Python busy loops (separate processes) for the duration."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if loops else 0)  # let the loops reach their cores
        yield
    finally:
        for loop in loops:
            loop.terminate()
            loop.wait()


def call_kwargs(pipe, batch: int) -> dict:
    """Guided sampling with the authors' settings on fixed condition rows (no text encoder needed)."""
    E = pipe.transformer.config.text_embed_dim
    embeds = torch.nn.functional.normalize(torch.randn(batch, E, generator=torch.Generator().manual_seed(0)), dim=-1)
    kwargs = dict(prompt_embeds=embeds, guidance_scale=DEFAULT_GUIDANCE_SCALE, top_k=DEFAULT_TOP_K,
                  top_p=DEFAULT_TOP_P, output_type="pt")
    if pipe.transformer.uses_text_tokens:  # token-level conditioning: a caption's worth of token states too
        H = pipe.transformer.config.cross_attention_dim
        kwargs.update(prompt_token_embeds=torch.randn(batch, 12, H, generator=torch.Generator().manual_seed(1)),
                      prompt_attention_mask=torch.ones(batch, 12, dtype=torch.long))
    return kwargs


def work_of(pipe, batch: int) -> float:
    """The work the automatic choice reads: transformer parameters × tokens per image × rows (guided: 2 per image)."""
    return sum(p.numel() for p in pipe.transformer.parameters()) * pipe.transformer.num_tokens * 2 * batch


def time_settings(pipe, batch: int, settings: dict[str, int | None], runs: int) -> dict[str, float]:
    """Median seconds per call for each setting (a pinned thread count, or None for the automatic choice)."""
    kwargs = call_kwargs(pipe, batch)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for i in range(runs + 1):  # call 0 warms up
        for name, count in settings.items():
            with threads.pinned_threads(count):
                t = time.perf_counter()
                pipe(generator=torch.Generator().manual_seed(i), **kwargs)
                if i:
                    times[name].append(time.perf_counter() - t)
    return {name: statistics.median(values) for name, values in times.items()}


def automatic_count(pipe, batch: int) -> int:
    with threads.threads_for_work(work_of(pipe, batch)) as count:
        return count


def compare(models: list[str], runs: int, loads: list[int]) -> list[dict]:
    default = threads._DEFAULT_THREADS
    print(f"| model | images | load | busy loops | before: {default} threads, s | after: threads | after, s | "
          "speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for name in models:
        pipe = build_pipeline(name, torch.float32)
        pipe.set_progress_bar_config(disable=True)
        batch = BATCH[name]
        for busy in loads:
            with busy_cores(busy):
                load = os.getloadavg()[0]
                s = time_settings(pipe, batch, {"before": default, "after": None}, runs)
            chosen = automatic_count(pipe, batch)
            results.append(dict(model=name, images=batch, busy_loops=busy, load_average=load, before_threads=default,
                                after_threads=chosen, before_s=s["before"], after_s=s["after"]))
            print(f"| {name} | {batch} | {load:.1f} | {busy} | {s['before']:.3f} | {chosen} | {s['after']:.3f} | "
                  f"{s['before'] / s['after']:.2f}× |", flush=True)
    return results


def sweep_models() -> list[tuple[str, Callable]]:
    """Models of growing work: the default model's VQ-VAE and scales under wider and deeper transformers, then VAR's
    256 px family (random weights)."""
    import var_clip
    from var_clip import MultiScaleVQModel, VARCLIPPipeline, VARTransformer2DModel

    def small_family(depth: int, width: int):
        def build():
            base = VARCLIPPipeline.from_pretrained(var_clip.DEFAULT_MODEL)
            config = {k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
            config.update(depth=depth, embed_dim=width, num_heads=width // 64, cross_attention_dim=None)
            torch.manual_seed(0)
            transformer = VARTransformer2DModel(**config).eval()
            return VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vqvae=base.vqvae)
        return build

    def var_family(depth: int):  # VAR's shapes: width 64 · depth, one head per 64 channels, its 256 px VQ-VAE
        def build():
            torch.manual_seed(0)
            transformer = VARTransformer2DModel(depth=depth, embed_dim=64 * depth, num_heads=depth, text_embed_dim=768)
            return VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer.eval(),
                                   vqvae=MultiScaleVQModel().eval())
        return build

    return [("default model", lambda: build_pipeline("default", torch.float32)),
            ("64 px, depth 8, width 512", small_family(8, 512)),
            ("64 px, depth 12, width 768", small_family(12, 768)),
            ("256 px, depth 4, width 256", var_family(4)),
            ("256 px, depth 8, width 512", var_family(8)),
            ("256 px, d16", var_family(16))]


def sweep(runs: int, batch_sizes: list[int], loads: list[int], only: str | None) -> list[dict]:
    default = threads._DEFAULT_THREADS
    print(f"| model | images | work | load | busy loops | 1 thread, s | {default} threads, s | 1 thread is faster by |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for label, build in sweep_models():
        if only and only not in label:
            continue
        pipe = build()
        pipe.set_progress_bar_config(disable=True)
        for batch in batch_sizes:
            for busy in loads:
                with busy_cores(busy):
                    load = os.getloadavg()[0]
                    s = time_settings(pipe, batch, {"one": 1, "all": default}, runs)
                work = work_of(pipe, batch)
                results.append(dict(model=label, images=batch, work=work, busy_loops=busy, load_average=load,
                                    one_thread_s=s["one"], default_threads_s=s["all"]))
                print(f"| {label} | {batch} | {work:.2g} | {load:.1f} | {busy} | {s['one']:.3f} | {s['all']:.3f} | "
                      f"{s['all'] / s['one']:.2f}× |", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,d16", help="comma-separated: default, d16 (default both)")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per setting after a warm-up (default 5)")
    parser.add_argument("--busy", default="0,1", help="comma-separated numbers of cores kept busy (default 0,1)")
    parser.add_argument("--sweep", action="store_true", help="time 1 thread vs all cores as the work grows")
    parser.add_argument("--batch-sizes", default="1,4,16", help="--sweep: comma-separated images per call")
    parser.add_argument("--only", default=None, help="--sweep: only the models whose label contains this text")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    set_by_user = [name for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(name, "").strip()]
    if set_by_user or threads.user_chose_threads():
        parser.error(f"unset {' and '.join(set_by_user) or 'the thread count you set'}: the automatic choice defers "
                     "to a count the user chose, and this benchmark measures it")
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in BATCH]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(BATCH)}")
    try:
        loads = [int(b) for b in args.busy.split(",") if b]
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        parser.error("--busy and --batch-sizes take comma-separated integers")
    if args.runs < 1 or any(b < 0 for b in loads) or any(b < 1 for b in batch_sizes):
        parser.error("--runs and --batch-sizes must be at least 1, --busy at least 0")

    print(f"torch {torch.__version__}, {threads._DEFAULT_THREADS} threads by default, {os.cpu_count()} logical CPUs; "
          f"WORK_PER_THREAD = {threads.WORK_PER_THREAD:.2g}")
    results = sweep(args.runs, batch_sizes, loads, args.only) if args.sweep else compare(models, args.runs, loads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
