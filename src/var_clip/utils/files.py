"""Output files and folders that never destroy, half-write or leak a user's files.

Every command that writes or replaces something goes through these helpers:

- :func:`resolve_output_dir` refuses an empty path and the current, home and root folders (or a folder holding
  one of them) outright, and resolves a symlinked output folder (logging where it points);
- :func:`check_replaceable` proves that an existing folder is one var-clip wrote (a pipeline, model, checkpoint or
  training-output layout, or the :data:`MARKER_NAME` file) and holds nothing else, before it may be replaced, and that
  it holds none of the command's inputs (:func:`input_paths`);
- :class:`OutputLock` gives one writer per output folder (a lock file naming the holder's pid and host; a lock
  whose pid is dead on this host is taken over);
- :func:`check_writable` and :func:`save_image` check an output path before any compute and write it atomically,
  with the user's umask and in the format its suffix names;
- :func:`check_regular_file` refuses an input that is a FIFO, a device or a folder before anything opens it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .atomic import atomic_write

__all__ = [
    "MARKER_NAME",
    "LOCK_NAME",
    "IMAGE_FORMATS",
    "UnsafeOutputError",
    "OutputLockedError",
    "resolve_output_dir",
    "check_replaceable",
    "claim_output_folder",
    "input_paths",
    "write_marker",
    "OutputLock",
    "hold_lock",
    "release_lock",
    "release_held_locks",
    "check_writable",
    "atomic_write",
    "save_image",
    "image_format_of",
    "check_regular_file",
]

logger = logging.getLogger(__name__)

#: Written into every folder var-clip creates, so that a later ``--overwrite`` can prove the folder is ours.
MARKER_NAME = ".var-clip-output"
#: The lock file of a folder being written (:class:`OutputLock`).
LOCK_NAME = ".var-clip.lock"
#: Output suffix → PIL format name.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}

# What var-clip writes at the top of a pipeline, model or training output folder.
_OWN_FILES = {MARKER_NAME, LOCK_NAME, "model_index.json", "config.json", "README.md", "train_log.jsonl",
              "train_log.jsonl.tmp", "progress.png"}
_OWN_FILE_RE = re.compile(r".*\.safetensors(\.index(\.\w+)?\.json)?$")
# (a LoRA run's progress samples, cache and prior images: training/progress_grid.py, training/lora_defaults.py,
# training/prior_preservation.py)
_OWN_DIR_RE = re.compile(r"^(checkpoint-\d+(\.tmp)?|logs|samples|progress|cache|prior-[0-9a-f]{16}|\.final\.tmp|"
                         r"\..+\.(old|partial-[0-9a-f]+))$")
# What a component folder of a pipeline holds: configurations, weights, tokenizer vocabularies.
_COMPONENT_FILE_RE = re.compile(r".*\.(json|safetensors|txt|model)$")
# The files `accelerate`'s save_state and var-clip's checkpointing write into `checkpoint-N`.
_CHECKPOINT_FILE_RE = re.compile(r".*\.(safetensors|json|bin|pkl|pt)$")


class UnsafeOutputError(ValueError):
    """An output location that would destroy or hide a user's files; the message names the flag and what was found."""


class OutputLockedError(RuntimeError):
    """Another live process writes into the same output folder."""


# ----------------------------------------------------------------------------------------------------------------------
# Output folders
# ----------------------------------------------------------------------------------------------------------------------


def resolve_output_dir(path: str | os.PathLike | None, flag: str) -> Path:
    """The absolute, symlink-resolved output folder, or :class:`UnsafeOutputError` for a folder no command may own.

    An empty path, the current folder, the home folder, the root folder and any folder that holds one of them are
    refused: replacing or filling them would put the user's own files at stake.
    """
    if path is None or not str(path).strip():
        raise UnsafeOutputError(f"{flag} must name a folder, got {path!r} "
                                "(an empty path would mean the current folder)")
    given = Path(path).expanduser()
    resolved = given.resolve()
    if given.is_symlink() or resolved != given.absolute():
        logger.info("%s %s resolves to %s", flag, given, resolved)
    protected = {Path.cwd().resolve(): "the current folder", Path.home().resolve(): "the home folder",
                 Path(resolved.anchor): "the root folder"}
    shown = str(given) + (f" (→ {resolved})" if str(resolved) != str(given) else "")
    holders = [(name, "") for folder, name in protected.items() if resolved == folder]
    holders += [(name, " or holds it") for folder, name in protected.items() if resolved in folder.parents]
    if holders:
        name, holds = holders[0]
        raise UnsafeOutputError(f"{flag} {shown} is {name}{holds}; pass a new or dedicated folder (e.g. a subfolder)")
    return resolved


