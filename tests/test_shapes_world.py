"""The shapes world follows its spec, and its evaluator scores right images right and wrong images wrong."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from var_clip import shapes_world as sw
from var_clip.shapes_world.evaluate import label_components

# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes() -> list[sw.Scene]:
    rng = random.Random(0)
    return [sw.sample_scene(rng) for _ in range(600)]


@pytest.fixture(scope="module")
def scenes_with_held_out() -> list[sw.Scene]:
    rng = np.random.default_rng(1)
    return [sw.sample_scene(rng, allow_held_out=True) for _ in range(600)]


def _one(color: str, shape: str, size_px: int, cx: float, cy: float, **scene_kwargs: object) -> sw.Scene:
    return sw.Scene((sw.ShapeObject(color, shape, size_px, cx, cy),), caption="", **scene_kwargs)


def _inside_canvas(obj: sw.ShapeObject) -> bool:
    x0, y0, x1, y1 = obj.bbox
    return x0 >= 0 and y0 >= 0 and x1 <= sw.IMAGE_SIZE and y1 <= sw.IMAGE_SIZE


# ----------------------------------------------------------------------------------------------------------------------
# The world and its generator
# ----------------------------------------------------------------------------------------------------------------------


def test_constants_match_spec() -> None:
    assert sw.IMAGE_SIZE == 64 and sw.BACKGROUND == (235, 235, 235)
    assert sw.COLORS == {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 220),
        "yellow": (240, 200, 30),
        "purple": (150, 60, 190),
        "orange": (245, 140, 30),
    }
    assert set(sw.SHAPES) == {"circle", "square", "triangle"}
    assert sw.SIZES == {"small": (12, 16), "large": (24, 30)}
    assert set(sw.POSITIONS) == {"left", "right", "top", "bottom", "center"}
    assert set(sw.RELATIONS) == {"left of", "right of", "above", "below"}
    assert sw.HELD_OUT_PAIRS == {("purple", "triangle"), ("orange", "circle"), ("green", "square")}


def test_scenes_follow_spec(scenes: list[sw.Scene], scenes_with_held_out: list[sw.Scene]) -> None:
    for scene in scenes + scenes_with_held_out:
        for obj in scene.objects:
            low, high = sw.SIZES[obj.size]
            assert low <= obj.size_px <= high
            assert _inside_canvas(obj), scene
        spec = sw.parse_caption(scene.caption)
        assert spec.colors == tuple(o.color for o in scene.objects), scene
        assert spec.shapes == tuple(o.shape for o in scene.objects), scene
        if len(scene.objects) == 1:
            (obj,) = scene.objects
            assert scene.relation is None and spec.relation is None
            assert spec.position == scene.position and spec.size == scene.size_word
            if scene.position is not None:
                assert sw.position_holds(scene.position, obj.cx, obj.cy), scene
            if scene.size_word is not None:
                assert obj.size == scene.size_word
        else:
            a, b = scene.objects
            assert a.color != b.color
            assert spec.relation == scene.relation and scene.position is None and spec.position is None
            assert sw.relation_holds(scene.relation, (a.cx, a.cy), (b.cx, b.cy), min_offset=16), scene
            ax0, ay0, ax1, ay1 = a.bbox
            bx0, by0, bx1, by1 = b.bbox
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"bounding boxes overlap: {scene}"


def test_center_and_region_thresholds() -> None:
    assert sw.position_holds("left", 21.5, 50) and not sw.position_holds("left", 22, 50)
    assert sw.position_holds("right", 42.5, 5) and not sw.position_holds("right", 42, 5)
    assert sw.position_holds("top", 0, 21.9) and sw.position_holds("bottom", 0, 43)
    assert sw.position_holds("center", 22, 42) and not sw.position_holds("center", 21.9, 32)
    with pytest.raises(ValueError, match="position"):
        sw.position_holds("middle-ish", 0, 0)


def test_held_out_pairs_absent(scenes: list[sw.Scene]) -> None:
    rng = np.random.default_rng(7)
    for scene in scenes + [sw.sample_scene(rng) for _ in range(300)]:
        assert not any((o.color, o.shape) in sw.HELD_OUT_PAIRS for o in scene.objects), scene
        assert not sw.parse_caption(scene.caption).has_held_out_pair
        for color, shape in sw.HELD_OUT_PAIRS:
            assert f"{color} {shape}" not in scene.caption


def test_held_out_pairs_appear_when_allowed(scenes_with_held_out: list[sw.Scene]) -> None:
    found = {(o.color, o.shape) for s in scenes_with_held_out for o in s.objects}
    assert sw.HELD_OUT_PAIRS <= found


def test_mixture_proportions() -> None:
    rng = random.Random(3)
    sample = [sw.sample_scene(rng) for _ in range(3000)]
    one = [s for s in sample if len(s.objects) == 1]
    two = [s for s in sample if len(s.objects) == 2]
    assert len(one) + len(two) == len(sample)
    assert abs(len(one) / len(sample) - 0.6) < 0.04
    assert abs(sum(s.size_word is not None for s in one) / len(one) - 0.5) < 0.05
    # when the size is not named, either size is drawn
    unnamed = {s.objects[0].size for s in one if s.size_word is None}
    assert unnamed == {"small", "large"}
    assert {s.position for s in one} == set(sw.POSITIONS) | {None}
    assert {s.relation for s in two} == set(sw.RELATIONS)


def test_articles_follow_english(scenes_with_held_out: list[sw.Scene]) -> None:
    captions = [s.caption for s in scenes_with_held_out]
    assert any("an orange" in c for c in captions)
    for caption in captions:
        words = caption.split()
        for article, following in zip(words, words[1:]):
            if article in ("a", "an"):
                assert (article == "an") == (following[0] in "aeiou"), caption


def test_spec_examples_are_template_captions() -> None:
    all_captions = set()
    pairs = [(c, s) for c in sw.COLORS for s in sw.SHAPES]
    for color, shape in pairs:
        for size_word in (None, "small", "large"):
            for position in (None, *sw.POSITIONS):
                size_px = sw.SIZES[size_word or "small"][0]
                scene = _one(color, shape, size_px, 32, 32, position=position, size_word=size_word)
                all_captions.update(sw.caption_variants(scene))
    for first in pairs:
        for second in pairs:
            for relation in sw.RELATIONS:
                objects = (sw.ShapeObject(*first, 12, 10, 10), sw.ShapeObject(*second, 12, 50, 50))
                all_captions.update(sw.caption_variants(sw.Scene(objects, "", relation=relation)))
    examples = [
        "a red circle",
        "a small blue square on the left",
        "a large yellow triangle at the top",
        "there is a green square in the center",
        "a photo of an orange circle at the bottom",
        "a purple triangle to the left of a blue circle",
        "a red square above a yellow circle",
        "a green circle below an orange square",
        "a blue triangle right of a red square",
    ]
    assert set(examples) <= all_captions


def test_sampling_is_deterministic() -> None:
    for make in (random.Random, np.random.default_rng):
        first, second = make(11), make(11)
        assert [sw.sample_scene(first) for _ in range(50)] == [sw.sample_scene(second) for _ in range(50)]
    with pytest.raises(ValueError, match="rng"):
        sw.sample_scene(11)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# Rendering and the dataset
# ----------------------------------------------------------------------------------------------------------------------


def test_render_is_flat_background_and_exact_palette_interior() -> None:
    scene = _one("orange", "square", 20, 32, 32, position="center")
    image = sw.render_scene(scene)
    assert image.size == (64, 64) and image.mode == "RGB"
    pixels = np.asarray(image)
    assert tuple(pixels[0, 0]) == sw.BACKGROUND and tuple(pixels[63, 63]) == sw.BACKGROUND
    assert tuple(pixels[32, 32]) == sw.COLORS["orange"]
    # the square covers exactly [22, 42) on both axes: whole-pixel edges render crisp
    assert (np.abs(pixels.astype(int) - sw.COLORS["orange"]).sum(-1) == 0).sum() == 400


def test_render_triangle_apex_up_and_antialiased() -> None:
    pixels = np.asarray(sw.render_scene(_one("blue", "triangle", 30, 32, 32))).astype(int)
    blue_rows = (np.abs(pixels - sw.COLORS["blue"]).sum(-1) == 0).sum(axis=1)
    assert blue_rows[20] < blue_rows[30] < blue_rows[44]  # widens downward: the apex is up
    palette = np.asarray([sw.BACKGROUND, sw.COLORS["blue"]])
    is_pure = (np.abs(pixels[:, :, None, :] - palette).sum(-1) == 0).any(-1)
    assert (~is_pure).sum() > 20  # edge pixels blend: antialiased


def test_dataset_layout_and_determinism(tmp_path: Path) -> None:
    out = sw.generate_dataset(tmp_path / "a", num_images=24, seed=5, show_progress=False)
    again = sw.generate_dataset(tmp_path / "b", num_images=24, seed=5, show_progress=False)
    other = sw.generate_dataset(tmp_path / "c", num_images=24, seed=6, show_progress=False)
    assert out == tmp_path / "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no staging folder left behind

    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 24
    names = set()
    for line in lines:
        record = json.loads(line)
        image = Image.open(out / record["file_name"])
        assert image.size == (64, 64) and image.mode == "RGB"
        scene = sw.Scene.from_dict(json.loads(record["scene"]), record["text"])
        assert np.array_equal(np.asarray(image), np.asarray(sw.render_scene(scene)))
        names.add(record["file_name"])
    assert names | {"metadata.jsonl"} == {p.name for p in out.iterdir()}

    for path in out.iterdir():
        assert path.read_bytes() == (again / path.name).read_bytes()
    assert (out / "metadata.jsonl").read_bytes() != (other / "metadata.jsonl").read_bytes()


def test_dataset_loads_as_imagefolder(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    out = sw.generate_dataset(tmp_path / "ds", num_images=8, seed=0, show_progress=False)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(loaded) == 8 and {"image", "text"} <= set(loaded.column_names)


def test_dataset_refuses_non_empty_output_dir(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="output_dir"):
        sw.generate_dataset(tmp_path / "full", num_images=2, seed=0, show_progress=False)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    sw.generate_dataset(tmp_path / "empty", num_images=2, seed=0, show_progress=False)
    assert (tmp_path / "empty" / "metadata.jsonl").exists()
    with pytest.raises(ValueError, match="num_images"):
        sw.generate_dataset(tmp_path / "none", num_images=0, seed=0, show_progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------------------


def test_parse_caption_round_trips_every_template() -> None:
    pairs = [(c, s) for c in sw.COLORS for s in sw.SHAPES]
    checked = 0
    for color, shape in pairs:
        for size_word in (None, "small", "large"):
            for position in (None, *sw.POSITIONS):
                size_px = sw.SIZES[size_word or "large"][1]
                scene = _one(color, shape, size_px, 32, 32, position=position, size_word=size_word)
                expected = sw.CaptionSpec((sw.ObjectSpec(color, shape, size_word),), position=position)
                for caption in sw.caption_variants(scene):
                    assert sw.parse_caption(caption) == expected, caption
                    checked += 1
    for first in pairs:
        for second in pairs:
            if first[0] == second[0]:
                continue
            for relation in sw.RELATIONS:
                objects = (sw.ShapeObject(*first, 12, 10, 10), sw.ShapeObject(*second, 12, 50, 50))
                expected = sw.CaptionSpec((sw.ObjectSpec(*first), sw.ObjectSpec(*second)), relation=relation)
                for caption in sw.caption_variants(sw.Scene(objects, "", relation=relation)):
                    assert sw.parse_caption(caption) == expected, caption
                    checked += 1
    assert checked > 5000


def test_parse_caption_reads_free_form_text() -> None:
    spec = sw.parse_caption("A Small red circle, on the LEFT.")
    assert spec == sw.CaptionSpec((sw.ObjectSpec("red", "circle", "small"),), position="left")
    spec = sw.parse_caption("a large blue square to the right of a small yellow triangle")
    assert spec.relation == "right of" and spec.objects[0].size == "large" and spec.objects[1].size == "small"
    assert sw.parse_caption("an orange circle in the middle").position == "center"


@pytest.mark.parametrize(
    "caption",
    [
        "",
        "a cat on a mat",
        "a red circle and a blue square",
        "a red blue circle",
        "a red circle square",
        "a small large red circle",
        "a red circle on the left at the top",
        "a red circle left of a square",
        "a red circle above a blue square on the left",
        "a red circle above a blue square below a green circle",
    ],
)
def test_parse_caption_rejects_unparsable(caption: str) -> None:
    with pytest.raises(ValueError, match="caption"):
        sw.parse_caption(caption)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------------------------------


def test_labelling_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.6):
        classes = np.where(rng.random((64, 64)) < density, rng.integers(1, 3, (64, 64)), 0)
        ours = label_components(classes)
        for k in (1, 2):
            theirs, _ = ndimage.label(classes == k, structure=np.ones((3, 3)))
            mask = classes == k
            # same partition: a bijection between our labels and scipy's on this class's pixels
            pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist()))
            assert len(pairs) == len(set(ours[mask].tolist())) == len(set(theirs[mask].tolist()))


def test_detect_objects_reads_rendered_attributes() -> None:
    scene = _one("yellow", "triangle", 26, 50, 12)
    (obj,) = sw.detect_objects(sw.render_scene(scene))
    assert (obj.color, obj.shape, obj.size) == ("yellow", "triangle", "large")
    assert obj.in_region("right") and obj.in_region("top") and not obj.in_region("center")
    assert abs(obj.cx - 50) <= 1 and abs(obj.cy - 12) <= 1
    assert sw.detect_objects(np.asarray(sw.render_scene(scene))) == [obj]  # arrays work too


def test_ground_truth_renders_score_correct(scenes_with_held_out: list[sw.Scene]) -> None:
    for scene in scenes_with_held_out[:400]:
        scores = sw.score_image(sw.render_scene(scene), scene.caption)
        assert scores["caption"], (scene, scores)
        applicable = {k: v for k, v in scores.items() if v is not None}
        assert all(applicable.values()), (scene, scores)
        assert (scores["relation"] is None) == (len(scene.objects) == 1)
        assert (scores["position"] is None) == (scene.position is None)


def test_wrong_images_score_incorrect() -> None:
    caption = "a small red square on the left"
    right = _one("red", "square", 14, 12, 40)
    assert sw.score_image(sw.render_scene(right), caption)["caption"]

    def verdict(scene: sw.Scene) -> dict[str, bool | None]:
        return sw.score_image(sw.render_scene(scene), caption)

    wrong_color = verdict(replace(right, objects=(replace(right.objects[0], color="orange"),)))
    assert not wrong_color["color"] and wrong_color["shape"] and not wrong_color["caption"]
    wrong_shape = verdict(replace(right, objects=(replace(right.objects[0], shape="circle"),)))
    assert wrong_shape["color"] and not wrong_shape["shape"] and not wrong_shape["caption"]
    wrong_place = verdict(replace(right, objects=(replace(right.objects[0], cx=52),)))
    assert wrong_place["color"] and wrong_place["shape"] and not wrong_place["position"] and not wrong_place["caption"]
    wrong_size = verdict(replace(right, objects=(replace(right.objects[0], size_px=28, cx=15),)))
    assert wrong_size["position"] and not wrong_size["size"] and not wrong_size["caption"]
    extra = verdict(replace(right, objects=(right.objects[0], sw.ShapeObject("blue", "circle", 12, 50, 10))))
    assert extra["color"] and extra["shape"] and extra["position"] and not extra["caption"]
    blank = sw.score_image(Image.new("RGB", (64, 64), sw.BACKGROUND), caption)
    assert blank["relation"] is None
    assert all(blank[k] is False for k in ("color", "shape", "position", "size", "caption"))


def test_wrong_two_object_images_score_incorrect() -> None:
    caption = "a purple triangle to the left of a blue circle"
    a, b = sw.ShapeObject("purple", "triangle", 26, 15, 20), sw.ShapeObject("blue", "circle", 14, 50, 45)
    right = sw.score_image(sw.render_scene(sw.Scene((a, b), caption, relation="left of")), caption)
    assert all(v for v in right.values() if v is not None) and right["caption"]
    swapped = sw.score_image(sw.render_scene(sw.Scene((replace(a, cx=50), replace(b, cx=15)), "")), caption)
    assert swapped["color"] and swapped["shape"] and not swapped["relation"] and not swapped["caption"]
    too_close = sw.score_image(sw.render_scene(sw.Scene((a, replace(b, cx=28)), "")), caption)
    assert not too_close["relation"] and not too_close["caption"]
    wrong_shape = sw.score_image(sw.render_scene(sw.Scene((replace(a, shape="square"), b), "")), caption)
    assert wrong_shape["color"] and wrong_shape["relation"] and not wrong_shape["shape"] and not wrong_shape["caption"]
    missing = sw.score_image(sw.render_scene(sw.Scene((a,), "")), caption)
    assert not any(v for v in missing.values())
    blank = sw.score_image(Image.new("RGB", (64, 64), sw.BACKGROUND), caption)
    assert blank["position"] is None and blank["size"] is None
    assert all(blank[k] is False for k in ("color", "shape", "relation", "caption"))


def test_score_image_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="image"):
        sw.score_image(Image.new("RGB", (32, 32)), "a red circle")
    with pytest.raises(ValueError, match="caption"):
        sw.score_image(Image.new("RGB", (64, 64)), "a dog")


# ----------------------------------------------------------------------------------------------------------------------
# Faithfulness report
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("held_out", [False, True])
@pytest.mark.parametrize("num_objects", [1, 2])
def test_evaluation_prompts_follow_spec(held_out: bool, num_objects: int) -> None:
    prompts = sw.evaluation_prompts(held_out, num_objects)
    assert prompts == sw.evaluation_prompts(held_out, num_objects) and len(set(prompts)) == len(prompts) >= 12
    for prompt in prompts:
        spec = sw.parse_caption(prompt)
        assert spec.num_objects == num_objects
        assert spec.has_held_out_pair == held_out, prompt
        if num_objects == 2:
            assert spec.relation is not None and spec.colors[0] != spec.colors[1]
        else:
            assert spec.position is not None
    named = [sw.parse_caption(p) for p in prompts]
    if num_objects == 1:
        assert {s.position for s in named} == set(sw.POSITIONS)
    else:
        assert {s.relation for s in named} == set(sw.RELATIONS)
    if held_out:  # every held-out pair is measured
        assert {(o.color, o.shape) for s in named for o in s.objects} >= sw.HELD_OUT_PAIRS
    with pytest.raises(ValueError, match="num_objects"):
        sw.evaluation_prompts(held_out, 3)


def test_summarize_scores() -> None:
    def scores(**values: bool | None) -> dict[str, bool | None]:
        base: dict[str, bool | None] = dict.fromkeys(("color", "shape", "position", "size", "relation", "caption"))
        return {**base, **values}

    records = [
        ("a red circle", scores(color=True, shape=True, caption=True), False, 1),
        ("a red circle", scores(color=True, shape=False, caption=False), False, 1),
        ("a red circle on the left", scores(color=True, shape=True, position=False, caption=False), False, 1),
        ("a green square", scores(color=False, shape=False, caption=False), True, 1),
        ("a red circle above a blue square", scores(color=True, shape=True, relation=True, caption=True), False, 2),
    ]
    summary = sw.summarize_scores(records)
    seen_one = summary["seen"]["one_object"]
    assert seen_one["num_samples"] == 3 and seen_one["color"] == 1.0 and seen_one["shape"] == pytest.approx(2 / 3)
    assert seen_one["position"] == 0.0 and seen_one["relation"] is None and seen_one["caption"] == pytest.approx(1 / 3)
    assert summary["held_out"]["one_object"]["caption"] == 0.0 and summary["held_out"]["two_objects"]["caption"] is None
    assert summary["seen"]["all"]["num_samples"] == 4 and summary["seen"]["all"]["caption"] == 0.5
    assert summary["all"]["all"]["num_samples"] == 5 and summary["all"]["two_objects"]["relation"] == 1.0
    assert summary["by_prompt"] == {
        "a red circle": 0.5,
        "a red circle on the left": 0.0,
        "a green square": 0.0,
        "a red circle above a blue square": 1.0,
    }
    with pytest.raises(ValueError, match="num_objects"):
        sw.summarize_scores([("a red circle", scores(), False, 3)])


def test_scores_of_real_pipeline_round_trip() -> None:
    """Prompts rendered as ground truth and scored through the whole report path give perfect accuracy."""
    records = []
    for held_out in (False, True):
        for num_objects in (1, 2):
            for prompt in sw.evaluation_prompts(held_out, num_objects):
                spec = sw.parse_caption(prompt)
                rng = random.Random(prompt)
                scene = _scene_for(spec, rng)
                records.append((prompt, sw.score_image(sw.render_scene(scene), prompt), held_out, num_objects))
    summary = sw.summarize_scores(records)
    for split in ("seen", "held_out"):
        for group in ("one_object", "two_objects"):
            assert summary[split][group]["caption"] == 1.0, (split, group)


def _scene_for(spec: sw.CaptionSpec, rng: random.Random) -> sw.Scene:
    """A ground-truth scene for a parsed prompt: resample scenes until one has the prompt's attributes."""
    while True:
        scene = sw.sample_scene(rng, allow_held_out=True)
        if len(scene.objects) != spec.num_objects or scene.position != spec.position or scene.relation != spec.relation:
            continue
        objects = tuple(
            replace(o, color=named.color, shape=named.shape) for o, named in zip(scene.objects, spec.objects)
        )
        if spec.num_objects == 1 and spec.size is not None and objects[0].size != spec.size:
            continue
        return replace(scene, objects=objects)
