"""The wheel carries what the package reads at run time: the top-level ``pipelines/`` and ``model_cards/`` folders
are mapped into it as ``var_clip/custom_pipelines`` and ``var_clip/model_cards``, beside the embedded default model."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_top_level_data_folders_where_the_package_finds_them(tmp_path):
    import importlib.util

    # the installed setuptools builds it where there is one; else pip fetches the build requirements
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", *isolation, "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("var_clip-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for folder, top in (("custom_pipelines", "pipelines"), ("model_cards", "model_cards")):
        shipped = {p.name for p in (REPO / top).iterdir() if p.is_file()}
        assert {f"var_clip/{folder}/{name}" for name in shipped} <= names
    assert "var_clip/default_model/model_index.json" in names

    # the installed layout is found without the repository next to it
    probe = ("from var_clip.hub import CUSTOM_PIPELINES_DIR; from var_clip.conversion import MODEL_CARDS_DIR; "
             "print(CUSTOM_PIPELINES_DIR); print(MODEL_CARDS_DIR)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""}).stdout.split()
    assert out == [str(tmp_path / "site" / "var_clip" / "custom_pipelines"),
                   str(tmp_path / "site" / "var_clip" / "model_cards")]


def test_source_checkout_reads_the_top_level_folders():
    from var_clip.conversion import MODEL_CARDS_DIR
    from var_clip.hub import CUSTOM_PIPELINES_DIR

    assert CUSTOM_PIPELINES_DIR == REPO / "pipelines"
    assert MODEL_CARDS_DIR == REPO / "model_cards"
    assert (CUSTOM_PIPELINES_DIR / "pipeline_var_clip.py").is_file()
    assert (MODEL_CARDS_DIR / "default_model.md").is_file()
