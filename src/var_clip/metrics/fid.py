r"""Fréchet Inception Distance (Heusel et al. 2017) between generated and reference images, with torchmetrics.

FID = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^½) over the 2048 pool features of the Inception-v3 that TensorFlow's
FID code used. torchmetrics accumulates the statistics and computes the distance; the network is pluggable: any module
mapping uint8 images (N, 3, H, W) to features (N, D). Weights never download silently: pass a local file.

    var-clip eval-fid --generated fid-samples/samples.npz --reference VIRTUAL_imagenet256_labeled.npz \
        --inception-weights pt_inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..utils.arguments import OneLineParser, add_device_option, add_option, int_at_least
from ..utils.atomic import atomic_open
from ..utils.files import check_writable
from .images import WeightsError, count_images, iter_image_batches

__all__ = ["INCEPTION_HELP", "TorchScriptInception", "build_parser", "compute_fid", "load_inception", "main"]

INCEPTION_HELP = ("pass --inception-weights PATH: torch-fidelity's pt_inception-2015-12-05-6726825d.pth (with "
                  "`pip install torch-fidelity`), or the TorchScript inception-2015-12-05.pt of StyleGAN / clean-fid "
                  "(https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt)")


#: The suffixes of Inception state dicts (torch-fidelity's network); any other file is read as TorchScript.
STATE_DICT_SUFFIXES = (".pth", ".safetensors")


class TorchScriptInception(nn.Module):
    """StyleGAN's (and clean-fid's) TorchScript Inception: uint8 images of any size in, 2048 pool features out
    (it resizes to 299 × 299 itself, as TensorFlow's FID code). TorchScript loads without unpickling Python objects.
    torchmetrics reads the feature width from one dummy image, so any TorchScript extractor with this call works."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, images_N3HW: torch.Tensor) -> torch.Tensor:
        return self.net(images_N3HW, return_features=True)


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip holding compiled ``code/`` (``torch.save`` files hold none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in f"/{name}" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file, read without running code: safetensors, or ``torch.load(weights_only=True)``
    (anything but tensors and plain containers is refused before it is built)."""
    from ..original_format import OriginalCheckpointError, load_original_state_dict

    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(path, device="cpu")
        except (safetensors.SafetensorError, OSError) as error:
            raise WeightsError(f"--inception-weights {str(path)!r} is not a readable safetensors file "
                               f"({' '.join(str(error).split())}); {INCEPTION_HELP}") from None
    try:
        return load_original_state_dict(path, what="--inception-weights")
    except OriginalCheckpointError as error:
        raise WeightsError(f"{error}; {INCEPTION_HELP}") from None


@contextlib.contextmanager
def load_inception(weights: str | Path | None) -> Iterator[dict]:
    """The ``FrechetInceptionDistance`` arguments that select the Inception network for ``weights``.

    A ``.pth`` (or ``.safetensors``) file is torch-fidelity's state dict, for the network torchmetrics builds.
    torch-fidelity unpickles the file it is given, so it never sees the user's file: the tensors are read without
    running code (:func:`_state_dict_of`) and handed over as a temporary file written here, which lives as long as
    this context. Any other file must be a TorchScript Inception (checked to be a TorchScript archive before
    ``torch.jit.load``, which builds TorchScript types only). None lets torch-fidelity download its weights, which
    offline fails as a :class:`WeightsError`.
    """
    path = None if weights is None else Path(weights)
    if path is not None and not path.is_file():
        raise WeightsError(f"--inception-weights {str(path)!r} is not a file; {INCEPTION_HELP}")
    if path is None or path.suffix in STATE_DICT_SUFFIXES:
        state_dict = None if path is None else _state_dict_of(path)
        try:
            import torch_fidelity  # noqa: F401  (torchmetrics' own Inception comes from torch-fidelity)
        except ImportError:
            raise WeightsError(f"FID needs Inception weights; {INCEPTION_HELP}") from None
        if state_dict is None:
            yield {"feature": 2048}
            return
        with tempfile.TemporaryDirectory(prefix="var_clip_inception_") as folder:
            checked = Path(folder) / "inception.pth"
            torch.save(state_dict, checked)
            yield {"feature": 2048, "feature_extractor_weights_path": str(checked)}
        return
    if not _is_torchscript(path):
        raise WeightsError(f"--inception-weights {str(path)!r} is not a TorchScript Inception (no compiled code "
                           f"inside; a state dict must end in {' or '.join(STATE_DICT_SUFFIXES)}); {INCEPTION_HELP}")
    try:
        network = TorchScriptInception(path)
    except RuntimeError as error:
        raise WeightsError(f"--inception-weights {str(path)!r} is not a TorchScript Inception "
                           f"({str(error).splitlines()[0]}); {INCEPTION_HELP}") from None
    yield {"feature": network}


def compute_fid(generated: str | Path, reference: str | Path, feature: nn.Module | None = None,
                weights: str | Path | None = None, batch_size: int = 50, device: str = "cpu",
                show_progress: bool = False) -> float:
    """FID between two image sets (folders or guided-diffusion ``.npz`` files).

    Args:
        feature: the feature network (uint8 (N, 3, H, W) → (N, D)); when None, the Inception of ``weights``.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from tqdm.auto import tqdm

    counts = {name: count_images(source) for name, source in (("generated", generated), ("reference", reference))}
    for name, n in counts.items():
        if n < 2:
            raise ValueError(f"FID needs at least 2 {name} images (a covariance), got {n}")
    with contextlib.nullcontext({"feature": feature}) if feature is not None else load_inception(weights) as options:
        try:
            metric = FrechetInceptionDistance(**options, reset_real_features=False).to(device)
        except (OSError, RuntimeError) as error:  # torch-fidelity's download, offline
            raise WeightsError(f"could not get the Inception weights ({type(error).__name__}: "
                               f"{str(error).splitlines()[0] if str(error) else ''}); {INCEPTION_HELP}") from None
    with tqdm(total=sum(counts.values()), unit="img", desc="FID features", disable=not show_progress) as bar:
        for source, real in ((reference, True), (generated, False)):
            for images_N3HW in iter_image_batches(source, batch_size):
                metric.update(images_N3HW.to(device), real=real)
                bar.update(len(images_N3HW))
    return float(metric.compute())


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="var-clip eval-fid", description=__doc__)
    add_option(p, "generated", required=True, help="generated images: a folder or an .npz (arr_0: N×H×W×3 uint8)")
    add_option(p, "reference", required=True, help="reference images: a folder or an .npz (e.g. guided-diffusion's)")
    add_option(p, "inception-weights", default=None, help=f"local Inception weights; {INCEPTION_HELP[5:]}")
    add_option(p, "batch-size", type=int_at_least(1), default=50, help="images per forward pass (default 50)")
    add_device_option(p)
    add_option(p, "output-json", default=None, help="also write {'fid': ..., ...} to this JSON file")
    add_option(p, "no-progress-bar", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..utils.device import resolve_device

    args = build_parser().parse_args(argv)
    try:
        if args.output_json:  # before the features are computed, not after
            check_writable(args.output_json, "--output-json", (args.generated, args.reference, args.inception_weights))
        fid = compute_fid(args.generated, args.reference, weights=args.inception_weights, batch_size=args.batch_size,
                          device=resolve_device(args.device), show_progress=not args.no_progress_bar)
    except (WeightsError, ValueError, OSError) as error:
        print(f"var-clip eval-fid: error: {error}", file=sys.stderr)
        return 1
    report = {"fid": fid, "generated": str(args.generated), "reference": str(args.reference),
              "num_generated": count_images(args.generated), "num_reference": count_images(args.reference)}
    if args.output_json:
        with atomic_open(args.output_json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    print(f"FID {fid:.4f} ({report['num_generated']} generated vs {report['num_reference']} reference images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
