"""Cost as the work grows: seconds and peak memory per image on the CPU for VAR-CLIP at depth 16, 20, 24 and 30
(random weights of the released shapes: width 64 · depth, VAR's 256-px VQ-VAE), batch 1, 4 and 16, fp32 and bf16;
a table, and a plot of both against depth.

    python benchmarks/bench_scaling.py                                  # the whole grid: hours on a small CPU
    python benchmarks/bench_scaling.py --depths 16,20 --batch-sizes 1,4 --dtypes bf16 --runs 1
    python benchmarks/bench_scaling.py --replot docs/cost_by_depth.json # redraw the plot from saved figures

Every setting runs in its own process (``bench_inference.py``'s ``run_single``: guidance 4, top-k 900, top-p 0.95,
median of ``--runs`` calls after a warm-up call), so its peak resident memory is its own: weights, KV cache,
activations and the interpreter. "per image" divides a call's seconds and that peak by the batch. The figures go to
``--json`` and the plot to ``--plot`` (defaults: docs/cost_by_depth.json and docs/images/cost_by_depth.png); settings
measured now replace the same settings in an existing ``--json``, the others stay, so a grid can be filled in parts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import run_in_subprocess  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def measure(depths: list[int], batch_sizes: list[int], dtypes: list[str], runs: int) -> list[dict]:
    print("| depth | parameters | dtype | batch | s / call | s / image | peak MiB | peak MiB / image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for depth in depths:
        for dtype in dtypes:
            for batch in batch_sizes:
                try:
                    r = run_in_subprocess(f"d{depth}", dtype, batch, runs)
                except RuntimeError as error:  # e.g. out of memory at the largest settings: the others still count
                    print(error, file=sys.stderr)
                    continue
                row = dict(depth=depth, dtype=dtype, batch=batch, s_per_call=r["s_per_call"],
                           s_per_image=r["s_per_call"] / batch, peak_mib=r["peak_rss_mib"],
                           peak_mib_per_image=r["peak_rss_mib"] / batch, weights_mib=r["weights_mib"],
                           transformer_parameters=r["transformer_parameters"],
                           gflop_per_call=r["gflop_per_call"])
                results.append(row)
                print(f"| {depth} | {_count(r['transformer_parameters'])} | "
                      f"{dtype} | {batch} | {row['s_per_call']:.2f} | {row['s_per_image']:.2f} | "
                      f"{row['peak_mib']:.0f} | {row['peak_mib_per_image']:.0f} |", flush=True)
    return results


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.3g} B" if parameters >= 1e9 else f"{parameters / 1e6:.3g} M"


def _setting(row: dict) -> tuple:
    return row["depth"], row["dtype"], row["batch"]


def read_figures(path: Path) -> list[dict]:
    """The figures saved in ``path`` (none if it does not exist), read before any measuring so a wrong file costs
    nothing."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
        for row in rows:
            _setting(row)
    except (ValueError, TypeError, KeyError) as error:
        raise SystemExit(f"--json {str(path)!r} is not this benchmark's figures ({error!r}); choose another file")
    return rows


def merged(earlier: list[dict], results: list[dict]) -> list[dict]:
    """The earlier figures of the settings not measured now, and the new ones, ordered by setting."""
    new = {_setting(r) for r in results}
    return sorted([r for r in earlier if _setting(r) not in new] + results, key=_setting)


def plot(results: list[dict], path: Path) -> None:
    """Seconds per image and peak memory against depth, one line per dtype and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    settings = sorted({(r["dtype"], r["batch"]) for r in results})
    for dtype, batch in settings:
        rows = sorted((r for r in results if (r["dtype"], r["batch"]) == (dtype, batch)), key=lambda r: r["depth"])
        style = dict(marker="o", linestyle="-" if dtype == "bf16" else "--", label=f"{dtype}, batch {batch}")
        time_ax.plot([r["depth"] for r in rows], [r["s_per_image"] for r in rows], **style)
        memory_ax.plot([r["depth"] for r in rows], [r["peak_mib"] / 1024 for r in rows], **style)
    depths = sorted({r["depth"] for r in results})
    for ax, label in ((time_ax, "seconds per image"), (memory_ax, "peak memory of the process, GiB")):
        ax.set_xlabel("depth (width 64 · depth)")
        ax.set_ylabel(label)
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
    memory_ax.legend(fontsize=8)
    fig.suptitle("VAR-CLIP on the CPU, 256 px, guidance 4 (benchmarks/bench_scaling.py)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(text: str, name: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        parser.error(f"{name} takes comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{name} takes integers of at least 1, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="16,20,24,30", help="comma-separated depths (default 16,20,24,30)")
    parser.add_argument("--batch-sizes", default="1,4,16", help="comma-separated images per call (default 1,4,16)")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: fp32, bf16 (default both)")
    parser.add_argument("--runs", type=int, default=2, help="timed calls per setting after a warm-up (default 2)")
    parser.add_argument("--json", type=Path, default=DOCS / "cost_by_depth.json", help="where the figures go")
    parser.add_argument("--plot", type=Path, default=DOCS / "images" / "cost_by_depth.png", help="where the plot goes")
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the plot from saved figures")
    args = parser.parse_args()

    if args.replot:
        plot(json.loads(args.replot.read_text()), args.plot)
        print(f"plot: {args.plot}")
        return
    depths, batch_sizes = _ints(args.depths, "--depths", parser), _ints(args.batch_sizes, "--batch-sizes", parser)
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or set(dtypes) - {"fp32", "bf16"}:
        parser.error(f"--dtypes takes fp32 and/or bf16, got {args.dtypes!r}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    earlier = read_figures(args.json)
    results = measure(depths, batch_sizes, dtypes, args.runs)
    if not results:
        raise SystemExit("no setting finished")
    results = merged(earlier, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.plot)
    print(f"figures: {args.json}; plot: {args.plot}")


if __name__ == "__main__":
    main()
