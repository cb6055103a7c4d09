"""Re-measure everything the README and the docs say about the default model, after it changes.

    python scripts/measure_default_model.py --output-dir runs/measured
    python scripts/measure_default_model.py --output-dir runs/measured --model runs/v3 --dry-run

Each measurement is the command the README cites for its table or picture, run in its own process with its output in
`OUTPUT_DIR/logs/NAME.log`; a measurement whose `OUTPUT_DIR/NAME/done.json` exists is skipped, so an interrupted run
picks up where it stopped. Without `--model` the embedded default model is measured; the LoRA example and the
inference benchmark always use the embedded one (ship the folder first). `--only NAME` runs some of them. The
figures land in each measurement's folder (`report.json`, `phrase_position.json`, the benchmark's JSON, the
README's pictures); the last lines printed say where.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "a red circle above a blue square"


def measurements(model: str | None, out: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv after the Python interpreter, what it measures)."""
    cli = ["-m", "var_clip.cli"]
    on = ["--model", model] if model else []
    return {
        "accuracy": ([*cli, "eval-shapes", *on, "--guidance-scales", "2,6", "--prompt", QUICKSTART,
                      "--output-dir", str(out / "accuracy")],
                     "the accuracy and guidance tables (4 samples per prompt), the Quickstart prompt at seeds 0-3"),
        "quickstart": ([*cli, "eval-shapes", *on, "--samples-per-prompt", "8", "--prompt", QUICKSTART,
                        "--reconstruction", "300", "--output-dir", str(out / "quickstart")],
                       "the Quickstart prompt at seeds 0-7, and the VQ-VAE's ceiling"),
        "editing": ([*cli, "eval-shapes", *on, "--inpainting", "12", "--outpainting", "12", "--img2img", "12",
                     "--output-dir", str(out / "editing")], "the editing table"),
        "phrase_position": ([*cli, "phrase-position", *on, "--label", "token-level",
                             "--output-dir", str(out / "phrase_position")], "the phrase-position table"),
        "readme_images": ([str(REPO / "examples" / "make_readme_images.py"), *on,
                           "--output-dir", str(out / "readme_images")], "the README's pictures (docs/images)"),
        "lora": ([str(REPO / "examples" / "lora_one_command.py"), "--samples_per_prompt", "4",
                  "--workdir", str(out / "lora")], "the LoRA example's table (the embedded model)"),
        "speed": ([str(REPO / "benchmarks" / "bench_inference.py"), "--configs", "default", "--dtypes", "fp32",
                   "--batch-sizes", "4", "--runs", "5", "--json", str(out / "speed" / "bench_inference.json")],
                  "4 images' time (the embedded model)"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="where every measurement's folder and log go")
    parser.add_argument("--model", default=None, help="a VARCLIPPipeline folder (default: the embedded model)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help="run only these measurements (repeat); default: all")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "src"))
    from var_clip.utils.files import claim_output_folder, resolve_output_dir

    try:  # resolved first (nothing is created yet): the commands run in the repository's folder, wherever this started
        out = resolve_output_dir(args.output_dir, "--output-dir")
    except ValueError as error:
        parser.error(str(error))
    if args.model is not None and not (Path(args.model) / "model_index.json").is_file():
        parser.error(f"--model {args.model!r} is not a pipeline folder (no model_index.json)")
    if args.model is not None:
        args.model = str(Path(args.model).resolve())  # the measurements run in the repository's folder
    every = measurements(args.model, out)
    todo = dict(every)
    unknown = sorted(set(args.only or ()) - set(todo))
    if unknown:
        parser.error(f"--only: unknown measurement(s) {unknown}; choose from {sorted(todo)}")
    if args.only:
        todo = {name: todo[name] for name in todo if name in args.only}
    if args.dry_run:
        for name, (command, what) in todo.items():
            print(f"# {name}: {what}\n{shlex.join([Path(sys.executable).name, *command])}")
        return 0

    # a new or empty folder, or one holding only what this script writes (and not the model it measures): nothing of
    # the user's is written over
    own = re.compile(r"^(logs|" + "|".join(map(re.escape, every)) + r")$")
    try:
        out = claim_output_folder(out, "--output-dir", "measure_default_model",
                                  inputs=[args.model] if args.model else [], own_dirs=own)
    except ValueError as error:
        parser.error(str(error))
    (out / "logs").mkdir(exist_ok=True)
    for name, (command, what) in todo.items():
        done = out / name / "done.json"
        if done.is_file():
            print(f"[{name}] done already ({done})", flush=True)
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        print(f"[{name}] {what} ...", flush=True)
        start = time.perf_counter()
        with open(out / "logs" / f"{name}.log", "w", encoding="utf-8") as log:
            code = subprocess.run([sys.executable, *command], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=False).returncode
        if code:
            raise SystemExit(f"[{name}] failed with exit code {code}: see {out / 'logs' / f'{name}.log'}")
        seconds = round(time.perf_counter() - start, 1)
        done.write_text(json.dumps({"seconds": seconds, "load_after": os.getloadavg()[0], "command": command}))
        print(f"[{name}] {seconds:.0f} s", flush=True)
    print(f"figures: {out}/<name>/ (report.json, phrase_position.json, bench_inference.json, the pictures); "
          f"logs: {out / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
