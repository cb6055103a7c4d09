"""Where a word sits in a caption steers VAR-CLIP: measure it on CLIP's text embedding, and show it in images.

VAR-CLIP (Zhang et al. 2024) observes that the position of a word in a caption changes how strongly it guides the
image: CLIP's text tower is causal and pools the end-of-text token, so the words it reads first shape the pooled
embedding more than the ones at the end. This tool makes that visible for one key word (or phrase):

1. *Variants*: the key word moved through every position of a caption (inserted before each word of a filler
   sentence, moved out of and back into a caption, an attribute phrase moved through a list of phrases), or a
   user-given list of captions.
2. *Embedding*: each variant's L2-normalised CLIP text embedding (the pipeline's own conditioning, or a CLIP model's),
   and its cosine similarity to the key word alone, to the reference variant (the key word first) and to the caption
   without the key word. Written as ``word_position.json`` and drawn as a line plot, ``word_position.png``.
3. *Images* (``--generate``): one image per variant from the same seed, captioned, in ``word_position_grid.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..pipelines.loading import load_pipeline
from ..sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P
from ..text_encoding import encode_text
from ..utils.arguments import ArgumentParser, add_device_option, add_model_option, add_option
from ..utils.atomic import atomic_open, atomic_write
from ..utils.device import resolve_device
from ..utils.files import claim_output_folder, input_paths
from ..utils.image_grid import default_font, make_image_grid
from ..utils.pretrained import load_clip_text_encoder

__all__ = [
    "CaptionVariant",
    "insert_word_variants",
    "move_word_variants",
    "phrase_order_variants",
    "caption_list_variants",
    "word_position_of",
    "load_embedder",
    "analyze_word_position",
    "plot_similarities",
    "generate_variant_images",
    "build_parser",
    "main",
]

JSON_FILE = "word_position.json"
PLOT_FILE = "word_position.png"
GRID_FILE = "word_position_grid.png"
# the punctuation a word may carry in a caption and still count as the key word ("red," is "red")
_PUNCTUATION = ".,;:!?\"'()[]"

SERIES = {  # JSON field → (legend label, line colour)
    "similarity_to_key_word": ("to the key word alone", (214, 39, 40)),
    "similarity_to_reference": ("to the reference (key word first)", (31, 119, 180)),
    "similarity_to_filler": ("to the caption without the key word", (44, 160, 44)),
}


# ----------------------------------------------------------------------------------------------------------------------
# 1. Variants
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionVariant:
    """One caption and the position of the key word in it (the number of words before it; None when absent)."""

    caption: str
    position: int | None


def _words(text: str, name: str) -> list[str]:
    if not isinstance(text, str) or not text.split():
        raise ValueError(f"`{name}` must be a non-empty string, got {text!r}")
    return text.split()


def _normalise(word: str) -> str:
    return word.strip(_PUNCTUATION).lower()


def word_position_of(caption: str, key_word: str) -> int | None:
    """Index of the first word where ``key_word`` (one or more words) starts in ``caption``, or None.

    Matching is per whole word, ignores case and the punctuation around a word: "Red," matches "red".
    """
    words = [_normalise(w) for w in caption.split()]
    key = [_normalise(w) for w in _words(key_word, "key_word")]
    for start in range(len(words) - len(key) + 1):
        if words[start : start + len(key)] == key:
            return start
    return None


def insert_word_variants(filler: str, key_word: str) -> list[CaptionVariant]:
    """``key_word`` inserted before each word of ``filler`` and at its end: ``len(filler words) + 1`` variants.

    >>> [v.caption for v in insert_word_variants("a car", "red")]
    ['red a car', 'a red car', 'a car red']
    """
    words, key = _words(filler, "filler"), " ".join(_words(key_word, "key_word"))
    return [CaptionVariant(" ".join([*words[:i], key, *words[i:]]), i) for i in range(len(words) + 1)]


def move_word_variants(caption: str, key_word: str) -> list[CaptionVariant]:
    """``key_word``, taken out of ``caption`` where it first occurs, put back before each remaining word and at the end.

    The caption itself is among the variants. ``key_word`` must occur in ``caption`` as whole word(s).
    """
    words = _words(caption, "caption")
    start = word_position_of(caption, key_word)
    if start is None:
        raise ValueError(f"`key_word` {key_word!r} does not occur as a whole word in `caption` {caption!r}; "
                         "use `filler` to insert a word that is not in the sentence")
    n = len(key_word.split())
    key = " ".join(words[start : start + n])  # keep the caption's own spelling of the key word
    filler = " ".join(words[:start] + words[start + n :])
    if not filler:
        raise ValueError(f"`caption` {caption!r} holds nothing but the key word; there is no position to move it to")
    return insert_word_variants(filler, key)


def phrase_order_variants(phrases: Sequence[str], key_phrase: str) -> list[CaptionVariant]:
    """``key_phrase`` moved through every slot of ``phrases`` (the others keep their order), joined with spaces.

    ``key_phrase`` must be one of ``phrases``. The position is counted in words, like the other variants.
    """
    phrases = [" ".join(_words(p, "phrases")) for p in phrases]
    key = " ".join(_words(key_phrase, "key_word"))
    if len(phrases) < 2 or key not in phrases:
        raise ValueError(f"`phrases` must hold at least two phrases, one of them the key phrase {key!r}; got {phrases}")
    others = list(phrases)
    others.remove(key)
    variants = []
    for slot in range(len(others) + 1):
        order = [*others[:slot], key, *others[slot:]]
        variants.append(CaptionVariant(" ".join(order), sum(len(p.split()) for p in others[:slot])))
    return variants


def caption_list_variants(captions: Sequence[str], key_word: str | None = None) -> list[CaptionVariant]:
    """User-given captions; with ``key_word``, each one's position of it (None where it does not occur)."""
    captions = [" ".join(_words(c, "captions")) for c in captions]
    if not captions:
        raise ValueError("`captions` must hold at least one caption")
    return [CaptionVariant(c, word_position_of(c, key_word) if key_word else None) for c in captions]


