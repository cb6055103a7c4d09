"""The `var-clip` command line, on a tiny pipeline saved in the test's folder."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from var_clip.cli import main


@pytest.fixture
def model_dir(tiny_pipe, tmp_path):
    path = tmp_path / "pipe"
    tiny_pipe.save_pretrained(path)
    return str(path)


def test_generate_one_and_a_grid(model_dir, tmp_path, capsys):
    out = tmp_path / "one.png"
    assert main(["generate", "a red circle", "--model", model_dir, "-o", str(out), "--seed", "3"]) == 0
    assert PIL.Image.open(out).size == (16, 16)
    grid = tmp_path / "grid.png"
    assert main(["generate", "a red circle", "--model", model_dir, "--num-images", "3", "-o", str(grid)]) == 0
    assert PIL.Image.open(grid).width > 3 * 16
    assert "wrote" in capsys.readouterr().out


def test_generate_is_seeded(model_dir, tmp_path):
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        main(["generate", "a blue square", "--model", model_dir, "--seed", str(seed), "-o", str(path)])
    assert np.array_equal(np.asarray(PIL.Image.open(a)), np.asarray(PIL.Image.open(b)))
    assert not np.array_equal(np.asarray(PIL.Image.open(a)), np.asarray(PIL.Image.open(c)))


def test_save_progress_strip(model_dir, tmp_path):
    strip = tmp_path / "strip.png"
    assert main(["generate", "a red circle", "--model", model_dir, "-o", str(tmp_path / "x.png"),
                 "--save-progress", str(strip)]) == 0
    assert PIL.Image.open(strip).width >= 4 * 64


def test_inpaint_and_img2img(model_dir, tmp_path):
    image = tmp_path / "in.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(image)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["inpaint", "a red circle", "--model", model_dir, "--image", str(image), "--mask",
                 str(tmp_path / "mask.png"), "-o", str(out)]) == 0
    kept = np.asarray(PIL.Image.open(out))[mask == 0]
    assert np.array_equal(kept, np.asarray(PIL.Image.open(image))[mask == 0])
    assert main(["img2img", "a red circle", "--model", model_dir, "--image", str(image), "--strength", "0.5",
                 "-o", str(out)]) == 0


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["generate", "x", "--num-images", "0"], 2, "must be an int >= 1"),
        (["generate", "x", "--top-p", "1.5"], 2, r"must be a number in \[0, 1\]"),
        (["generate", "x", "--guidance-scale", "-1"], 2, "must be a finite number >= 0"),
        (["generate", "x", "--dtype", "int8"], 2, "must be one of float32, bfloat16, float16"),
        (["generate"], 2, "required: prompt"),
        (["img2img", "x", "--image", "i.png", "--strength", "2"], 2, r"must be a number in \[0, 1\]"),
        (["img2img", "x", "--image", "i.png", "--strength", "half"], 2, r"must be a number in \[0, 1\], got 'half'"),
        (["generate", "x", "--num-images", "many"], 2, "must be an int >= 1, got 'many'"),
        (["generate", "x", "--seed", str(2**64 - 1)], 2, r"must be an int in \[-2\*\*63, 2\*\*64 - 257\]"),
        (["outpaint", "x", "--image", "i.png", "--right", "-1"], 2, "must be an int >= 0, got -1"),
    ],
)
def test_bad_arguments_exit_2(argv, code, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code
    assert __import__("re").search(message, capsys.readouterr().err)


def test_failures_exit_1_with_one_line(model_dir, tmp_path, capsys):
    assert main(["generate", "x", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "o.png")]) == 1
    assert "neither a folder nor a Hub repo id" in capsys.readouterr().err
    assert main(["generate", "x", "--model", model_dir, "-o", str(tmp_path / "no" / "dir" / "o.png")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["inpaint", "x", "--model", model_dir, "--image", str(tmp_path / "nope.png"), "--mask", "m.png"]) == 1
    assert "--image" in (err := capsys.readouterr().err) and "nope.png' does not exist" in err
    (tmp_path / "text.png").write_text("not an image")
    assert main(["inpaint", "x", "--model", model_dir, "--image", str(tmp_path / "text.png"), "--mask", "m.png"]) == 1
    assert "cannot be read as an image" in capsys.readouterr().err


def test_eval_shapes_report(model_dir, tmp_path):
    out = tmp_path / "report"
    assert main(["eval-shapes", "--model", model_dir, "--output-dir", str(out), "--samples-per-prompt", "1",
                 "--max-prompts", "2", "--guidance-scales", "0,2", "--inpainting", "2", "--outpainting", "1",
                 "--img2img", "1", "--prompt", "a red circle above a blue square", "--prompt", "a small blue square",
                 "--reconstruction", "6"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["whole_caption_accuracy"]) == {"seen_one_object", "seen_two_objects", "held_out_one_object",
                                                     "held_out_two_objects"}
    assert report["accuracy"]["all"]["all"]["num_samples"] == 8
    assert set(report["guidance_sweep"]) == {"0.0", "2.0"}
    assert PIL.Image.open(out / "samples.png").width > 0
    inpainting = report["inpainting"]
    assert inpainting["num_images"] == 2 and 0 <= inpainting["caption_with_new_object_in_mask"] <= 1
    assert inpainting["max_unmasked_change"] == 0  # the kept half is never touched
    assert set(inpainting["by_relation"]) == {"left of", "right of"}  # the first two tasks
    assert PIL.Image.open(out / "inpainting.png").width > 0
    assert report["outpainting"]["output_size_kept"] and report["outpainting"]["max_original_change"] == 0
    assert set(report["img2img"]["strengths"]) == {"0.00", "0.29", "0.43", "0.57", "0.71", "0.86", "1.00"}
    reconstruction = report["reconstruction"]
    assert reconstruction["num_images"] == 6 and sum(reconstruction[g]["num_samples"] for g in ("one_object",
                                                                                              "two_objects")) == 6
    quickstart, small = report["prompts"]  # drawn at seed 0 like `var-clip generate PROMPT --seed 0`
    assert quickstart["prompt"] == "a red circle above a blue square" and quickstart["seeds"] == [0, 0]
    assert quickstart["right"] == int(quickstart["verdicts"][0]["caption"]) and small["verdicts"][0]["size"] is not None
    grid = PIL.Image.open(out / "prompts.png")
    assert grid.height > 2 * 128 > grid.width >= 128  # a row per prompt, its images side by side
    # a second report into the same folder leaves no grid of the first behind
    assert main(["eval-shapes", "--model", model_dir, "--output-dir", str(out), "--samples-per-prompt", "1",
                 "--max-prompts", "1"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["report.json", "samples.png"]


def test_eval_shapes_refuses_a_prompt_it_cannot_score_before_any_work(tmp_path, capsys):
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-shapes", "--prompt", "a red fox", "--output-dir", str(out)])
    assert exit_info.value.code == 2 and "--prompt 'a red fox' is not a caption of the shapes world" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "var_clip.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("generate", "inpaint", "img2img", "train-vqvae", "train-clip", "train-var", "caption",
                    "word-position", "eval-shapes"):
        assert command in out.stdout


# ----------------------------------------------------------------------------------------------------------------------
# Start-up and option spellings
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_module_and_help_import_neither_torch_nor_diffusers():
    from .conftest import REPO

    code = ("import sys; import var_clip.cli as cli; cli.build_parser(commands=[]).format_help(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}).stdout
    assert out.strip() == "[]"


def test_every_multi_word_option_takes_both_spellings(capsys):
    from var_clip.cli import build_parser
    from var_clip.conversion.cli import VAR_CLIP, conversion_parser
    from var_clip.training import train_clip, train_vqvae

    kebab = build_parser().parse_args(["generate", "x", "--num-images", "2", "--guidance-scale", "1"])
    snake = build_parser().parse_args(["generate", "x", "--num_images", "2", "--guidance_scale", "1"])
    assert vars(kebab) == vars(snake)
    convert = conversion_parser(VAR_CLIP.condition_type, VAR_CLIP.description, VAR_CLIP.var_help)
    both = [convert.parse_args(["--var-checkpoint", "a", "--vae-checkpoint", "b", "--output-dir", "c", "--skip-check"]),
            convert.parse_args(["--var_checkpoint", "a", "--vae_checkpoint", "b", "--output_dir", "c", "--skip_check"])]
    assert vars(both[0]) == vars(both[1])
    for entry in (train_vqvae, train_clip):
        parser = entry.build_parser()
        assert (vars(parser.parse_args(["--train-data-dir", "d", "--output-dir", "o"]))
                == vars(parser.parse_args(["--train_data_dir", "d", "--output_dir", "o"])))
    # help and errors name one spelling
    assert "--output_dir" not in convert.format_help() and "--output-dir" in convert.format_help()
    with pytest.raises(SystemExit):
        convert.parse_args(["--var-checkpoint", "a"])
    assert "--vae-checkpoint, --output-dir" in capsys.readouterr().err


def test_convert_commands_are_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert-var-clip", "--help"])
    assert e.value.code == 0 and "usage: var-clip convert-var-clip" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["convert-var", "--help"])
    assert e.value.code == 0 and "usage: var-clip convert-var " in capsys.readouterr().out


def test_inpainting_tasks_draw_the_new_object_and_its_relation_from_the_seed():
    from var_clip import shapes_world as sw
    from var_clip.shapes_world.edit_report import MASKED_HALF, inpainting_tasks

    tasks = inpainting_tasks(16, seed=3)
    assert tasks == inpainting_tasks(16, seed=3) and tasks != inpainting_tasks(16, seed=4)
    assert {t.relation for t in tasks} == set(sw.RELATIONS)
    assert len({(t.color, t.shape) for t in tasks}) > 4  # not always a red circle
    for t in tasks:
        (kept,) = t.scene.objects
        assert (t.color, t.shape) not in sw.HELD_OUT_PAIRS and (kept.color, kept.shape) not in sw.HELD_OUT_PAIRS
        assert t.color != kept.color
        assert t.prompt == f"{sw.noun_phrase(t.color, t.shape)} {sw.RELATION_PHRASES[t.relation][0]} " \
                           f"{sw.noun_phrase(kept.color, kept.shape)}"
        # the kept object lies wholly in the unmasked half
        lo, hi = kept.cx - kept.size_px / 2, kept.cx + kept.size_px / 2
        top, bottom = kept.cy - kept.size_px / 2, kept.cy + kept.size_px / 2
        half = sw.IMAGE_SIZE / 2
        assert {"right": hi < half, "left": lo > half, "top": top > half, "bottom": bottom < half}[MASKED_HALF[t.relation]]


def test_the_strict_inpainting_verdict_counts_every_object_in_the_masked_half():
    from var_clip import shapes_world as sw
    from var_clip.shapes_world.edit_report import _half_box, _objects_in

    kept = sw.ShapeObject("blue", "square", 16, 16.0, 32.0)
    new = sw.ShapeObject("green", "circle", 16, 48.0, 20.0)
    extra = sw.ShapeObject("red", "circle", 12, 48.0, 50.0)
    right = _half_box("right", sw.IMAGE_SIZE)
    clean = sw.render_scene(sw.Scene((kept, new), "a green circle to the right of a blue square"))
    crowded = sw.render_scene(sw.Scene((kept, new, extra), "a green circle to the right of a blue square"))
    assert sw.score_image(crowded, "a green circle to the right of a blue square")["caption"]  # the caption holds ...
    assert _objects_in(clean, right) == 1 and _objects_in(crowded, right) == 2  # ... but the edit drew one too many


def _every_command_parser():
    """(name, parser) of every var-clip subcommand, built the way the command builds it."""
    import importlib

    from var_clip.cli import DELEGATED, GENERATION_COMMANDS, build_parser
    from var_clip.conversion import cli as conversion

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [(name, sub.choices[name]) for name in GENERATION_COMMANDS]
    for name, (target, _) in DELEGATED.items():
        if name.startswith("convert-"):
            command = conversion.VAR_CLIP if name == "convert-var-clip" else conversion.VAR
            parsers.append((name, conversion.conversion_parser(command.condition_type, command.description,
                                                               command.var_help)))
        else:
            parsers.append((name, importlib.import_module(target.partition(":")[0]).build_parser()))
    return parsers


def test_one_command_line_convention_across_commands():
    """Every option has help and both spellings; --dtype takes torch's and the variant names; --device defaults to
    auto; --model defaults to the embedded model (caption's --model is its captioner, a different thing)."""
    problems = []
    for name, parser in _every_command_parser():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            longs = [s for s in action.option_strings if s.startswith("--")]
            if action.help in (None, "", argparse.SUPPRESS) and action.help is not argparse.SUPPRESS:
                problems.append(f"{name} {longs}: no help")
            for option in longs:
                twin = "--" + option[2:].replace("-", "_") if "-" in option[2:] else "--" + option[2:].replace("_", "-")
                if twin != option and twin not in action.option_strings:
                    problems.append(f"{name} {option}: no {twin}")
            if action.dest == "device" and action.default != "auto":
                problems.append(f"{name} --device: default {action.default!r}")
            if action.dest == "model" and name != "caption" and action.default is not None:
                problems.append(f"{name} --model: default {action.default!r}")
            if action.dest == "dtype":
                values = [action.type(v) for v in ("bf16", "bfloat16", "fp16", "float16")]
                if values != ["bfloat16"] * 2 + ["float16"] * 2:
                    problems.append(f"{name} --dtype: {values}")
    assert problems == []


def test_a_missing_extra_is_named_before_any_work_starts(tmp_path, capsys, monkeypatch):
    from var_clip.cli import missing_extras

    monkeypatch.setitem(sys.modules, "peft", None)  # Python's own way to make a package unimportable
    out = tmp_path / "lora"
    for option in (["--lora_rank", "4"], ["--lora-rank=4"]):
        assert main(["train-var", *option, "--pretrained_pipeline", "x", "--output_dir", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs peft" in err and "pip install 'var-clip[lora]'" in err, err
    assert not out.exists()
    assert missing_extras("train-var", ["--output_dir", str(out)]) == []  # full training needs no peft
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert missing_extras("train-clip", ["--report_to", "tensorboard"]) == ["tensorboard"]
    assert missing_extras("train-clip", ["--report_to", "none"]) == []


def test_a_sampling_option_is_one_declaration():
    """Every declared sampling argument is a keyword of every pipeline (with the declared default) and an option of
    every command that samples; given on the command line, it reaches the pipeline as the keyword."""
    import inspect

    from var_clip import (
        VARCLIPImg2ImgPipeline,
        VARCLIPInpaintPipeline,
        VARCLIPPipeline,
        VARInpaintPipeline,
        VARPipeline,
    )
    from var_clip.cli import GENERATION_COMMANDS, build_parser
    from var_clip.generate_batch import build_parser as batch_parser
    from var_clip.sampling import SAMPLING_OPTIONS, given_sampling_options

    for cls in (VARCLIPPipeline, VARCLIPImg2ImgPipeline, VARCLIPInpaintPipeline, VARPipeline, VARInpaintPipeline):
        parameters = inspect.signature(cls.__call__).parameters
        for option in SAMPLING_OPTIONS:
            assert option.name in parameters, (cls.__name__, option.name)
            assert parameters[option.name].default == option.default, (cls.__name__, option.name)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for parser in [*(sub.choices[name] for name in GENERATION_COMMANDS), batch_parser()]:
        dests = {a.dest for a in parser._actions}
        assert {o.name for o in SAMPLING_OPTIONS} <= dests, parser.prog
    args = build_parser().parse_args(["generate", "x", "--guidance-interval", "0,3", "--prune_ratios", "8:0.5",
                                      "--temperature", "0.9", "--guidance-schedule", "constant", "--more-smooth"])
    assert given_sampling_options(args) == {"guidance_interval": (0, 3), "prune_ratios": {8: 0.5}, "temperature": 0.9,
                                            "guidance_schedule": "constant", "more_smooth": True}