def _unknown_entries(folder: Path, also_own: re.Pattern | None = None,
                     own_dirs: re.Pattern | None = None) -> list[str]:
    """The entries of ``folder`` that var-clip does not write (relative paths), recursively into components;
    ``also_own`` matches the names of further files the command writes at the top, ``own_dirs`` of its folders."""
    unknown: list[str] = []
    components: set[str] = set()
    index = folder / "model_index.json"
    if index.is_file():
        try:
            components = {k for k, v in json.loads(index.read_text(encoding="utf-8")).items()
                          if not k.startswith("_") and isinstance(v, list)}
        except (OSError, ValueError):
            unknown.append("model_index.json (unreadable)")
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if entry.is_symlink():
            unknown.append(f"{name} (a symlink)")
        elif entry.is_file():
            if name not in _OWN_FILES and not _OWN_FILE_RE.match(name) and not (also_own and also_own.match(name)):
                unknown.append(name)
        elif not entry.is_dir():
            unknown.append(name)
        elif name in components or name == "clip":  # a pipeline component, or train-clip's model folder
            unknown += [f"{name}/{p.name}" for p in sorted(entry.iterdir())
                        if p.is_symlink() or not p.is_file() or not _COMPONENT_FILE_RE.match(p.name)]
        elif name.startswith("checkpoint-"):
            unknown += [f"{name}/{p.name}" for p in sorted(entry.iterdir())
                        if p.is_symlink() or not (p.is_dir() or _CHECKPOINT_FILE_RE.match(p.name))]
        elif not _OWN_DIR_RE.match(name) and not (own_dirs and own_dirs.match(name)):
            unknown.append(name + "/")
    return unknown


def check_replaceable(folder: str | os.PathLike, flag: str, protected: Iterable[str | os.PathLike | None] = (),
                      also_own: re.Pattern | None = None, own_dirs: re.Pattern | None = None) -> None:
    """Raise :class:`UnsafeOutputError` unless the existing ``folder`` may be replaced or written into by var-clip.

    It may when it is empty, or when every entry is something var-clip writes (pipeline components, weights,
    configurations, checkpoints, logs, samples, the marker file, and the top-level files ``also_own`` and folders
    ``own_dirs`` match). The error names what else was found. The paths in ``protected`` (a command's inputs) may be
    neither the folder nor inside it: writing there would overwrite an input.
    """
    folder = Path(folder)
    for path in protected:
        if path is not None and str(path) and (folder.resolve() == Path(path).resolve()
                                               or folder.resolve() in Path(path).resolve().parents):
            raise UnsafeOutputError(f"{flag} {str(folder)!r} is or contains the input {str(path)!r}; writing there "
                                    f"would overwrite or delete the input (choose another folder)")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UnsafeOutputError(f"{flag} {str(folder)!r} exists and is not a folder")
    unknown = _unknown_entries(folder, also_own, own_dirs)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UnsafeOutputError(f"{flag} {str(folder)!r} is not a folder var-clip wrote: it holds {shown}; "
                                f"nothing was changed (choose a new folder, or move those files away)")


#: The options through which the commands read local files or folders (their inputs), whatever the command.
INPUT_OPTIONS = ("pretrained_pipeline", "vqvae", "text_encoder", "tokenizer", "train_data_dir", "caption_file",
                 "image_root", "prompts", "model", "clip_model", "generated", "reference", "images")


def input_paths(args, names: Iterable[str] = INPUT_OPTIONS) -> list[Path]:
    """The local files and folders a command's parsed ``args`` read through the options ``names`` (Hub ids and unset
    options left out): what :func:`check_replaceable` must keep out of its output folder."""
    values = [getattr(args, name, None) for name in names]
    return [Path(v).expanduser() for v in values if isinstance(v, (str, os.PathLike)) and str(v).strip()
            and Path(v).expanduser().exists()]


def claim_output_folder(path: str | os.PathLike | None, flag: str, command: str,
                        inputs: Iterable[str | os.PathLike] = (), own_files: re.Pattern | None = None,
                        own_dirs: re.Pattern | None = None) -> Path:
    """Make ``path`` the output folder of ``command``, before any compute: resolve it (:func:`resolve_output_dir`),
    prove that it is new, empty or var-clip's and holds none of ``inputs`` (:func:`check_replaceable`, with the
    files and folders the command writes matched by ``own_files`` and ``own_dirs``), create it and mark it. Returns the
    resolved folder."""
    folder = resolve_output_dir(path, flag)
    check_replaceable(folder, flag, inputs, also_own=own_files, own_dirs=own_dirs)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER_NAME).exists():
        write_marker(folder, command)
    return folder


