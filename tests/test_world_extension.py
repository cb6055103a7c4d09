"""World extensions: an extra colour or size renders, captions and scores; without one the world is the spec's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from var_clip import shapes_world as sw
from var_clip.evaluation import evaluate_prompts, extension_prompts

PINK = sw.WorldExtension(colors={"pink": (255, 105, 180)})
HUGE = sw.WorldExtension(sizes={"huge": (34, 38)})


def one(color: str, shape: str, size_px: int, caption: str) -> sw.Scene:
    return sw.Scene((sw.ShapeObject(color, shape, size_px, 32.0, 32.0),), caption, size_word=None)


def test_an_extra_colour_is_drawn_and_scored_only_by_a_scorer_that_knows_it():
    image = sw.render_scene(one("pink", "circle", 20, "a pink circle"), PINK)
    assert tuple(np.asarray(image)[32, 32]) == (255, 105, 180)
    (found,) = sw.detect_objects(image, PINK)
    assert (found.color, found.shape) == ("pink", "circle")
    assert sw.score_image(image, "a pink circle in the center", PINK)["caption"]
    assert sw.detect_objects(image) == []  # the spec's palette has no pink: nothing within 60 of a colour
    with pytest.raises(ValueError, match="expected one color"):
        sw.score_image(image, "a pink circle")
    with pytest.raises(ValueError, match="color must be one of"):
        sw.render_scene(one("pink", "circle", 20, "a pink circle"))


def test_an_extra_size_gets_its_own_class_halfway_between_neighbouring_ranges():
    image = sw.render_scene(one("red", "square", 36, "a huge red square"))
    (found,) = sw.detect_objects(image, HUGE)
    assert found.size == "huge" and sw.detect_objects(image)[0].size == "large"
    assert sw.score_image(image, "a huge red square", HUGE)["caption"]
    large = sw.render_scene(one("red", "square", 30, "a large red square"))
    assert sw.detect_objects(large, HUGE)[0].size == "large"  # the boundary is (30 + 34) / 2 = 32
    assert not sw.score_image(large, "a huge red square", HUGE)["size"]


def test_default_scoring_is_unchanged_by_an_extension_without_new_colours():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = sw.sample_scene(rng)
        image = sw.render_scene(scene)
        assert sw.score_image(image, scene.caption) == sw.score_image(image, scene.caption, HUGE)
        assert sw.score_image(image, scene.caption) == sw.score_image(image, scene.caption, PINK)


def test_extension_datasets_show_the_new_word_in_the_worlds_templates(tmp_path):
    folder = sw.generate_dataset(tmp_path / "huge", 12, seed=0, extension=HUGE, show_progress=False)
    records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for record in records:
        assert "huge" in record["text"].split()
        scene = sw.Scene.from_dict(json.loads(record["scene"]), record["text"])
        assert scene.caption in sw.caption_variants(scene)
        assert all(34 <= o.size_px <= 38 for o in scene.objects)
        from PIL import Image

        assert sw.score_image(Image.open(folder / record["file_name"]), record["text"], HUGE)["caption"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"colors": {"red": (1, 2, 3)}}, "must be a new lower-case word"),
    ({"colors": {"pink": (300, 0, 0)}}, "RGB triple"),
    ({"sizes": {"big": (28, 33)}}, "overlap"),
])
def test_invalid_extensions_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sw.WorldExtension(**kwargs)


def test_evaluate_prompts_scores_extension_prompts(tiny_pipe):
    assert extension_prompts(PINK) == ["a pink circle", "a small pink square", "a large pink triangle"]
    prompts = extension_prompts(HUGE)
    assert len(prompts) == 15 and prompts[0] == "a huge red circle"
    summary, records = evaluate_prompts(tiny_pipe, prompts[:2], HUGE, samples_per_prompt=2, show_progress=False)
    assert summary["seen"]["all"]["num_samples"] == 4 and len(records) == 4
    assert 0 <= summary["seen"]["all"]["caption"] <= 1
