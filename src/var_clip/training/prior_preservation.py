"""Prior preservation without replay data: the base model's own images of captions it knows, made once and cached.

An adapter taught from a hundred images of a new concept drifts on everything else unless it keeps seeing it. With
no replay data the LoRA trainer makes its own, as DreamBooth does: it samples the frozen base model on *known
captions* and mixes the images in, and ``--keep_known_captions`` holds those captions to the base model's
predictions (the images then only supply the contexts they are held in).

The known captions are the base model's own, as its transformer config records them (``known_captions``, a sample
of its training captions: :func:`record_known_captions`), taking turns with captions made from the user's: each
with the words the base model never read taken out (DreamBooth's class prompt: "a huge red circle on the left" →
"a red circle on the left"), and those that already use only known words. The first keep the model's whole world
(two objects, other layouts), the second the user's subject without its new words.

The set is an ``imagefolder`` named by a fingerprint of everything it depends on (the base model's weights and
tokenizer, the captions, the number of images, the seed, the sampling settings): image ``i`` is caption
``i mod K`` drawn with seed ``seed + i``, so the same inputs give the same set. It is written in chunks, each
complete once its record is written, so an interrupted run continues where it stopped; ``metadata.jsonl`` is
written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P
from ..utils.atomic import atomic_open
from ..vocabulary import agree_articles
from .token_cache import module_fingerprint

__all__ = ["PriorSpec", "build_prior_set", "known_captions", "prior_captions", "prior_folder", "record_known_captions",
           "with_prior_images"]

logger = logging.getLogger(__name__)

PRIOR_DIR_PREFIX = "prior-"
CHUNK_SIZE = 32
KNOWN_CAPTIONS_RECORDED = 128
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
def known_captions(captions: Sequence[str], vocabulary: Sequence[str]) -> list[str]:
    """Captions the base model knows, made from ``captions``: each with the words outside ``vocabulary`` taken out
    (articles made to agree again), and those that use only known words as they are; distinct, in order of first
    appearance. A caption left with no word is dropped."""
    known, result = set(vocabulary), {}
    for caption in captions:
        kept = _WORD.sub(lambda m: m.group(0) if m.group(0).lower() in known else "", caption)
        if kept != caption:
            kept = agree_articles(" ".join(kept.split()))
            kept = re.sub(r"\s+([,.;:!?])", r"\1", kept).strip(" ,;:")
        if _WORD.search(kept):
            result.setdefault(kept, None)
    return list(result)


def record_known_captions(captions: Sequence[str], recorded: Sequence[str] | None = None,
                          count: int = KNOWN_CAPTIONS_RECORDED) -> list[str]:
    """The ``known_captions`` a trained model records: up to ``count`` distinct captions, evenly spread over the
    model's earlier record (``recorded``, a fine-tuned model's) and then ``captions`` in data order."""
    distinct = list(dict.fromkeys([*(recorded or []), *captions]))
    if len(distinct) <= count:
        return distinct
    return [distinct[i * len(distinct) // count] for i in range(count)]


def prior_captions(captions: Sequence[str], vocabulary: Sequence[str], recorded: Sequence[str] | None) -> list[str]:
    """The captions a prior set is drawn from: the base model's recorded ``known_captions`` (its world: other
    objects, other layouts) taking turns with :func:`known_captions` of the user's ``captions`` (the user's subject
    without its new words), each list in its order; distinct."""
    stripped, recorded = known_captions(captions, vocabulary), list(recorded or [])
    turns = [c for pair in zip(recorded, stripped) for c in pair]
    shorter = min(len(recorded), len(stripped))
    return list(dict.fromkeys([*turns, *recorded[shorter:], *stripped[shorter:]]))


@dataclass(frozen=True)
class PriorSpec:
    """Everything a prior set depends on; its digest names the set's folder."""

    captions: tuple[str, ...]
    num_images: int
    seed: int
    base_model: str  # fingerprint of the base pipeline's weights and tokenizer
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        if not self.captions:
            raise ValueError("a prior set needs at least one known caption")
        if self.num_images < 1:
            raise ValueError(f"`num_images` of a prior set must be >= 1, got {self.num_images}")

    def caption(self, index: int) -> str:
        return self.captions[index % len(self.captions)]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def base_model_fingerprint(pipe) -> str:
    """SHA-256 over the pipeline's transformer, text encoder and VQ-VAE (configs and weights) and its tokenizer."""
    digest = hashlib.sha256()
    for module in (pipe.transformer, pipe.text_encoder, pipe.vqvae):
        digest.update(module_fingerprint(module).encode())
    digest.update(pipe.tokenizer.backend_tokenizer.to_str().encode())
    return digest.hexdigest()


def prior_folder(cache_root: str | Path, spec: PriorSpec) -> Path:
    """``cache_root/prior-<digest>``: the folder of the prior set ``spec`` describes."""
    return Path(cache_root) / f"{PRIOR_DIR_PREFIX}{spec.digest()[:16]}"


def _write_json(path: Path, data) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(json.dumps(data, indent=1))


@torch.no_grad()
def build_prior_set(pipe, spec: PriorSpec, folder: str | Path, show_progress: bool = True) -> Path:
    """Sample the base model ``pipe`` for ``spec`` into the ``imagefolder`` ``folder``; reuse what is there.

    A finished set (``metadata.jsonl`` present) is returned as it is; otherwise the chunks without a record are
    sampled (``spec.chunk_size`` images per pipeline call, one generator per image), and the metadata written.
    """
    folder = Path(folder)
    if (folder / "metadata.jsonl").is_file():
        logger.info("reusing the prior images in %s", folder)
        return folder
    chunks = folder / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "prior.json", asdict(spec))
    starts = range(0, spec.num_images, spec.chunk_size)
    todo = [s for s in starts if not (chunks / f"{s:06d}.json").is_file()]
    if len(todo) < len(starts):
        logger.info("prior images: %d of %d chunks already in %s", len(starts) - len(todo), len(starts), folder)
    device = pipe.transformer.device
    for start in tqdm(todo, desc="prior images", disable=not show_progress):
        indices = range(start, min(start + spec.chunk_size, spec.num_images))
        prompts = [spec.caption(i) for i in indices]
        generators = [torch.Generator(device=device).manual_seed(spec.seed + i) for i in indices]
        images = pipe(prompts, guidance_scale=spec.guidance_scale, top_k=spec.top_k, top_p=spec.top_p,
                      generator=generators).images
        records = []
        for i, prompt, image in zip(indices, prompts, images):
            with atomic_open(folder / f"{i:06d}.png") as handle:
                image.save(handle, format="PNG")
            records.append({"file_name": f"{i:06d}.png", "text": prompt})
        _write_json(chunks / f"{start:06d}.json", records)  # the chunk is complete once this exists
    lines = [json.dumps(r) + "\n" for s in starts for r in json.loads((chunks / f"{s:06d}.json").read_text())]
    with atomic_open(folder / "metadata.jsonl", "w") as handle:
        handle.write("".join(lines))
    return folder


def with_prior_images(dataset, folder: str | Path, cache_dir: str | None = None):
    """The user's ``dataset`` (its ``image`` and ``text`` columns), then the prior set's rows."""
    import datasets

    from .data import load_image_caption_dataset

    prior = load_image_caption_dataset(folder, condition="text", cache_dir=cache_dir)
    columns = ["image", "text"]
    return datasets.concatenate_datasets([dataset.select_columns(columns), prior.select_columns(columns)])
