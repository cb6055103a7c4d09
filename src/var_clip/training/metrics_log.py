"""A training run's log: written step by step, read back, drawn as curves.

Every trainer writes one JSON object per optimizer step to ``output_dir/train_log.jsonl`` (the step, the loss, the
learning rate and the task's own metrics). ``var-clip plot-log`` draws one panel per metric, one line per run, the
raw values faint and their trailing mean on top; it reads a run that is still writing its log (the unfinished last
line is left out):

    var-clip plot-log runs/var -o loss.png
    var-clip plot-log runs/a runs/b --label tokens --label scales --metric loss --metric accuracy -o compare.png

This module needs neither torch nor accelerate; the plot needs matplotlib (``pip install 'var-clip[analysis]'``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.arguments import ArgumentParser, UsageError, add_option, int_at_least
from ..utils.atomic import atomic_open
from ..utils.files import check_regular_file, check_writable, image_format_of, save_image

__all__ = ["LOG_FILE_NAME", "MAX_LOG_BYTES", "MetricsLog", "read_log", "log_metrics", "LoggedTime", "logged_time",
           "smooth", "plot_logs", "build_parser", "main"]

LOG_FILE_NAME = "train_log.jsonl"
#: The largest log read (a million steps of a trainer's records is about 200 MB); checked before reading.
MAX_LOG_BYTES = 512 * 2**20
#: Keys of a record that are not curves.
NOT_METRICS = ("step", "epoch")
#: Curves drawn as they are: a schedule, not a noisy measurement (a trailing mean would only make it lag).
UNSMOOTHED = ("lr",)


class MetricsLog:
    """One JSON object per optimizer step in ``path`` (written by the main process only).

    On resume the lines after the checkpoint's step are dropped (they belong to the interrupted run), so the file
    always reads as one uninterrupted run.
    """

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _parse_step(line) is not None and _parse_step(line) <= step]
        with atomic_open(self.path, "w") as handle:
            handle.write("".join(line + "\n" for line in kept))

    def reset(self) -> None:
        if self.enabled and self.path.is_file():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _parse_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


def _log_file(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a file, else the log inside the run folder ``path``."""
    path = Path(path)
    if path.is_dir():
        if not (path / LOG_FILE_NAME).exists():
            raise ValueError(f"{str(path)!r} holds no {LOG_FILE_NAME}; give a trainer's --output_dir or the log file")
        path = path / LOG_FILE_NAME
    return check_regular_file(path, "the training log")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a training log: ``path`` is a run's ``output_dir`` or its ``train_log.jsonl``.

    A last line without its newline is a record still being written and is left out; any other line that is not a
    JSON object with an integer ``step`` is a ``ValueError`` naming the file and the line.
    """
    file = _log_file(path)
    if file.stat().st_size > MAX_LOG_BYTES:
        raise ValueError(f"the training log {str(file)!r} is {file.stat().st_size / 2**20:.0f} MiB, more than the "
                         f"{MAX_LOG_BYTES // 2**20} MiB a trainer writes in a million steps; is it a training log?")
    records = []
    with open(file, encoding="utf-8", errors="strict") as handle:
        try:
            lines = handle.readlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"the training log {str(file)!r} is not UTF-8 text (byte {error.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if number == len(lines) and not line.endswith("\n"):
            break  # the trainer is writing this line now
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            shown = line.strip() if len(line) <= 80 else line.strip()[:77] + "..."
            raise ValueError(f"{str(file)!r} line {number} is not a training record (a JSON object with an integer "
                             f"`step` >= 0): {shown!r}")
        records.append(record)
    return records


def log_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics a log holds, in the order they first appear: keys other than step and epoch with a number."""
    names: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in NOT_METRICS and _is_number(value):
                names.setdefault(key)
    return list(names)


@dataclass(frozen=True)
class LoggedTime:
    """What a run's steps cost, from its log: ``seconds`` sums the steps' ``step_seconds``; ``untimed_steps`` lack it
    (logged before trainers recorded it) and are counted at the timed steps' ``median`` in :attr:`estimated_seconds`."""

    seconds: float
    timed_steps: int
    untimed_steps: int
    median: float | None

    @property
    def estimated_seconds(self) -> float | None:
        """The whole run's time: the logged seconds plus the untimed steps at the median (None if no step is timed)."""
        if self.median is None:
            return None
        return self.seconds + self.untimed_steps * self.median


