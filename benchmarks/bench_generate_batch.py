"""Throughput of `var-clip generate-batch` with 1 and 2 processes (images/s of the generation loop, from its summary).

    python benchmarks/bench_generate_batch.py --num-images 256 --batch-size 32 [--model PATH] [--processes 1,2]

Each run is a fresh command in a subprocess writing into a temporary folder; several processes are launched with
`accelerate launch --multi_gpu --num_processes N` (torchrun; gloo on a CPU) and share the machine's cores
(OMP_NUM_THREADS = cores / N unless --threads is given). Loading the model is not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def run_once(processes: int, args: argparse.Namespace, output_dir: Path) -> tuple[float, float]:
    """One generate-batch run; returns (images/s, seconds) as its summary line reports them."""
    (output_dir.parent / "prompts.txt").write_text("".join(f"{p}\n" for p in args.prompts))
    options = ["--prompts", str(output_dir.parent / "prompts.txt"), "--output-dir", str(output_dir),
               "--num-images-per-prompt", str(-(-args.num_images // len(args.prompts))),
               "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--no-progress-bar"]
    if args.model:
        options += ["--model", args.model]
    launcher = [sys.executable, "-m", "var_clip.generate_batch"] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "var_clip.generate_batch"]
    threads = args.threads or max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(launcher + options, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"generate-batch with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    match = re.search(r"images in ([\d.]+) s \(([\d.]+) images/s", done.stdout)
    return float(match.group(2)), float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded default model)")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per process (default cores / processes)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--prompts", nargs="+", default=["a red circle above a blue square", "a small green triangle",
                                                         "a large yellow square on the left", "a purple circle"])
    args = parser.parse_args()

    print("| processes | images | batch | dtype | s | images/s |\n| --- | --- | --- | --- | --- | --- |")
    for processes in (int(p) for p in args.processes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            rate, seconds = run_once(processes, args, Path(tmp) / "out")
        print(f"| {processes} | {args.num_images} | {args.batch_size} | {args.dtype} | {seconds:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
