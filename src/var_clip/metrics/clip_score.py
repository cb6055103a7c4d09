"""CLIP score (Hessel et al. 2021) of generated images against their prompts.

CLIP score = 100 · max(cos(image embedding, text embedding), 0) per image, averaged over the images, with the
projected embeddings of a transformers ``CLIPModel``. (torchmetrics' ``CLIPScore`` 1.9 cannot read transformers 5's
feature outputs, and floors the mean rather than each image's score, so the few lines are written here.) The model is
loaded from a local folder, or a Hub id, which offline fails with one line saying how to supply a folder.

    var-clip eval-clip-score --images samples/ --clip-model path/to/clip-vit-large-patch14
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..utils.arguments import OneLineParser, add_device_option, add_option, int_at_least
from ..utils.atomic import atomic_open
from ..utils.files import check_writable
from ..utils.records import read_jsonl
from .images import WeightsError, image_files, iter_image_batches

__all__ = ["CLIP_HELP", "build_parser", "compute_clip_score", "load_clip", "main"]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_HELP = ("offline, pass --clip-model DIR: a folder holding a transformers CLIPModel and its CLIPProcessor "
             f"(`save_pretrained` of both, e.g. of {DEFAULT_CLIP} on a machine with internet)")


def load_clip(model: str | Path):
    """A CLIP model and its processor from a folder or Hub id; a missing model is one :class:`WeightsError` line."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(str(model)).eval(), CLIPProcessor.from_pretrained(str(model))
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"could not load the CLIP model {str(model)!r} ({first}); {CLIP_HELP}") from None


def _prompts(folder: Path, column: str) -> list[str]:
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise ValueError(f"{str(folder)!r} has no metadata.jsonl with the prompts "
                         "(write it with var-clip generate-batch)")
    records = read_jsonl(metadata, [column], {column: str}, fix=f"every line needs a `{column}` string "
                                                               "(or pass --prompt-column)")
    if not records:
        raise ValueError(f"{metadata} holds no lines (one per image, with its `{column}`)")
    return [r[column] for r in records]


def compute_clip_score(folder: str | Path, model, processor, prompt_column: str = "text", batch_size: int = 32,
                       device: str = "cpu", show_progress: bool = False) -> float:
    """Mean CLIP score of the images of ``folder`` against the prompts of its ``metadata.jsonl``."""
    import torch
    from tqdm.auto import tqdm

    folder = Path(folder)
    prompts = _prompts(folder, prompt_column)
    if len(prompts) != len(image_files(folder)):
        raise ValueError(f"{str(folder)!r}: {len(prompts)} prompts for {len(image_files(folder))} images")
    model = model.to(device)
    max_length = model.config.text_config.max_position_embeddings
    scores, done = [], 0
    with torch.no_grad(), tqdm(total=len(prompts), unit="img", desc="CLIP score", disable=not show_progress) as bar:
        for images_N3HW in iter_image_batches(folder, batch_size):
            texts = prompts[done : done + len(images_N3HW)]
            inputs = processor(text=texts, images=list(images_N3HW.permute(0, 2, 3, 1).numpy()), return_tensors="pt",
                               padding=True, truncation=True, max_length=max_length)
            out = model(**inputs.to(device))
            cosine_N = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
            scores.append((100 * cosine_N).clamp(min=0).cpu())
            done += len(images_N3HW)
            bar.update(len(images_N3HW))
    return float(torch.cat(scores).double().mean())


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="var-clip eval-clip-score", description=__doc__)
    add_option(p, "images", required=True, help="a folder written by generate-batch (images + metadata.jsonl)")
    add_option(p, "clip-model", default=DEFAULT_CLIP,
               help=f"CLIP folder or Hub id (default {DEFAULT_CLIP}); {CLIP_HELP}")
    add_option(p, "prompt-column", default="text", help="metadata.jsonl field with the prompt (default text)")
    add_option(p, "batch-size", type=int_at_least(1), default=32, help="images per forward pass (default 32)")
    add_device_option(p)
    add_option(p, "output-json", default=None, help="also write {'clip_score': ..., ...} to this JSON file")
    add_option(p, "no-progress-bar", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..utils.device import resolve_device

    args = build_parser().parse_args(argv)
    try:
        if args.output_json:  # before the model is loaded, not after the scoring
            check_writable(args.output_json, "--output-json", (Path(args.images) / "metadata.jsonl",))
        model, processor = load_clip(args.clip_model)
        score = compute_clip_score(args.images, model, processor, args.prompt_column, args.batch_size,
                                   resolve_device(args.device),
                                   show_progress=not args.no_progress_bar)
    except (WeightsError, ValueError, OSError) as error:
        print(f"var-clip eval-clip-score: error: {error}", file=sys.stderr)
        return 1
    if args.output_json:
        with atomic_open(args.output_json, "w") as handle:
            json.dump({"clip_score": score, "images": str(args.images), "clip_model": str(args.clip_model)}, handle,
                      indent=2)
            handle.write("\n")
    print(f"CLIP score {score:.4f} ({len(image_files(Path(args.images)))} images, {args.clip_model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
