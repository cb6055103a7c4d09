"""The word-position analysis: caption variants, similarities, the Pillow plot and the generated grid."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from var_clip.analysis import (
    CaptionVariant,
    analyze_word_position,
    caption_list_variants,
    insert_word_variants,
    move_word_variants,
    phrase_order_variants,
)
from var_clip.analysis.word_position import GRID_FILE, JSON_FILE, PLOT_FILE, main, word_position_of
from var_clip.utils.files import MARKER_NAME

from .conftest import make_tiny_text_encoder, make_tiny_tokenizer


def test_insert_word_variants():
    variants = insert_word_variants("a  photo of a car", "red")
    assert [v.caption for v in variants] == [
        "red a photo of a car", "a red photo of a car", "a photo red of a car", "a photo of red a car",
        "a photo of a red car", "a photo of a car red",
    ]
    assert [v.position for v in variants] == [0, 1, 2, 3, 4, 5]
    assert all(word_position_of(v.caption, "red") == v.position for v in variants)


def test_move_word_variants_keeps_the_caption_among_them():
    variants = move_word_variants("A photo of a Red car, at night", "red")
    assert len(variants) == 8  # 7 other words: 8 slots
    assert "A photo of a Red car, at night" in [v.caption for v in variants]
    assert variants[0] == CaptionVariant("Red A photo of a car, at night", 0)
    # a multi-word key moves as one block
    assert [v.caption for v in move_word_variants("a red car at night", "at night")] == [
        "at night a red car", "a at night red car", "a red at night car", "a red car at night"]


def test_phrase_order_and_caption_list_variants():
    variants = phrase_order_variants(["a red car", "on a hill", "at night"], "at night")
    assert [(v.caption, v.position) for v in variants] == [
        ("at night a red car on a hill", 0), ("a red car at night on a hill", 3), ("a red car on a hill at night", 6)]
    listed = caption_list_variants(["red circle", "a red circle", "a circle"], "red")
    assert [v.position for v in listed] == [0, 1, None]
    assert [v.position for v in caption_list_variants(["a", "b"])] == [None, None]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: move_word_variants("a blue car", "red"), "key_word"),
        (lambda: move_word_variants("red", "red"), "nothing but the key word"),
        (lambda: insert_word_variants("  ", "red"), "filler"),
        (lambda: insert_word_variants("a car", ""), "key_word"),
        (lambda: phrase_order_variants(["a car", "at night"], "red"), "phrases"),
        (lambda: caption_list_variants([]), "captions"),
    ],
)
def test_bad_variant_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_analysis_with_a_known_embedder():
    # embeddings chosen by hand: the similarities are dot products of unit vectors
    table = {"x a": [1.0, 0.0], "a x": [0.6, 0.8], "x": [0.0, 1.0], "a": [1.0, 0.0]}
    def embed(texts: list[str]) -> torch.Tensor:
        return torch.tensor([table[t] for t in texts])

    report = analyze_word_position(insert_word_variants("a", "x"), embed, key_word="x", filler="a")
    assert report["reference"] == "x a" and report["embedding_dim"] == 2
    rows = report["variants"]
    assert [r["similarity_to_reference"] for r in rows] == pytest.approx([1.0, 0.6])
    assert [r["similarity_to_key_word"] for r in rows] == pytest.approx([0.0, 0.8])
    assert [r["similarity_to_filler"] for r in rows] == pytest.approx([1.0, 0.6])


def _load_report(output_dir) -> dict:
    return json.loads((output_dir / JSON_FILE).read_text(encoding="utf-8"))


def test_cli_embedding_report_and_plot(tmp_path, tiny_pipe, capsys):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "pipe"), "--caption", "a photo of a red car on a hill", "--key_word", "red",
            "--output_dir", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert "a photo of a red car on a hill" in capsys.readouterr().out

    report = _load_report(out)
    rows = report["variants"]
    assert len(rows) == 9 and [r["position"] for r in rows] == list(range(9))
    assert report["reference_index"] == 0
    assert report["reference"] == rows[0]["caption"] == "red a photo of a car on a hill"
    assert report["filler"] == "a photo of a car on a hill"
    assert report["files"] == {"plot": PLOT_FILE, "grid": None}
    for row in rows:
        for name in ("similarity_to_key_word", "similarity_to_reference", "similarity_to_filler"):
            assert -1.0 <= row[name] <= 1.0
    assert rows[0]["similarity_to_reference"] == pytest.approx(1.0, abs=1e-6)
    assert all(r["similarity_to_reference"] < 1.0 - 1e-6 for r in rows[1:])  # the tiny CLIP is order-sensitive

    # the same numbers as the pipeline's own conditioning
    embeds = tiny_pipe.encode_prompt([r["caption"] for r in rows] + ["red"], do_classifier_free_guidance=False)[0]
    assert [r["similarity_to_key_word"] for r in rows] == pytest.approx((embeds[:-1] @ embeds[-1]).tolist(), abs=1e-5)

    with Image.open(out / PLOT_FILE) as plot:
        plot.load()
        assert plot.format == "PNG" and plot.width >= 600 and plot.height >= 400
        assert len(plot.getcolors(1 << 16)) > 10  # lines, markers and text, not a blank canvas
    assert not (out / GRID_FILE).exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MARKER_NAME]  # no staging folder left


def test_cli_generate_grid_from_a_captions_file(tmp_path, tiny_pipe):
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\nred a circle\n\na red circle\na circle\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "pipe"), "--captions", str(captions), "--key_word", "red", "--output_dir",
            str(out), "--generate", "--seed", "3", "--cols", "2", "--device", "cpu"]
    assert main(argv) == 0

    report = _load_report(out)
    rows = report["variants"]
    assert [(r["caption"], r["position"]) for r in rows] == [
        ("a red circle", 1), ("red a circle", 0), ("a red circle", 1), ("a circle", None)]
    assert report["reference_index"] == 1 and rows[1]["similarity_to_reference"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["similarity_to_reference"] == pytest.approx(rows[2]["similarity_to_reference"])
    assert rows[0]["similarity_to_filler"] is None
    generation = report["generation"]
    assert report["files"]["grid"] == GRID_FILE and generation["seed"] == 3
    side = generation["grid_cell_size"]
    assert generation["image_size"] == [16, 16] and side == 128  # tiny 16 px images shown enlarged

    with Image.open(out / GRID_FILE) as grid:
        grid = grid.convert("RGB")
    padding = 4
    assert grid.width == 2 * side + 3 * padding
    assert grid.height > 2 * side + 3 * padding  # two rows of images plus their captions

    def cell(index: int) -> Image.Image:
        row, col = divmod(index, 2)
        y0 = padding + row * (grid.height - padding) // 2
        x0 = padding + col * (side + padding)
        return grid.crop((x0, y0, x0 + side, y0 + side))

    # the same caption with the same seed draws the same image
    assert cell(0).tobytes() == cell(2).tobytes()
    # the image shown is the pipeline's output for that caption and seed, enlarged
    expected = tiny_pipe("a red circle", generator=torch.Generator().manual_seed(3)).images[0]
    assert cell(0).tobytes() == expected.resize((side, side), Image.Resampling.NEAREST).tobytes()

    # a later run without --generate leaves no stale grid behind
    assert main(argv[:-7] + ["--device", "cpu"]) == 0
    assert not (out / GRID_FILE).exists() and _load_report(out)["files"]["grid"] is None


def test_cli_with_a_clip_text_encoder_and_phrases(tmp_path):
    tokenizer = make_tiny_tokenizer()
    clip_dir = tmp_path / "clip"
    tokenizer.save_pretrained(clip_dir)
    make_tiny_text_encoder(tokenizer, seed=1).save_pretrained(clip_dir)
    out = tmp_path / "out"
    argv = ["--text_encoder", str(clip_dir), "--phrases", "a red car", "on a hill", "at night", "--key_word",
            "a red car", "--output_dir", str(out), "--device", "cpu"]
    assert main(argv) == 0
    report = _load_report(out)
    assert [r["position"] for r in report["variants"]] == [0, 3, 5]
    assert report["filler"] == "on a hill at night" and report["text_encoder"] == str(clip_dir)
    assert report["variants"][0]["similarity_to_reference"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--caption", "a blue car", "--key_word", "red"], "does not occur"),
        (["--filler", "a car"], "key_word"),
        (["--filler", "a car", "--key_word", "red", "--generate", "--batch_size", "0"], "batch_size"),
        (["--captions", "no-such-file.txt"], "captions"),
    ],
)
def test_cli_errors_name_the_argument(tmp_path, capsys, extra, message):
    assert main(["--output_dir", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "not-a-pipeline").mkdir()
    argv = ["--model", str(tmp_path / "not-a-pipeline"), "--filler", "a car", "--key_word", "red", "--output_dir",
            str(tmp_path / "out")]
    assert main(argv) == 2
    assert "model_index.json" in capsys.readouterr().err
