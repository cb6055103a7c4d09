"""`var-clip generate-batch`: the same files for any number of processes and batch size, resume, output layouts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from var_clip.generate_batch import (
    METADATA_NAME,
    NPZ_NAME,
    SETTINGS_NAME,
    image_seed,
    is_complete_png,
    load_prompts,
    main,
    parse_class_labels,
    plan_jobs,
)
from var_clip.utils.atomic import TEMP_PREFIX
from var_clip.utils.files import MARKER_NAME

from .conftest import REPO

PROMPTS = ["a red circle", "a blue square on the left", "a green triangle"]


@pytest.fixture
def models(tiny_pipe, tiny_class_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "text")
    tiny_class_pipe.save_pretrained(tmp_path / "class")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:2]) + "\n\n" + PROMPTS[2] + "\n")
    return tmp_path


def run_in_process(*argv: str) -> int:
    return main([*argv, "--no-progress-bar"])


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".png", ".jsonl")}


def text_run(models: Path, out: str, *extra: str) -> list[str]:
    return ["--model", str(models / "text"), "--prompts", str(models / "prompts.txt"), "--num-images-per-prompt", "3",
            "--output-dir", str(models / out), "--seed", "5", *extra]


# ----------------------------------------------------------------------------------------------------------------------
# Determinism across processes and batch sizes
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # two processes
def test_two_processes_and_any_batch_size_write_identical_files(models, fresh_accelerate_state):
    # two processes on the CPU (accelerate's multi-process launcher is torchrun; gloo without a GPU)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
               "var_clip.generate_batch", *text_run(models, "two", "--batch_size", "2", "--npz"), "--no-progress-bar"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout

    assert run_in_process(*text_run(models, "one", "--batch-size", "5", "--npz")) == 0
    assert run_in_process(*text_run(models, "single", "--batch-size", "1")) == 0
    two, one, single = files_of(models / "two"), files_of(models / "one"), files_of(models / "single")
    assert len(one) == 9 + 1 and two == one == single
    assert np.array_equal(np.load(models / "two" / NPZ_NAME)["arr_0"], np.load(models / "one" / NPZ_NAME)["arr_0"])
    # different seeds give different images
    assert run_in_process(*text_run(models, "other", "--batch-size", "5")[:-2], "--seed", "6") == 0
    assert files_of(models / "other")["000000_000.png"] != one["000000_000.png"]


def test_seeds_depend_on_the_triple_only():
    jobs = plan_jobs(["a", "b"], 2, seed=3)
    assert [(j.prompt_index, j.image_index) for j in jobs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert jobs[3].seed == image_seed(3, 1, 1) == plan_jobs(["a", "b", "c"], 5, seed=3)[6].seed
    assert len({j.seed for j in jobs}) == 4 and all(0 <= j.seed < 2**63 for j in jobs)
    assert jobs[2].file_name == "000001_000.png"


# ----------------------------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------------------------


def test_interrupted_run_resumes_to_the_uninterrupted_result(models, fresh_accelerate_state, capsys):
    assert run_in_process(*text_run(models, "full", "--batch-size", "2")) == 0
    full = files_of(models / "full")

    # stop after the first 2 chunks, as a time-limited job would; nothing is published yet
    assert run_in_process(*text_run(models, "cut", "--batch-size", "2", "--max-images", "3")) == 0
    cut = models / "cut"
    assert sorted(p.name for p in cut.glob("*.png")) == ["000000_000.png", "000000_001.png", "000000_002.png",
                                                          "000001_000.png"]
    assert not (cut / METADATA_NAME).exists()
    assert "rerun the same command" in capsys.readouterr().out
    # what a kill leaves at worst: a temporary file, and (on a broken disk) a torn PNG under its final name
    (cut / f"{TEMP_PREFIX}abc.png").write_bytes(full["000001_001.png"][:100])
    (cut / "000000_001.png").write_bytes(full["000000_001.png"][:-20])
    assert not is_complete_png(cut / "000000_001.png") and is_complete_png(models / "full" / "000000_001.png")

    assert run_in_process(*text_run(models, "cut", "--batch-size", "2")) == 0
    assert "6 new + 3 existing" in capsys.readouterr().out  # the torn image's chunk runs again
    assert files_of(cut) == full
    assert sorted(p.name for p in cut.iterdir() if p.suffix not in (".png",)) == [MARKER_NAME, SETTINGS_NAME,
                                                                                  METADATA_NAME]

    # a third run finds everything done
    assert run_in_process(*text_run(models, "cut", "--batch-size", "3")) == 0
    assert "0 new + 9 existing" in capsys.readouterr().out


def test_resume_with_other_settings_is_refused(models, fresh_accelerate_state, capsys):
    assert run_in_process(*text_run(models, "out", "--max-images", "1")) == 0
    capsys.readouterr()
    assert run_in_process(*text_run(models, "out", "--top-k", "5")) == 2
    err = capsys.readouterr().err
    assert "--top-k changed" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------------------------
# Output layouts
# ----------------------------------------------------------------------------------------------------------------------


def test_output_folder_is_an_imagefolder_dataset_for_training(models, fresh_accelerate_state, tmp_path):
    datasets = pytest.importorskip("datasets")
    from var_clip.training.data import load_image_caption_dataset

    assert run_in_process(*text_run(models, "out", "--batch-size", "4")) == 0
    lines = [json.loads(line) for line in (models / "out" / METADATA_NAME).read_text().splitlines()]
    assert [line["file_name"] for line in lines] == [f"{p:06d}_{i:03d}.png" for p in range(3) for i in range(3)]
    assert lines[4] == {"file_name": "000001_001.png", "text": PROMPTS[1], "prompt_index": 1, "image_index": 1,
                        "seed": image_seed(5, 1, 1), "guidance_scale": 4.0, "guidance_schedule": "linear",
                        "guidance_interval": None, "top_k": 900, "top_p": 0.95, "temperature": 1.0,
                        "prune_ratios": None, "more_smooth": False}
    dataset = datasets.load_dataset("imagefolder", data_dir=str(models / "out"), split="train",
                                    cache_dir=str(tmp_path / "hf-cache"))
    assert len(dataset) == 9 and dataset[4]["text"] == PROMPTS[1] and dataset[4]["image"].size == (16, 16)
    train = load_image_caption_dataset(models / "out", condition="text", cache_dir=tmp_path / "hf-cache")
    assert train["text"] == [p for p in PROMPTS for _ in range(3)]


def test_class_labels_and_the_npz_layout(models, fresh_accelerate_state, tmp_path):
    from var_clip.training.data import load_image_caption_dataset, num_classes_of

    out = models / "fid"
    assert run_in_process("--model", str(models / "class"), "--class-labels", "0-2,7", "--per-class", "2",
                          "--batch-size", "3", "--output-dir", str(out), "--npz") == 0
    arr_NHW3 = np.load(out / NPZ_NAME)["arr_0"]
    assert arr_NHW3.shape == (8, 16, 16, 3) and arr_NHW3.dtype == np.uint8
    names = [json.loads(line)["file_name"] for line in (out / METADATA_NAME).read_text().splitlines()]
    for n, name in enumerate(names):
        assert np.array_equal(arr_NHW3[n], np.asarray(PIL.Image.open(out / name).convert("RGB")))
    train = load_image_caption_dataset(out, condition="class", cache_dir=tmp_path / "hf-cache")
    assert train["label"] == [0, 0, 1, 1, 2, 2, 7, 7] and num_classes_of(train) == 8


# ----------------------------------------------------------------------------------------------------------------------
# Inputs and errors
# ----------------------------------------------------------------------------------------------------------------------


def test_prompt_sources(tmp_path):
    datasets = pytest.importorskip("datasets")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"caption": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    with open(tmp_path / "p.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "caption"])
        writer.writerows(enumerate(PROMPTS))
    datasets.Dataset.from_dict({"caption": PROMPTS}).save_to_disk(str(tmp_path / "saved"))
    for source in ("p.jsonl", "p.csv", "saved"):
        assert load_prompts(str(tmp_path / source), column="caption") == PROMPTS
    with pytest.raises(ValueError, match=r"`prompt_column` 'prompt' is not a column .*\['caption'\]"):
        load_prompts(str(tmp_path / "saved"))
    assert parse_class_labels("0-3,7, 9-9") == [0, 1, 2, 3, 7, 9]


@pytest.mark.parametrize("argv,message", [
    (["--prompts", "P", "--batch-size", "0"], "argument --batch-size: must be an int >= 1, got 0"),
    (["--prompts", "P", "--top_p", "2"], r"must be a number in \[0, 1\]"),
    (["--class-labels", "5-2"], "ranges must be 'low-high'"),
    (["--prompts", "P", "--class-labels", "1"], "exactly one of --prompts and --class-labels"),
    ([], "exactly one of --prompts and --class-labels"),
    (["--prompts", "missing.txt"], "could not load the dataset|neither a file"),
    (["--prompts", "E"], "--prompts '.*E.txt' holds no prompts"),
    (["--class-labels", "0-3"], "--class-labels needs a class-conditional VAR model"),
    (["--prompts", "P", "--model", "CLASS"], "is class-conditional: pass --class-labels"),
    (["--class-labels", "0-10", "--model", "CLASS"], "goes up to 10 but the model has 10 classes"),
])
def test_bad_arguments_exit_2_with_one_line(models, argv, message, capsys, fresh_accelerate_state, monkeypatch):
    monkeypatch.chdir(models)
    Path("P.txt").write_text("a red circle\n")
    Path("E.txt").write_text("\n")
    argv = [{"P": "P.txt", "E": "E.txt", "CLASS": str(models / "class")}.get(a, a) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(models / "text")]
    with pytest.raises(SystemExit) as exit_info:
        code = run_in_process(*argv, "--output-dir", str(models / "out"))
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert __import__("re").search(message, err), err


def test_output_dir_is_required(capsys):
    with pytest.raises(SystemExit):
        raise SystemExit(main(["--prompts", "x.txt"]))
    assert "--output-dir is required" in capsys.readouterr().err


def test_cli_lists_generate_batch():
    from var_clip.cli import build_parser

    text = build_parser().format_help()
    assert "generate-batch" in text and "eval-fid" in text and "eval-clip-score" in text


# ----------------------------------------------------------------------------------------------------------------------
# Ownership: generate-batch writes only into a folder it owns, and never over its inputs
# ----------------------------------------------------------------------------------------------------------------------


def test_output_dir_must_be_generate_batchs_own(models, capsys, monkeypatch):
    def refused(out, *extra, code=2, match):
        rc = run_in_process(*text_run(models, out, *extra))
        err = capsys.readouterr().err
        assert rc == code and match in err and err.count("\n") == 1, err

    # a user's imagefolder: its metadata.jsonl and a photo named like sample 0 stay as they were
    user = models / "photos"
    user.mkdir()
    (user / METADATA_NAME).write_text('{"file_name": "000000_000.png", "text": "my cat"}\n')
    PIL.Image.new("RGB", (8, 8), "orange").save(user / "000000_000.png")
    before = files_of(user)
    refused("photos", match="not a folder generate-batch wrote")
    (user / "holiday.jpg").write_bytes(b"jpeg")
    refused("photos", match="holiday.jpg")
    assert files_of(user) == before and sorted(p.name for p in user.iterdir()) == sorted([*before, "holiday.jpg"])

    # an empty path, the current folder, a folder holding the prompts file or the model
    monkeypatch.chdir(models)
    rc = run_in_process("--model", str(models / "text"), "--prompts", str(models / "prompts.txt"), "--output-dir", "")
    assert rc == 2 and "--output-dir must name a folder" in capsys.readouterr().err
    refused(".", match="is the current folder")
    (models / "in").mkdir()
    (models / "in" / "prompts.txt").write_text("a red circle\n")
    rc = run_in_process("--model", str(models / "text"), "--prompts", str(models / "in" / "prompts.txt"),
                        "--output-dir", str(models / "in"))
    assert rc == 2 and "is or contains the input" in capsys.readouterr().err
    assert (models / "in" / "prompts.txt").read_text() == "a red circle\n"
    refused("text", match="is or contains the input")

    # its own folder is resumed; the marker says who wrote it
    assert run_in_process(*text_run(models, "out", "--max-images", "1", "--batch-size", "1")) == 0
    assert json.loads((models / "out" / MARKER_NAME).read_text())["command"] == "generate-batch"
    assert run_in_process(*text_run(models, "out")) == 0
    assert not (models / "out" / ".var-clip.lock").exists()


def test_settings_of_a_folder_written_before_every_sampling_argument_was_recorded_still_resume(tmp_path):
    from var_clip.generate_batch import RunSettings

    old = {"model": "default", "dtype": "float32", "seed": 0, "guidance_scale": 2.0, "top_k": 10, "top_p": 0.9,
           "conditions_sha256": "0" * 64}
    (tmp_path / "generate_batch.json").write_text(json.dumps(old))
    settings = RunSettings.read(tmp_path / "generate_batch.json")
    assert settings.sampling == {"guidance_scale": 2.0, "guidance_schedule": "linear", "guidance_interval": None,
                                 "top_k": 10, "top_p": 0.9, "temperature": 1.0, "prune_ratios": None,
                                 "more_smooth": False}
