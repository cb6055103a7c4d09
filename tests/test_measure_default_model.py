"""scripts/measure_default_model.py: it lists the commands it runs, claims only a folder that is new, empty or its own,
and skips what is done."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script():
    path = REPO / "scripts" / "measure_default_model.py"
    spec = importlib.util.spec_from_file_location("measure_default_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_every_measurement_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "measured"
    assert load_script().main(["--output-dir", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for name in ("accuracy", "quickstart", "editing", "phrase_position", "readme_images", "lora", "speed"):
        assert f"# {name}:" in printed
    assert not out.exists()


def test_a_folder_of_the_users_is_refused_and_its_own_is_resumed(tmp_path, capsys):
    script = load_script()
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        script.main(["--output-dir", str(users), "--only", "speed"])
    assert "notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]

    # a folder holding this script's measurements: a finished one is skipped, nothing runs
    own = tmp_path / "measured"
    (own / "speed").mkdir(parents=True)
    (own / "speed" / "done.json").write_text(json.dumps({"seconds": 1}))
    (own / "logs").mkdir()
    assert script.main(["--output-dir", str(own), "--only", "speed"]) == 0
    assert "[speed] done already" in capsys.readouterr().out


def test_the_model_it_measures_may_not_be_its_output_folder(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    with pytest.raises(SystemExit):
        load_script().main(["--output-dir", str(model), "--model", str(model)])
    assert "input" in capsys.readouterr().err
