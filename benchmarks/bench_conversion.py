"""Wall time and peak memory of converting a full-size VAR-CLIP d16 checkpoint pair.

    python benchmarks/bench_conversion.py [--dtype float32|float16|bfloat16] [--skip_check]

Writes a d16 transformer (``ar-ckpt-last.pth`` layout) and VAR's 256-px VQ-VAE with random weights in the original
key layout (`var_clip.original_format.save_original_checkpoints`), then runs var-clip convert-var-clip on them in a child
process with ``--text_encoder none`` (no CLIP ViT-L/14 weights offline) and reports the child's wall time and peak
resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), including the final load-and-generate check unless
``--skip_check``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D16_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def write_var_clip_d16_pair(directory: Path) -> tuple[Path, Path]:
    """Random weights at the released VAR-CLIP d16's size, written in the original code's layout."""
    import torch

    from var_clip import MultiScaleVQModel, VARTransformer2DModel
    from var_clip.original_format import save_original_checkpoints

    torch.manual_seed(0)
    transformer = VARTransformer2DModel(vocab_size=4096, latent_channels=32, patch_nums=D16_PATCH_NUMS, depth=16,
                                        embed_dim=1024, num_heads=16, condition_type="text", text_embed_dim=768)
    vqvae = MultiScaleVQModel(vocab_size=4096, latent_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                              share_quant_resi=4, patch_nums=D16_PATCH_NUMS)
    return tuple(map(Path, save_original_checkpoints(transformer, vqvae, directory)))


def _size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--skip_check", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-conversion-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        var_path, vae_path = write_var_clip_d16_pair(tmp / "original")
        print(f"wrote the original-format pair in {time.perf_counter() - start:.1f} s: "
              f"{var_path.name} {var_path.stat().st_size / 2**20:.0f} MiB, "
              f"{vae_path.name} {vae_path.stat().st_size / 2**20:.0f} MiB")

        out = tmp / "var-clip-d16"
        command = [sys.executable, "-m", "var_clip.cli", "convert-var-clip",
                   "--var_checkpoint", str(var_path), "--vae_checkpoint", str(vae_path), "--output_dir", str(out),
                   "--text_encoder", "none", "--dtype", args.dtype] + (["--skip_check"] if args.skip_check else [])
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"conversion failed ({proc.returncode}):\n{proc.stderr}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(proc.stdout.strip().splitlines()[-1])
        print(f"conversion ({args.dtype}{', no check' if args.skip_check else ', with check'}): wall {wall:.1f} s "
              f"(process start and imports included), peak RSS {peak_mib:.0f} MiB, output {_size_mib(out):.0f} MiB")


if __name__ == "__main__":
    main()
