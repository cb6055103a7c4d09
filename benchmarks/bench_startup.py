"""How long `var-clip generate` takes to write its first image, and where that time goes before the first scale.

    python benchmarks/bench_startup.py              # median of 3 fresh processes per row
    python benchmarks/bench_startup.py --runs 5

Every row is a fresh Python process, timed from its start to its exit (the import rows) or to the image on disk
(the last row), so each includes the interpreter's own start. The rows are cumulative: each imports what the one
above it did and more, in the order `var-clip generate` meets them. "added" is a row's median less the median of the
row above it.

- ``python``: the interpreter alone.
- ``var-clip --help``: the command line (argparse only; nothing heavy is imported before a command runs).
- ``import torch``.
- ``import diffusers``: diffusers' base (its utilities import ``torch._dynamo``, transformers and peft).
- ``DiffusionPipeline``: every diffusers model and pipeline module (``diffusers.pipelines.pipeline_utils``).
- ``import var_clip``: the pipelines, the models and the CLIP text tower's classes (transformers).
- ``generate``: ``var-clip generate "a red circle" -o FILE`` with the embedded default model, until FILE exists
  (load the three components, encode the caption, 7 scales with guidance, decode, write the PNG).

Run it with the machine otherwise idle: imports are single-threaded but read thousands of files.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [
    ("python", [sys.executable, "-c", "pass"]),
    ("var-clip --help", [sys.executable, "-m", "var_clip.cli", "--help"]),
    ("import torch", [sys.executable, "-c", "import torch"]),
    ("import diffusers", [sys.executable, "-c", "import diffusers"]),
    ("DiffusionPipeline", [sys.executable, "-c", "from diffusers import DiffusionPipeline"]),
    ("import var_clip", [sys.executable, "-c", "from var_clip import VARCLIPPipeline"]),
]


def seconds(command: list[str], runs: int, expect: Path | None = None) -> float:
    """Median wall seconds of ``runs`` fresh processes running ``command`` (which must succeed)."""
    times = []
    for _ in range(runs):
        if expect is not None:
            expect.unlink(missing_ok=True)
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
        if expect is not None and not expect.is_file():
            raise SystemExit(f"{' '.join(command)} wrote no {expect}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per row (default 3)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    image = workdir / "first.png"
    rows = ROWS + [("generate (first image written)",
                    [sys.executable, "-m", "var_clip.cli", "generate", "a red circle", "-o", str(image)])]
    try:
        print("| step | s (median) | added |")
        print("| --- | --- | --- |")
        previous = 0.0
        for name, command in rows:
            took = seconds(command, args.runs, expect=image if name.startswith("generate") else None)
            added = "" if name in ("python", "var-clip --help") else f"{took - previous:+.2f}"
            print(f"| {name} | {took:.2f} | {added} |", flush=True)
            if name != "var-clip --help":
                previous = took
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
