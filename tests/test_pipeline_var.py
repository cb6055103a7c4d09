"""VARPipeline: class-conditional generation with the shared sampler."""

from __future__ import annotations

import pytest
import torch

from var_clip import VARPipeline


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_generates_and_is_deterministic(tiny_class_pipe):
    a = tiny_class_pipe([1, 2], generator=gen(0), output_type="pt").images
    b = tiny_class_pipe([1, 2], generator=gen(0), output_type="pt").images
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a[0], tiny_class_pipe([3, 2], generator=gen(0), output_type="pt").images[0])


def test_batch_equals_single_runs(tiny_class_pipe):
    batch = tiny_class_pipe([4, 5], generator=[gen(1), gen(2)], output_type="pt").images
    single = tiny_class_pipe(5, generator=[gen(2)], output_type="pt").images
    torch.testing.assert_close(batch[1:], single, atol=1e-5, rtol=0)


def test_save_load(tiny_class_pipe, tmp_path):
    before = tiny_class_pipe(7, generator=gen(0), output_type="pt").images
    tiny_class_pipe.save_pretrained(tmp_path)
    loaded = VARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded(7, generator=gen(0), output_type="pt").images, before)


@pytest.mark.parametrize(
    "labels,message",
    [(10, r"in \[0, 10\)"), ([-1], r"in \[0, 10\)"), ("cat", "int or a non-empty list"), ([], "non-empty"), ([1.5], "list of ints")],
)
def test_bad_class_labels(tiny_class_pipe, labels, message):
    with pytest.raises(ValueError, match=message):
        tiny_class_pipe(labels)


def test_text_transformer_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="text-conditional"):
        VARPipeline(transformer=tiny_pipe.transformer, vqvae=tiny_pipe.vqvae)
