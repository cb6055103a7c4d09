"""Does a phrase's place in the caption change what gets drawn? Measured with the shapes-world evaluator.

VAR-CLIP (Zhang et al. 2024, §4) reports that where a word sits in a caption changes how CLIP guides the image.
``var-clip word-position`` shows this on the pooled text embedding; this study measures it on the images: a key
phrase (a position, a colour word, a relation) moves through captions that keep their meaning, every variant is
generated with the same seeds, and each image is scored by the spec's evaluator against the *canonical* caption (the
training captions' word order), so only the wording changes between variants, never what counts as correct.

Each variant also gets the cosine between its pooled embedding and the canonical caption's — the quantity
``word-position`` plots — so the two views sit side by side. Run it on several models (for example pooled-only and
token-level conditioning) to compare how each depends on word order:

    var-clip phrase-position --model pooled/ --model tokens/ --output-dir phrase_position/

Writes ``phrase_position.json`` and ``phrase_position.png`` (whole-caption accuracy per variant, one line per model).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import shapes_world as sw
from ..utils.arguments import ArgumentParser, add_option, int_at_least
from ..utils.atomic import atomic_write
from ..utils.files import claim_output_folder

__all__ = ["PhraseVariant", "FAMILIES", "family_variants", "measure_phrase_position", "plot_phrase_position",
           "build_parser", "main"]

JSON_FILE = "phrase_position.json"
PLOT_FILE = "phrase_position.png"


@dataclass(frozen=True)
class PhraseVariant:
    """One wording of a canonical caption: ``name`` says where the key phrase sits."""

    name: str
    caption: str


# A family: the key phrase it moves, and how each variant words a canonical (noun phrase(s), phrase) triple. Every
# variant uses only words of the training captions; "trained order" is the wording the training captions use.
Wording = Callable[[str, str, str | None], str]
FAMILIES: dict[str, tuple[str, dict[str, Wording]]] = {
    "position": ("where the object is (one object)", {
        "phrase first": lambda np_, phrase, _: f"{phrase}, {np_}",
        "phrase after 'there is'": lambda np_, phrase, _: f"there is, {phrase}, {np_}",
        "phrase last (trained order)": lambda np_, phrase, _: f"{np_} {phrase}",
        "phrase last, after a prefix": lambda np_, phrase, _: f"an image of {np_} {phrase}",
    }),
    "color": ("the colour word (one object)", {
        "colour first": lambda color, shape, _: f"{color}, {sw.article(shape)} {shape}",
        "colour before the shape (trained order)": lambda color, shape, _: f"{sw.article(color)} {color} {shape}",
        "colour last": lambda color, shape, _: f"{sw.article(shape)} {shape}, {color}",
    }),
    "relation": ("the relation phrase (two objects)", {
        "relation first": lambda a, phrase, b: f"{phrase} {b}, {a}",
        "relation between the objects (trained order)": lambda a, phrase, b: f"{a} {phrase} {b}",
        "relation between, after a prefix": lambda a, phrase, b: f"there is {a} {phrase} {b}",
    }),
}


def family_variants(family: str) -> list[tuple[str, list[PhraseVariant]]]:
    """``(canonical caption, its variants)`` for every prompt of ``family``, from the report's seen prompts."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {list(FAMILIES)}, got {family!r}")
    _, wordings = FAMILIES[family]
    out = []
    if family == "relation":
        for prompt in sw.evaluation_prompts(held_out=False, num_objects=2):
            spec = sw.parse_caption(prompt)
            a, b = (sw.noun_phrase(o.color, o.shape) for o in spec.objects)
            phrase = sw.RELATION_PHRASES[spec.relation][0]
            out.append((prompt, [PhraseVariant(n, w(a, phrase, b)) for n, w in wordings.items()]))
        return out
    for prompt in sw.evaluation_prompts(held_out=False, num_objects=1):
        spec = sw.parse_caption(prompt)
        (obj,) = spec.objects
        if family == "position":
            canonical = f"{sw.noun_phrase(obj.color, obj.shape)} {sw.POSITION_PHRASES[spec.position][0]}"
            np_, phrase = sw.noun_phrase(obj.color, obj.shape), sw.POSITION_PHRASES[spec.position][0]
            out.append((canonical, [PhraseVariant(n, w(np_, phrase, None)) for n, w in wordings.items()]))
        else:
            canonical = sw.noun_phrase(obj.color, obj.shape)
            out.append((canonical, [PhraseVariant(n, w(obj.color, obj.shape, None)) for n, w in wordings.items()]))
    return out


