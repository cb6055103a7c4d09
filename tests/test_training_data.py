"""Training building blocks: data loading and order, transforms, tokenizer, checkpoint files, argument checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from var_clip.shapes_world import generate_dataset
from var_clip.training.checkpointing import (
    capture_rng_state,
    is_complete_checkpoint,
    list_checkpoints,
    publish_folder,
    resolve_resume_checkpoint,
    restore_rng_state,
    rotate_checkpoints,
)
from var_clip.training.data import (
    DataPosition,
    ImageCaptionDataset,
    ImageTransform,
    ResumableSampler,
    load_image_caption_dataset,
    read_caption_file,
)
from var_clip.training.tokenizer import build_byte_level_clip_tokenizer


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data") / "shapes", 6, seed=3, show_progress=False)


# -- loading ---------------------------------------------------------------------------------------------------------


def test_imagefolder_dataset_has_images_and_captions(shapes, tmp_path):
    dataset = load_image_caption_dataset(shapes, cache_dir=tmp_path / "cache")
    assert len(dataset) == 6 and {"image", "text"} <= set(dataset.column_names)
    metadata = [json.loads(line) for line in (shapes / "metadata.jsonl").read_text().splitlines()]
    assert dataset[0]["text"] == metadata[0]["text"]
    assert len(load_image_caption_dataset(shapes, max_samples=2, cache_dir=tmp_path / "cache")) == 2
    with pytest.raises(ValueError, match="class labels"):
        load_image_caption_dataset(shapes, condition="class", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="exactly one of"):
        load_image_caption_dataset(shapes, caption_file=shapes / "metadata.jsonl")


def test_a_folder_without_split_names_loads_as_datasets_would_infer_it_without_the_inference(shapes, tmp_path):
    """The shortcut past datasets' split inference (a walk of the folder per pattern) must load the same rows, and
    must leave the inference to datasets wherever a name could mean a split."""
    import datasets

    from var_clip.training import data

    flat = sorted(shapes.rglob("*"))
    assert data._all_files_when_no_split_names(shapes, flat) == {"train": "**"}
    inferred = datasets.load_dataset("imagefolder", data_dir=str(shapes), split="train", cache_dir=str(tmp_path / "a"))
    ours = load_image_caption_dataset(shapes, cache_dir=tmp_path / "b")
    assert ours["text"] == inferred["text"]
    assert [np.asarray(i).tobytes() for i in ours["image"]] == [np.asarray(i).tobytes() for i in inferred["image"]]

    for name in ("train/a.png", "b_test.png", "valid-3/c.png", "Eval/d.png", "data/train-00000-of-00001.parquet",
                 "x.eval"):
        assert data._all_files_when_no_split_names(shapes, [*flat, shapes / name]) is None, name
    assert data._all_files_when_no_split_names(tmp_path, [tmp_path / "trainee.png", tmp_path / "latest.png"]) == {
        "train": "**"}


def write_var_clip_layout(root: Path, shapes: Path) -> Path:
    """VAR-CLIP's layout: imagenet/val/image_captions.txt with './val/<synset>/<file>: caption' lines."""
    lines = []
    for index, path in enumerate(sorted(shapes.glob("*.png"))):
        synset = "n0001" if index % 2 == 0 else "n0002"
        target = root / "val" / synset / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        lines.append(f"./val/{synset}/{path.name}: caption {index}: with a colon\n")
    (root / "val" / "image_captions.txt").write_text("\n".join(lines) + "\n")
    return root / "val" / "image_captions.txt"


def test_var_clip_caption_file_is_read_relative_to_the_dataset_root(shapes, tmp_path):
    caption_file = write_var_clip_layout(tmp_path / "imagenet", shapes)
    pairs = read_caption_file(caption_file)
    assert len(pairs) == 6
    assert Path(pairs[0][0]).is_file() and pairs[0][1] == "caption 0: with a colon"
    dataset = load_image_caption_dataset(caption_file=caption_file, condition="class")
    assert dataset.features["label"].names == ["n0001", "n0002"]
    assert dataset["label"][:2] == [0, 1] and dataset[1]["text"] == "caption 1: with a colon"
    assert isinstance(dataset[0]["image"], Image.Image)

    bad = tmp_path / "bad.txt"
    bad.write_text("no separator here\n")
    with pytest.raises(ValueError, match="line 1"):
        read_caption_file(bad)
    with pytest.raises(ValueError, match="image_root"):
        read_caption_file(caption_file, image_root=tmp_path / "elsewhere")


# -- transforms --------------------------------------------------------------------------------------------------------


