"""A byte-level CLIP tokenizer for worlds without a pretrained one, optionally with BPE merges learned from captions.

The vocabulary has CLIP's layout: 256 byte symbols, the same 256 with the end-of-word marker ``</w>``, then one token
per merge (in merge order), then ``<|startoftext|>`` and ``<|endoftext|>``. Every byte has a symbol, so any text
tokenizes; merges learned from the training captions make their common words single tokens. The result is a real
``transformers.CLIPTokenizer`` (same normaliser and pre-tokeniser as OpenAI's CLIP), saved and loaded as usual.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable

from transformers import CLIPTokenizer

__all__ = ["byte_symbols", "build_byte_level_clip_tokenizer"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def byte_symbols() -> list[str]:
    """GPT-2 / CLIP's reversible byte → printable unicode table, in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return [chr(table[b]) for b in range(256)]


def _learn_merges(corpus: Iterable[str], num_merges: int, min_frequency: int) -> list[tuple[str, str]]:
    """BPE merges of ``corpus`` under CLIP's normalisation and pre-tokenisation, most frequent pair first.

    Ties go to the lexicographically smallest pair, so the same captions always give the same tokenizer
    (``tokenizers``' own trainer breaks ties in hash order, which changes from run to run). Pair counts are updated
    incrementally, touching only the words that contain the merged pair.
    """
    reference = CLIPTokenizer(vocab={BOS_TOKEN: 0, EOS_TOKEN: 1}, merges=[]).backend_tokenizer
    counts: Counter[str] = Counter()
    for text in corpus:
        for word, _ in reference.pre_tokenizer.pre_tokenize_str(reference.normalizer.normalize_str(text)):
            counts[word] += 1
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in sorted(counts)]  # the end-of-word marker, as CLIP
    freqs = [counts[w] for w in sorted(counts)]

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # words that may contain the pair
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative:
            continue  # a stale entry: the pair's count changed since it was pushed
        if -negative < min_frequency:
            break
        merges.append(pair)
        merged, changed = pair[0] + pair[1], set()
        for i in sorted(where.pop(pair)):
            symbols, freq = words[i], freqs[i]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= freq
                changed.add(old)
            new_symbols, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == pair:
                    new_symbols.append(merged)
                    j += 2
                else:
                    new_symbols.append(symbols[j])
                    j += 1
            words[i] = new_symbols
            for new in zip(new_symbols, new_symbols[1:]):
                pair_counts[new] += freq
                where[new].add(i)
                changed.add(new)
        for changed_pair in changed:
            if pair_counts.get(changed_pair, 0) > 0:
                heapq.heappush(heap, (-pair_counts[changed_pair], changed_pair))
            else:
                pair_counts.pop(changed_pair, None)
    return merges


def build_byte_level_clip_tokenizer(
    corpus: Iterable[str] | None = None,
    num_merges: int = 4000,
    min_frequency: int = 2,
    model_max_length: int = 77,
) -> CLIPTokenizer:
    """A byte-level ``CLIPTokenizer`` that accepts any text.

    Args:
        corpus: texts (e.g. the training captions) to learn BPE merges from; None gives a tokenizer without merges
            (one token per byte).
        num_merges: at most this many merges (fewer when no pair reaches ``min_frequency``).
        min_frequency: a pair must occur this often in ``corpus`` to be merged.
        model_max_length: the tokenizer's maximum sequence length (CLIP's 77 by default).
    """
    if int(num_merges) != num_merges or num_merges < 0:
        raise ValueError(f"`num_merges` must be an int >= 0, got {num_merges!r}")
    if int(min_frequency) != min_frequency or min_frequency < 1:
        raise ValueError(f"`min_frequency` must be an int >= 1, got {min_frequency!r}")
    if int(model_max_length) != model_max_length or model_max_length < 3:
        raise ValueError(f"`model_max_length` must be an int >= 3 (start, one token, end), got {model_max_length!r}")
    if isinstance(corpus, str):
        raise ValueError("`corpus` must be an iterable of texts, not one string")

    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    merges: list[tuple[str, str]] = []
    if corpus is not None and num_merges > 0:
        for a, b in _learn_merges(list(corpus), int(num_merges), int(min_frequency)):
            if a + b not in vocab:
                vocab[a + b] = len(vocab)
            merges.append((a, b))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=int(model_max_length))
