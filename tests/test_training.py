"""End to end: VQ-VAE → CLIP → VAR-CLIP training on a small shapes-world dataset, each run loading as a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from var_clip import MultiScaleVQModel, VARCLIPPipeline, VARPipeline
from var_clip.shapes_world import generate_dataset
from var_clip.training import train_clip, train_var, train_vqvae
from var_clip.training.engine import read_log

from .conftest import reset_accelerate_state

NUM_IMAGES = 16
# "It learns": the tiny runs' loss (mean of the last 3 steps against the first 3) falls below this share of where it
# started; a trainer that does not update the weights stays near 1.0
VQVAE_LOSS_DROP = 0.8  # 16 steps of reconstruction
VAR_LOSS_DROP = 0.9  # 16 steps of next-scale cross-entropy, which starts near log(V) and falls more slowly
TINY_VQVAE = ["--ch", "32", "--ch_mult", "1", "1", "--num_res_blocks", "1", "--no_attention", "--vocab_size", "32",
              "--latent_channels", "8", "--patch_nums", "1", "2", "4"]  # 8×8 images, L = 21 tokens
TINY_CLIP = ["--resolution", "8", "--patch_size", "4", "--text_width", "32", "--text_layers", "1", "--text_heads", "2",
             "--vision_width", "32", "--vision_layers", "1", "--vision_heads", "2", "--projection_dim", "16",
             "--max_text_length", "24", "--tokenizer_merges", "200"]
TINY_VAR = ["--depth", "2", "--embed_dim", "32", "--num_heads", "2"]


# every trainer builds an Accelerator; each test starts from a fresh accelerate state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training")
    generate_dataset(root / "shapes", NUM_IMAGES, seed=0, show_progress=False)
    return root


def common(workdir: Path, output: str, steps: int, batch: int, lr: float) -> list[str]:
    return ["--train_data_dir", str(workdir / "shapes"), "--output_dir", str(workdir / output),
            "--dataset_cache_dir", str(workdir / "hf-cache"), "--max_train_steps", str(steps),
            "--train_batch_size", str(batch), "--learning_rate", str(lr), "--lr_warmup_steps", "0",
            "--lr_scheduler", "constant", "--checkpointing_steps", "0", "--no_progress_bar"]


def first_last(losses: list[float], k: int = 3) -> tuple[float, float]:
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


@pytest.fixture(scope="module")
def vqvae_dir(workdir) -> Path:
    assert train_vqvae.main(common(workdir, "vqvae", 16, 8, 3e-3) + TINY_VQVAE + ["--num_validation_images", "4"]) == 0
    return workdir / "vqvae"


@pytest.fixture(scope="module")
def clip_dir(workdir) -> Path:
    assert train_clip.main(common(workdir, "clip", 16, 8, 2e-3) + TINY_CLIP + ["--hard_negatives", "2",
                                                                               "--num_validation_samples", "8"]) == 0
    return workdir / "clip"


@pytest.fixture(scope="module")
def var_dir(workdir, vqvae_dir, clip_dir) -> Path:
    args = common(workdir, "var", 16, 8, 3e-3) + TINY_VAR + [
        "--vqvae", str(vqvae_dir), "--text_encoder", str(clip_dir / "text_encoder"),
        "--validation_prompts", "a red circle", "a blue square on the left"]
    assert train_var.main(args) == 0
    return workdir / "var"


def test_vqvae_training_learns_and_saves_a_loadable_model(vqvae_dir):
    losses = [r["loss"] for r in read_log(vqvae_dir)]
    assert len(losses) == 16
    first, last = first_last(losses)
    assert last < VQVAE_LOSS_DROP * first, losses
    record = read_log(vqvae_dir)[-1]
    assert 0 < record["codebook_usage"] <= 100 and 0 < record["codebook_usage_ema"] <= 100
    assert all(0 < r["step_seconds"] < 60 for r in read_log(vqvae_dir))  # each step's wall-clock time
    model = MultiScaleVQModel.from_pretrained(vqvae_dir)
    assert model.sample_size == 8 and model.config.vocab_size == 32
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    assert model.decode_indices(model.encode_indices(images)).shape == (2, 3, 8, 8)
    grid = Image.open(vqvae_dir / "samples" / "reconstructions-step-0000016.png")
    assert grid.width > 8 * 4
    # final folder: no staging leftovers, no checkpoints (disabled)
    assert not (vqvae_dir / ".final.tmp").exists() and not list(vqvae_dir.glob("checkpoint-*"))


def test_vqvae_decoder_only_keeps_every_token_and_latent(workdir, vqvae_dir):
    """--decoder_only: the fine-tuned VQ-VAE encodes every image to the same tokens and every token map to the same
    latent (a transformer trained on it stays valid); only the decoder changed."""
    args = common(workdir, "vqvae-decoder", 4, 8, 3e-3) + ["--init_from", str(vqvae_dir), "--decoder_only",
                                                           "--num_validation_images", "0"]
    assert train_vqvae.main(args) == 0
    before = MultiScaleVQModel.from_pretrained(vqvae_dir).eval()
    after = MultiScaleVQModel.from_pretrained(workdir / "vqvae-decoder").eval()
    weights = dict(before.named_parameters())
    changed = {name for name, value in after.named_parameters() if not torch.equal(value, weights[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed), sorted(changed)
    images = torch.rand(4, 3, before.sample_size, before.sample_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = before.encode_indices(images)
    assert all(torch.equal(a, b) for a, b in zip(tokens, after.encode_indices(images)))
    assert torch.equal(before.quantize.indices_to_latent(tokens), after.quantize.indices_to_latent(tokens))
    with pytest.raises(ValueError, match="--init_from"):
        train_vqvae.train(train_vqvae.build_parser().parse_args(common(workdir, "x", 1, 2, 1e-3) + ["--decoder_only"]))


def test_clip_training_learns_and_writes_text_encoder_tokenizer_and_clip(clip_dir):
    from transformers import CLIPModel, CLIPProcessor, CLIPTextModelWithProjection, CLIPTokenizer

    losses = [r["loss"] for r in read_log(clip_dir)]  # trained with 2 hard negative captions per image
    first, last = first_last(losses)
    assert last < first, losses
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir / "tokenizer")
    # merges learned from the captions: common caption words are single tokens
    assert tokenizer.tokenize("a red circle") == ["a</w>", "red</w>", "circle</w>"]
    encoder = CLIPTextModelWithProjection.from_pretrained(clip_dir / "text_encoder")
    clip = CLIPModel.from_pretrained(clip_dir / "clip")
    ids = tokenizer(["a red circle"], padding="max_length", max_length=24, return_tensors="pt").input_ids
    with torch.no_grad():
        features = clip.get_text_features(ids)
        # the exported text tower is exactly the CLIP model's (transformers 5 wraps the features in an output)
        torch.testing.assert_close(encoder(ids).text_embeds, getattr(features, "pooler_output", features))
    processor = CLIPProcessor.from_pretrained(clip_dir / "clip")
    inputs = processor(text=["a red circle"], images=[Image.new("RGB", (8, 8), (220, 40, 40))], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 8, 8)


def test_var_training_learns_and_saves_a_pipeline_that_generates(var_dir):
    losses = [r["loss"] for r in read_log(var_dir)]
    first, last = first_last(losses)
    assert last < VAR_LOSS_DROP * first, losses
    pipe = VARCLIPPipeline.from_pretrained(var_dir)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (8, 8)
    # the conditioning path is the trained CLIP's text tower and tokenizer
    assert pipe.transformer.config.text_embed_dim == 16 and pipe.transformer.config.depth == 2
    # the words of the training captions are recorded, for the out-of-vocabulary warning
    assert {"a", "red", "circle"} <= set(pipe.transformer.config.vocabulary) and "fox" not in pipe.transformer.config.vocabulary
    assert (var_dir / "samples" / "samples-step-0000016.png").is_file()
    assert json.loads((var_dir / "model_index.json").read_text())["_class_name"] == "VARCLIPPipeline"


def short_var_run(workdir: Path, vqvae_dir: Path, clip_dir: Path, name: str, steps: int, *flags: str) -> list[float]:
    """Train the tiny VAR-CLIP for ``steps`` steps with extra ``flags``; its losses, checked finite."""
    args = common(workdir, name, steps, 4, 1e-3) + TINY_VAR + [
        "--vqvae", str(vqvae_dir), "--text_encoder", str(clip_dir / "text_encoder"), *flags]
    assert train_var.main(args) == 0
    losses = [r["loss"] for r in read_log(workdir / name)]
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses)))
    return losses


def test_plot_log_draws_the_trainers_own_logs(vqvae_dir, var_dir, tmp_path):
    """docs/training.md's `var-clip plot-log` lines, on logs the trainers wrote."""
    pytest.importorskip("matplotlib")
    from var_clip.cli import main

    assert main(["plot-log", str(var_dir), "-o", str(tmp_path / "var.png")]) == 0
    panels = len([k for k in read_log(var_dir)[0] if k not in ("step", "epoch")])  # loss, lr, grad norm, accuracies
    assert panels >= 4 and Image.open(tmp_path / "var.png").size == (900, 240 * panels)
    assert main(["plot-log", str(vqvae_dir), str(var_dir), "--metric", "loss", "-o", str(tmp_path / "both.png")]) == 0
    assert Image.open(tmp_path / "both.png").size == (900, 240)