@torch.no_grad()
def measure_phrase_position(pipe, samples_per_prompt: int = 4, seed: int = 0, batch_size: int = 16,
                            **sampling_kwargs) -> dict:
    """Whole-caption accuracy and pooled-embedding similarity of every variant of every family, for one pipeline.

    Sample ``j`` of prompt ``i`` uses the seed ``seed + 1000·i + j`` for every variant, so variants differ only in
    wording. Returns ``{family: {variant: {"accuracy", "similarity", "num_images"}}}``.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"`samples_per_prompt` must be >= 1, got {samples_per_prompt}")
    report = {}
    for family in FAMILIES:
        rows = family_variants(family)
        names = [v.name for v in rows[0][1]]
        jobs = [(canonical, v, seed + 1000 * i + j) for i, (canonical, variants) in enumerate(rows)
                for v in variants for j in range(samples_per_prompt)]
        hits = {n: 0 for n in names}
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            generators = [torch.Generator().manual_seed(s) for *_, s in chunk]
            images = pipe([v.caption for _, v, _ in chunk], generator=generators, **sampling_kwargs).images
            for (canonical, variant, _), image in zip(chunk, images):
                hits[variant.name] += bool(sw.score_image(image.resize((sw.IMAGE_SIZE,) * 2), canonical)["caption"])
        # the quantity word-position plots: cosine between the variant's pooled embedding and the canonical's
        canon = pipe.encode_prompt([c for c, _ in rows], do_classifier_free_guidance=False).prompt_embeds.float()
        family_report = {}
        for k, name in enumerate(names):
            embeds = pipe.encode_prompt([vs[k].caption for _, vs in rows], do_classifier_free_guidance=False)
            cosine = (embeds.prompt_embeds.float() * canon).sum(-1).mean().item()
            family_report[name] = {"accuracy": hits[name] / (len(rows) * samples_per_prompt), "similarity": cosine,
                                   "num_images": len(rows) * samples_per_prompt,
                                   "example": rows[0][1][k].caption}
        report[family] = family_report
    return report


def plot_phrase_position(results: dict[str, dict], path: Path) -> None:
    """One panel per family: whole-caption accuracy of each variant, one line per model (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the plot needs matplotlib: pip install 'var-clip[analysis]'") from error
    families = list(FAMILIES)
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        for model, report in results.items():
            names = list(report[family])
            ax.plot(range(len(names)), [100 * report[family][n]["accuracy"] for n in names], marker="o", label=model)
        ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], rotation=20, ha="right", fontsize=8)
        ax.set_title(FAMILIES[family][0], fontsize=10)
        ax.set_ylim(0, 100)
        ax.set_ylabel("whole caption correct (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="var-clip phrase-position", description=__doc__.split("\n\n")[0])
    add_option(parser, "model", action="append", default=None,
               help="a VARCLIPPipeline folder or Hub repo id; repeat to compare models (default: the embedded "
                    "shapes-world model)")
    add_option(parser, "label", action="append", default=None, help="a name per --model for the table and plot")
    add_option(parser, "output-dir", default="phrase_position",
               help="where phrase_position.json and .png go (default: phrase_position)")
    add_option(parser, "samples-per-prompt", type=int_at_least(1), default=4,
               help="images per caption variant and prompt (default 4, the shapes-world report's minimum)")
    add_option(parser, "seed", type=int, default=0,
               help="base seed: sample j of prompt i uses seed + 1000·i + j in every variant (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import var_clip

    from ..pipelines import VARCLIPPipeline

    models = args.model or [var_clip.DEFAULT_MODEL]
    labels = args.label or [Path(m).name for m in models]
    if len(labels) != len(models):
        raise SystemExit(f"give one --label per --model ({len(models)} models, {len(labels)} labels)")
    output = claim_output_folder(args.output_dir, "--output-dir", "phrase-position",
                                 [m for m in models if Path(m).exists()],
                                 own_files=re.compile(rf"^({re.escape(JSON_FILE)}|{re.escape(PLOT_FILE)})$"))
    results = {}
    for label, model in zip(labels, models):
        pipe = VARCLIPPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)
        results[label] = measure_phrase_position(pipe, args.samples_per_prompt, args.seed)
    atomic_write(output / JSON_FILE, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    plot_phrase_position(results, output / PLOT_FILE)
    for family in FAMILIES:
        print(f"\n{FAMILIES[family][0]}")
        for name in results[labels[0]][family]:
            cells = "  ".join(f"{label}: {100 * results[label][family][name]['accuracy']:5.1f} % "
                              f"(cos {results[label][family][name]['similarity']:.3f})" for label in labels)
            print(f"  {name:<46} {cells}")
    print(f"\nwrote {output / JSON_FILE} and {output / PLOT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
