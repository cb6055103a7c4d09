"""Quantization benchmark: the transformer loaded through diffusers' ``quantization_config``, against float32.

For each model and scheme: the saved weights' size (``save_pretrained`` of the quantized transformer), seconds per
image (one image per call, guidance on, the authors' sampling settings, tokens only: the VQ-VAE decoder is not
quantized and not timed), and the share of sampled tokens equal to float32's at the same seed, at the first four
scales (after a first differing token the later scales see another image, so only the early scales compare like
with like) and over all scales.

    python benchmarks/bench_quantization.py                       # the default model and d16 on its scales, 3 seeds
    python benchmarks/bench_quantization.py --models d16 --d16-scales 256px --seeds 8 --threads 2
    python benchmarks/bench_quantization.py --schemes fp32,torchao-int8wo --json results.json
    python benchmarks/bench_quantization.py --models d16 --schemes fp32,torchao-int8wo --compile   # inductor

Models: ``default`` is the embedded shapes-world model; ``d16`` is VAR-CLIP d16's transformer (depth 16, width 1024,
16 heads, 4096 codes) with random weights, on the default model's scales (1..8, 155 tokens: minutes on two CPU
cores) or with ``--d16-scales 256px`` on VAR's 256 px scales (1..16, 680 tokens: about five times the work per
image). Its weights are VAR's initialisation plus N(0, 0.02²) on every parameter, so that every residual branch and the condition shape the logits (the gates VAR initialises at 1e-5 would
hide the blocks from any quantization error). Every scheme quantizes the transformer's linear layers except the
float32 logits head; the calls of a seed run back to back, scheme after scheme, so that a busy machine slows all
schemes alike. Schemes whose package is missing are skipped (``pip install "var-clip[quantization]"``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

SCHEMES = ("fp32", "torchao-int8wo", "torchao-int8dq", "quanto-int8")
FIRST_SCALES = 4


def quantization_config(scheme: str):
    """diffusers' config for one scheme (None for float32), or None with a note when its package is missing."""
    from diffusers import QuantoConfig, TorchAoConfig

    if scheme == "fp32":
        return None
    if scheme.startswith("torchao"):
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig() if scheme == "torchao-int8wo"
                             else Int8DynamicActivationInt8WeightConfig())
    if scheme == "quanto-int8":
        import optimum.quanto  # noqa: F401  (fail here, not inside diffusers, when it is missing)

        return QuantoConfig(weights_dtype="int8")
    raise ValueError(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")


D16_SCALES = {"default": (1, 2, 3, 4, 5, 6, 8), "256px": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)}


def d16_folder(workdir: Path, patch_nums: tuple[int, ...]) -> Path:
    """A random VAR-CLIP d16 transformer saved as a float32 folder (see the module docstring)."""
    from var_clip import VARTransformer2DModel

    torch.manual_seed(0)
    model = VARTransformer2DModel(depth=16, embed_dim=1024, num_heads=16, text_embed_dim=768,
                                  patch_nums=patch_nums).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(workdir / "d16")
    return workdir / "d16"


def conditions(model_name: str, seeds: int):
    """One pipeline call's inputs per seed: the default model's prompts, or random unit text embeddings for d16."""
    if model_name == "default":
        prompts = ["a red circle", "a small blue square at the top", "a green triangle left of a yellow circle",
                   "a large purple square", "an orange circle below a red triangle"]
        return [dict(prompt=prompts[s % len(prompts)]) for s in range(seeds)]
    g = torch.Generator().manual_seed(1)
    embeds = torch.nn.functional.normalize(torch.randn(seeds, 768, generator=g), dim=-1)
    return [dict(prompt_embeds=embeds[s : s + 1]) for s in range(seeds)]


