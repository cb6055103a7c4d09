"""Inference benchmark: seconds per call, images/s, where the time goes, peak memory and achieved GFLOP/s.

Builds the released configurations with random weights (VAR-CLIP d16 at 256 px by default; `--configs d20,d24,d30`
for the larger transformers) and the embedded default model when it is installed, and times full pipeline calls
(guidance on, top_k=900, top_p=0.95, the authors' settings). Each configuration and dtype runs in its own process
so that its peak resident memory is its own. Figures are medians over `--runs` calls after a warm-up call.

    python benchmarks/bench_inference.py                       # d16 + default model, fp32 and bf16, batch 1 and 8
    python benchmarks/bench_inference.py --configs d16 --batch-sizes 1 --dtypes fp32 --runs 5
    python benchmarks/bench_inference.py --configs d16 --compile       # also torch.compile (inductor), opt-in
    python benchmarks/bench_inference.py --device cuda --dtypes fp32,bf16,fp16 --batch-sizes 1,8,32

The split: "transformer" is the time inside the transformer's per-scale forward passes, "decoder" the VQ-VAE decoder,
"sampling" everything else in the call (guidance, top-k/top-p, the codebook lookup and the residual accumulation).
With `--compile` each setting also runs after `pipe.compile_repeated_blocks()` (regional torch.compile, dynamic
shapes); its compile time (first call minus a steady call) is reported separately from the per-call figures.
GFLOP/s counts the matmul and convolution work of one call (analytically for the transformer, with forward hooks for
the decoder) and is compared with a large matmul timed in the same process.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import torch

CONFIGS = {  # VAR's family: heads = depth, width = 64·depth; VQ-VAE ch 160, 4096 codes, 16× downsampling
    "d16": dict(depth=16), "d20": dict(depth=20), "d24": dict(depth=24), "d30": dict(depth=30),
}


def build_pipeline(name: str, dtype: torch.dtype):
    from var_clip import MultiScaleVQModel, VARCLIPPipeline, VARTransformer2DModel

    if name == "default":
        import var_clip

        return VARCLIPPipeline.from_pretrained(var_clip.DEFAULT_MODEL, dtype=dtype)
    depth = CONFIGS[name]["depth"] if name in CONFIGS else int(name.removeprefix("d"))  # any depth: d2, d8...
    torch.manual_seed(0)
    transformer = VARTransformer2DModel(depth=depth, embed_dim=64 * depth, num_heads=depth, text_embed_dim=768)
    vqvae = MultiScaleVQModel()
    pipe = VARCLIPPipeline(tokenizer=None, text_encoder=None, transformer=transformer.eval(), vqvae=vqvae.eval())
    if dtype != torch.float32:  # as `from_pretrained(dtype=...)` does: the fp32 modules stay in fp32
        for model in (transformer, vqvae):
            model.to(dtype)
            keep = model._keep_in_fp32_modules or []
            for module_name, module in model.named_modules():
                if any(k in module_name.split(".") for k in keep):
                    module.float()
    return pipe


def transformer_flops(transformer, batch_rows: int) -> float:
    """Multiply-adds ×2 of one generation: block matmuls, attention over the growing prefix, AdaLN once, the head."""
    c = transformer.config
    D, V, mlp = c.embed_dim, c.vocab_size, round(c.embed_dim * c.mlp_ratio)
    per_token_layer = 2 * (4 * D * D + 2 * D * mlp)  # qkv + proj + fc1 + fc2
    flops, prefix = 0.0, 0
    for pn in c.patch_nums:
        l = pn * pn
        prefix += l
        flops += batch_rows * l * (c.depth * per_token_layer + 2 * D * V)
        flops += batch_rows * c.depth * 2 * 2 * l * prefix * D  # q·kᵀ and attn·v
    flops += batch_rows * (c.depth * 2 * D * 6 * D + 2 * D * 2 * D)  # AdaLN modulations, once per generation
    return flops


def decoder_flops(vqvae, batch: int) -> float:
    """Count the decoder's convolution and attention work with forward hooks on one (cheap) meta-free call."""
    total = [0.0]

    def conv_hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        total[0] += 2 * module.in_channels // module.groups * module.out_channels * k * output.shape[-2] * output.shape[-1] * output.shape[0]

    hooks = [m.register_forward_hook(conv_hook) for m in vqvae.modules() if isinstance(m, torch.nn.Conv2d)
             and not any(m is p for p in vqvae.quantize.modules())]
    side = vqvae.config.patch_nums[-1]
    with torch.no_grad():
        vqvae.decode_latent(torch.zeros(1, vqvae.config.latent_channels, side, side))
    for h in hooks:
        h.remove()
    return total[0] * batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(2048, 4096, dtype=dtype, device=device)
    b = torch.randn(4096, 4096, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(5):
        synchronize(device)
        t = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * 2048 * 4096 * 4096 / min(times) / 1e9


@contextmanager
def timed_methods(targets):
    """Accumulate the wall time spent in each (object, method name) into a dict while inside the block."""
    spent = {key: 0.0 for key in targets}
    originals = []
    for key, (obj, name) in targets.items():
        fn = getattr(obj, name)
        originals.append((obj, name, fn))

        def wrapper(*args, _fn=fn, _key=key, **kwargs):
            t = time.perf_counter()
            out = _fn(*args, **kwargs)
            spent[_key] += time.perf_counter() - t
            return out

        setattr(obj, name, wrapper)
    try:
        yield spent
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)