def logged_time(records: Sequence[dict[str, Any]]) -> LoggedTime:
    """The wall-clock cost of the steps of a log (:func:`read_log`), however often the run was resumed: every record
    holds the time since the previous step, checkpoints and validation included. A value that is not a finite number
    >= 0 counts as untimed."""
    times = [float(r["step_seconds"]) for r in records
             if _is_number(r.get("step_seconds")) and math.isfinite(r["step_seconds"]) and r["step_seconds"] >= 0]
    return LoggedTime(seconds=math.fsum(times), timed_steps=len(times), untimed_steps=len(records) - len(times),
                      median=statistics.median(times) if times else None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """The trailing mean of each value and the ``window - 1`` before it, over the finite ones (NaN where the window
    holds none): a NaN or inf loss leaves a gap in the raw curve and does not poison the mean around it."""
    if window < 1:
        raise ValueError(f"`window` must be >= 1, got {window}")
    total, count, out = 0.0, 0, []
    for i, value in enumerate(values):
        if math.isfinite(value):
            total, count = total + value, count + 1
        if i >= window and math.isfinite(values[i - window]):
            total, count = total - values[i - window], count - 1
        out.append(total / count if count else math.nan)
    return out


def default_window(num_steps: int) -> int:
    """About 1/50 of the run: a 27,000-step run is averaged over 540 steps, a 100-step run over 2."""
    return max(1, round(num_steps / 50))


def plot_logs(runs: dict[str, list[dict[str, Any]]], metrics: Sequence[str], window: int | None = None,
              width: float = 9.0, panel_height: float = 2.4):
    """One panel per metric (step on the x axis), one colour per run: the raw values faint, the trailing mean
    (:func:`smooth`, ``window`` steps; default :func:`default_window` of the longest run) on top; the learning rate
    as it is. Returns a PIL image."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the plot needs matplotlib: pip install 'var-clip[analysis]'") from error
    from PIL import Image

    if window is None:
        window = default_window(max(len(records) for records in runs.values()))
    fig = Figure(figsize=(width, panel_height * len(metrics)), dpi=100)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        for colour, (label, records) in enumerate(runs.items()):
            points = [(r["step"], float(r[metric])) for r in records if _is_number(r.get(metric))]
            if not points:
                continue
            steps, values = zip(*points)
            if window == 1 or metric in UNSMOOTHED:
                ax.plot(steps, values, color=f"C{colour}", linewidth=1.5, label=label)
                continue
            ax.plot(steps, values, color=f"C{colour}", alpha=0.2, linewidth=0.6)
            ax.plot(steps, smooth(values, window), color=f"C{colour}", linewidth=1.5, label=label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step" + (f"  (lines: mean of the last {window} steps)" if window > 1 else ""))
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="var-clip plot-log", description=(
        "Draw the train_log.jsonl of one or more training runs: one panel per metric (loss, learning rate, gradient "
        "norm, accuracies), one line per run; a run still training is drawn up to its last finished step."))
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a trainer's --output_dir (or its train_log.jsonl); several are drawn together")
    add_option(parser, "label", action="append", default=None,
               help="a name per RUN for the legend (default: the folder's name)")
    add_option(parser, "metric", action="append", default=None,
               help="a metric to draw (repeat for several; default: every number the logs hold but step and epoch)")
    add_option(parser, "smooth", type=int_at_least(1), default=None,
               help="steps in the trailing mean drawn over the raw values (1: raw only; default: 1/50 of the run)")
    parser.add_argument("-o", "--output", default="train_log.png",
                        help="image to write; the suffix names the format (.png, .jpg, .webp, ...; "
                             "default train_log.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        image_format_of(args.output, "--output")
    except ValueError as error:
        raise UsageError(str(error)) from None
    files = [_log_file(run) for run in args.runs]
    check_writable(args.output, "--output", files)
    labels = args.label or [(Path(run) if Path(run).is_dir() else Path(run).parent).resolve().name or str(run)
                            for run in args.runs]
    if len(labels) != len(args.runs):
        raise UsageError(f"give one --label per RUN ({len(args.runs)} runs, {len(labels)} labels)")
    if len(set(labels)) != len(labels):
        raise UsageError(f"the runs' labels must differ, got {labels}; name them with --label")
    runs = {label: read_log(file) for label, file in zip(labels, files)}
    for label, records in runs.items():
        if not records:
            raise ValueError(f"the training log of {label!r} holds no records yet")
    available = list(dict.fromkeys(name for records in runs.values() for name in log_metrics(records)))
    metrics = args.metric or available
    unknown = [name for name in metrics if name not in available]
    if unknown:
        raise UsageError(f"--metric {unknown[0]!r} is in none of the logs; they hold {', '.join(available)}")
    save_image(plot_logs(runs, metrics, args.smooth), args.output, "--output")
    summary = "; ".join(f"{label}: steps {records[0]['step']}-{records[-1]['step']}" for label, records in runs.items())
    print(f"wrote {args.output} ({', '.join(metrics)}; {summary})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
