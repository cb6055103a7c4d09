"""Hard negative captions for contrastive training: small edits that change what a caption says.

CLIP trained on image–caption pairs alone learns a bag of words: "a red circle above a blue square" and "a red circle
below a blue square" get nearly the same embedding, because a random batch rarely holds two images that only these
words tell apart (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words"). NegCLIP's
remedy is to add, for each image, captions edited so they no longer describe it, as extra text candidates of the
image→text loss. A text encoder trained this way must encode word order, spatial words and which attribute belongs
to which object, which is what a text-to-image model conditioned on a single pooled embedding needs.

The edits here are rule-based and work on any English caption; each returns a caption that contradicts the original
(edits that would leave it unchanged are skipped):

- ``antonym``: one spatial or size word becomes its opposite (left ↔ right, above ↔ below, top ↔ bottom, small ↔
  large, …);
- ``swap_relation``: "X <relation> Y" becomes "Y <relation> X" (articles fixed: "an orange …");
- ``swap_attribute``: two different colour words, or two different shape words, trade places;
- ``replace_attribute``: one colour (or shape) word becomes another one the caption does not use.

Given the colour–shape pairs that occur in the training captions (:func:`attribute_pairs`), edits that would create
any other pair are dropped, so compositions held out of the data stay unseen by the text encoder, negatives
included.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["EDITS", "attribute_pairs", "caption_hard_negatives"]

COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray")
SHAPE_WORDS = ("circle", "square", "triangle", "rectangle", "star", "hexagon", "ellipse", "diamond")
ANTONYMS = {
    "left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom", "bottom": "top",
    "over": "under", "under": "over", "small": "large", "large": "small", "big": "small", "tiny": "large",
    "upper": "lower", "lower": "upper",
}
# longest first, so "to the left of" wins over "left of"
RELATION_PHRASES = tuple(sorted((
    "to the left of", "to the right of", "on the left of", "on the right of", "left of", "right of", "above",
    "below", "under", "over", "on top of", "underneath", "beneath",
), key=len, reverse=True))
ARTICLE_RE = re.compile(r"\b(a|an|A|An)\s+(\w)")
EDITS = ("antonym", "swap_relation", "swap_attribute", "replace_attribute")


def _fix_articles(text: str) -> str:
    def fix(match: re.Match) -> str:
        article, first = match.group(1), match.group(2)
        new = "an" if first.lower() in "aeiou" else "a"
        return (new.capitalize() if article[0].isupper() else new) + " " + first

    return ARTICLE_RE.sub(fix, text)


def _words(caption: str) -> list[str]:
    return re.findall(r"\w+|\W+", caption)


def _antonym_edits(caption: str) -> list[str]:
    tokens = _words(caption)
    edits = []
    for i, token in enumerate(tokens):
        opposite = ANTONYMS.get(token.lower())
        if opposite is not None:
            edits.append("".join(tokens[:i] + [opposite] + tokens[i + 1 :]))
    return edits


def _swap_relation_edits(caption: str) -> list[str]:
    lowered = caption.lower()
    for phrase in RELATION_PHRASES:
        match = re.search(rf"\b{re.escape(phrase)}\b", lowered)
        if match is None:
            continue
        left, right = caption[: match.start()].rstrip(), caption[match.end() :].strip()
        # the subject is the last noun phrase before the relation: from its article on ("a photo of |a red square")
        articles = list(re.finditer(r"\b(a|an|the)\b", left, flags=re.IGNORECASE))
        if not articles or not right:
            return []
        start = articles[-1].start()
        prefix, subject = left[:start], left[start:]
        trailing = re.search(r"[.!?]*$", right).group(0)
        obj = right[: len(right) - len(trailing)] if trailing else right
        swapped = _fix_articles(f"{prefix}{obj} {caption[match.start():match.end()]} {subject}{trailing}")
        return [swapped] if swapped.lower() != lowered else []
    return []


def _category_edits(caption: str, vocabulary: Sequence[str]) -> tuple[list[str], list[str]]:
    """(swaps of two different words of the category, replacements of one by an unused word of it)."""
    tokens = _words(caption)
    where = [i for i, t in enumerate(tokens) if t.lower() in vocabulary]
    used = {tokens[i].lower() for i in where}
    swaps, replacements = [], []
    for a in range(len(where)):
        for b in range(a + 1, len(where)):
            i, j = where[a], where[b]
            if tokens[i].lower() != tokens[j].lower():
                edited = list(tokens)
                edited[i], edited[j] = tokens[j], tokens[i]
                swaps.append(_fix_articles("".join(edited)))
    for i in where:
        for word in vocabulary:
            if word not in used:
                edited = list(tokens)
                edited[i] = word
                replacements.append(_fix_articles("".join(edited)))
    return swaps, replacements


def attribute_pairs(captions: Sequence[str], colors: Sequence[str] = COLOR_WORDS,
                    shapes: Sequence[str] = SHAPE_WORDS) -> set[tuple[str, str]]:
    """The (colour, shape) pairs written "colour shape" in ``captions``, lower-cased."""
    pairs = set()
    for caption in captions:
        words = re.findall(r"\w+", caption.lower())
        pairs.update((a, b) for a, b in zip(words, words[1:]) if a in colors and b in shapes)
    return pairs


def caption_hard_negatives(caption: str, num_negatives: int, rng: np.random.Generator,
                           colors: Sequence[str] = COLOR_WORDS, shapes: Sequence[str] = SHAPE_WORDS,
                           allowed_pairs: set[tuple[str, str]] | None = None) -> list[str]:
    """Up to ``num_negatives`` distinct edited captions that contradict ``caption``, drawn with ``rng``.

    Edits that change the layout (antonyms, relation swaps) and attribute binding (swaps) are preferred over plain
    replacements, which random in-batch negatives already cover. Only words of ``colors`` and ``shapes`` are used in
    replacements; with ``allowed_pairs`` (see :func:`attribute_pairs`), no edit creates another colour–shape pair.
    Fewer are returned when fewer edits apply (none for a caption without a colour, shape, spatial or size word).
    """
    if num_negatives < 0:
        raise ValueError(f"`num_negatives` must be >= 0, got {num_negatives}")
    color_swaps, color_replacements = _category_edits(caption, colors)
    shape_swaps, shape_replacements = _category_edits(caption, shapes)
    preferred = _antonym_edits(caption) + _swap_relation_edits(caption) + color_swaps + shape_swaps
    fallback = color_replacements + shape_replacements
    original = caption.strip().lower()

    def acceptable(edited: str) -> bool:
        if edited.strip().lower() == original:
            return False
        return allowed_pairs is None or attribute_pairs([edited], colors, shapes) <= allowed_pairs

    chosen: list[str] = []
    for pool in (preferred, fallback):
        pool = [c for c in dict.fromkeys(pool) if acceptable(c) and c not in chosen]
        order = rng.permutation(len(pool)) if pool else []
        chosen += [pool[i] for i in order][: num_negatives - len(chosen)]
    return chosen