def test_transform_resizes_the_shorter_side_and_crops_to_minus_one_one():
    image = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    out = ImageTransform(16)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert -1.0 <= out.min() and out.max() <= 1.0
    white = ImageTransform(8)(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert torch.equal(white, torch.ones(3, 8, 8))

    random_crop = ImageTransform(16, crop="random", resize_ratio=1.5, random_flip=True)
    a = random_crop(image, np.random.default_rng([0, 0, 1]))
    b = random_crop(image, np.random.default_rng([0, 0, 1]))
    crops = {tuple(random_crop(image, np.random.default_rng([0, 0, i])).flatten()[:8].tolist()) for i in range(8)}
    assert torch.equal(a, b) and len(crops) > 1  # deterministic per generator, different across samples
    with pytest.raises(ValueError, match="rng"):
        random_crop(image)
    with pytest.raises(ValueError, match="crop"):
        ImageTransform(16, crop="left")
    with pytest.raises(ValueError, match="resize_ratio"):
        ImageTransform(16, resize_ratio=0.5)


def test_dataset_items_augment_by_seed_epoch_and_index(shapes, tmp_path):
    dataset = load_image_caption_dataset(shapes, cache_dir=tmp_path / "cache")
    items = ImageCaptionDataset(dataset, ImageTransform(32, crop="random", resize_ratio=1.5), seed=7)
    assert torch.equal(items[(2, 0)]["pixel_values"], items[(2, 0)]["pixel_values"])
    assert not torch.equal(items[(2, 0)]["pixel_values"], items[(2, 1)]["pixel_values"])
    assert items[(2, 1)]["text"] == dataset[2]["text"] and items[(2, 1)]["index"] == 2


# -- order and position ------------------------------------------------------------------------------------------------


def test_sampler_order_is_seeded_resumable_and_sharded():
    sampler = ResumableSampler(10, batch_size=3, seed=5)
    assert sampler.batches_per_epoch == 3  # the incomplete last batch is dropped
    epoch0 = list(sampler)
    assert len(epoch0) == 9 and len({i for i, _ in epoch0}) == 9 and all(e == 0 for _, e in epoch0)
    assert [i for i, _ in epoch0] == [i for i, _ in ResumableSampler(10, 3, seed=5)]
    sampler.set_position(DataPosition(epoch=1, batch_index=0))
    epoch1 = [i for i, _ in sampler]
    assert epoch1 != [i for i, _ in epoch0]  # a new permutation every epoch
    sampler.set_position(DataPosition(epoch=1, batch_index=2))
    assert [i for i, _ in sampler] == epoch1[6:]  # resuming mid-epoch continues the same order

    ranks = [ResumableSampler(10, batch_size=2, seed=5, num_replicas=2, rank=r) for r in range(2)]
    single = [i for i, _ in ResumableSampler(10, batch_size=4, seed=5)]
    shards = [[i for i, _ in s] for s in ranks]
    # each global batch of 4 is split into two halves of 2, one per process
    assert [x for b in range(2) for r in range(2) for x in shards[r][2 * b:2 * b + 2]] == single
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableSampler(3, batch_size=4)

    assert DataPosition(0, 1).advance(3) == DataPosition(0, 2)
    assert DataPosition(0, 2).advance(3) == DataPosition(1, 0)


# -- tokenizer ---------------------------------------------------------------------------------------------------------


def test_byte_level_tokenizer_accepts_any_text_and_learns_caption_words(tmp_path):
    from transformers import CLIPTokenizer

    plain = build_byte_level_clip_tokenizer()
    assert len(plain) == 514 and plain.tokenize("red") == ["r", "e", "d</w>"]
    corpus = ["a red circle on the left", "a blue square at the top", "a red square below a blue circle"] * 4
    tokenizer = build_byte_level_clip_tokenizer(corpus, num_merges=300, model_max_length=32)
    assert tokenizer.tokenize("a red circle") == ["a</w>", "red</w>", "circle</w>"]
    ids = tokenizer("Ünïcode ✓ and émoji 🙂").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded("a red circle").input_ids == tokenizer("a red circle").input_ids and loaded.model_max_length == 32
    # merges are deterministic and a prefix of a longer merge list
    assert build_byte_level_clip_tokenizer(corpus, num_merges=300).get_vocab() == \
        build_byte_level_clip_tokenizer(corpus, num_merges=300).get_vocab()
    small = build_byte_level_clip_tokenizer(corpus, num_merges=3)
    assert len(small) == 514 + 3
    with pytest.raises(ValueError, match="num_merges"):
        build_byte_level_clip_tokenizer(corpus, num_merges=-1)
    with pytest.raises(ValueError, match="corpus"):
        build_byte_level_clip_tokenizer("a single string")


# -- checkpoint files --------------------------------------------------------------------------------------------------


def test_rng_state_round_trip_covers_python_numpy_torch_and_generators():
    generator = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(4)
    tensors, scalars = capture_rng_state({"g": generator})
    json.dumps(scalars)  # JSON-serialisable
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9), generator.manual_seed(9)
    restore_rng_state(tensors, scalars, {"g": generator})
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    assert again == expected
    with pytest.raises(ValueError, match="other"):
        restore_rng_state(tensors, scalars, {"other": torch.Generator()})