def write_marker(folder: str | os.PathLike, command: str) -> None:
    """Record in ``folder`` that var-clip wrote it (and with which command)."""
    from .. import __version__

    (Path(folder) / MARKER_NAME).write_text(json.dumps({"written_by": "var-clip", "version": __version__,
                                                        "command": command}) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# One writer per folder
# ----------------------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class OutputLock:
    """An exclusive lock on an output folder: ``folder/.var-clip.lock`` holding the pid and host of its writer.

    The file is created with ``O_EXCL`` (atomic on local and NFSv3+ file systems). A lock left by a process that is
    dead on this host is taken over; a lock from another host is never taken over (its pid means nothing here). A
    lock held by this very process is re-entered: a command that failed earlier in the same interpreter (a test, a
    notebook) must not lock itself out.
    """

    def __init__(self, folder: str | os.PathLike, flag: str = "--output_dir"):
        self.folder, self.flag = Path(folder), flag
        self.path = self.folder / LOCK_NAME
        self.held = False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> OutputLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                same_host = host == me["host"]
                if not holder or (same_host and isinstance(pid, int) and (pid == me["pid"] or not _pid_alive(pid))):
                    # a half-written, stale or own lock: take it over
                    self.path.unlink(missing_ok=True)
                    continue
                raise OutputLockedError(
                    f"{self.flag} {str(self.folder)!r} is being written by another process (pid {pid} on host "
                    f"{host}, lock file {self.path}); wait for it to finish or choose another folder"
                    + ("" if same_host else "; if that process is gone, delete the lock file")) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise OutputLockedError(f"{self.flag} {str(self.folder)!r}: could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            if self._holder().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[Path, OutputLock] = {}


def hold_lock(folder: str | os.PathLike, flag: str = "--output_dir") -> None:
    """Take ``folder``'s lock for the rest of this command: :func:`release_lock`, :func:`release_held_locks` (the
    command line calls it when a command ends, however it ends) or the process's exit gives it back."""
    folder = Path(folder)
    if folder not in _HELD:
        lock = OutputLock(folder, flag).acquire()
        _HELD[folder] = lock
        atexit.register(lock.release)


def release_lock(folder: str | os.PathLike) -> None:
    lock = _HELD.pop(Path(folder), None)
    if lock is not None:
        lock.release()


def release_held_locks() -> None:
    for folder in list(_HELD):
        release_lock(folder)


# ----------------------------------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------------------------------


def image_format_of(path: str | os.PathLike, flag: str) -> str:
    """The PIL format an output path's suffix names, or a ValueError listing the suffixes there are."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{flag} {str(path)!r} must end with one of {', '.join(sorted(IMAGE_FORMATS))} (the format "
                         f"is taken from the suffix), got {suffix or 'no suffix'!r}")
    return IMAGE_FORMATS[suffix]


def check_writable(path: str | os.PathLike, flag: str, inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Check, before any compute, that a file can be created at ``path``: its folder exists and accepts files,
    ``path`` is not a folder and not one of the command's ``inputs``. Returns the absolute path."""
    path = Path(path).expanduser().absolute()
    for given in inputs:
        if given is not None and str(given) and path.resolve() == Path(given).expanduser().resolve():
            raise ValueError(f"{flag} {str(path)!r} is the input {str(given)!r}; writing there would replace it "
                             "(name another file)")
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; name a file")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"the folder of {flag} {str(path)!r} does not exist")
    try:  # the only reliable test (ACLs, read-only mounts, quotas): create and remove a file there
        fd, probe = tempfile.mkstemp(prefix=".var_clip_probe_", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"{flag} {str(path)!r} cannot be written: {error.strerror or error}") from None
    return path


def save_image(image, path: str | os.PathLike, flag: str = "--output") -> None:
    """Write a PIL image atomically in the format its suffix names (``out.jpg`` is a JPEG)."""
    image_format = image_format_of(path, flag)
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    atomic_write(path, lambda tmp: image.save(tmp, format=image_format))


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` when it is a regular file (after symlinks); a FIFO, device, socket or folder is refused without being
    opened (opening a FIFO blocks until a writer comes)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{what} {str(path)!r} does not exist") from None
    except OSError as error:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise ValueError(f"{what} {str(path)!r} is {kind}; pass a file")
    return path
