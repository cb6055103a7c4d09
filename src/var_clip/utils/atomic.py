"""Atomic file writes: a reader (or a resumed run) sees the old file or the complete new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["TEMP_PREFIX", "atomic_open"]

#: Temporary files start with this prefix (hidden, so image-folder loaders skip them); a crash can leave one behind.
TEMP_PREFIX = ".var_clip_tmp_"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit flush, fsync and ``os.replace`` it onto ``path``.

    The temporary file lives in the same folder so the rename stays on one file system (atomic on POSIX and Windows).
    On an exception it is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"`mode` must be 'wb' or 'w', got {mode!r}")
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should get the usual permissions
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
