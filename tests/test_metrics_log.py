"""The training log: read back as a trainer wrote it (also while it writes), drawn by `var-clip plot-log`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from var_clip.cli import main
from var_clip.training.metrics_log import (
    LOG_FILE_NAME,
    MetricsLog,
    log_metrics,
    logged_time,
    plot_logs,
    read_log,
    smooth,
)

pytest.importorskip("matplotlib")


def _write_run(folder, steps=120, loss=lambda s: 3.0 - s / 100, extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(folder / LOG_FILE_NAME, enabled=True)
    for step in range(1, steps + 1):
        log.write({"step": step, "epoch": 0, "loss": loss(step), "lr": 1e-4, **(extra(step) if extra else {})})
    return folder


def test_the_log_reads_back_as_written_and_a_line_being_written_is_left_out(tmp_path):
    run = _write_run(tmp_path / "run", steps=5)
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4, 5]
    assert read_log(run / LOG_FILE_NAME) == read_log(run)  # the folder or the file
    with open(run / LOG_FILE_NAME, "a", encoding="utf-8") as handle:
        handle.write('{"step": 6, "lo')  # the trainer is halfway through this record
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4, 5]
    log = MetricsLog(run / LOG_FILE_NAME, enabled=True)
    log.truncate_after(3)  # what a resume from the step-3 checkpoint does: the cut line goes too
    assert [r["step"] for r in read_log(run)] == [1, 2, 3]


@pytest.mark.parametrize("line", ['{"loss": 1.0}\n', '{"step": "7"}\n', '[1, 2]\n', 'not json\n', '{"step": -1}\n'])
def test_a_line_that_is_not_a_record_is_named(tmp_path, line):
    run = _write_run(tmp_path / "run", steps=2)
    text = (run / LOG_FILE_NAME).read_text()
    (run / LOG_FILE_NAME).write_text(text + line + '{"step": 3, "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"line 3 is not a training record"):
        read_log(run)


def test_what_is_not_a_log_is_refused_before_reading(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"holds no {LOG_FILE_NAME}"):
        read_log(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        read_log(tmp_path / "missing.jsonl")
    (tmp_path / "binary.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        read_log(tmp_path / "binary.jsonl")


def test_the_trailing_mean_skips_non_finite_values():
    assert smooth([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    out = smooth([1.0, math.nan, 3.0, math.inf, 5.0], 2)
    assert out[:3] == [1.0, 1.0, 3.0] and out[3] == 3.0 and out[4] == 5.0
    assert math.isnan(smooth([math.nan, 1.0], 1)[0])
    with pytest.raises(ValueError, match="window"):
        smooth([1.0], 0)


def test_metrics_are_the_numbers_a_log_holds():
    records = [{"step": 1, "epoch": 0, "loss": 2.0, "note": "text", "flag": True},
               {"step": 2, "epoch": 0, "loss": 1.0, "accuracy": 40}]
    assert log_metrics(records) == ["loss", "accuracy"]


def test_plot_log_draws_a_panel_per_metric_and_a_line_per_run(tmp_path, capsys):
    a = _write_run(tmp_path / "a", extra=lambda s: {"accuracy": s / 2})
    b = _write_run(tmp_path / "b", loss=lambda s: 2.0 + math.sin(s), extra=lambda s: {"accuracy": 10.0})
    out = tmp_path / "curves.png"
    assert main(["plot-log", str(a), str(b), "--metric", "loss", "--metric", "accuracy", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert image.shape == (2 * 240, 900, 3)  # two panels of 2.4 in at 100 dpi, 9 in wide
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])  # matplotlib's C0 and C1
    for colour in (blue, orange):
        hits = np.abs(image - colour).sum(-1) < 30
        assert hits[:240].sum() > 200 and hits[240:].sum() > 200  # both runs in both panels


def test_plot_log_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    run = _write_run(tmp_path / "run", steps=3)
    assert main(["plot-log", str(run), "--metric", "fid", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'fid'" in err and "loss, lr" in err
    assert main(["plot-log", str(run), "-o", str(run / LOG_FILE_NAME)]) == 2  # the log is not an image name
    assert main(["plot-log", str(run), "-o", str(tmp_path / "curves.txt")]) == 2
    capsys.readouterr()
    (tmp_path / "log.png").write_text('{"step": 1, "loss": 1.0}\n')  # a log named like an image stays
    assert main(["plot-log", str(tmp_path / "log.png"), "-o", str(tmp_path / "log.png")]) == 1
    assert "is the input" in capsys.readouterr().err
    assert (tmp_path / "log.png").read_text() == '{"step": 1, "loss": 1.0}\n'
    assert main(["plot-log", str(run), str(run), "-o", str(tmp_path / "y.png")]) == 2  # two runs, one label
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_plot_logs_draws_raw_values_only_when_asked():
    runs = {"run": [{"step": s, "loss": float(s % 7)} for s in range(1, 50)]}
    assert plot_logs(runs, ["loss"], window=1).size == (900, 240)


def test_the_logged_time_sums_the_steps_and_counts_the_untimed_ones_at_the_median():
    records = [{"step": s, "loss": 1.0} for s in (1, 2, 3)]  # logged before trainers recorded step times
    records += [{"step": 4, "step_seconds": 2.0}, {"step": 5, "step_seconds": 3.0}, {"step": 6, "step_seconds": 10.0},
                {"step": 7, "step_seconds": math.nan}, {"step": 8, "step_seconds": -1.0}, {"step": 9, "step_seconds": True}]
    time = logged_time(records)
    assert (time.seconds, time.timed_steps, time.untimed_steps, time.median) == (15.0, 3, 6, 3.0)
    assert time.estimated_seconds == 15.0 + 6 * 3.0
    even = logged_time([{"step": 1, "step_seconds": 1.0}, {"step": 2, "step_seconds": 4.0}])
    assert even.median == 2.5 and even.estimated_seconds == 5.0
    none = logged_time([{"step": 1}])
    assert (none.seconds, none.untimed_steps, none.median, none.estimated_seconds) == (0.0, 1, None, None)
