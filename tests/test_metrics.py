"""`var-clip eval-fid` / `eval-clip-score`: the metrics' math on tiny networks built here, and one-line weight errors."""

from __future__ import annotations

import json
import sys
import urllib.error

import numpy as np
import PIL.Image
import pytest
import torch
from torch import nn

pytest.importorskip("torchmetrics")

from var_clip.metrics import WeightsError, compute_clip_score, compute_fid, load_clip
from var_clip.metrics import clip_score as clip_score_cli
from var_clip.metrics import fid as fid_cli

from .conftest import make_tiny_tokenizer


class TinyFeatures(nn.Module):
    """A stand-in for Inception: uint8 images (N, 3, H, W) → 6 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 6))

    def forward(self, images_N3HW: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        return 10 * self.net(images_N3HW.float() / 255)


def random_images(seed: int, n: int, high: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (n, 16, 16, 3), dtype=np.uint8)


def frechet_distance_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½), the trace of the root from the eigenvalues of Σa Σb."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_trace = np.sqrt(np.linalg.eigvals(sigma_a @ sigma_b).real.clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * root_trace)


@pytest.fixture
def image_sets(tmp_path):
    generated, reference = random_images(0, 12, 256), random_images(1, 10, 128)  # two different distributions
    np.savez(tmp_path / "generated.npz", arr_0=generated)
    (tmp_path / "reference").mkdir()
    for n, pixels in enumerate(reference):
        PIL.Image.fromarray(pixels).save(tmp_path / "reference" / f"{n:03d}.png")
    return tmp_path, generated, reference


def test_fid_equals_the_hand_computed_frechet_distance(image_sets):
    tmp_path, generated, reference = image_sets
    net = TinyFeatures().eval()
    with torch.no_grad():
        features = [net(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy() for x in (generated, reference)]
    expected = frechet_distance_by_hand(*features)
    fid = compute_fid(tmp_path / "generated.npz", tmp_path / "reference", feature=net, batch_size=4)
    assert expected > 0.01 and fid == pytest.approx(expected, rel=1e-4)
    assert compute_fid(tmp_path / "reference", tmp_path / "reference", feature=net) == pytest.approx(0, abs=1e-4)

    # the same network as a TorchScript file (the format of StyleGAN's inception-2015-12-05.pt), through the CLI
    torch.jit.save(torch.jit.script(net), str(tmp_path / "inception.pt"))
    assert fid_cli.main(["--generated", str(tmp_path / "generated.npz"), "--reference", str(tmp_path / "reference"),
                         "--inception-weights", str(tmp_path / "inception.pt"), "--output-json",
                         str(tmp_path / "fid.json"), "--no-progress-bar"]) == 0
    assert json.loads((tmp_path / "fid.json").read_text())["fid"] == pytest.approx(expected, rel=1e-4)


def test_missing_inception_weights_are_one_clear_line(image_sets, monkeypatch, capsys):
    tmp_path, _, _ = image_sets
    argv = ["--generated", str(tmp_path / "generated.npz"), "--reference", str(tmp_path / "reference")]
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # not installed
    assert fid_cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--inception-weights PATH" in err
    assert fid_cli.main([*argv, "--inception-weights", str(tmp_path / "nope.pt")]) == 1
    assert "is not a file" in capsys.readouterr().err
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    assert fid_cli.main([*argv, "--inception-weights", str(tmp_path / "garbage.pt")]) == 1
    assert "is not a TorchScript Inception" in capsys.readouterr().err

    # with torch-fidelity installed, its download fails offline: still one line, naming the flag
    import torchmetrics.image.fid

    class Offline:
        def __init__(self, **kwargs):
            raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setitem(sys.modules, "torch_fidelity", type(sys)("torch_fidelity"))
    monkeypatch.setattr(torchmetrics.image.fid, "FrechetInceptionDistance", Offline)
    with pytest.raises(WeightsError, match="could not get the Inception weights .*--inception-weights PATH"):
        compute_fid(tmp_path / "generated.npz", tmp_path / "reference")


@pytest.fixture
def tiny_clip_dir(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(6)  # random weights whose cosines have both signs on the test's pairs
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                                 crop_size={"height": 16, "width": 16}),
                              tokenizer=tokenizer)
    processor.save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


def test_clip_score_equals_the_hand_computed_cosine(tiny_clip_dir, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    prompts = ["a red circle", "a blue square", "a red square", "a green circle"]
    images = random_images(3, len(prompts), 256)
    with open(folder / "metadata.jsonl", "w") as handle:
        for n, (prompt, pixels) in enumerate(zip(prompts, images)):
            PIL.Image.fromarray(pixels).save(folder / f"{n}.png")
            handle.write(json.dumps({"file_name": f"{n}.png", "text": prompt}) + "\n")

    model, processor = load_clip(tiny_clip_dir)
    with torch.no_grad():
        out = model(**processor(text=prompts, images=list(images), return_tensors="pt", padding=True))
    cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)
    expected = (100 * cosine).clamp(min=0).mean().item()  # each image's score floored at 0, as Hessel et al.
    assert (cosine > 0).any() and (cosine < 0).any()
    score = compute_clip_score(folder, model, processor, batch_size=3)
    assert score == pytest.approx(expected, abs=1e-3)
    assert clip_score_cli.main(["--images", str(folder), "--clip-model", str(tiny_clip_dir), "--no-progress-bar"]) == 0


def test_missing_clip_model_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "samples").mkdir()
    assert clip_score_cli.main(["--images", str(tmp_path / "samples"), "--clip-model", str(tmp_path / "no-clip")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --clip-model DIR" in err
