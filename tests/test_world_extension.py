"""World extensions: an extra colour or size renders, captions and scores; without one the world is the spec's."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from var_clip import shapes_world as sw
from var_clip.shapes_world.report import evaluate_prompts

PINK = sw.WorldExtension(colors={"pink": (255, 105, 180)})
HUGE = sw.WorldExtension(sizes={"huge": (34, 38)})
TINY = sw.WorldExtension(sizes={"tiny": (9, 11)})
CORNERS = sw.WorldExtension(positions={"top left corner": ("top", "left"), "bottom right corner": ("bottom", "right")})


def one(color: str, shape: str, size_px: int, caption: str = "") -> sw.Scene:
    return sw.Scene((sw.ShapeObject(color, shape, size_px, 32.0, 32.0),), caption)


def test_an_extra_colour_is_drawn_and_scored_only_by_a_scorer_that_knows_it():
    image = sw.render_scene(one("pink", "circle", 20), PINK)
    assert tuple(np.asarray(image)[32, 32]) == (255, 105, 180)
    (found,) = sw.detect_objects(image, PINK)
    assert (found.color, found.shape, found.size) == ("pink", "circle", "large")
    assert sw.score_image(image, "a pink circle in the center", PINK)["caption"]
    assert not sw.score_image(image, "a red circle in the center", PINK)["color"]
    assert sw.detect_objects(image) == []  # the spec's palette has no pink: no pixel lies within 60 of a colour
    with pytest.raises(ValueError, match="expected one color"):
        sw.score_image(image, "a pink circle")
    with pytest.raises(ValueError, match="color must be one of"):
        sw.render_scene(one("pink", "circle", 20))
    with pytest.raises(ValueError, match="lower-case colour word"):  # a scene holds colour words, any palette's
        sw.ShapeObject("Pink", "circle", 20, 32.0, 32.0)
    assert sw.parse_caption("a large pink square on the left", PINK) == sw.CaptionSpec(
        (sw.ObjectSpec("pink", "square", "large"),), position="left")


def test_an_extra_size_gets_its_own_class_halfway_between_neighbouring_ranges():
    image = sw.render_scene(one("red", "square", 36))
    (found,) = sw.detect_objects(image, HUGE)
    assert found.size == "huge" and sw.detect_objects(image)[0].size == "large"
    assert sw.score_image(image, "a huge red square", HUGE)["caption"]
    large = sw.render_scene(one("red", "square", 30))
    assert sw.detect_objects(large, HUGE)[0].size == "large"  # the boundary is (30 + 34) / 2 = 32
    assert not sw.score_image(large, "a huge red square", HUGE)["size"]
    assert [HUGE.size_class(side) for side in (19, 20, 31, 32)] == ["small", "large", "large", "huge"]
    assert [TINY.size_class(side) for side in (11, 12, 19, 20)] == ["tiny", "small", "small", "large"]  # 11.5, 20
    small = sw.render_scene(one("blue", "triangle", 10))
    assert sw.score_image(small, "a tiny blue triangle", TINY)["caption"]
    assert sw.detect_objects(small)[0].size == "small"


def test_default_scoring_is_unchanged_without_an_extension_and_by_one_without_new_colours():
    for side in range(1, 65):
        assert sw.WorldExtension().size_class(side) == PINK.size_class(side) == sw.size_class(side)
    rng = random.Random(0)
    for _ in range(30):
        scene = sw.sample_scene(rng, allow_held_out=True)
        image = sw.render_scene(scene)
        assert sw.render_scene(scene, PINK).tobytes() == image.tobytes()
        default = sw.score_image(image, scene.caption)
        assert default["caption"]  # a ground-truth render
        assert sw.detect_objects(image) == sw.detect_objects(image, HUGE) == sw.detect_objects(image, PINK)
        assert default == sw.score_image(image, scene.caption, HUGE) == sw.score_image(image, scene.caption, PINK)
        assert scene.to_dict() == scene.to_dict(PINK)


def test_extension_datasets_show_the_new_word_in_the_worlds_templates(tmp_path):
    folder = sw.generate_dataset(tmp_path / "huge", 12, seed=0, extension=HUGE, show_progress=False)
    records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for record in records:
        assert "huge" in record["text"].split()
        scene = sw.Scene.from_dict(json.loads(record["scene"]), record["text"])
        assert scene.caption in sw.caption_variants(scene)
        assert all(34 <= o.size_px <= 38 for o in scene.objects)
        assert [o["size"] for o in json.loads(record["scene"])["objects"]] == ["huge"]
        assert sw.score_image(Image.open(folder / record["file_name"]), record["text"], HUGE)["caption"]
    again = sw.generate_dataset(tmp_path / "again", 12, seed=0, extension=HUGE, show_progress=False)
    assert (again / "metadata.jsonl").read_bytes() == (folder / "metadata.jsonl").read_bytes()
    with pytest.raises(ValueError, match="allow_held_out"):
        sw.generate_dataset(tmp_path / "held", 2, seed=0, extension=HUGE, allow_held_out=True)


def test_extension_scenes_mix_the_words_and_score_correct_as_drawn():
    both = sw.WorldExtension(colors={"pink": (255, 105, 180)}, sizes={"tiny": (9, 11)})
    rng = random.Random(1)
    scenes = [sw.sample_extension_scene(rng, both) for _ in range(60)]
    assert any(s.objects[0].color == "pink" for s in scenes) and any(s.size_word == "tiny" for s in scenes)
    for scene in scenes:
        (obj,) = scene.objects
        assert obj.color == "pink" or (scene.size_word == "tiny" and (obj.color, obj.shape) not in sw.HELD_OUT_PAIRS)
        assert sw.score_image(sw.render_scene(scene, both), scene.caption, both)["caption"], scene
    with pytest.raises(ValueError, match="names no colour, size, place or synonym"):
        sw.sample_extension_scene(rng, sw.WorldExtension())


def test_an_extra_place_is_both_of_its_regions_and_its_words_are_not_read_as_world_positions():
    corner = sw.render_scene(sw.Scene((sw.ShapeObject("red", "circle", 14, 12.0, 11.0),), ""))
    top_right = sw.render_scene(sw.Scene((sw.ShapeObject("red", "circle", 14, 50.0, 11.0),), ""))
    assert sw.score_image(corner, "a red circle in the top left corner", CORNERS)["caption"]
    verdict = sw.score_image(top_right, "a red circle in the top left corner", CORNERS)
    assert verdict["color"] and verdict["shape"] and not verdict["position"] and not verdict["caption"]
    assert sw.parse_caption("There is a red circle, in the top left corner.", CORNERS) == sw.CaptionSpec(
        (sw.ObjectSpec("red", "circle"),), position="top left corner")
    assert sw.parse_caption("a red circle at the top", CORNERS).position == "top"  # the world's positions stay
    with pytest.raises(ValueError, match="several positions"):  # without the extension: "top" and "left"
        sw.parse_caption("a red circle in the top left corner")
    prompts = sw.extension_prompts(CORNERS)
    assert len(prompts) == 30 and prompts[0] == "a red circle in the top left corner"
    assert prompts[15] == "a red circle in the bottom right corner"


def test_extension_scenes_of_a_place_name_it_and_score_correct_as_drawn():
    rng = random.Random(2)
    scenes = [sw.sample_extension_scene(rng, CORNERS) for _ in range(40)]
    assert {s.position for s in scenes} == set(CORNERS.positions)
    for scene in scenes:
        (obj,) = scene.objects
        assert scene.caption.endswith(f"in the {scene.position}") and scene.caption in sw.caption_variants(
            scene, CORNERS)
        assert CORNERS.position_holds(scene.position, obj.cx, obj.cy)
        assert (obj.color, obj.shape) not in sw.HELD_OUT_PAIRS
        assert sw.score_image(sw.render_scene(scene, CORNERS), scene.caption, CORNERS)["caption"], scene


BALL = sw.WorldExtension(synonyms={"ball": "circle"})


def test_a_synonym_reads_as_the_world_word_it_renames():
    assert sw.parse_caption("An orange ball, on the left.", BALL) == sw.CaptionSpec(
        (sw.ObjectSpec("orange", "circle"),), position="left")
    assert sw.parse_caption("a red ball above a blue square", BALL).shapes == ("circle", "square")
    with pytest.raises(ValueError, match="expected one shape"):  # without the extension "ball" is no shape
        sw.parse_caption("a red ball on the left")
    assert sw.rename_word("an image of a red circle", "red", "orange") == "an image of an orange circle"
    prompts = sw.extension_prompts(BALL)
    seen_circles = [c for c in sw.COLORS if (c, "circle") not in sw.HELD_OUT_PAIRS]
    assert len(prompts) == len(seen_circles) * len(sw.POSITIONS) and prompts[0] == "a red ball on the left"


def test_extension_scenes_of_a_synonym_say_it_and_score_correct_as_drawn():
    rng = random.Random(3)
    scenes = [sw.sample_extension_scene(rng, BALL) for _ in range(40)]
    for scene in scenes:
        (obj,) = scene.objects
        assert obj.shape == "circle" and (obj.color, obj.shape) not in sw.HELD_OUT_PAIRS
        assert " ball" in scene.caption and "circle" not in scene.caption
        assert sw.score_image(sw.render_scene(scene, BALL), scene.caption, BALL)["caption"], scene
    assert any(s.size_word for s in scenes) and any(s.size_word is None for s in scenes)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"positions": {"corner": ("top", "left")}}, "two or more lower-case words"),
    ({"positions": {"top  left": ("top", "left")}}, "two or more lower-case words"),
    ({"positions": {"on the left": ("left",)}}, "already one of the world's positions"),
    ({"positions": {"top left corner": ("top", "center")}}, "one or two of"),
    ({"positions": {"top left corner": ("left", "right")}}, "at most one per axis"),
    ({"positions": {"left corner": ("left",), "top left corner": ("top", "left")}}, "is part of place"),
    ({"colors": {"red": (1, 2, 3)}}, "must be a new lower-case word"),
    ({"sizes": {"Huge": (34, 38)}}, "must be a new lower-case word"),
    ({"colors": {"pink": (300, 0, 0)}}, "RGB triple"),
    ({"colors": {"rose": (230, 50, 50)}}, "within 60 of red"),
    ({"colors": {"grey": (225, 225, 225)}}, "within 60 of background"),
    ({"colors": {"pink": (255, 105, 180)}, "sizes": {"pink": (34, 38)}}, "two meanings"),
    ({"synonyms": {"ball": "sphere"}}, "rename one of the world's colours or shapes"),
    ({"synonyms": {"circle": "square"}}, "must be a new lower-case word"),
    ({"synonyms": {"huge": "circle"}, "sizes": {"huge": (34, 38)}}, "two meanings"),
    ({"synonyms": {"corner": "circle"}, "positions": {"top left corner": ("top", "left")}}, "also a word of a place"),
    ({"sizes": {"big": (28, 33)}}, "overlap"),
    ({"sizes": {"dot": (4, 6)}}, "within 9..40"),
    ({"sizes": {"giant": (40, 48)}}, "within 9..40"),
])
def test_invalid_extensions_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sw.WorldExtension(**kwargs)


def test_an_extension_keeps_its_own_copy_of_the_words():
    sizes = {"huge": (34, 38)}
    extension = sw.WorldExtension(sizes=sizes)
    sizes["tiny"] = (9, 11)
    assert extension.all_sizes == {"small": (12, 16), "large": (24, 30), "huge": (34, 38)}


def test_evaluate_prompts_scores_extension_prompts(tiny_pipe):
    assert sw.extension_prompts(PINK) == ["a pink circle", "a small pink square", "a large pink triangle"]
    prompts = sw.extension_prompts(HUGE)
    assert len(prompts) == 15 and prompts[0] == "a huge red circle"
    assert all(sw.parse_caption(p, HUGE).size == "huge" for p in prompts)
    summary, records = evaluate_prompts(tiny_pipe, prompts[:2], HUGE, samples_per_prompt=2, show_progress=False)
    assert summary["seen"]["all"]["num_samples"] == 4 and len(records) == 4
    assert [r[0] for r in records] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert 0 <= summary["seen"]["all"]["caption"] <= 1
    with pytest.raises(ValueError, match="expected one color"):
        evaluate_prompts(tiny_pipe, ["a pink circle"], HUGE, show_progress=False)


@pytest.mark.slow
def test_lora_new_concept_example_runs_quick(tmp_path):
    """The measurement script end to end with two training steps per concept (about half a minute)."""
    pytest.importorskip("peft")
    script = Path(__file__).resolve().parents[1] / "examples" / "lora_new_concept.py"
    run = subprocess.run([sys.executable, str(script), "--workdir", str(tmp_path / "run"), "--quick"],
                         check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["unloaded_huge_identical"] and results["unloaded_tiny_identical"]
    assert set(results["with_both"]) == {"seen", "huge", "tiny"} and "| seen prompts, all |" in run.stdout
    assert set(results["base"]["reference"]) == {"huge", "tiny"}
    weights = load_file(tmp_path / "run" / "lora-huge" / "pytorch_lora_weights.safetensors")
    assert {k.split(".")[0] for k in weights} == {"transformer", "text_encoder"}  # --train_text_encoder by default
    with Image.open(tmp_path / "run" / "concepts.png") as picture:
        assert picture.width > 4 * 128  # base, each adapter, both