def make_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "training_state.json").write_text(json.dumps({"complete": True, "step": step}))
    return path


def test_only_complete_checkpoints_are_listed_resumed_and_kept(tmp_path):
    for step in (2, 10, 4):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 12, complete=False)  # crashed before its marker
    (tmp_path / "checkpoint-14.tmp").mkdir()  # crashed before its rename
    (tmp_path / "checkpoint-16").mkdir()
    (tmp_path / "checkpoint-16" / "training_state.json").write_text('{"complete": tr')  # torn write
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    assert resolve_resume_checkpoint(tmp_path, "latest").name == "checkpoint-10"
    assert resolve_resume_checkpoint(tmp_path, "checkpoint-4").name == "checkpoint-4"
    assert resolve_resume_checkpoint(tmp_path / "empty", "latest") is None
    assert resolve_resume_checkpoint(tmp_path, None) is None
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        resolve_resume_checkpoint(tmp_path, "checkpoint-12")
    assert not is_complete_checkpoint(tmp_path / "checkpoint-16")

    rotate_checkpoints(tmp_path, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-10"]
    assert not (tmp_path / "checkpoint-14.tmp").exists()


def test_publish_folder_replaces_the_model_but_keeps_checkpoints_and_logs(tmp_path):
    out = tmp_path / "out"
    make_checkpoint(out, 5)
    (out / "train_log.jsonl").write_text("{}\n")
    (out / "transformer").mkdir()
    (out / "transformer" / "old.safetensors").write_text("old")
    (out / "model_index.json").write_text("old")
    staging = tmp_path / "staging"
    (staging / "transformer").mkdir(parents=True)
    (staging / "transformer" / "new.safetensors").write_text("new")
    (staging / "model_index.json").write_text("new")
    publish_folder(staging, out)
    assert (out / "model_index.json").read_text() == "new"
    assert sorted(p.name for p in (out / "transformer").iterdir()) == ["new.safetensors"]
    assert (out / "checkpoint-5").is_dir() and (out / "train_log.jsonl").is_file() and not staging.exists()


# -- argument checks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, extra, match",
    [
        ("train_var", ["--train_batch_size", "0"], "--train_batch_size"),
        ("train_var", ["--mixed_precision", "fp16"], "fp16"),
        ("train_var", ["--caption_file", "x.txt"], "exactly one of"),
        ("train_var", ["--label_smoothing", "1.5"], "--label_smoothing"),
        ("train_vqvae", ["--l1_weight", "-1"], "--l1_weight"),
        ("train_clip", ["--patch_size", "5"], "--patch_size"),
        ("train_clip", ["--checkpoints_total_limit", "0"], "--checkpoints_total_limit"),
    ],
)
def test_bad_flags_raise_value_errors_naming_them(module, extra, match, tmp_path):
    if match == "fp16" and torch.cuda.is_available():
        pytest.skip("fp16 is valid with a GPU")
    import importlib

    entry = importlib.import_module(f"var_clip.training.{module}")
    argv = ["--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), *extra]
    args = entry.build_parser().parse_args(argv)
    with pytest.raises(ValueError, match=match):
        entry.train(args)


def test_entry_points_have_parsers_with_the_documented_flags():
    from var_clip.training import train_clip, train_var, train_vqvae

    for entry in (train_vqvae, train_clip, train_var):
        parser = entry.build_parser()
        flags = {opt for action in parser._actions for opt in action.option_strings}
        assert {"--output_dir", "--mixed_precision", "--gradient_accumulation_steps", "--checkpointing_steps",
                "--checkpoints_total_limit", "--resume_from_checkpoint", "--use_ema", "--report_to",
                "--torch_compile", "--validation_steps", "--train_data_dir", "--caption_file"} <= flags
    assert {"--cache_dir", "--validation_prompts", "--label_smoothing", "--condition", "--pretrained_pipeline"} <= \
        {opt for action in train_var.build_parser()._actions for opt in action.option_strings}