def build(model_name: str, workdir: Path, d16_scales: str):
    """The transformer's folder and the other components, shared by every scheme."""
    import var_clip
    from var_clip import MultiScaleVQModel, VARCLIPPipeline

    if model_name == "default":
        base = VARCLIPPipeline.from_pretrained(var_clip.DEFAULT_MODEL)
        return Path(var_clip.DEFAULT_MODEL) / "transformer", {k: v for k, v in base.components.items()
                                                              if k != "transformer"}
    torch.manual_seed(0)
    patch_nums = D16_SCALES[d16_scales]
    vqvae = MultiScaleVQModel(patch_nums=patch_nums).eval()
    return d16_folder(workdir, patch_nums), dict(tokenizer=None, text_encoder=None, vqvae=vqvae)


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,d16", help="comma-separated: default, d16")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated, from {', '.join(SCHEMES)}")
    parser.add_argument("--d16-scales", choices=sorted(D16_SCALES), default="default",
                        help="the d16 model's scales: the default model's (1..8) or VAR's 256 px ones (1..16)")
    parser.add_argument("--seeds", type=int, default=3, help="images per scheme (one per call), after a warm-up call")
    parser.add_argument("--compile", action="store_true",
                        help="compile every scheme's transformer blocks (regional torch.compile, inductor) after "
                             "loading; the warm-up call pays the compilation")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from var_clip import VARCLIPPipeline, VARTransformer2DModel
    from var_clip.sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P

    if args.threads:
        torch.set_num_threads(args.threads)
    schemes = args.schemes.split(",")
    if "fp32" not in schemes:
        schemes.insert(0, "fp32")  # the reference for sizes, speed and tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads{', compiled' if args.compile else ''}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for model_name in args.models.split(","):
            folder, components = build(model_name, workdir, args.d16_scales)
            pipes = {}
            for scheme in schemes:
                try:
                    config = quantization_config(scheme)
                except ImportError as error:
                    print(f"{model_name} {scheme}: skipped ({error})")
                    continue
                transformer = VARTransformer2DModel.from_pretrained(folder, quantization_config=config,
                                                                    torch_dtype=torch.float32).eval()
                saved = workdir / f"{model_name}-{scheme}"
                transformer.save_pretrained(saved)
                pipe = VARCLIPPipeline(transformer=transformer, **components)
                if args.compile:
                    transformer.compile_repeated_blocks(dynamic=True)
                pipe.set_progress_bar_config(disable=True)
                pipes[scheme] = dict(pipe=pipe, bytes=folder_bytes(saved), seconds=[], tokens=[])

            def call(pipe, inputs, seed):
                return pipe(**inputs, guidance_scale=DEFAULT_GUIDANCE_SCALE, top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P,
                            generator=torch.Generator().manual_seed(seed), output_type="tokens").images

            inputs = conditions(model_name, args.seeds)
            for entry in pipes.values():  # warm-up: first-call allocations, lazy kernels
                call(entry["pipe"], inputs[0], seed=0)
            for seed, condition in enumerate(inputs):
                for scheme, entry in pipes.items():
                    start = time.perf_counter()
                    tokens = call(entry["pipe"], condition, seed)
                    entry["seconds"].append(time.perf_counter() - start)
                    entry["tokens"].append(tokens)
                    print(f"{model_name} {scheme} seed {seed}: {entry['seconds'][-1]:.2f} s", flush=True)

            reference = pipes["fp32"]
            for scheme, entry in pipes.items():
                early = [torch.cat([(a == b).flatten() for a, b in zip(got[:FIRST_SCALES], want[:FIRST_SCALES])])
                         for got, want in zip(entry["tokens"], reference["tokens"])]
                every = [torch.cat([(a == b).flatten() for a, b in zip(got, want)])
                         for got, want in zip(entry["tokens"], reference["tokens"])]
                seconds = statistics.median(entry["seconds"])
                results.append(dict(
                    model=model_name if model_name == "default" else f"d16 ({args.d16_scales} scales)", scheme=scheme, megabytes=entry["bytes"] / 1e6,
                    size_vs_fp32=entry["bytes"] / reference["bytes"], seconds_per_image=seconds,
                    speedup_vs_fp32=statistics.median(reference["seconds"]) / seconds,
                    tokens_unchanged_first4=torch.cat(early).float().mean().item(),
                    tokens_unchanged_all=torch.cat(every).float().mean().item(), images=len(entry["seconds"]),
                ))
            del pipes

    header = ("model", "scheme", "MB", "size", "s/image", "speed-up", "same tokens (scales 1-4)", "same (all)")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in results:
        print(f"| {r['model']} | {r['scheme']} | {r['megabytes']:.1f} | {r['size_vs_fp32']:.2f}× | "
              f"{r['seconds_per_image']:.2f} | {r['speedup_vs_fp32']:.2f}× | "
              f"{100 * r['tokens_unchanged_first4']:.1f} % | {100 * r['tokens_unchanged_all']:.1f} % |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