def run_single(name: str, dtype_name: str, batch: int, runs: int, device: str = "cpu", compile: bool = False) -> dict:
    torch.manual_seed(0)
    from var_clip.utils.dtypes import torch_dtype

    dtype, device = torch_dtype(dtype_name), torch.device(device)
    t0 = time.perf_counter()
    pipe = build_pipeline(name, dtype).to(device)
    build_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    # counted before compiling: forward hooks do not fire inside compiled regions
    flops = transformer_flops(pipe.transformer, 2 * batch) + decoder_flops(pipe.vqvae, batch)
    if compile:
        pipe.compile_repeated_blocks()
    E = pipe.transformer.config.text_embed_dim
    embeds = torch.nn.functional.normalize(torch.randn(batch, E, generator=torch.Generator().manual_seed(0)), dim=-1)
    from var_clip.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P

    kwargs = dict(prompt_embeds=embeds.to(device), guidance_scale=DEFAULT_GUIDANCE_SCALE, top_k=DEFAULT_TOP_K,
                  top_p=DEFAULT_TOP_P, output_type="pt")
    if pipe.transformer.uses_text_tokens:  # token-level conditioning: a caption's worth of token states too
        H, T = pipe.transformer.config.cross_attention_dim, 12
        kwargs.update(prompt_token_embeds=torch.randn(batch, T, H, generator=torch.Generator().manual_seed(1)).to(device),
                      prompt_attention_mask=torch.ones(batch, T, dtype=torch.long, device=device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    totals, splits = [], []
    first_call_s = None
    for i in range(runs + 1):  # the first call is the warm-up (and, with --compile, the compilation)
        with timed_methods({"transformer": (pipe.transformer, "forward"),
                            "decoder": (pipe.vqvae, "decode_latent")}) as spent:
            synchronize(device)
            t = time.perf_counter()
            pipe(generator=torch.Generator(device).manual_seed(i), **kwargs)
            synchronize(device)
            total = time.perf_counter() - t
        if not i:
            first_call_s = total
        if i:
            totals.append(total)
            splits.append(dict(spent, sampling=total - spent["transformer"] - spent["decoder"]))

    median = statistics.median(totals)
    split = {k: statistics.median(s[k] for s in splits) for k in ("transformer", "sampling", "decoder")}
    peak_gflops = matmul_gflops(dtype, device)
    return dict(
        config=name, dtype=dtype_name, batch=batch, device=str(device), compiled=compile,
        compile_s=first_call_s - median if compile else None, s_per_call=median, s_per_call_min=min(totals),
        s_per_call_max=max(totals), images_per_s=batch / median, split_s=split, build_s=build_s,
        gflop_per_call=flops / 1e9, achieved_gflops=flops / 1e9 / median, matmul_gflops=peak_gflops,
        fraction_of_matmul=flops / 1e9 / median / peak_gflops,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_cuda_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        weights_mib=sum(p.numel() * p.element_size() for m in (pipe.transformer, pipe.vqvae) for p in m.parameters()) / 2**20,
        transformer_parameters=sum(p.numel() for p in pipe.transformer.parameters()),
    )


def run_in_subprocess(name: str, dtype_name: str, batch: int, runs: int, device: str = "cpu",
                      compile: bool = False) -> dict:
    """:func:`run_single` in a fresh process, so that its peak resident memory is the setting's own."""
    out = subprocess.run([sys.executable, __file__, "--runs", str(runs), "--device", device,
                          "--single", name, dtype_name, str(batch), str(int(compile))], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{name} {dtype_name} batch {batch}: failed\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="d16,default", help="comma-separated: d16, d20, d24, d30, default")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16 (fp16: GPU only)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--compile", action="store_true", help="also run each setting with regional torch.compile")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per setting, after one warm-up call")
    parser.add_argument("--json", help="also write all results to this JSON file")
    parser.add_argument("--single", nargs=4, metavar=("CONFIG", "DTYPE", "BATCH", "COMPILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.single:
        name, dtype_name, batch, compiled = args.single
        print(json.dumps(run_single(name, dtype_name, int(batch), args.runs, args.device, compiled == "1")))
        return

    configs = [c for c in args.configs.split(",") if c]
    if "default" in configs:
        import os

        import var_clip

        if not os.path.isfile(os.path.join(var_clip.DEFAULT_MODEL, "model_index.json")):
            print("(no embedded default model installed: skipping 'default')", file=sys.stderr)
            configs.remove("default")
    unknown = [c for c in configs if c not in CONFIGS and c != "default" and not re.fullmatch(r"d\d+", c)]
    if unknown:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS) + ['default']}")

    results = []
    memory = "peak CUDA MiB" if args.device.startswith("cuda") else "peak MiB"
    header = (f"{'config':8} {'dtype':5} {'compile':>7} {'batch':>5} {'s/call':>8} {'img/s':>7} {'transf.':>8} "
              f"{'sampl.':>7} {'decoder':>8} {'GFLOP':>7} {'GFLOP/s':>8} {'of mm':>6} {memory:>9} {'weights':>8} "
              f"{'compile s':>9}")
    print(header)
    for name in configs:
        for dtype_name in args.dtypes.split(","):
            for compiled in ((False, True) if args.compile else (False,)):
                for batch in (int(b) for b in args.batch_sizes.split(",")):
                    try:
                        r = run_in_subprocess(name, dtype_name, batch, args.runs, args.device, compiled)
                    except RuntimeError as error:
                        print(error, file=sys.stderr)
                        continue
                    results.append(r)
                    s = r["split_s"]
                    peak = r["peak_cuda_mib"] if r["peak_cuda_mib"] is not None else r["peak_rss_mib"]
                    compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
                    print(f"{name:8} {dtype_name:5} {'yes' if compiled else 'no':>7} {batch:>5} {r['s_per_call']:>8.2f} "
                          f"{r['images_per_s']:>7.2f} {s['transformer']:>8.2f} {s['sampling']:>7.2f} {s['decoder']:>8.2f} "
                          f"{r['gflop_per_call']:>7.0f} {r['achieved_gflops']:>8.0f} {r['fraction_of_matmul']:>6.0%} "
                          f"{peak:>9.0f} {r['weights_mib']:>8.0f} {compile_s:>9}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
