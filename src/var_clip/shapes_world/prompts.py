"""The fixed prompt sets of the faithfulness report (seen and held-out pairs, one and two objects) and of a world
extension's new words."""

from __future__ import annotations

from .captions import noun_phrase, rename_word
from .extension import WorldExtension
from .spec import COLORS, HELD_OUT_PAIRS, POSITION_PHRASES, POSITIONS, RELATION_PHRASES, RELATIONS, SHAPES


def evaluation_prompts(held_out: bool, num_objects: int) -> list[str]:
    """The fixed prompt set of the faithfulness report, in canonical wording (no prefix, first paraphrase).

    - one object, seen (15): each pair outside ``HELD_OUT_PAIRS`` (colour-major order), position cycling through
      ``POSITIONS``, size cycling small / large / not named;
    - one object, held out (15): each held-out pair at each of the five positions, size cycling the same way;
    - two objects, seen (12): the i-th seen pair, related to the next seen pair five or more steps later in the list
      that has another colour, relation cycling through ``RELATIONS``;
    - two objects, held out (12): each held-out pair with each relation, as subject on even prompts and as reference
      on odd ones; its partner is a seen pair of another colour, or on every fourth prompt the next held-out pair.
    """
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects!r}")
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    seen = [p for p in all_pairs if p not in HELD_OUT_PAIRS]
    held = [p for p in all_pairs if p in HELD_OUT_PAIRS]
    size_cycle = ("small", "large", None)

    def one(pair: tuple[str, str], position: str, size: str | None) -> str:
        return f"{noun_phrase(pair[0], pair[1], size)} {POSITION_PHRASES[position][0]}"

    def two(a: tuple[str, str], relation: str, b: tuple[str, str]) -> str:
        return f"{noun_phrase(*a)} {RELATION_PHRASES[relation][0]} {noun_phrase(*b)}"

    def partner(pair: tuple[str, str], start: int) -> tuple[str, str]:
        """The first seen pair from index ``start`` on (cyclically) whose colour differs from ``pair``'s."""
        rotated = seen[start % len(seen) :] + seen[: start % len(seen)]
        return next(p for p in rotated if p[0] != pair[0])

    if num_objects == 1 and not held_out:
        return [one(p, POSITIONS[i % len(POSITIONS)], size_cycle[i % 3]) for i, p in enumerate(seen)]
    if num_objects == 1:
        combos = [(p, pos) for p in held for pos in POSITIONS]
        return [one(p, pos, size_cycle[i % 3]) for i, (p, pos) in enumerate(combos)]
    if not held_out:
        return [two(seen[i], RELATIONS[i % len(RELATIONS)], partner(seen[i], i + 5)) for i in range(12)]
    prompts = []
    for i in range(12):
        target = held[i % len(held)]
        other = held[(i + 1) % len(held)] if i % 4 == 3 else partner(target, 3 * i + 1)
        a, b = (target, other) if i % 2 == 0 else (other, target)
        prompts.append(two(a, RELATIONS[i % len(RELATIONS)], b))
    return prompts


def extension_prompts(extension: WorldExtension) -> list[str]:
    """One-object prompts that name ``extension``'s words, in canonical wording and, for colours and sizes, without a
    position (they measure the new word, not the placement):

    - each extra colour on each shape, size cycling not named / small / large (3 prompts per colour);
    - each extra size on each seen colour-shape pair, colour-major (15 prompts per size);
    - each extra place with each seen colour-shape pair, colour-major, size not named (15 prompts per place; the
      place is the new phrase, so these do name a position);
    - each synonym on each seen pair that holds the world word it renames, at each world position in turn, size
      not named (25 prompts for a shape's synonym, 10 or 15 for a colour's: the new word in the world's sentences).
    """
    prompts = []
    for color in extension.colors:
        prompts += [noun_phrase(color, shape, (None, "small", "large")[i % 3]) for i, shape in enumerate(SHAPES)]
    seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    for size in extension.sizes:
        prompts += [noun_phrase(color, shape, size) for color, shape in seen]
    for place in extension.positions:
        prompts += [f"{noun_phrase(color, shape)} {extension.position_phrases[place][0]}" for color, shape in seen]
    for word, meaning in extension.synonyms.items():
        prompts += [rename_word(f"{noun_phrase(color, shape)} {POSITION_PHRASES[position][0]}", meaning, word)
                    for color, shape in seen if meaning in (color, shape) for position in POSITIONS]
    return prompts
