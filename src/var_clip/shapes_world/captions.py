"""Captions of the shapes world: how they are written from the templates and paraphrases of ``spec``, and the
parser that reads them back."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..vocabulary import agree_articles, article
from .extension import WorldExtension
from .scenes import Scene
from .spec import (
    CAPTION_PREFIXES,
    COLORS,
    HELD_OUT_PAIRS,
    POSITION_PHRASES,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
)


def noun_phrase(color: str, shape: str, size: str | None = None) -> str:
    """``"a [size] <color> <shape>"``, the way every caption names an object."""
    words = f"{size} {color} {shape}" if size else f"{color} {shape}"
    return f"{article(words)} {words}"


def rename_word(caption: str, word: str, new_word: str) -> str:
    """``caption`` with the whole word ``word`` written as ``new_word`` and its article made to agree
    (``rename_word("an orange circle", "circle", "ball")`` is ``"an orange ball"``)."""
    return agree_articles(re.sub(rf"\b{re.escape(word)}\b", new_word, caption))


def caption_variants(scene: Scene, extension: WorldExtension | None = None) -> list[str]:
    """Every caption the templates produce for ``scene``'s objects, position, relation and size word.

    One object: ``PREFIX + np [+ " " + position phrase]``; two objects: ``PREFIX + np + " " + relation phrase + " " +
    np``, with the prefixes of ``CAPTION_PREFIXES`` and the paraphrases of ``POSITION_PHRASES``/``RELATION_PHRASES``
    (and, with ``extension``, the phrases of its places).
    """
    if len(scene.objects) == 1:
        (obj,) = scene.objects
        noun = noun_phrase(obj.color, obj.shape, scene.size_word)
        phrases = POSITION_PHRASES if extension is None else extension.position_phrases
        if scene.position is not None and scene.position not in phrases:
            raise ValueError(f"scene.position must be one of {list(phrases)}, got {scene.position!r} (an extension's "
                             "place needs `extension=`)")
        tails = [f" {p}" for p in phrases[scene.position]] if scene.position else [""]
        return [f"{prefix}{noun}{tail}" for prefix in CAPTION_PREFIXES for tail in tails]
    if len(scene.objects) == 2:
        if scene.relation not in RELATION_PHRASES:
            raise ValueError(f"scene.relation must be one of {list(RELATIONS)} for two objects, got {scene.relation!r}")
        a, b = scene.objects
        first, second = noun_phrase(a.color, a.shape), noun_phrase(b.color, b.shape)
        phrases = RELATION_PHRASES[scene.relation]
        return [f"{prefix}{first} {phrase} {second}" for prefix in CAPTION_PREFIXES for phrase in phrases]
    raise ValueError(f"scene.objects must hold one or two objects, got {len(scene.objects)}")


@dataclass(frozen=True)
class ObjectSpec:
    """One object a caption names: colour, shape and, optionally, size."""

    color: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption names: one or two objects, a position (one object) or a relation (two objects)."""

    objects: tuple[ObjectSpec, ...]
    position: str | None = None
    relation: str | None = None

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(o.color for o in self.objects)

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(o.shape for o in self.objects)

    @property
    def size(self) -> str | None:
        """The size named for the first object (the only one of a one-object caption)."""
        return self.objects[0].size

    @property
    def has_held_out_pair(self) -> bool:
        return any((o.color, o.shape) in HELD_OUT_PAIRS for o in self.objects)


_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "center": "center"}
_POSITION_WORDS.update({"centre": "center", "middle": "center"})  # spellings a user may write for "center"


def _parse_object(tokens: list[str], caption: str, extension: WorldExtension | None = None) -> ObjectSpec:
    palette, all_sizes = (COLORS, SIZES) if extension is None else (extension.palette, extension.all_sizes)
    colors = [t for t in tokens if t in palette]
    shapes = [t for t in tokens if t in SHAPES]
    sizes = [t for t in tokens if t in all_sizes]
    for kind, found in (("color", colors), ("shape", shapes)):
        if len(found) != 1:
            raise ValueError(
                f"cannot parse caption {caption!r}: expected one {kind} per object, found {found or 'none'}"
            )
    if len(sizes) > 1:
        raise ValueError(f"cannot parse caption {caption!r}: expected at most one size per object, found {sizes}")
    return ObjectSpec(colors[0], shapes[0], sizes[0] if sizes else None)


def _find_places(tokens: list[str], extension: WorldExtension) -> list[str]:
    """The extension's places named in ``tokens`` (longest first), each occurrence's tokens blanked in place."""
    found = []
    for place in sorted(extension.positions, key=lambda p: -len(p.split())):
        words = place.split()
        for i in range(len(tokens) - len(words) + 1):
            if tokens[i : i + len(words)] == words:
                found.append(place)
                tokens[i : i + len(words)] = [""] * len(words)
    return found


def parse_caption(caption: str, extension: WorldExtension | None = None) -> CaptionSpec:
    """Read the colour(s), shape(s), size, position and relation a caption names.

    Parses every caption of ``caption_variants`` and free-form ones in the spec's vocabulary, case and punctuation
    ignored ("A small red circle, on the left."). Words outside the vocabulary are skipped. "left"/"right" followed
    by "of", "above" and "below" are relations; "left", "right", "top", "bottom", "center" alone are positions.
    Raises ``ValueError`` naming the caption when it names no object, several per role, or mixes a relation and a
    position. With ``extension`` its colour and size words count as colours and sizes, its places ("top left
    corner") as positions, and its synonyms ("ball") as the world words they rename ("circle").
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}")
    tokens = "".join(ch if ch.isalpha() else " " for ch in caption.lower()).split()
    # an extension's place ("top left corner") is read first, so that its words are not read as world positions
    places = [] if extension is None else _find_places(tokens, extension)
    tokens = [token for token in tokens if token]
    if extension is not None:  # a new name of a world colour or shape reads as that colour or shape
        tokens = [extension.synonyms.get(token, token) for token in tokens]

    relations: list[tuple[int, int, str]] = []  # (first token, one past last token, relation)
    for i, token in enumerate(tokens):
        if token in ("left", "right") and i + 1 < len(tokens) and tokens[i + 1] == "of":
            relations.append((i, i + 2, f"{token} of"))
        elif token in ("above", "below"):
            relations.append((i, i + 1, token))
    relation_tokens = {j for start, end, _ in relations for j in range(start, end)}
    positions = places + [_POSITION_WORDS[t] for j, t in enumerate(tokens)
                          if t in _POSITION_WORDS and j not in relation_tokens]

    if len(relations) > 1:
        raise ValueError(f"cannot parse caption {caption!r}: it names several relations {[r for *_, r in relations]}")
    if relations:
        start, end, relation = relations[0]
        if positions:
            raise ValueError(
                f"cannot parse caption {caption!r}: a two-object caption names no position, found {positions}"
            )
        subject = _parse_object(tokens[:start], caption, extension)
        reference = _parse_object(tokens[end:], caption, extension)
        return CaptionSpec((subject, reference), relation=relation)
    if len(positions) > 1:
        raise ValueError(f"cannot parse caption {caption!r}: it names several positions {positions}")
    return CaptionSpec((_parse_object(tokens, caption, extension),), position=positions[0] if positions else None)
