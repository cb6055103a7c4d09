"""`train-var --lora_rank` with nothing else: settings chosen from the data, the base model's own images as replay
(cached, deterministic, resumable), and the progress grid next to the adapter."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import var_clip
from var_clip import VARCLIPPipeline, VARTransformer2DModel
from var_clip import shapes_world as sw
from var_clip.loaders import LORA_WEIGHT_NAME
from var_clip.training import train_var
from var_clip.training.engine import read_log
from var_clip.training.lora_defaults import (
    LEARNING_RATE,
    LEARNING_RATE_KEPT,
    MAX_STEPS,
    MIN_PRIOR_IMAGES,
    choose_lora_defaults,
    take_unset,
)
from var_clip.training.prior_preservation import (
    PriorSpec,
    build_prior_set,
    known_captions,
    prior_captions,
    record_known_captions,
)
from var_clip.training.progress_grid import GRID_NAME, pick_captions
from var_clip.training.teacher_targets import precompute_teacher_targets

from .conftest import (
    killed_after_checkpoint,
    make_tiny_text_encoder,
    make_tiny_tokenizer,
    make_tiny_transformer,
    make_tiny_vqvae,
    reset_accelerate_state,
)

WORLD_VOCABULARY = ["a", "an", "at", "blue", "bottom", "circle", "in", "left", "on", "orange", "red", "right", "square",
                    "the", "top", "triangle", "yellow"]


def unset_args(argv: list[str]) -> tuple[argparse.Namespace, frozenset[str]]:
    args = train_var.build_parser().parse_args(["--output_dir", "unused", "--lora_rank", "8", *argv])
    return args, take_unset(args)


# ----------------------------------------------------------------------------------------------------------------------
# Settings chosen from the data
# ----------------------------------------------------------------------------------------------------------------------


def test_captions_with_new_words_turn_on_the_text_encoder_prior_images_and_known_captions():
    captions = [f"a red circle in the top left corner {i}" for i in range(60)]  # digits are not words
    captions += ["a blue square in the bottom right corner"] * 60
    args, unset = unset_args([])
    chosen = choose_lora_defaults(args, unset, captions, WORLD_VOCABULARY)
    assert chosen.new_words == ["corner"]
    assert args.train_text_encoder and args.keep_known_captions
    assert args.prior_images == 120  # the user's 120 images are half of the data
    assert (args.learning_rate, args.label_smoothing) == (LEARNING_RATE_KEPT, 0.0)
    # each image seen about 32 times at half of each batch of 16: 32 * 120 / 8 = 480 steps
    assert args.max_train_steps == 480 and args.validation_steps == 120
    assert args.cache_dir == str(Path("unused") / "cache")
    lines = chosen.log_lines()
    assert any(line.startswith("--train_text_encoder") and "(chosen)" in line and "corner" in line for line in lines)
    table = chosen.markdown_table()
    assert "| `--learning_rate` | 0.002 |" in table and "| `--train_text_encoder` | on |" in table


def test_known_words_only_leave_the_text_encoder_and_count_as_replay():
    captions = ["a red circle on the left", "a blue square at the top", "a yellow triangle"] * 10
    args, unset = unset_args([])
    chosen = choose_lora_defaults(args, unset, captions, WORLD_VOCABULARY)
    assert chosen.new_words == [] and chosen.num_known == 30
    assert not args.train_text_encoder and args.prior_images == 0  # the data is its own replay
    assert args.keep_known_captions and args.learning_rate == LEARNING_RATE_KEPT


def test_a_few_images_get_a_varied_prior_and_steps_stay_within_bounds():
    args, unset = unset_args([])
    choose_lora_defaults(args, unset, ["a huge red circle"] * 8, WORLD_VOCABULARY)
    assert args.prior_images == MIN_PRIOR_IMAGES and 100 <= args.max_train_steps <= MAX_STEPS
    args, unset = unset_args([])
    choose_lora_defaults(args, unset, ["a huge red circle"] * 5000, WORLD_VOCABULARY)
    assert args.max_train_steps == MAX_STEPS


def test_without_a_recorded_vocabulary_nothing_is_guessed():
    args, unset = unset_args([])
    chosen = choose_lora_defaults(args, unset, ["a photo of my dog"] * 40, None)
    assert chosen.new_words is None
    assert not args.train_text_encoder and not args.keep_known_captions and args.prior_images == 0
    assert args.learning_rate == LEARNING_RATE


def test_given_flags_win_and_are_marked_given():
    args, unset = unset_args(["--learning_rate", "5e-4", "--no_train_text_encoder", "--prior_images", "0",
                              "--num_train_epochs", "3"])
    chosen = choose_lora_defaults(args, unset, ["a huge red circle"] * 40, WORLD_VOCABULARY)
    assert args.learning_rate == 5e-4 and args.train_text_encoder is False and args.prior_images == 0
    assert args.max_train_steps is None and args.num_train_epochs == 3
    given = {c.flag for c in chosen.choices if c.given}
    assert {"--learning_rate", "--train_text_encoder", "--prior_images", "--num_train_epochs"} <= given
    assert not args.keep_known_captions  # no prior images and no known caption: nothing to hold


def test_full_training_keeps_the_former_defaults_and_refuses_lora_only_flags():
    args = train_var.build_parser().parse_args(["--output_dir", "unused"])
    take_unset(args)
    assert (args.num_train_epochs, args.label_smoothing, args.validation_steps) == (1, 0.1, 0)
    assert args.train_text_encoder is False and args.learning_rate is None and args.cache_dir is None
    for flags in (["--prior_images", "10"], ["--no_keep_known_captions"]):
        args = train_var.build_parser().parse_args(["--output_dir", "unused", *flags])
        with pytest.raises(ValueError, match="also pass `--lora_rank`"):
            take_unset(args)


# ----------------------------------------------------------------------------------------------------------------------
# The prior set
# ----------------------------------------------------------------------------------------------------------------------


def test_known_captions_are_the_captions_without_their_new_words():
    captions = ["a huge orange circle on the left", "there is a red square in the top left corner.",
                "a huge orange circle on the left", "a blue square", "huge"]
    assert known_captions(captions, WORLD_VOCABULARY + ["there", "is"]) == [
        "an orange circle on the left", "there is a red square in the top left.", "a blue square"]


def test_the_prior_takes_turns_between_the_models_own_captions_and_the_users_without_new_words():
    recorded = ["a red circle to the left of a blue square", "a yellow triangle at the top", "a blue circle"]
    captions = ["a huge red circle", "a huge blue square on the left"]
    assert prior_captions(captions, WORLD_VOCABULARY, recorded) == [
        "a red circle to the left of a blue square", "a red circle", "a yellow triangle at the top",
        "a blue square on the left", "a blue circle"]
    assert prior_captions(captions, WORLD_VOCABULARY, None) == ["a red circle", "a blue square on the left"]


def test_a_trained_model_records_a_spread_of_its_captions():
    captions = [f"caption {i % 300}" for i in range(1000)]  # 300 distinct, each several times
    recorded = record_known_captions(captions, count=100)
    assert len(recorded) == 100 == len(set(recorded)) and recorded[:2] == ["caption 0", "caption 3"]
    assert record_known_captions(["b", "a", "b"], recorded=["c"]) == ["c", "b", "a"]  # a fine-tune adds its own
    # the embedded model records 128 of its training captions, in its own words, one- and two-object ones
    config = VARTransformer2DModel.load_config(var_clip.DEFAULT_MODEL, subfolder="transformer")
    words = set(config["vocabulary"])
    assert len(config["known_captions"]) == 128
    assert all(set(caption.split()) <= words for caption in config["known_captions"])
    assert sum(sw.parse_caption(c).num_objects == 2 for c in config["known_captions"]) > 30


@pytest.fixture
def base_pipe() -> VARCLIPPipeline:
    tokenizer = make_tiny_tokenizer()
    pipe = VARCLIPPipeline(tokenizer, make_tiny_text_encoder(tokenizer), make_tiny_transformer(), make_tiny_vqvae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))} | {
        "metadata.jsonl": (folder / "metadata.jsonl").read_bytes()}


def test_the_prior_set_is_deterministic_cached_and_resumes_after_an_interruption(base_pipe, tmp_path, monkeypatch):
    spec = PriorSpec(("a red circle", "a blue square on the left"), num_images=5, seed=3, base_model="tiny",
                     chunk_size=2)
    whole = folder_bytes(build_prior_set(base_pipe, spec, tmp_path / "whole", show_progress=False))
    assert len(whole) == 6
    records = [json.loads(line) for line in whole["metadata.jsonl"].decode().splitlines()]
    assert [r["text"] for r in records] == ["a red circle", "a blue square on the left"] * 2 + ["a red circle"]

    # killed after its first chunk: the rerun samples only the two chunks left, and ends with the same files
    calls, kill = [], [True]
    real_call = type(base_pipe).__call__

    def dies_after_one_chunk(self, prompts, **kwargs):
        calls.append(len(prompts))
        if kill[0] and len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_call(self, prompts, **kwargs)

    monkeypatch.setattr(type(base_pipe), "__call__", dies_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        build_prior_set(base_pipe, spec, tmp_path / "resumed", show_progress=False)
    assert not (tmp_path / "resumed" / "metadata.jsonl").exists()
    calls.clear()
    kill[0] = False
    assert folder_bytes(build_prior_set(base_pipe, spec, tmp_path / "resumed", show_progress=False)) == whole
    assert calls == [2, 1]

    # a finished set is reused without sampling
    calls.clear()
    build_prior_set(base_pipe, spec, tmp_path / "resumed", show_progress=False)
    assert calls == []


def test_pick_captions_shows_each_new_phrase_and_the_datas_variety():
    captions = ["a red circle in the top left corner"] * 3 + ["a red square in the top left corner",
                                                               "a blue circle in the bottom right corner",
                                                               "a red circle on the left"]
    picked = pick_captions(captions, WORLD_VOCABULARY, 3)
    assert picked[:2] == ["a red circle in the top left corner", "a blue circle in the bottom right corner"]
    assert len(picked) == 3 and "a red circle on the left" not in picked  # new-word captions first


def test_the_base_models_predictions_are_computed_once_and_looked_up_by_row_and_condition():
    rows = [{"index": i, "value": torch.tensor([float(i)])} for i in range(5)]

    def predict(batch, drop_B):  # (B, L=2, V=3) logits that tell the row and whether it was drawn without condition
        logits_BLV = batch["value"][:, :, None].expand(-1, 2, 3).clone()
        logits_BLV[:, :, 0] += 4.0 * drop_B[:, None].float() - torch.arange(2.0)
        return logits_BLV

    targets = precompute_teacher_targets(rows, [True, False, True, False, False], predict, 2, 3, batch_size=2,
                                         show_progress=False)
    got = targets.log_probs(torch.tensor([2, 1, 0, 4]), torch.tensor([False, True, False, True]))
    want = torch.cat([predict({"value": torch.tensor([[float(i)]])}, torch.tensor([d])) for i, d in
                      ((2, False), (1, True), (0, False), (4, True))]).log_softmax(-1)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)  # kept in float16
    with pytest.raises(KeyError):  # a row not held has no conditional prediction
        targets.log_probs(torch.tensor([1]), torch.tensor([False]))


# ----------------------------------------------------------------------------------------------------------------------
# The one command, on a tiny model
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny base model that records the world's words except "huge", and 16 images of huge objects."""
    root = tmp_path_factory.mktemp("lora-defaults")
    huge = sw.WorldExtension(sizes={"huge": (34, 38)})
    sw.generate_dataset(root / "huge", 16, seed=1, extension=huge, show_progress=False)
    tokenizer = make_tiny_tokenizer()
    pipe = VARCLIPPipeline(tokenizer, make_tiny_text_encoder(tokenizer), make_tiny_transformer(), make_tiny_vqvae())
    rng = np.random.default_rng(0)
    world = [sw.sample_scene(rng).caption for _ in range(300)]
    pipe.transformer.register_to_config(vocabulary=sorted({w for c in world for w in c.split()}))
    pipe.save_pretrained(root / "base", safe_serialization=True)
    return root


