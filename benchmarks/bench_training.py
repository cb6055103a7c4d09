"""Training throughput (images/s) and peak memory (RSS) of the VAR-CLIP transformer.

Each measured step is exactly what ``train_var`` does per batch with ``--cache_dir``: teacher-forcing inputs built
from the token indices by the VQ-VAE's quantizer (upsampling and φ convs), condition dropout, the transformer's
forward and backward, cross-entropy with label smoothing, gradient clipping and an AdamW step, through
``accelerate`` (autocast for bf16). The token indices and text embeddings are random and precomputed, so the
VQ-VAE encoder and the CLIP text tower are excluded: these figures are the transformer's training cost.

Every (model, precision) pair runs in a fresh process, so its peak RSS is its own. Throughput is reported from the
median and from the fastest of the timed steps: on a CPU shared with other work the median can be several times
slower than the fastest step, which is the better estimate of the unloaded speed.

    python benchmarks/bench_training.py                      # the default model and d16, fp32 and bf16
    python benchmarks/bench_training.py --models default --precisions fp32 bf16 --optimizers default fused --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODELS = {
    # VAR-CLIP d16 (VAR's builder: width 64·depth, heads = depth), ImageNet 256², CLIP ViT-L/14 text embeddings
    "d16": dict(transformer=dict(depth=16, embed_dim=1024, num_heads=16, text_embed_dim=768,
                                 patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), vocab_size=4096, latent_channels=32),
                image_size=256),
    # the embedded default model's transformer (its own config: token-level, 6 blocks of width 192, L = 155), batch 32
    "default": dict(transformer="default_model", image_size=64),
}
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("default", "fused")
TEXT_TOKENS = 12  # caption length of the token-level conditioning (the default model's captions: 4–12 tokens)


def _transformer_config(model_name: str) -> dict:
    spec = MODELS[model_name]["transformer"]
    if spec != "default_model":
        return dict(spec)
    import var_clip

    with open(os.path.join(var_clip.DEFAULT_MODEL, "transformer", "config.json"), encoding="utf-8") as handle:
        return {k: v for k, v in json.load(handle).items() if not k.startswith("_")}


def run_one(model_name: str, precision: str, optimizer_kind: str, batch_size: int, warmup: int, steps: int) -> dict:
    import argparse as ap

    import torch
    from accelerate import Accelerator

    from var_clip import MultiScaleVQModel, VARTransformer2DModel
    from var_clip.training.engine import build_optimizer
    from var_clip.training.train_var import TRANSFORMER_NO_DECAY_KEYS, var_loss

    cfg = _transformer_config(model_name)
    torch.manual_seed(0)
    cfg.setdefault("drop_path_rate", 0.1 * cfg["depth"] / 24)
    transformer = VARTransformer2DModel(**cfg)
    # only the quantizer of the VQ-VAE runs in a cached training step: a narrow encoder/decoder keeps memory honest
    vqvae = MultiScaleVQModel(vocab_size=cfg["vocab_size"], latent_channels=cfg["latent_channels"], ch=32,
                              ch_mult=(1, 1, 1, 1), num_res_blocks=1, using_sa=False, using_mid_sa=False,
                              patch_nums=cfg["patch_nums"]).eval().requires_grad_(False)
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision)
    args = ap.Namespace(learning_rate=1e-4, adam_weight_decay=0.05, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8)
    optimizer = build_optimizer(transformer, args, TRANSFORMER_NO_DECAY_KEYS)
    if optimizer_kind == "fused":  # the same groups in one fused kernel (measured; train-var keeps torch's default)
        optimizer = torch.optim.AdamW(optimizer.param_groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    vqvae.to(accelerator.device)

    L = sum(p * p for p in cfg["patch_nums"])
    generator = torch.Generator().manual_seed(0)
    device = accelerator.device
    idx_BL = torch.randint(0, cfg["vocab_size"], (batch_size, L), generator=generator).to(device)
    condition = {"text_embeds": torch.nn.functional.normalize(
        torch.randn(batch_size, cfg["text_embed_dim"], generator=generator), dim=-1).to(device)}
    if cfg.get("cross_attention_dim"):
        condition.update(encoder_hidden_states=torch.randn(batch_size, TEXT_TOKENS, cfg["cross_attention_dim"],
                                                           generator=generator).to(device),
                         encoder_attention_mask=torch.ones(batch_size, TEXT_TOKENS, dtype=torch.long, device=device))
    drop_generator = torch.Generator().manual_seed(1)

    def step() -> float:
        loss, _ = var_loss(model, transformer, vqvae, idx_BL, condition, 0.0, drop_generator)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    median, best = times[len(times) // 2], times[0]
    return {
        "model": model_name, "precision": precision, "optimizer": optimizer_kind, "batch_size": batch_size,
        "tokens_per_image": L, "params_M": round(sum(p.numel() for p in transformer.parameters()) / 1e6, 1),
        "s_per_step_median": round(median, 3), "s_per_step_min": round(best, 3),
        "images_per_s": round(batch_size / median, 3), "images_per_s_best": round(batch_size / best, 3),
        "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(), "device": str(accelerator.device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["default", "d16"])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=["default"],
                        help="default: train-var's AdamW (torch's default implementation); fused: torch's fused AdamW")
    parser.add_argument("--threads", nargs="+", type=int, default=[None],
                        help="intra-op thread counts to run (default: torch's own choice)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 2 for d16, 32 (the recipe's) for default")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--_child", nargs=3, metavar=("MODEL", "PRECISION", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.steps < 1:
        raise ValueError("`--warmup` must be >= 0 and `--steps` >= 1")
    if any(t is not None and t < 1 for t in args.threads):
        raise ValueError("`--threads` must be >= 1")

    if args._child:
        model, precision, optimizer = args._child
        print(json.dumps(run_one(model, precision, optimizer, args.batch_size, args.warmup, args.steps)))
        return 0

    from var_clip.utils.dtypes import has_native_bf16

    for name in args.models:
        print(f"{name}: {json.dumps(MODELS[name])}")
    print("random precomputed token indices and text states: VQ-VAE encoder and CLIP text tower excluded; "
          f"bf16 units on this CPU: {'yes' if has_native_bf16('cpu') else 'no (bf16 is emulated)'}")
    print(f"{'model':<8} {'precision':<9} {'AdamW':<7} {'threads':>7} {'batch':>5} {'params(M)':>9} {'s/step':>8} "
          f"{'images/s':>9} {'best s/step':>11} {'best images/s':>13} {'peak RSS (GiB)':>15}")
    for name in args.models:
        for precision in args.precisions:
            for optimizer in args.optimizers:
                for threads in args.threads:
                    batch = args.batch_size or (2 if name == "d16" else 32)
                    command = [sys.executable, __file__, "--_child", name, precision, optimizer, "--batch_size",
                               str(batch), "--warmup", str(args.warmup), "--steps", str(args.steps)]
                    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
                    done = subprocess.run(command, capture_output=True, text=True, env=env)
                    if done.returncode != 0:
                        print(f"{name:<8} {precision:<9} {optimizer:<7} failed:\n{done.stderr[-2000:]}")
                        continue
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    print(f"{r['model']:<8} {r['precision']:<9} {r['optimizer']:<7} {r['threads']:>7} "
                          f"{r['batch_size']:>5} {r['params_M']:>9} {r['s_per_step_median']:>8} "
                          f"{r['images_per_s']:>9} {r['s_per_step_min']:>11} {r['images_per_s_best']:>13} "
                          f"{r['peak_rss_GiB']:>15}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
