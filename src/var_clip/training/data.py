"""Image–caption (or image–class) training data: loading, transforms, and a resumable, seeded order.

Two on-disk layouts are read:

- a Hugging Face ``imagefolder``: images plus ``metadata.jsonl`` lines ``{"file_name": ..., "text": ...}`` (class
  folders give a ``label`` column), read with ``datasets.load_dataset("imagefolder", data_dir=...)``;
- VAR-CLIP's caption files: one ``relative/path.JPEG: caption`` per line (``imagenet/train/image_captions.txt``),
  paths relative to the dataset root (the folder that holds ``train/`` and ``val/``).

The order is a function of ``(seed, epoch)`` only, and every random augmentation of a sample a function of
``(seed, epoch, index)``, so a run can stop after any batch and resume on exactly the same images: the data position
(epoch, batch within the epoch) is all a checkpoint needs to store.

Legend: B batch · H, W image size · N dataset size.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..utils.files import check_regular_file
from ..utils.image_files import as_seen
from ..utils.records import read_jsonl

__all__ = [
    "CROP_MODES",
    "DataPosition",
    "ImageTransform",
    "ImageCaptionDataset",
    "ResumableSampler",
    "read_caption_file",
    "load_image_caption_dataset",
    "num_classes_of",
    "collate_examples",
    "make_dataloader",
    "iterate_batches",
]

CROP_MODES = ("center", "random")


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def read_caption_file(
    caption_file: str | os.PathLike, image_root: str | os.PathLike | None = None,
) -> list[tuple[str, str]]:
    """Parse a VAR-CLIP caption file into ``(absolute image path, caption)`` pairs.

    Each non-empty line reads ``path: caption``; the path ends at the first colon, so a caption may contain colons
    (the original reader skipped such lines). Paths are relative to ``image_root``; without it, the caption file's
    folder and then its parent are tried (VAR-CLIP keeps ``imagenet/val/image_captions.txt`` with paths that start
    ``./val/``, relative to ``imagenet/``), and the first where the first listed image exists is used.
    """
    caption_file = Path(caption_file)
    if not caption_file.is_file():
        raise ValueError(f"`caption_file` {str(caption_file)!r} is not a file")
    pairs: list[tuple[str, str]] = []
    with open(caption_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            path, sep, caption = line.partition(":")
            if not sep or not path.strip() or not caption.strip():
                raise ValueError(f"`caption_file` {str(caption_file)!r} line {line_number} is not "
                                 f"'relative/path: caption': {line[:120]!r}")
            pairs.append((path.strip(), caption.strip()))
    if not pairs:
        raise ValueError(f"`caption_file` {str(caption_file)!r} lists no images")
    roots = [Path(image_root)] if image_root is not None else [caption_file.parent, caption_file.parent.parent]
    for root in roots:
        if (root / pairs[0][0]).is_file():
            return [(str((root / path).resolve()), caption) for path, caption in pairs]
    raise ValueError(f"the first image of `caption_file` ({pairs[0][0]!r}) is not found under "
                     f"{[str(r) for r in roots]}; pass `image_root`, the folder the paths are relative to")


def load_image_caption_dataset(
    data_dir: str | os.PathLike | None = None,
    caption_file: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    *,
    condition: str | None = "text",
    image_column: str = "image",
    caption_column: str = "text",
    label_column: str = "label",
    max_samples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """Load a training set as a ``datasets.Dataset`` with an ``image`` column and ``text`` and/or ``label``.

    Args:
        data_dir: an ``imagefolder`` folder (``metadata.jsonl`` with ``file_name`` and ``text``; class folders for
            labels). Exactly one of ``data_dir`` and ``caption_file`` is given.
        caption_file: a VAR-CLIP caption file (see :func:`read_caption_file`); with ``condition="class"`` the label is
            the image's parent folder (an ImageNet synset), numbered in sorted order.
        condition: ``"text"`` needs captions, ``"class"`` needs labels, None only images (VQ-VAE training).
        image_column / caption_column / label_column: column names in ``data_dir``'s dataset.
        max_samples: keep only the first ``max_samples`` rows (in file order).
        cache_dir: where ``datasets`` keeps its Arrow cache (its default cache when None).
    """
    import datasets

    if (data_dir is None) == (caption_file is None):
        raise ValueError("pass exactly one of `data_dir` (an imagefolder dataset) and `caption_file` (VAR-CLIP's "
                         "'path: caption' lines)")
    if condition not in ("text", "class", None):
        raise ValueError(f"`condition` must be 'text', 'class' or None, got {condition!r}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"`max_samples` must be a positive int or None, got {max_samples}")

    if caption_file is not None:
        pairs = read_caption_file(caption_file, image_root)
        _refuse_special_files(Path(p) for p, _ in pairs)
        columns: dict[str, list[Any]] = {"image": [p for p, _ in pairs], "text": [c for _, c in pairs]}
        features = {"image": datasets.Image(), "text": datasets.Value("string")}
        if condition == "class":
            folders = [Path(p).parent.name for p, _ in pairs]
            names = sorted(set(folders))
            columns["label"] = _index_all(folders, names)
            features["label"] = datasets.ClassLabel(names=names)
        dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    else:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise ValueError(f"`data_dir` {str(data_dir)!r} is not a folder")
        _check_metadata_files(data_dir)
        paths = list(data_dir.rglob("*"))
        _refuse_special_files(paths)
        image_suffixes = set(Image.registered_extensions())
        if not any(path.suffix.lower() in image_suffixes for path in paths):
            raise _no_images(f"`data_dir` {str(data_dir)!r}")
        try:
            dataset = datasets.load_dataset("imagefolder", data_dir=str(data_dir), split="train",
                                            data_files=_all_files_when_no_split_names(data_dir, paths),
                                            cache_dir=None if cache_dir is None else str(cache_dir),
                                            drop_labels=False if condition == "class" else None)
        except FileNotFoundError:  # datasets' EmptyDatasetError: no image file it reads (hidden ones are skipped)
            raise _no_images(f"`data_dir` {str(data_dir)!r}") from None
        renames = {image_column: "image", caption_column: "text", label_column: "label"}
        for old, new in renames.items():
            if old != new and old in dataset.column_names:
                dataset = dataset.rename_column(old, new)
        if "image" not in dataset.column_names:
            raise ValueError(f"`image_column` {image_column!r} is not a column of {str(data_dir)!r} "
                             f"(columns: {dataset.column_names})")

    if len(dataset) == 0:
        source = f"`data_dir` {str(data_dir)!r}" if data_dir is not None else f"`caption_file` {str(caption_file)!r}"
        raise _no_images(source)
    needed = {"text": "text", "class": "label", None: "image"}[condition]
    if needed not in dataset.column_names:
        what = ("captions: `metadata.jsonl` lines with `file_name` and `text` (or set `caption_column`)"
                if condition == "text" else "class labels: one subfolder per class (or set `label_column`)")
        raise ValueError(f"condition {condition!r} needs {what}; the dataset has columns {dataset.column_names}")
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    return dataset


def _no_images(source: str) -> ValueError:
    return ValueError(f"{source} holds no images (an imagefolder needs image files next to its metadata.jsonl)")


def _all_files_when_no_split_names(data_dir: Path, paths: Iterable[Path]) -> dict[str, str] | None:
    """``{"train": "**"}`` (every file: what datasets' split inference concludes for such a folder) when no name under
    ``data_dir`` could name a split or another of its default layouts; None otherwise, and datasets infers as always.

    The inference tries some 60 patterns (``train/``, ``*-test.*``, ``data/train-00000-of-…``, ...), each a walk of the
    whole folder: for 100,000 images, minutes before the first training step. A name "could name a split" when one of
    its words (split at ``-._``, spaces and digits) is a split keyword; the test is broader than the patterns, so a
    doubt leaves the inference to datasets.
    """
    try:
        from datasets.data_files import SPLIT_KEYWORDS
    except ImportError:  # a datasets without the constant: let it infer
        return None
    keywords = {k for words in SPLIT_KEYWORDS.values() for k in words} | {"data", "task", "instruction"}
    for path in paths:
        relative = path.relative_to(data_dir)
        if path.suffix == ".eval":  # datasets' pattern for evaluation logs
            return None
        for part in relative.parts:
            if keywords & set(re.split(r"[-._ 0-9]+", part.lower())):
                return None
    return {"train": "**"}


def _refuse_special_files(paths: Iterable[Path]) -> None:
    """A FIFO or a device among the training images would block the data loader for ever: refuse it up front."""
    for path in paths:
        try:
            mode = path.stat().st_mode
        except OSError:  # missing, or a broken link: reported where it is read
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            check_regular_file(path, "training image")  # raises, naming the kind of file


def _check_metadata_files(data_dir: Path) -> None:
    """Parse every ``metadata.jsonl`` under ``data_dir`` first: `datasets` reports a bad line without its file or
    line number."""
    for path in sorted(data_dir.rglob("metadata.jsonl")):
        read_jsonl(path, required=["file_name"], types={"file_name": str},
                   fix='each line is an object such as {"file_name": "0001.png", "text": "a caption"}')


def _index_all(values: list[str], names: list[str]) -> list[int]:
    lookup = {name: i for i, name in enumerate(names)}
    return [lookup[v] for v in values]


def num_classes_of(dataset) -> int:
    """Number of classes of a dataset's ``label`` column (its ClassLabel names, or the largest label + 1)."""
    feature = dataset.features.get("label")
    names = getattr(feature, "names", None)
    if names:
        return len(names)
    return int(max(dataset["label"])) + 1


# ----------------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------------


class ImageTransform:
    """Resize the shorter side, crop a square, optionally flip, map to [-1, 1]: PIL image → (3, H, W) float tensor.

    Args:
        resolution: output side H = W.
        crop: ``"center"`` or ``"random"`` (VAR trains with random crops of a 1.125× resize; captions that name
            positions are safer with center crops, the default).
        resize_ratio: the shorter side is first resized to ``round(resolution * resize_ratio)`` (≥ 1).
        random_flip: flip horizontally with probability 1/2 (off by default: captions say "left" and "right").
    """

    def __init__(self, resolution: int, crop: str = "center", resize_ratio: float = 1.0, random_flip: bool = False):
        if int(resolution) != resolution or resolution < 1:
            raise ValueError(f"`resolution` must be a positive int, got {resolution!r}")
        if crop not in CROP_MODES:
            raise ValueError(f"`crop` must be one of {CROP_MODES}, got {crop!r}")
        if not resize_ratio >= 1.0:
            raise ValueError(f"`resize_ratio` must be >= 1.0 (the crop is taken from the resized image), "
                             f"got {resize_ratio}")
        self.resolution, self.crop = int(resolution), crop
        self.resize_ratio, self.random_flip = float(resize_ratio), random_flip

    @property
    def is_random(self) -> bool:
        return self.random_flip or (self.crop == "random" and self.resize_ratio > 1.0)

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.is_random and rng is None:
            raise ValueError("this transform is random (random crop or flip): pass `rng`")
        image = as_seen(image)  # oriented by its EXIF tag, 16-bit scaled, transparency over white
        # 1. shorter side → round(resolution · ratio), Lanczos as in VAR
        target = round(self.resolution * self.resize_ratio)
        w, h = image.size
        if min(w, h) != target:
            scale = target / min(w, h)
            size = (max(target, round(w * scale)), max(target, round(h * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        # 2. square crop
        w, h = image.size
        side = self.resolution
        if self.crop == "random":
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        else:
            left, top = round((w - side) / 2.0), round((h - side) / 2.0)
        image = image.crop((left, top, left + side, top + side))
        # 3. flip
        if self.random_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # 4. uint8 HWC → float CHW in [-1, 1]
        array_HW3 = np.asarray(image, dtype=np.float32)
        return torch.from_numpy(array_HW3).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


# ----------------------------------------------------------------------------------------------------------------------
# Dataset, order and position
# ----------------------------------------------------------------------------------------------------------------------


class ImageCaptionDataset(Dataset):
    """Transformed examples of a ``datasets.Dataset`` with an ``image`` column (and ``text`` / ``label``).

    Items are addressed by ``(index, epoch)`` keys (what :class:`ResumableSampler` yields) so that each sample's
    augmentation draws from its own generator seeded by ``(seed, epoch, index)``: identical across workers, restarts
    and process counts. A plain int index means epoch 0.
    """

    def __init__(self, dataset, transform: ImageTransform, seed: int = 0):
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self.has_text = "text" in dataset.column_names
        self.has_label = "label" in dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)

    def image_path(self, index: int) -> str:
        """Where sample ``index``'s image comes from (for error messages), without decoding it."""
        import datasets

        try:
            undecoded = self.dataset.cast_column("image", datasets.Image(decode=False))[index]["image"]
            return str(undecoded.get("path") or f"sample {index} (embedded bytes)")
        except Exception:  # noqa: BLE001 - only for a message: never hide the original error
            return f"sample {index}"

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, int) else key
        rng = np.random.default_rng([self.seed, int(epoch), int(index)]) if self.transform.is_random else None
        try:
            # a decompression bomb (more pixels than PIL's Image.MAX_IMAGE_PIXELS) is an error, not a warning
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                row = self.dataset[int(index)]
                pixel_values = self.transform(row["image"], rng)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
                Image.DecompressionBombError) as error:
            hint = ""
            if isinstance(error, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
                hint = " (a possible decompression bomb; raise PIL.Image.MAX_IMAGE_PIXELS only for images you trust)"
            raise ValueError(f"training image {self.image_path(int(index))} (sample {index}) cannot be used: "
                             f"{' '.join(str(error).split()) or type(error).__name__}{hint}") from None
        example: dict[str, Any] = {"index": int(index), "pixel_values": pixel_values}
        if self.has_text:
            example["text"] = row["text"]
        if self.has_label:
            example["label"] = int(row["label"])
        return example


def collate_examples(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists: ``pixel_values`` (B, 3, H, W), ``index`` (B,), ``label`` (B,), ``text``
    (torch's ``default_collate``: ints become an int64 tensor, strings a list)."""
    return default_collate(list(examples))


@dataclass(frozen=True)
class DataPosition:
    """Where a run is in its data: the epoch and how many global batches of it were consumed."""

    epoch: int = 0
    batch_index: int = 0

    def advance(self, batches_per_epoch: int) -> DataPosition:
        if self.batch_index + 1 >= batches_per_epoch:
            return DataPosition(self.epoch + 1, 0)
        return DataPosition(self.epoch, self.batch_index + 1)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataPosition:
        return cls(epoch=int(values["epoch"]), batch_index=int(values["batch_index"]))


class ResumableSampler(Sampler):
    """Seeded, shardable, resumable order: yields ``(index, epoch)`` keys of this process's share of each batch.

    Epoch ``e`` visits ``permutation_e = default_rng([seed, e]).permutation(N)`` in global batches of
    ``batch_size × num_replicas``; process ``rank`` takes its ``batch_size`` slice of each. The incomplete last
    global batch is dropped so every step sees the same batch shape. :meth:`set_position` starts the next iteration
    at any batch of any epoch; nothing else is stateful.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank}")
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.num_replicas, self.rank, self.shuffle = int(num_replicas), int(rank), shuffle
        self.global_batch_size = self.batch_size * self.num_replicas
        self.batches_per_epoch = self.num_samples // self.global_batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one global batch "
                             f"(`train_batch_size` {batch_size} × {num_replicas} processes)")
        self.position = DataPosition()

    def set_position(self, position: DataPosition) -> None:
        if not 0 <= position.batch_index < self.batches_per_epoch:
            raise ValueError(f"batch_index {position.batch_index} is outside the epoch's "
                             f"{self.batches_per_epoch} batches")
        self.position = position

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.position.epoch, self.position.batch_index
        order = self.epoch_order(epoch)
        for b in range(start, self.batches_per_epoch):
            begin = b * self.global_batch_size + self.rank * self.batch_size
            for index in order[begin : begin + self.batch_size]:
                yield int(index), epoch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.position.batch_index) * self.batch_size


def make_dataloader(dataset: Dataset, sampler: ResumableSampler, num_workers: int = 0, collate_fn=collate_examples,
                    pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``sampler``'s order; it owns a generator so that it never draws from torch's global RNG
    (which the model's dropout uses and checkpoints restore)."""
    return DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=False, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(sampler.seed))


def iterate_batches(
    loader: DataLoader, sampler: ResumableSampler, start: DataPosition,
) -> Iterator[tuple[dict, DataPosition]]:
    """Endless ``(batch, position after it)`` from ``start`` on, epoch after epoch."""
    position = start
    while True:
        sampler.set_position(position)
        for batch in loader:
            position = position.advance(sampler.batches_per_epoch)
            yield batch, position