def plain_command(workdir: Path, output: str, *extra: str) -> list[str]:
    """The documented command, with a short run (the chosen step count is tested above) and a cheap prior."""
    return ["--pretrained_pipeline", str(workdir / "base"), "--train_data_dir", str(workdir / "huge"),
            "--output_dir", str(workdir / output), "--lora_rank", "4", "--max_train_steps", "4",
            "--train_batch_size", "4", "--prior_images", "8", "--checkpointing_steps", "2", "--no_progress_bar",
            *extra]


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_plain_command_chooses_mixes_in_prior_images_and_writes_the_grid_and_card(workdir, caplog):
    with caplog.at_level(logging.WARNING):
        assert train_var.main(plain_command(workdir, "run")) == 0
    # the new word is what the run teaches: sampling the grid does not warn about it at every validation
    assert not [r for r in caplog.records if "never saw" in r.getMessage()]
    out = workdir / "run"
    weights = load_file(out / LORA_WEIGHT_NAME)
    assert {k.split(".")[0] for k in weights} == {"transformer", "text_encoder"}  # "huge" is new: text encoder on
    assert any("kl_kept" in record for record in read_log(out))  # known captions held to the base model
    (prior,) = (out / "cache").glob("prior-*")  # the run's cache: prior images and every image's tokens
    assert len(list((out / "cache").glob("var-tokens-*.safetensors"))) == 1
    assert len(list(prior.glob("*.png"))) == 8 and (prior / "metadata.jsonl").is_file()
    texts = [json.loads(line)["text"] for line in (prior / "metadata.jsonl").read_text().splitlines()]
    assert texts and not any("huge" in t for t in texts)

    # the grid: base, steps 1..4 (validation every step: 4 steps / 4 columns), one row per caption
    with Image.open(out / GRID_NAME) as grid:
        assert grid.width > 5 * 128
    steps = sorted(p.name for p in (out / "progress").iterdir())
    assert steps == [f"step-{s:07d}" for s in range(5)]
    card = (out / "README.md").read_text()
    assert "![samples during training](progress.png)" in card
    assert "| `--train_text_encoder` | on |" in card and "`huge`" in card and "rank | alpha" in card
    assert "| `--max_train_steps` | 4 | given |" in card
    assert "| `--cache_dir` | cache/ (in the adapter's folder) |" in card
    # a card may be published: it names local folders by their own name, never by the machine's paths
    assert str(workdir) not in card and "base_model" not in card.split("---")[1]


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_run_with_prior_images_resumes_bit_identically(workdir, monkeypatch):
    assert train_var.main(plain_command(workdir, "uninterrupted")) == 0
    reset_accelerate_state()
    with killed_after_checkpoint(monkeypatch, step=2):
        train_var.main(plain_command(workdir, "resumed"))
    reset_accelerate_state()
    assert train_var.main(plain_command(workdir, "resumed", "--resume_from_checkpoint", "latest")) == 0
    logs = [[r["loss"] for r in read_log(workdir / name)] for name in ("uninterrupted", "resumed")]
    assert logs[0] == logs[1]
    final, expected = (load_file(workdir / name / LORA_WEIGHT_NAME) for name in ("resumed", "uninterrupted"))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_the_progress_grid_goes_to_tensorboard_too(workdir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = plain_command(workdir, "tensorboard", "--report_to", "tensorboard")
    argv[argv.index("--max_train_steps") + 1] = "2"
    assert train_var.main(argv) == 0
    images = []
    for events in (workdir / "tensorboard" / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        if "progress" in accumulator.Tags()["images"]:
            images += accumulator.Images("progress")
    assert [image.step for image in images] == [1, 2]  # every validation (the base column is drawn before training)
    with Image.open(workdir / "tensorboard" / GRID_NAME) as grid:
        assert (images[-1].width, images[-1].height) == grid.size


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_full_training_records_the_known_captions_next_to_the_vocabulary(workdir):
    argv = ["--pretrained_pipeline", str(workdir / "base"), "--train_data_dir", str(workdir / "huge"),
            "--output_dir", str(workdir / "full"), "--max_train_steps", "1", "--train_batch_size", "4",
            "--no_progress_bar"]
    assert train_var.main(argv) == 0
    config = VARTransformer2DModel.load_config(workdir / "full", subfolder="transformer")
    captions = [json.loads(line)["text"] for line in (workdir / "huge" / "metadata.jsonl").read_text().splitlines()]
    assert config["known_captions"] == record_known_captions(captions)
    assert "huge" in config["vocabulary"]
