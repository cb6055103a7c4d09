"""A logger's level for the length of a ``with`` block."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["logger_level"]


@contextmanager
def logger_level(logger: logging.Logger | str, level: int) -> Iterator[logging.Logger]:
    """Set ``logger`` (or the logger of that name) to ``level`` inside the block and put its own level back after,
    also when the block raises."""
    if isinstance(logger, str):
        logger = logging.getLogger(logger)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.setLevel(previous)
