"""Training throughput (images/s) and peak memory (RSS) of the VAR-CLIP transformer.

Each measured step is exactly what ``train_var`` does per batch with ``--cache_dir``: teacher-forcing inputs built
from the token indices by the VQ-VAE's quantizer (upsampling and φ convs), condition dropout, the transformer's
forward and backward, cross-entropy with label smoothing, gradient clipping and an AdamW step, through
``accelerate`` (autocast for bf16). The token indices and text embeddings are random and precomputed, so the
VQ-VAE encoder and the CLIP text tower are excluded: these figures are the transformer's training cost.

Every (model, precision) pair runs in a fresh process, so its peak RSS is its own. Throughput is reported from the
median and from the fastest of the timed steps: on a CPU shared with other work the median can be several times
slower than the fastest step, which is the better estimate of the unloaded speed.

    python benchmarks/bench_training.py                      # d16 and the small default model, fp32 and bf16
    python benchmarks/bench_training.py --models small --batch_size 8 --steps 5
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
    # a small default model for 64×64 shapes-world images: 8× downsampling VQ-VAE (8×8 latent), 1024 codes of
    # width 16, a 64-dim CLIP trained on the world, 8 blocks of width 384
    "small": dict(transformer=dict(depth=8, embed_dim=384, num_heads=6, text_embed_dim=64,
                                   patch_nums=(1, 2, 3, 4, 5, 6, 8), vocab_size=1024, latent_channels=16),
                  image_size=64),
}
PRECISIONS = ("fp32", "bf16")


def run_one(model_name: str, precision: str, batch_size: int, warmup: int, steps: int) -> dict:
    import argparse as ap

    import torch
    from accelerate import Accelerator

    from var_clip import MultiScaleVQModel, VARTransformer2DModel
    from var_clip.training.engine import build_optimizer
    from var_clip.training.train_var import TRANSFORMER_NO_DECAY_KEYS, var_loss

    spec = MODELS[model_name]
    cfg = dict(spec["transformer"])
    torch.manual_seed(0)
    transformer = VARTransformer2DModel(**cfg, drop_path_rate=0.1 * cfg["depth"] / 24)
    # only the quantizer of the VQ-VAE runs in a cached training step: a narrow encoder/decoder keeps memory honest
    vqvae = MultiScaleVQModel(vocab_size=cfg["vocab_size"], latent_channels=cfg["latent_channels"], ch=32,
                              ch_mult=(1, 1, 1, 1), num_res_blocks=1, using_sa=False, using_mid_sa=False,
                              patch_nums=cfg["patch_nums"]).eval().requires_grad_(False)
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision)
    args = ap.Namespace(learning_rate=1e-4, adam_weight_decay=0.05, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8)
    optimizer = build_optimizer(transformer, args, TRANSFORMER_NO_DECAY_KEYS)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    vqvae.to(accelerator.device)

    L = sum(p * p for p in cfg["patch_nums"])
    generator = torch.Generator().manual_seed(0)
    idx_BL = torch.randint(0, cfg["vocab_size"], (batch_size, L), generator=generator).to(accelerator.device)
    embeds = torch.nn.functional.normalize(torch.randn(batch_size, cfg["text_embed_dim"], generator=generator), dim=-1)
    embeds = embeds.to(accelerator.device)
    drop_generator = torch.Generator().manual_seed(1)

    def step() -> float:
        loss, _ = var_loss(model, transformer, vqvae, idx_BL, embeds, None, 0.1, drop_generator)
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
        "model": model_name, "precision": precision, "batch_size": batch_size, "tokens_per_image": L,
        "params_M": round(sum(p.numel() for p in transformer.parameters()) / 1e6, 1),
        "s_per_step_median": round(median, 3), "s_per_step_min": round(best, 3),
        "images_per_s": round(batch_size / median, 3), "images_per_s_best": round(batch_size / best, 3),
        "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(), "device": str(accelerator.device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["small", "d16"])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--batch_size", type=int, default=None, help="default: 2 for d16, 8 for small")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.steps < 1:
        raise ValueError("`--warmup` must be >= 0 and `--steps` >= 1")

    if args._child:
        model, precision = args._child
        print(json.dumps(run_one(model, precision, args.batch_size, args.warmup, args.steps)))
        return 0

    for name in args.models:
        print(f"{name}: {json.dumps(MODELS[name])}")
    print("random precomputed token indices and text embeddings: VQ-VAE encoder and CLIP text tower excluded")
    header = (f"{'model':<6} {'precision':<9} {'batch':>5} {'params(M)':>9} {'s/step':>8} {'images/s':>9} "
              f"{'best s/step':>11} {'best images/s':>13} {'peak RSS (GiB)':>15}")
    print(header)
    for name in args.models:
        for precision in args.precisions:
            batch = args.batch_size or (2 if name == "d16" else 8)
            command = [sys.executable, __file__, "--_child", name, precision, "--batch_size", str(batch),
                       "--warmup", str(args.warmup), "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode != 0:
                print(f"{name:<6} {precision:<9} failed:\n{done.stderr[-2000:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{r['model']:<6} {r['precision']:<9} {r['batch_size']:>5} {r['params_M']:>9} "
                  f"{r['s_per_step_median']:>8} {r['images_per_s']:>9} {r['s_per_step_min']:>11} "
                  f"{r['images_per_s_best']:>13} {r['peak_rss_GiB']:>15}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
