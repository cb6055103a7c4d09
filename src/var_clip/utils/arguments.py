"""Command-line helpers shared by the batch commands: one-line argument errors, kebab- and snake-case options."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable

__all__ = ["ArgumentParser", "OneLineParser", "OneSpellingHelpFormatter", "UsageError", "add_device_option",
           "add_dtype_option", "add_model_option", "add_option", "dtype_name", "finite_float", "finite_floats_only",
           "float_between", "float_where", "int_at_least", "is_main_process", "seed_at_most"]


class UsageError(ValueError):
    """Arguments that cannot work, found after parsing: reported as one line, with exit code 2."""


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch`` / torchrun (read from the environment: works before any state exists)."""
    return os.environ.get("RANK", "0") == "0"


# "--output-dir/--output_dir" in argparse's messages: an option and its snake-case spelling
_TWIN_SPELLINGS = re.compile(r"(--[a-z0-9]+(?:-[a-z0-9]+)+)/(--[a-z0-9_]+)")


def _one_spelling(message: str) -> str:
    def one(m: re.Match) -> str:
        kebab, snake = m.group(1), m.group(2)
        return kebab if snake == "--" + kebab[2:].replace("-", "_") else m.group(0)

    return _TWIN_SPELLINGS.sub(one, message)


def finite_float(text: str) -> float:
    """An argparse type: a finite number (``float`` alone accepts ``nan`` and ``inf``, which fail only later)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def finite_floats_only(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make every ``type=float`` option of ``parser`` (and of its groups) refuse ``nan`` and ``inf``."""
    parser.register("type", float, finite_float)
    return parser


class ArgumentParser(argparse.ArgumentParser):
    """A parser whose options come in two spellings (:func:`add_option`) and whose help and errors name one; its
    ``type=float`` options take finite numbers only."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", OneSpellingHelpFormatter)
        super().__init__(*args, **kwargs)
        finite_floats_only(self)

    def error(self, message: str):
        super().error(_one_spelling(message))


class OneLineParser(ArgumentParser):
    """Argument errors as one line (with a pointer to --help) and exit code 2, printed by the main process only."""

    def error(self, message: str):
        if is_main_process():
            print(f"{self.prog}: error: {_one_spelling(message)} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def add_option(group, name: str, **kwargs) -> argparse.Action:
    """Add ``--kebab-case`` (documented) with its ``--snake_case`` spelling as a second option string of the same
    option, as accelerate users type both; :class:`OneSpellingHelpFormatter` shows only the first in ``--help``."""
    kwargs.setdefault("dest", name.replace("-", "_"))
    snake = name.replace("-", "_")
    return group.add_argument(f"--{name}", *([f"--{snake}"] if snake != name else []), **kwargs)


class OneSpellingHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` lists ``--output-dir`` once, not also its ``--output_dir`` spelling."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        strings = action.option_strings
        kept = [s for s in strings if not ("_" in s and s.replace("_", "-") in strings)]
        if kept == strings:
            return super()._format_action_invocation(action)
        action.option_strings = kept
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = strings


def int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text}")
        return value
    return parse


def float_where(ok: Callable[[float], bool], allowed: str):
    """An argparse type: a finite number for which ``ok`` holds; errors say it must be ``allowed``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value
    return parse


def float_between(low: float, high: float):
    """An argparse type: a number in ``[low, high]``."""
    return float_where(lambda value: low <= value <= high, f"a number in [{low:g}, {high:g}]")


def seed_at_most(maximum: int):
    """An argparse type: the seed of a torch generator (64 bits, so from -2**63) up to ``maximum``, below 2**64 by
    the room a command keeps for the seeds ``seed + i`` of its further images."""
    allowed = f"an int in [-2**63, 2**64 - {2**64 - maximum}] (a generator's 64-bit seed, with room for one per image)"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if not -(2**63) <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value
    return parse


# ----------------------------------------------------------------------------------------------------------------------
# The options every command that loads a model spells the same way
# ----------------------------------------------------------------------------------------------------------------------


def dtype_name(text: str) -> str:
    """An argparse type: torch's name of a precision (``float32``, ``bfloat16``, ``float16``), also given as the
    diffusers variant name (``fp32``, ``bf16``, ``fp16``); the value is always torch's name."""
    from .dtypes import DTYPE_NAMES, VARIANT_DTYPE_NAMES

    name = VARIANT_DTYPE_NAMES.get(text, text)
    if name not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(DTYPE_NAMES)} "
                                          f"(or {', '.join(VARIANT_DTYPE_NAMES)}), got {text!r}")
    return name


def add_model_option(group, what: str = "a pipeline folder or Hugging Face Hub repo id") -> argparse.Action:
    """``--model``: ``what``, by default the embedded shapes-world model (None)."""
    return add_option(group, "model", default=None, help=f"{what} (default: the embedded shapes-world model)")


def add_dtype_option(group, default: str = "float32", what: str = "weights' precision") -> argparse.Action:
    """``--dtype``: torch's names, the variant names accepted too (see :func:`dtype_name`)."""
    return add_option(group, "dtype", type=dtype_name, default=default, metavar="{float32,bfloat16,float16}",
                      help=f"{what} (fp32, bf16, fp16 also accepted; default {default})")


def add_device_option(group) -> argparse.Action:
    """``--device``: ``auto`` (CUDA when available, else the CPU) or a torch device."""
    return add_option(group, "device", default="auto",
                      help="'auto' (CUDA when available, else the CPU) or a torch device: cpu, cuda, cuda:1 "
                           "(default auto)")
