"""Where the time of one call goes, scale by scale, and what each part would take at this machine's matmul rate.

    python benchmarks/bench_profile.py                          # VAR-CLIP d16 (random weights), fp32, 1 image
    python benchmarks/bench_profile.py --dtype bf16 --runs 5
    python benchmarks/bench_profile.py --config d20 --batch 4 --json profile.json

Per scale: self-attention (projections and the attention itself, over the KV cache), MLP, the logits head, the rest
of the transformer's forward (AdaLN, norms, embeddings, the cross-attention of token-level models), and sampling
(everything between two forward passes: guidance, top-k / top-p, the draw, the codebook lookup and the residual
accumulation); then the VQ-VAE decode. Times are medians over ``--runs`` calls after a warm-up call, taken with
forward hooks (wall time; the CPU runs each operation to its end before the next).

"floor" is the time of each part's matmul and convolution work at the rate of a large matmul timed in the same
process: what the part would take if it ran at that rate, the limit for an exact-output implementation on this
machine. "of floor" is floor / measured. Guidance 4, top-k 900, top-p 0.95 (the authors' settings), as
``bench_inference.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build_pipeline, decoder_flops, matmul_gflops  # noqa: E402

from var_clip.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P  # noqa: E402
from var_clip.utils.threads import intra_op_threads  # noqa: E402

PARTS = ("attention", "mlp", "head", "transformer other", "sampling")


class ScaleProfile:
    """Forward hooks that add each part's wall time and matmul work to the scale being generated."""

    def __init__(self, transformer):
        self.seconds = defaultdict(float)  # (scale, part) -> s
        self.flops = defaultdict(float)  # (scale, part) -> multiply-adds × 2
        self.scale_start: list[float] = []  # when each transformer forward started
        self.transformer_s: list[float] = []
        self.scale = -1
        self.handles = []
        self._started: dict[int, float] = {}
        D, V = transformer.config.embed_dim, transformer.config.vocab_size
        self._hook(transformer, self._transformer_pre, self._transformer_post)
        for block in transformer.blocks:
            self._hook(block.attn, self._start, lambda m, args, out: self._attention(m, args, D))
            self._hook(block.ffn, self._start, lambda m, args, out, H=block.ffn.fc1.out_features:
                       self._stop(m, "mlp", 2 * 2 * args[0].shape[0] * args[0].shape[1] * D * H))
        self._hook(transformer.head, self._start, lambda m, args, out:
                   self._stop(m, "head", 2 * args[0].shape[0] * args[0].shape[1] * D * V))

    def _hook(self, module, pre, post):
        self.handles.append(module.register_forward_pre_hook(pre))
        self.handles.append(module.register_forward_hook(post))

    def _start(self, module, args):
        self._started[id(module)] = time.perf_counter()

    def _stop(self, module, part: str, flops: float):
        self.seconds[self.scale, part] += time.perf_counter() - self._started.pop(id(module))
        self.flops[self.scale, part] += flops

    def _attention(self, module, args, D: int):
        x_BlD, kv_cache = args[0], args[2] if len(args) > 2 else None
        R, l = x_BlD.shape[:2]
        prefix = kv_cache.length if kv_cache is not None else l  # keys and values attended to, this scale's included
        # q, k, v and output projections, then q·kᵀ and the weighted sum of v over the prefix
        self._stop(module, "attention", 2 * R * l * 4 * D * D + 2 * 2 * R * l * prefix * D)

    def _transformer_pre(self, module, args):
        self.scale += 1
        self.threads = torch.get_num_threads()  # the count the call chose (var_clip.utils.threads)
        self.scale_start.append(time.perf_counter())
        self._started[id(module)] = self.scale_start[-1]

    def _transformer_post(self, module, args, out):
        self.transformer_s.append(time.perf_counter() - self._started.pop(id(module)))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def profile_call(pipe, kwargs: dict, seed: int) -> dict:
    """One call's seconds per (scale, part) and the decode, with the matmul work of each."""
    profile = ScaleProfile(pipe.transformer)
    decode = pipe.vqvae.decode_latent
    decode_s = []

    def timed_decode(*args, **kw):
        t = time.perf_counter()
        out = decode(*args, **kw)
        decode_s.append(time.perf_counter() - t)
        return out

    pipe.vqvae.decode_latent = timed_decode
    try:
        start = time.perf_counter()
        pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
        total = time.perf_counter() - start
    finally:
        del pipe.vqvae.decode_latent  # the instance attribute; the class's method shows through again
        profile.remove()
    S = len(profile.transformer_s)
    decode_started = total - decode_s[0]  # decoding ends the call (output_type "pt": no PIL conversion)
    ends = [t - start for t in profile.scale_start[1:]] + [decode_started]
    seconds = {}
    for si in range(S):
        parts = {p: profile.seconds[si, p] for p in ("attention", "mlp", "head")}
        parts["transformer other"] = profile.transformer_s[si] - sum(parts.values())
        parts["sampling"] = ends[si] - (profile.scale_start[si] - start) - profile.transformer_s[si]
        seconds[si] = parts
    return dict(seconds=seconds, flops={k: v for k, v in profile.flops.items()}, decode_s=decode_s[0],
                setup_s=profile.scale_start[0] - start, total_s=total, threads=profile.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="d16", help="dN: VAR-CLIP's shapes at depth N with random weights (d16, "
                        "d20, d24, d30 released), or default: the embedded model (default d16)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="weights' precision (default fp32)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="profiled calls after a warm-up call (default 3)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.batch < 1 or args.runs < 1:
        parser.error("--batch and --runs must be at least 1")

    from var_clip.utils.dtypes import torch_dtype

    if args.config != "default" and not re.fullmatch(r"d[1-9]\d*", args.config):
        parser.error(f"--config: unknown {args.config!r}; choose dN (d16, d20, d24, d30...) or default")
    dtype = torch_dtype(args.dtype)
    pipe = build_pipeline(args.config, dtype)
    pipe.set_progress_bar_config(disable=True)
    E = pipe.transformer.config.text_embed_dim
    kwargs = dict(prompt_embeds=torch.nn.functional.normalize(
        torch.randn(args.batch, E, generator=torch.Generator().manual_seed(0)), dim=-1),
        guidance_scale=DEFAULT_GUIDANCE_SCALE, top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P, output_type="pt")
    if pipe.transformer.uses_text_tokens:
        H = pipe.transformer.config.cross_attention_dim
        kwargs.update(prompt_token_embeds=torch.randn(args.batch, 12, H, generator=torch.Generator().manual_seed(1)),
                      prompt_attention_mask=torch.ones(args.batch, 12, dtype=torch.long))
    decoder_work = decoder_flops(pipe.vqvae, args.batch)
    calls = [profile_call(pipe, kwargs, seed) for seed in range(args.runs + 1)][1:]  # call 0 warms up

    threads_in_call = calls[0]["threads"]
    with intra_op_threads(threads_in_call):  # the floor at the thread count the calls ran with
        rate = matmul_gflops(dtype, torch.device("cpu")) * 1e9
    patch_nums = pipe.transformer.config.patch_nums
    median = lambda values: statistics.median(values)  # noqa: E731
    rows, totals = [], defaultdict(float)
    for si, pn in enumerate(patch_nums):
        row = {"scale": si, "side": pn, "tokens": pn * pn}
        for part in PARTS:
            row[part] = median([c["seconds"][si][part] for c in calls])
            totals[part] += row[part]
        row["floor"] = sum(calls[0]["flops"].get((si, p), 0.0) for p in PARTS) / rate
        totals["floor"] += row["floor"]
        rows.append(row)
    decode_s = median([c["decode_s"] for c in calls])
    total_s = median([c["total_s"] for c in calls])
    setup_s = median([c["setup_s"] for c in calls])
    flops = {p: sum(calls[0]["flops"].get((si, p), 0.0) for si in range(len(patch_nums))) for p in PARTS}
    flops["decode"] = decoder_work

    print(f"{args.config}, {args.dtype}, batch {args.batch}, {threads_in_call} intra-op threads in the call, matmul "
          f"rate {rate / 1e9:.0f} GFLOP/s on as many; median of {args.runs} calls: {total_s:.3f} s per call")
    print("| scale | side | tokens | attention s | MLP s | head s | transformer other s | sampling s | floor s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['scale']} | {r['side']} | {r['tokens']} | {r['attention']:.4f} | {r['mlp']:.4f} | "
              f"{r['head']:.4f} | {r['transformer other']:.4f} | {r['sampling']:.4f} | {r['floor']:.4f} |")
    print()
    print("| part | s | share | GFLOP | floor s | of floor |")
    print("| --- | --- | --- | --- | --- | --- |")
    parts = {**{p: totals[p] for p in PARTS}, "decode": decode_s, "setup": setup_s}
    for part, seconds in parts.items():
        work = flops.get(part, 0.0)
        floor = work / rate
        shown = f"{work / 1e9:.1f} | {floor:.3f} | {floor / seconds:.0%}" if work else "– | – | –"
        print(f"| {part} | {seconds:.3f} | {seconds / total_s:.0%} | {shown} |")
    floor_total = sum(flops.values()) / rate
    print(f"| **call** | {total_s:.3f} | 100% | {sum(flops.values()) / 1e9:.1f} | {floor_total:.3f} | "
          f"{floor_total / total_s:.0%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(config=args.config, dtype=args.dtype, batch=args.batch, runs=args.runs,
                           threads=threads_in_call, matmul_gflops=rate / 1e9, per_scale=rows, parts_s=parts,
                           gflop={k: v / 1e9 for k, v in flops.items()}, call_s=total_s), f, indent=1)


if __name__ == "__main__":
    main()