def test_var_bf16_mixed_precision_runs_on_cpu(workdir, vqvae_dir, clip_dir):
    short_var_run(workdir, vqvae_dir, clip_dir, "var-bf16", 3, "--mixed_precision", "bf16")
    pipe = VARCLIPPipeline.from_pretrained(workdir / "var-bf16")
    assert pipe.transformer.dtype == torch.float32  # master weights stay fp32; only the forward ran in bf16


def test_class_conditional_var_from_class_folders(workdir, vqvae_dir):
    classes = workdir / "classes"
    for index, path in enumerate(sorted((workdir / "shapes").glob("*.png"))[:8]):
        folder = classes / ("even" if index % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    args = common(workdir, "var-class", 4, 4, 1e-3) + TINY_VAR + [
        "--vqvae", str(vqvae_dir), "--condition", "class", "--validation_class_labels", "0", "1"]
    args[args.index("--train_data_dir") + 1] = str(classes)
    assert train_var.main(args) == 0
    pipe = VARPipeline.from_pretrained(workdir / "var-class")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.config.condition_type == "class" and pipe.transformer.config.num_classes == 2
    assert pipe(class_labels=[1], generator=torch.Generator().manual_seed(0)).images[0].size == (8, 8)


def quick_start_commands() -> list[list[str]]:
    """The bash lines of docs/training.md's quick start, split like a shell would."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.DOTALL).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


@pytest.mark.slow  # trains
def test_docs_quick_start_commands_run(tmp_path, monkeypatch):
    """Every quick-start command runs as written, shrunk to a few steps on a few images."""
    import importlib

    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not the user's cache
    shrink = {"--max_train_steps": "2", "--checkpointing_steps": "1", "--validation_steps": "2",
              "--train_batch_size": "4"}
    commands = quick_start_commands()
    assert [c[:2] for c in commands] == [["python", "-c"], ["accelerate", "launch"], ["accelerate", "launch"],
                                         ["accelerate", "launch"], ["python", "-c"]]
    for command in commands:
        if command[0] == "python":
            exec(command[2].replace("512, seed=0", "8, seed=0"), {})  # noqa: S102 - the documented snippet
            continue
        assert command[2] == "-m" and command[3].startswith("var_clip.training.train_")
        args = command[4:]
        for i, arg in enumerate(args[:-1]):
            if arg in shrink:
                args[i + 1] = shrink[arg]
        assert importlib.import_module(command[3]).main(args + ["--no_progress_bar"]) == 0
        reset_accelerate_state()
    assert Image.open(tmp_path / "red_circle.png").size == (64, 64)
    assert (tmp_path / "runs" / "var" / "checkpoint-2" / "training_state.json").is_file()


def test_tensorboard_logging(workdir, vqvae_dir, clip_dir):
    pytest.importorskip("tensorboard")
    args = common(workdir, "var-tb", 2, 4, 1e-3) + TINY_VAR + [
        "--vqvae", str(vqvae_dir), "--text_encoder", str(clip_dir / "text_encoder"), "--report_to", "tensorboard"]
    assert train_var.main(args) == 0
    assert list((workdir / "var-tb" / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_torch_compile_trains_like_eager(workdir, vqvae_dir, clip_dir):
    runs = {}
    for name, extra in (("var-eager", []), ("var-compiled", ["--torch_compile"])):
        args = common(workdir, name, 3, 4, 1e-3) + TINY_VAR + [
            "--vqvae", str(vqvae_dir), "--text_encoder", str(clip_dir / "text_encoder"), *extra]
        assert train_var.main(args) == 0
        runs[name] = [r["loss"] for r in read_log(workdir / name)]
        reset_accelerate_state()
    assert runs["var-compiled"] == pytest.approx(runs["var-eager"], abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Loss weighting across scales
# ----------------------------------------------------------------------------------------------------------------------


def test_scale_loss_weights_give_each_token_or_each_scale_the_same_share():
    from var_clip.training.var_loss import scale_loss_weights

    patch_nums = (1, 2, 4)
    tokens, scales = scale_loss_weights(patch_nums, "tokens"), scale_loss_weights(patch_nums, "scales")
    assert tokens.shape == scales.shape == (21,)
    assert torch.allclose(tokens, torch.full((21,), 1 / 21))
    per_scale = [part.sum().item() for part in scales.split([1, 4, 16])]
    assert per_scale == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="scale_loss_weighting"):
        scale_loss_weights(patch_nums, "pixels")


def test_scale_weighted_loss_is_the_mean_of_the_per_scale_means():
    from tests.conftest import make_tiny_transformer, make_tiny_vqvae
    from var_clip.training.var_loss import var_loss

    transformer, vqvae = make_tiny_transformer(), make_tiny_vqvae()
    patch_nums = transformer.config.patch_nums
    L, V = sum(pn * pn for pn in patch_nums), transformer.config.vocab_size
    idx_BL = torch.randint(0, V, (3, L), generator=torch.Generator().manual_seed(0))
    condition = {"text_embeds": torch.nn.functional.normalize(torch.randn(3, transformer.config.text_embed_dim), dim=-1)}
    losses = {w: var_loss(transformer, transformer, vqvae, idx_BL, condition, 0.0, torch.Generator().manual_seed(1),
                          scale_weighting=w)[0] for w in ("tokens", "scales")}
    # the same dropout draw, so the same logits: recompute both reductions by hand
    drop_B = transformer.condition_dropout_mask(3, generator=torch.Generator().manual_seed(1), device=idx_BL.device)
    with torch.no_grad():
        x = vqvae.indices_to_teacher_input(list(idx_BL.split([pn * pn for pn in patch_nums], dim=1)))
        logits_BLV = transformer(x, **condition, cond_drop_mask=drop_B).logits
    ce_BL = torch.nn.functional.cross_entropy(logits_BLV.reshape(-1, V), idx_BL.reshape(-1), reduction="none").view(3, L)
    per_scale = torch.stack([part.mean() for part in ce_BL.split([pn * pn for pn in patch_nums], dim=1)])
    assert losses["tokens"].item() == pytest.approx(ce_BL.mean().item(), rel=1e-5)
    assert losses["scales"].item() == pytest.approx(per_scale.mean().item(), rel=1e-5)
    assert abs(losses["scales"].item() - losses["tokens"].item()) > 1e-4


def test_the_kl_to_the_teacher_is_the_kl_divergence_averaged_per_scale_then_over_scales():
    from var_clip.training.var_loss import kl_to_teacher

    patch_nums = (1, 2, 4)
    generator = torch.Generator().manual_seed(0)
    logits_KLV = torch.randn(3, 21, 16, generator=generator) * 3
    target_KLV = (torch.randn(3, 21, 16, generator=generator) * 3).log_softmax(dim=-1)
    log_q_KLV = logits_KLV.log_softmax(dim=-1)
    kl_KL = (target_KLV.exp() * (target_KLV - log_q_KLV)).sum(dim=-1)  # KL(teacher || model), written out
    per_scale = torch.stack([part.mean(dim=1) for part in kl_KL.split([1, 4, 16], dim=1)], dim=1)
    torch.testing.assert_close(kl_to_teacher(logits_KLV, target_KLV, patch_nums), per_scale.mean(dim=1))
    torch.testing.assert_close(kl_to_teacher(target_KLV, target_KLV, patch_nums), torch.zeros(3), atol=1e-6, rtol=0)


def test_train_var_takes_vars_learning_rate_rule_and_leaves_the_arguments_as_given(workdir, vqvae_dir, clip_dir):
    argv = common(workdir, "var-default-lr", 1, 4, 1e-3) + TINY_VAR + [
        "--vqvae", str(vqvae_dir), "--text_encoder", str(clip_dir / "text_encoder")]
    del argv[argv.index("--learning_rate"):argv.index("--learning_rate") + 2]
    args = train_var.build_parser().parse_args(argv)
    given = dict(vars(args))
    train_var.train(args)
    assert vars(args) == given and args.learning_rate is None
    assert read_log(workdir / "var-default-lr")[0]["lr"] == pytest.approx(1e-4 * 4 / 256)  # 1e-4 per 256 images


def test_train_var_scale_loss_weighting_option(workdir, vqvae_dir, clip_dir):
    short_var_run(workdir, vqvae_dir, clip_dir, "var-scales", 2, "--scale_loss_weighting", "scales")
    with pytest.raises(SystemExit):
        train_var.main(common(workdir, "var-bad", 1, 4, 1e-3) + ["--scale_loss_weighting", "pixels"])


def test_train_var_keeps_embeddings_and_null_conditions_out_of_weight_decay():
    from types import SimpleNamespace

    from var_clip.training.engine import build_optimizer
    from var_clip.training.train_var import TRANSFORMER_NO_DECAY_KEYS

    from .conftest import make_tiny_transformer

    model = make_tiny_transformer(cross_attention_dim=12, conditional_adaln=False)
    args = SimpleNamespace(adam_weight_decay=0.05, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8)
    optimizer = build_optimizer(model, args, TRANSFORMER_NO_DECAY_KEYS, 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for name in ("pos_start", "pos_embed", "level_embed.weight", "null_text_embed", "null_text_tokens", "adaln_embed",
                 "blocks.0.norm_cross.weight", "text_proj.bias"):
        assert name in undecayed, name
    assert "text_proj.weight" not in undecayed and "blocks.0.attn.mat_qkv.weight" not in undecayed


def test_train_var_unconditional_adaln_option(workdir, vqvae_dir, clip_dir):
    short_var_run(workdir, vqvae_dir, clip_dir, "var-uncond-adaln", 2, "--conditioning", "tokens",
                  "--unconditional_adaln")
    transformer = VARCLIPPipeline.from_pretrained(workdir / "var-uncond-adaln").transformer
    assert transformer.config.conditional_adaln is False and transformer.uses_text_tokens
    assert transformer.adaln_embed is not None


# ----------------------------------------------------------------------------------------------------------------------
# Speed settings keep the maths
# ----------------------------------------------------------------------------------------------------------------------


def test_mixed_precision_auto_picks_bf16_only_where_the_hardware_has_it(caplog):
    from var_clip.training.engine import resolve_mixed_precision
    from var_clip.utils.dtypes import has_native_bf16

    native = has_native_bf16("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_mixed_precision("auto") == ("bf16" if native else "no")
    assert resolve_mixed_precision("no") == "no"
    with caplog.at_level("WARNING"):
        assert resolve_mixed_precision("bf16") == "bf16"  # asked for: kept, with a warning where it is emulated
    emulated = not torch.cuda.is_available() and not has_native_bf16("cpu")
    assert ("emulates bf16" in caplog.text) == emulated
