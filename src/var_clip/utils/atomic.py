"""Atomic file writes: a reader (or a resumed run) sees the old file or the complete new one, never a torn one.

Two doors, one move: :func:`atomic_open` hands out an open file, :func:`atomic_write` a temporary path for writers
that want a file name (``PIL.Image.save``, ``savefig``). Either way the data goes to a temporary file in the target's
folder (the same file system, so the rename is atomic on POSIX and Windows), is flushed and fsynced, gets the
permissions any new file of the user gets (``0o666 & ~umask``, not ``mkstemp``'s private 0600) and is renamed onto
the target; on an exception the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["TEMP_PREFIX", "atomic_open", "atomic_write"]

#: Temporary files start with this prefix (hidden, so image-folder loaders skip them); a crash can leave one behind.
TEMP_PREFIX = ".var_clip_tmp_"


@contextlib.contextmanager
def _replacing(path: str | os.PathLike, fsync: bool) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on a clean exit fsync it, set its mode and rename it onto ``path``."""
    path = os.path.abspath(path)
    # the target's suffix, so that writers that read the format from the name still see it
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file next to ``path`` (``"wb"``, or ``"w"`` in UTF-8); on a clean exit it replaces ``path``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"`mode` must be 'wb' or 'w', got {mode!r}")
    with _replacing(path, fsync) as tmp, open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
        yield handle


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], fsync: bool = True) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``; once it returns, the file replaces ``path``."""
    with _replacing(path, fsync) as tmp:
        write(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