# ----------------------------------------------------------------------------------------------------------------------
# 2. Embeddings and similarities
# ----------------------------------------------------------------------------------------------------------------------

Embedder = Callable[[list[str]], torch.Tensor]  # captions → (N, E) L2-normalised, float32, on CPU


def _pipeline_embedder(pipe) -> Embedder:
    device = pipe._execution_device

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        # exactly the conditioning the pipeline generates from (padding, projection, normalisation)
        return pipe.encode_prompt(texts, device=device, do_classifier_free_guidance=False)[0].float().cpu()

    return embed


def _clip_embedder(tokenizer, text_encoder) -> Embedder:
    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        # the pipelines' own text encoding: padded to CLIP's length, projected text embeds, L2-normalised
        return encode_text(tokenizer, text_encoder, texts, device="cpu", execution_device=text_encoder.device
                           ).embeds_BE.float()

    return embed


def load_embedder(
    pipe=None, text_encoder: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> Embedder:
    """The caption → normalised CLIP embedding function: from ``text_encoder`` (a CLIP model folder or Hub repo id,
    e.g. ``openai/clip-vit-large-patch14``) when given, else from the pipeline's own text encoder."""
    if text_encoder is not None:
        encoder, tokenizer = load_clip_text_encoder(text_encoder, f"`text_encoder` {str(text_encoder)!r}")
        return _clip_embedder(tokenizer, encoder.to(resolve_device(device)))
    if pipe is None:
        raise ValueError("pass a pipeline (`model`) or a CLIP `text_encoder` to embed the captions with")
    if pipe.text_encoder is None or pipe.tokenizer is None:
        raise ValueError("the pipeline has no text encoder (converted without one); pass a CLIP `text_encoder`")
    return _pipeline_embedder(pipe)


def _cosine(a_NE: torch.Tensor, b_E: torch.Tensor) -> list[float]:
    # both sides are unit vectors; clamp the rounding error that can put a self-similarity a hair above 1
    return [float(x) for x in (a_NE @ b_E).clamp(-1.0, 1.0)]


def analyze_word_position(
    variants: Sequence[CaptionVariant],
    embed: Embedder,
    key_word: str | None = None,
    filler: str | None = None,
) -> dict:
    """Cosine similarities of each variant's embedding, as the JSON-ready report.

    The reference is the first variant with the key word at position 0 (the first variant when none has). Each
    variant gets ``similarity_to_reference``, and ``similarity_to_key_word`` / ``similarity_to_filler`` when
    ``key_word`` / ``filler`` are given.
    """
    variants = list(variants)
    if not variants:
        raise ValueError("`variants` must hold at least one caption variant")
    reference_index = next((i for i, v in enumerate(variants) if v.position == 0), 0)
    captions = [v.caption for v in variants]
    extra = [t for t in (key_word, filler) if t is not None]
    embeds_NE = embed(captions + extra)
    if embeds_NE.ndim != 2 or embeds_NE.shape[0] != len(captions) + len(extra):
        raise ValueError(f"the embedder returned shape {tuple(embeds_NE.shape)} for {len(captions) + len(extra)} texts")
    variant_NE = embeds_NE[: len(captions)]
    sims = {"similarity_to_reference": _cosine(variant_NE, variant_NE[reference_index])}
    if key_word is not None:
        sims["similarity_to_key_word"] = _cosine(variant_NE, embeds_NE[len(captions)])
    if filler is not None:
        sims["similarity_to_filler"] = _cosine(variant_NE, embeds_NE[-1])
    rows = []
    for i, variant in enumerate(variants):
        row = {"index": i, "caption": variant.caption, "position": variant.position,
               "num_words": len(variant.caption.split())}
        row.update({name: sims[name][i] if name in sims else None for name in SERIES})
        rows.append(row)
    return {
        "key_word": key_word,
        "filler": filler,
        "reference_index": reference_index,
        "reference": captions[reference_index],
        "embedding_dim": int(embeds_NE.shape[1]),
        "variants": rows,
    }


# ----------------------------------------------------------------------------------------------------------------------
# The plot (matplotlib)
# ----------------------------------------------------------------------------------------------------------------------


def plot_similarities(report: dict, width: int = 900, height: int = 520) -> Image.Image:
    """A line plot of the report's similarity series against the key word's position, with the captions listed below.

    x is the key word's position (words before it) when every variant has a distinct one, else the variant's index.
    ``width`` × ``height`` is the plot's size in pixels; the caption list adds one line per variant under it.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as error:
        raise ImportError("the plot needs matplotlib: pip install 'var-clip[analysis]'") from error

    rows = report["variants"]
    positions = [r["position"] for r in rows]
    by_position = all(p is not None for p in positions) and len(set(positions)) == len(positions)
    xs = positions if by_position else [r["index"] for r in rows]
    series = {name: [r[name] for r in rows] for name in SERIES if all(r[name] is not None for r in rows)}
    captions = [f"{x}: {r['caption']}" for x, r in zip(xs, rows)]

    dpi, line_px = 100, 17
    list_px = line_px * (len(captions) + 1) + 10
    fig = Figure(figsize=(width / dpi, (height + list_px) / dpi), dpi=dpi)
    ax = fig.add_axes((84 / width, 1 - (height - 64) / (height + list_px), 1 - 108 / width,
                       (height - 64 - 86) / (height + list_px)))
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    for name, values in series.items():
        label, rgb = SERIES[name]
        ax.plot([xs[i] for i in order], [values[i] for i in order], marker="o", markersize=5, linewidth=2,
                color=tuple(c / 255 for c in rgb), label=label)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=20, integer=True))
    # word order can move CLIP similarities by a thousandth: no offset notation, enough decimals to see it
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.set_xlabel("position of the key word (words before it)" if by_position else "caption variant")
    ax.set_ylabel("cosine similarity")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), frameon=False, fontsize=9)
    key = report.get("key_word")
    fig.suptitle("Cosine similarity of the CLIP text embedding " + (f'as "{key}" moves' if key else "per caption"),
                 y=1 - 12 / (height + list_px), va="top", fontsize=14)

    # the captions, so each x value can be read
    text_y = 1 - (height + 4) / (height + list_px)
    fig.text(84 / width, text_y, "captions:", va="top", fontsize=9)
    max_chars = int((width - 108) / 6.2)
    for k, line in enumerate(captions, start=1):
        line = line if len(line) <= max_chars else line[: max_chars - 1] + "…"
        fig.text(84 / width, text_y - k * line_px / (height + list_px), line, va="top", fontsize=9, color="0.2")

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------------
# 3. Images
# ----------------------------------------------------------------------------------------------------------------------


def generate_variant_images(
    pipe,
    variants: Sequence[CaptionVariant],
    seed: int = 0,
    batch_size: int = 8,
    prompt_embeds: torch.Tensor | None = None,
    **call_kwargs,
) -> list[Image.Image]:
    """One image per variant, each drawn with its own generator seeded with ``seed``, so the only difference between
    two images is the caption. ``prompt_embeds`` (N, E) replaces the captions for pipelines without a text encoder;
    other keyword arguments (``guidance_scale``, ``top_k``, ``top_p``, ``more_smooth``) go to the pipeline."""
    device = pipe._execution_device
    images = []
    for start in range(0, len(variants), batch_size):
        chunk = list(variants[start : start + batch_size])
        generators = [torch.Generator(device=device).manual_seed(seed) for _ in chunk]
        if prompt_embeds is not None:
            out = pipe(prompt_embeds=prompt_embeds[start : start + len(chunk)], generator=generators, **call_kwargs)
        else:
            out = pipe(prompt=[v.caption for v in chunk], generator=generators, **call_kwargs)
        images.extend(out.images)
    return images


def _display_side(side: int, minimum: int = 128) -> int:
    # enlarge small images by a whole factor so that every token pixel stays a crisp block
    return side * max(1, math.ceil(minimum / side))


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="var-clip word-position",
        description="How the position of a word in a caption changes VAR-CLIP's CLIP text embedding and its images.",
    )
    add_model_option(parser, "a VARCLIPPipeline folder or Hub repo id, whose text encoder embeds the captions and "
                             "which draws the images of --generate")
    add_option(parser, "text-encoder", default=None,
                        help="a CLIP model folder or Hub repo id to embed the captions with instead of the "
                             "pipeline's (images still come from the pipeline's own text encoder when it has one)")
    source = parser.add_mutually_exclusive_group(required=True)
    add_option(source, "caption", help="a caption containing --key-word; the key word is moved through it")
    add_option(source, "filler", help="a sentence without the key word; --key-word is inserted at every position")
    add_option(source, "phrases", nargs="+",
                        help="attribute phrases; the one equal to --key-word moves through them")
    add_option(source, "captions", type=Path, help="a text file with one caption per line")
    add_option(parser, "key-word", default=None, help="the word (or phrase) whose position varies")
    add_option(parser, "output-dir", type=Path, required=True, help="where to write the JSON, the plot and the grid")
    add_option(parser, "seed", type=int, default=0, help="seed of every generated image (default: 0)")
    add_option(parser, "generate", action="store_true", help="also generate one image per variant (same seed)")
    add_option(parser, "guidance-scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
               help=f"classifier-free guidance (default: {DEFAULT_GUIDANCE_SCALE})")
    add_option(parser, "top-k", type=int, default=DEFAULT_TOP_K,
               help=f"top-k sampling filter (default: {DEFAULT_TOP_K})")
    add_option(parser, "top-p", type=float, default=DEFAULT_TOP_P,
               help=f"nucleus sampling filter (default: {DEFAULT_TOP_P})")
    add_option(parser, "batch-size", type=int, default=8, help="images per pipeline call (default: 8)")
    add_option(parser, "cols", type=int, default=None, help="images per row in the grid (default: up to 6)")
    add_device_option(parser)
    return parser


def _variants_from_args(args) -> tuple[list[CaptionVariant], str | None]:
    """The variants and the filler (the caption without the key word) the arguments describe."""
    if args.captions is not None:
        if not args.captions.is_file():
            raise ValueError(f"`captions` {str(args.captions)!r} is not a file")
        try:
            text = args.captions.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"`captions` {str(args.captions)!r} is not UTF-8 text (byte {error.start}); save it as "
                             "UTF-8") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return caption_list_variants(lines, args.key_word), None
    if args.key_word is None:
        raise ValueError("`key_word` is required with --caption, --filler and --phrases")
    if args.filler is not None:
        return insert_word_variants(args.filler, args.key_word), " ".join(args.filler.split())
    if args.caption is not None:
        variants = move_word_variants(args.caption, args.key_word)
        position = word_position_of(args.caption, args.key_word)
        words = args.caption.split()
        return variants, " ".join(words[:position] + words[position + len(args.key_word.split()) :])
    phrases = [" ".join(p.split()) for p in args.phrases]
    key = " ".join(args.key_word.split())
    return phrase_order_variants(phrases, key), " ".join(p for p in phrases if p != key)


def run(args: argparse.Namespace) -> dict:
    """Do what the parsed command line asks; returns the report written to ``word_position.json``."""
    # 1. what to compare, and where it goes (refused before any compute)
    variants, filler = _variants_from_args(args)
    if args.batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {args.batch_size}")
    if args.cols is not None and args.cols < 1:
        raise ValueError(f"`cols` must be a positive int, got {args.cols}")
    claim_output_folder(args.output_dir, "--output-dir", "word-position", input_paths(args, ("model", "captions")),
                        own_files=re.compile("^(" + "|".join(map(re.escape, (JSON_FILE, PLOT_FILE, GRID_FILE))) + ")$"))

    # 2. embeddings and similarities
    pipe = None  # a --text-encoder alone embeds the captions; images, or no --text-encoder, need the pipeline
    if args.generate or args.text_encoder is None:
        pipe = load_pipeline(args.model, device=args.device, flag="--model")  # None: the embedded default model
        pipe.set_progress_bar_config(disable=True)
    embed = load_embedder(pipe, args.text_encoder, args.device)
    report = analyze_word_position(variants, embed, key_word=args.key_word, filler=filler)
    report["model"] = None if pipe is None else str(args.model or "default")
    report["text_encoder"] = str(args.text_encoder if args.text_encoder is not None else report["model"])
    report["files"] = {"plot": PLOT_FILE, "grid": None}
    outputs: dict[str, Image.Image] = {PLOT_FILE: plot_similarities(report)}

    # 3. images
    if args.generate:
        prompt_embeds = None
        if pipe.text_encoder is None or pipe.tokenizer is None:
            prompt_embeds = embed([v.caption for v in variants])  # the --text_encoder's embeddings
        images = generate_variant_images(pipe, variants, seed=args.seed, batch_size=args.batch_size,
                                         prompt_embeds=prompt_embeds, guidance_scale=args.guidance_scale,
                                         top_k=args.top_k, top_p=args.top_p)
        side = _display_side(max(images[0].size))
        cols = args.cols or min(len(images), 6)
        labels = [f"[{v.position if v.position is not None else '-'}] {v.caption}" for v in variants]
        outputs[GRID_FILE] = make_image_grid(images, labels, cols=cols, cell_size=side, font=default_font(13))
        report["files"]["grid"] = GRID_FILE
        report["generation"] = {"seed": args.seed, "guidance_scale": args.guidance_scale, "top_k": args.top_k,
                                "top_p": args.top_p, "image_size": list(images[0].size), "grid_cols": cols,
                                "grid_cell_size": side}

    # 4. write everything into a staging folder, then move the files into place
    _write_outputs(args.output_dir, report, outputs)
    return report


def _write_outputs(output_dir: Path, report: dict, images: dict[str, Image.Image]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        atomic_write(output_dir / name, lambda tmp, image=image: image.save(tmp, format="PNG"))
    if GRID_FILE not in images and (output_dir / GRID_FILE).exists():
        (output_dir / GRID_FILE).unlink()  # a grid from an earlier run would not match this report
    # the report last: whoever reads it finds the files it names
    with atomic_open(output_dir / JSON_FILE, "w") as handle:
        handle.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"{'position':>8}  {'to key':>7}  {'to ref':>7}  caption")
    for row in report["variants"]:
        to_key = "" if row["similarity_to_key_word"] is None else f"{row['similarity_to_key_word']:.4f}"
        position = "-" if row["position"] is None else row["position"]
        print(f"{position!s:>8}  {to_key:>7}  {row['similarity_to_reference']:7.4f}  {row['caption']}")
    print(f"wrote {args.output_dir / JSON_FILE}, {args.output_dir / PLOT_FILE}"
          + (f", {args.output_dir / GRID_FILE}" if report["files"]["grid"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
