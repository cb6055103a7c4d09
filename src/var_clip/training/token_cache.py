"""Precomputed VAR training inputs: every image's per-scale token indices and every caption's CLIP embedding (and,
for token-level conditioning, its token states).

The VQ-VAE encoder and the CLIP text tower are frozen during VAR training, so their outputs for a fixed (center
cropped, unflipped) dataset never change: computing them once and reading them back skips most of a CPU training
step. The cache is one safetensors file named by a fingerprint of everything its content depends on (the dataset's
files and captions, both models' weights and configs, the tokenizer, the transform), so a changed input can never
reuse a stale cache. It is written to a temporary file, fsynced and renamed.

Legend: N dataset size · L = Σ pn² · E text-embedding width · T longest caption in tokens · H text hidden width.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..utils.atomic import atomic_write

__all__ = [
    "dataset_fingerprint",
    "module_fingerprint",
    "tokenizer_fingerprint",
    "TokenCacheDataset",
    "token_cache_path",
    "build_token_cache",
    "load_token_cache",
]

logger = logging.getLogger(__name__)


def _update_with_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
    t = tensor.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
        t = t.view(torch.int16)
    digest.update(t.numpy().tobytes())


def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's config (if any) and every tensor of its state dict."""
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        _update_with_tensor(digest, name, tensor)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of a tokenizer's full definition (vocabulary, merges, normaliser) and its maximum length."""
    definition = tokenizer.backend_tokenizer.to_str() + f":{tokenizer.model_max_length}"
    return hashlib.sha256(definition.encode()).hexdigest()


def dataset_fingerprint(dataset) -> str:
    """SHA-256 of a ``datasets.Dataset``'s rows: each image's path, size and modification time (or its bytes when
    embedded), and its caption / label."""
    import datasets

    digest = hashlib.sha256()
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    for column in [c for c in ("text", "label") if c in raw.column_names]:
        digest.update(json.dumps(list(raw[column])).encode())
    for item in raw["image"]:
        if item.get("bytes") is not None:
            digest.update(hashlib.sha256(item["bytes"]).digest())
        else:
            stat = os.stat(item["path"])
            digest.update(f"{item['path']}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


class TokenCacheDataset(Dataset):
    """Rows of a token cache: ``{"index", "indices" (L,), "text_embeds" (E,) or "label"}``, plus ``"text_states"``
    (T, H) and ``"text_mask"`` (T,) when the cache holds token states; keyed like
    :class:`~var_clip.training.data.ImageCaptionDataset` (``(index, epoch)`` or an int)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.indices_NL = tensors["indices"]
        self.text_embeds_NE = tensors.get("text_embeds")
        self.text_states_NTH = tensors.get("text_states")
        self.text_mask_NT = tensors.get("text_mask")
        self.labels_N = tensors.get("labels")
        if (self.text_embeds_NE is None) == (self.labels_N is None):
            raise ValueError("a token cache holds exactly one of `text_embeds` and `labels`")

    def __len__(self) -> int:
        return self.indices_NL.shape[0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = key if isinstance(key, int) else key[0]
        row: dict[str, Any] = {"index": int(index), "indices": self.indices_NL[index].long()}
        if self.text_embeds_NE is not None:
            row["text_embeds"] = self.text_embeds_NE[index]
            if self.text_states_NTH is not None:
                row["text_states"], row["text_mask"] = self.text_states_NTH[index], self.text_mask_NT[index].bool()
        else:
            row["label"] = int(self.labels_N[index])
        return row


def load_token_cache(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def token_cache_path(cache_dir: str | os.PathLike, fingerprint_parts: dict[str, str]) -> Path:
    """Where the cache for these inputs lives: ``cache_dir/var-tokens-<hash of the fingerprints>.safetensors``."""
    key = hashlib.sha256(json.dumps(fingerprint_parts, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"var-tokens-{key[:24]}.safetensors"


@torch.no_grad()
def build_token_cache(
    cache_dir: str | os.PathLike,
    examples: Dataset,
    fingerprint_parts: dict[str, str],
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    encode_texts: Callable[[list[str]], dict[str, torch.Tensor]] | None,
    batch_size: int = 64,
    show_progress: bool = True,
) -> Path:
    """Encode ``examples`` once into ``cache_dir/var-tokens-<fingerprint>.safetensors`` (reused when present).

    Args:
        examples: deterministic examples (``pixel_values`` and ``text`` or ``label``), in dataset order.
        fingerprint_parts: named hashes of everything the content depends on.
        encode_images: (B, 3, H, W) → (B, L) token indices.
        encode_texts: captions → ``{"text_embeds": (B, E) normalised embeddings}``, plus ``"text_states"`` (B, T, H)
            and ``"text_mask"`` (B, T) for token-level conditioning; None for class labels.
    """
    path = token_cache_path(cache_dir, fingerprint_parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        logger.info("reusing token cache %s", path)
        return path

    indices, texts, labels = [], [], []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="encoding token cache", disable=not show_progress):
        rows = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        indices.append(encode_images(torch.stack([r["pixel_values"] for r in rows])).to(torch.int32).cpu())
        if encode_texts is not None:
            texts.append({k: v.cpu() for k, v in encode_texts([r["text"] for r in rows]).items()})
        else:
            labels.append(torch.tensor([r["label"] for r in rows], dtype=torch.int64))
    tensors = {"indices": torch.cat(indices)}
    if encode_texts is not None:
        tensors["text_embeds"] = torch.cat([t["text_embeds"] for t in texts]).float()
        if "text_states" in texts[0]:  # pad every batch's states to the longest caption of the dataset (masked)
            T = max(t["text_states"].shape[1] for t in texts)
            tensors["text_states"] = torch.cat([F.pad(t["text_states"].float(),
                                                      (0, 0, 0, T - t["text_states"].shape[1]))
                                                for t in texts])
            tensors["text_mask"] = torch.cat([F.pad(t["text_mask"].to(torch.uint8), (0, T - t["text_mask"].shape[1]))
                                              for t in texts])
    else:
        tensors["labels"] = torch.cat(labels)
    metadata = {**{f"fingerprint.{k}": v for k, v in fingerprint_parts.items()}}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path
