"""Command-line helpers shared by the batch commands: one-line argument errors, kebab- and snake-case options."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["OneLineParser", "add_option", "int_at_least", "is_main_process"]


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch`` / torchrun (read from the environment: works before any state exists)."""
    return os.environ.get("RANK", "0") == "0"


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (with a pointer to --help) and exit code 2, printed by the main process only."""

    def error(self, message: str):
        if is_main_process():
            print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def add_option(group, name: str, **kwargs) -> None:
    """Add ``--kebab-case`` (documented) and its ``--snake_case`` twin (hidden), as accelerate users type both."""
    kwargs.setdefault("dest", name.replace("-", "_"))
    group.add_argument(f"--{name}", **kwargs)
    if "-" in name:
        group.add_argument(f"--{name.replace('-', '_')}", **{**kwargs, "help": argparse.SUPPRESS})


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
