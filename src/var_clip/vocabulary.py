"""The words a text-conditioned model saw in its training captions, and the words of a prompt it never saw.

A model trained on a small world (the embedded default model knows a few colours, shapes, sizes and relations)
still generates for any prompt, but words outside its training captions only move the text embedding in ways it
never learned: the pipelines warn, naming them, so a user knows why "a red fox" gives a red blob.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["agree_articles", "article", "caption_words", "build_vocabulary", "unknown_words"]

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_ARTICLE_BEFORE = re.compile(r"\b(a|an|A|An) ([A-Za-z])")


def article(word: str) -> str:
    """The indefinite article before ``word``, by its first letter (right for every word of the shapes world)."""
    return "an" if word[0].lower() in "aeiou" else "a"


def agree_articles(text: str) -> str:
    """``text`` with every "a" before a vowel made "an" and every "an" before a consonant made "a" (after a word was
    removed or renamed next to an article); capitals are kept."""
    def agree(m: re.Match) -> str:
        chosen = article(m.group(2))
        return (chosen.capitalize() if m.group(1)[0].isupper() else chosen) + " " + m.group(2)

    return _ARTICLE_BEFORE.sub(agree, text)


def caption_words(text: str) -> list[str]:
    """Lower-cased words of ``text``, in order (punctuation and digits are not words)."""
    return _WORD.findall(text.lower())


def build_vocabulary(captions: Iterable[str]) -> list[str]:
    """The sorted set of words of ``captions``."""
    return sorted({word for caption in captions for word in caption_words(caption)})


def unknown_words(prompts: Iterable[str], vocabulary: Iterable[str]) -> list[str]:
    """Words of ``prompts`` that are not in ``vocabulary``, each once, in order of appearance."""
    known, unknown = set(vocabulary), {}
    for prompt in prompts:
        for word in caption_words(prompt):
            if word not in known:
                unknown.setdefault(word, None)
    return list(unknown)
