"""Tiny real components built in-process (no network), and the original code's reference vectors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from var_clip import MultiScaleVQModel, VARCLIPPipeline, VARPipeline, VARTransformer2DModel

REPO = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("VAR_CLIP_PARITY_DIR", REPO.parent / "shared" / "parity"))

# Tiny models are dominated by per-op overhead: one thread is several times faster than two fighting over 2 cores.
torch.set_num_threads(1)

TINY_PATCH_NUMS = (1, 2, 3, 4)
TEXT_DIM = 16


def _byte_chars() -> list[str]:
    """GPT-2 / CLIP's reversible byte → unicode table: every byte has a printable stand-in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def make_tiny_tokenizer() -> CLIPTokenizer:
    """A real CLIP BPE tokenizer with CLIP's 512 byte-level base symbols and a few merges: any text tokenizes."""
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    merges = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def make_tiny_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=TEXT_DIM, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config).eval()


def make_tiny_vqvae(seed: int = 0) -> MultiScaleVQModel:
    torch.manual_seed(seed)
    return MultiScaleVQModel(vocab_size=64, latent_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                             patch_nums=TINY_PATCH_NUMS).eval()


def make_tiny_transformer(condition_type: str = "text", seed: int = 0, **overrides) -> VARTransformer2DModel:
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=64, latent_channels=8, patch_nums=TINY_PATCH_NUMS, depth=2, embed_dim=32, num_heads=2,
                  condition_type=condition_type, text_embed_dim=TEXT_DIM, num_classes=10)
    kwargs.update(overrides)
    model = VARTransformer2DModel(**kwargs).eval()
    # Scale the near-zero initial gates and head up so that the condition visibly changes the logits.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture
def tiny_pipe() -> VARCLIPPipeline:
    tokenizer = make_tiny_tokenizer()
    pipe = VARCLIPPipeline(tokenizer=tokenizer, text_encoder=make_tiny_text_encoder(tokenizer),
                           transformer=make_tiny_transformer(), vqvae=make_tiny_vqvae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_token_pipe() -> VARCLIPPipeline:
    """A pipeline whose transformer also cross-attends to the text's token states (token-level conditioning)."""
    tokenizer = make_tiny_tokenizer()
    text_encoder = make_tiny_text_encoder(tokenizer)
    pipe = VARCLIPPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vqvae=make_tiny_vqvae(),
                           transformer=make_tiny_transformer(cross_attention_dim=text_encoder.config.hidden_size))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_class_pipe() -> VARPipeline:
    pipe = VARPipeline(transformer=make_tiny_transformer("class"), vqvae=make_tiny_vqvae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY_DIR / "reference.safetensors").exists():
        if os.environ.get("CI"):
            pytest.fail(f"parity reference vectors missing at {PARITY_DIR}")
        pytest.skip(f"parity reference vectors not found at {PARITY_DIR} (set VAR_CLIP_PARITY_DIR)")
    return PARITY_DIR


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state (the next Accelerator starts from its own settings)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    """Reset accelerate's process-wide state before and after a test (trainers create their own Accelerator; a
    module-scoped fixture that trained may have left one with other settings, e.g. another mixed precision)."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()


@contextmanager
def killed_after_checkpoint(monkeypatch, step: int) -> Iterator[None]:
    """A training run inside the block dies (KeyboardInterrupt) right after it has saved checkpoint-``step``."""
    from var_clip.training import engine

    real_save = engine.save_checkpoint

    def save_then_die(accelerator, output_dir, saved_step, *args, **kwargs):
        path = real_save(accelerator, output_dir, saved_step, *args, **kwargs)
        if saved_step == step:
            raise KeyboardInterrupt("simulated kill right after the checkpoint")
        return path

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.undo()


def assert_same_image(got, want, message: str = "") -> None:
    """Two renderings of the same seed and prompt: what the pipeline guarantees across batch sizes, thread counts and
    processes is the sampled tokens; the decoder's sums may then differ in the last bits, so a uint8 pixel may differ
    by one step (another seed or prompt differs by far more)."""
    import numpy as np

    got, want = np.asarray(got).astype(int), np.asarray(want).astype(int)
    assert got.shape == want.shape, message
    assert np.abs(got - want).max() <= 1, message
