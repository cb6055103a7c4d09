"""Hugging Face Hub I/O for var-clip pipeline and model folders.

Why a helper for downloads: diffusers' ``DiffusionPipeline.download`` (0.42.1) decides which files to fetch from
``model_index.json`` and refuses a component whose library it does not know and whose code is not in the repository
— var_clip's components are named by their module (``var_clip.models.var_transformer``), so
``VARCLIPPipeline.from_pretrained("user/repo")`` fails before anything is downloaded. :func:`snapshot` fetches
exactly the files of the pipeline (for one variant, safetensors only) and returns a local folder that
``from_pretrained`` loads::

    pipe = VARCLIPPipeline.from_pretrained(snapshot("user/var-clip-d16"))
    pipe = VARCLIPPipeline.from_pretrained(snapshot("user/var-clip-d16", variant="fp16"), variant="fp16",
                                           dtype=torch.float16)
"""

from __future__ import annotations

import glob
import json
import os
import pickletools
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from huggingface_hub import HfApi, constants, snapshot_download

from .utils.files import LOCK_NAME, MARKER_NAME
from .utils.package_data import shipped_folder

__all__ = ["CUSTOM_PIPELINES_DIR", "push_pipeline_to_hub", "snapshot", "select_files", "check_folder", "is_pickle_file",
           "diffusers_download", "check_no_remote_code", "custom_pipeline_file"]

#: The diffusers custom-pipeline files that ship with the package: ``pipeline_var_clip.py`` (VARCLIPPipeline) and
#: ``pipeline_var.py`` (VARPipeline), for ``DiffusionPipeline.from_pretrained(..., custom_pipeline=...)``: the
#: repository's top-level ``pipelines/``, ``var_clip/custom_pipelines`` in the wheel.
CUSTOM_PIPELINES_DIR = shipped_folder("custom_pipelines", "pipelines")

# Weight formats that unpickle (run code) when loaded; never downloaded, never uploaded.
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
# What a pipeline folder may hold besides its safetensors: configurations, tokenizer vocabularies, the model card and
# its pictures. Everything else (a `.py` that `trust_remote_code` would import, a shared library, a script) is never
# downloaded.
DATA_SUFFIXES = (".json", ".txt", ".model", ".md", ".png", ".jpg", ".jpeg", ".webp", ".gif")
# Files a Python process could import or execute: their presence in a folder is what `trust_remote_code` opts into.
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".pyw", ".so", ".dll", ".dylib", ".sh", ".ipynb")
# The libraries a var-clip folder's components may come from: its own modules and the two diffusers loads itself.
TRUSTED_LIBRARIES = ("diffusers", "transformers")
#: model_index.json's `_class_name` → the custom-pipeline file that builds it in a diffusers app.
CUSTOM_PIPELINE_FILES = {"VARCLIPPipeline": "pipeline_var_clip.py", "VARPipeline": "pipeline_var.py"}
# `name.safetensors`, `name.fp16.safetensors`, `name-00001-of-00002.safetensors`, `name.fp16-00001-of-00002...`
_WEIGHTS = re.compile(r"^(?P<stem>[^.]+?)(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d+-of-\d+)?\.safetensors$")
# `name.safetensors.index.json`, `name.safetensors.index.fp16.json`
_INDEX = re.compile(r"^[^.]+\.safetensors\.index(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$")
_VARIANT = re.compile(r"^[A-Za-z0-9_]+$")
# var-clip's bookkeeping in an output folder, never published
_NOT_PUBLISHED = (MARKER_NAME, LOCK_NAME)


def _variant_of(filename: str) -> tuple[bool, str | None]:
    """(is a safetensors weight or index file, its variant or None)."""
    name = filename.rsplit("/", 1)[-1]
    m = _WEIGHTS.match(name) or _INDEX.match(name)
    return (m is not None, m.group("variant") if m else None)


def select_files(filenames: Iterable[str], variant: str | None = None) -> list[str]:
    """The files of a pipeline (or model) repository that loading ``variant`` needs.

    Every configuration, tokenizer and card file (:data:`DATA_SUFFIXES`); per folder, the safetensors weights of
    ``variant`` (or, where a folder has none of that variant, its default ones, as diffusers does); never code files
    (what ``trust_remote_code`` would run), pickled or foreign-format weights.
    Raises ``ValueError`` when no folder has ``variant`` or a folder has weights but no safetensors.
    """
    if variant is not None and not (isinstance(variant, str) and _VARIANT.match(variant)):
        raise ValueError(f"`variant` must be None or a name like 'fp16' or 'bf16', got {variant!r}")
    filenames = sorted(set(filenames))
    weights_by_dir: dict[str, dict[str | None, list[str]]] = {}
    pickled_dirs, chosen = set(), []
    for f in filenames:
        folder = f.rsplit("/", 1)[0] if "/" in f else ""
        is_weight, file_variant = _variant_of(f)
        if is_weight:
            weights_by_dir.setdefault(folder, {}).setdefault(file_variant, []).append(f)
        elif f.endswith(PICKLE_SUFFIXES):
            pickled_dirs.add(folder)
        elif f.lower().endswith(DATA_SUFFIXES) and not f.rsplit("/", 1)[-1].startswith("."):
            chosen.append(f)
    unsafe = sorted(d or "." for d in pickled_dirs - set(weights_by_dir))
    if unsafe:
        raise ValueError(f"folders {unsafe} hold only pickled weights (.bin/.pth/...); var-clip loads safetensors only")
    if variant is not None and not any(variant in by_variant for by_variant in weights_by_dir.values()):
        available = sorted({v for by_variant in weights_by_dir.values() for v in by_variant if v})
        raise ValueError(f"`variant`={variant!r} is not in this repository; available variants: {available or 'none'}")
    for by_variant in weights_by_dir.values():
        chosen += by_variant.get(variant) or by_variant.get(None) or []
    return sorted(chosen)


def snapshot(
    repo_id: str | os.PathLike,
    revision: str | None = None,
    variant: str | None = None,
    *,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> str:
    """Download the files a var-clip pipeline (or model) repository needs and return the local folder.

    A local folder is returned as it is. ``revision`` is resolved to one commit first, so every file comes from the
    same commit. With ``local_files_only`` (or ``HF_HUB_OFFLINE=1``) the cached snapshot is returned without
    contacting the Hub.
    """
    if os.path.isdir(repo_id):
        return os.fspath(repo_id)
    repo_id = os.fspath(repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise ValueError(f"`repo_id` must be an existing local folder or a Hub id 'owner/name', got {repo_id!r}")
    if local_files_only or constants.is_offline_mode():  # HF_HUB_OFFLINE: the cache, without asking the Hub
        return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token, local_files_only=True)
    info = HfApi(token=token).model_info(repo_id, revision=revision)
    files = select_files([s.rfilename for s in info.siblings], variant)
    return snapshot_download(repo_id, revision=info.sha, cache_dir=cache_dir, token=token, allow_patterns=files,
                             force_download=force_download)


def diffusers_download(pretrained_model_name: str, **kwargs) -> str:
    """:func:`snapshot` with the keyword arguments diffusers passes to ``DiffusionPipeline.download``.

    A pipeline class can route its Hub downloads here (``download = classmethod(lambda cls, name, **kw:
    diffusers_download(name, **kw))``) so that ``from_pretrained("user/repo")`` works for var_clip's components.
    """
    return snapshot(pretrained_model_name, revision=kwargs.get("revision"), variant=kwargs.get("variant"),
                    token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir"),
                    local_files_only=bool(kwargs.get("local_files_only")),
                    force_download=bool(kwargs.get("force_download")))


def check_no_remote_code(folder: str | os.PathLike) -> str:
    """Prove that ``trust_remote_code=True`` authorises nothing in a var-clip pipeline folder but var-clip's own
    custom-pipeline file; returns the folder.

    ``trust_remote_code`` lets diffusers import a ``<component>/<library>.py`` the folder ships, and a component
    ``auto_map`` lets transformers do the same. So the folder's ``model_index.json`` must name a var-clip pipeline
    (:data:`CUSTOM_PIPELINE_FILES`) whose components all come from var-clip, diffusers or transformers, no
    configuration may carry an ``auto_map``, and no file may be code (:data:`CODE_SUFFIXES`) or a pickle (by content).
    Raises ``ValueError`` listing every problem found; nothing is imported or unpickled while checking.

        folder = check_no_remote_code(snapshot("owner/var-clip-d16"))
        pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=custom_pipeline_file(folder),
                                                 trust_remote_code=True)
    """
    root = Path(folder)
    if not (root / "model_index.json").is_file():
        raise ValueError(f"`folder` {str(root)!r} is not a pipeline folder (it has no model_index.json)")
    problems = []
    index = _read_json(root / "model_index.json", problems)
    class_name = index.get("_class_name")
    if class_name not in CUSTOM_PIPELINE_FILES:
        problems.append(f"model_index.json names the pipeline {class_name!r}, not one of "
                        f"{sorted(CUSTOM_PIPELINE_FILES)}")
    for name, value in index.items():
        if name.startswith("_") or value is None or value == [None, None]:
            continue
        library = value[0] if isinstance(value, list) and len(value) == 2 else None
        if not isinstance(library, str) or not (library in TRUSTED_LIBRARIES or library == "var_clip"
                                                or library.startswith("var_clip.")):
            problems.append(f"component {name!r} comes from {library!r}, not var_clip, diffusers or transformers")
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(f"{relative} is a symlink")
        elif not path.is_file():
            continue
        elif path.suffix.lower() in CODE_SUFFIXES:
            problems.append(f"{relative} is code")
        elif path.suffix.lower() in PICKLE_SUFFIXES or is_pickle_file(path):
            problems.append(f"{relative} is a pickle (unpickling runs code)")
        elif path.suffix == ".json" and "auto_map" in _read_json(path, problems):
            problems.append(f"{relative} has an `auto_map` (code that transformers would import)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"`folder` {str(root)!r} is refused for trust_remote_code=True: {shown}")
    return os.fspath(folder)


def custom_pipeline_file(folder: str | os.PathLike) -> str:
    """The var-clip custom-pipeline file (in :data:`CUSTOM_PIPELINES_DIR`) for the pipeline ``folder`` holds."""
    problems: list[str] = []
    class_name = _read_json(Path(folder) / "model_index.json", problems).get("_class_name")
    if class_name not in CUSTOM_PIPELINE_FILES:
        raise ValueError(f"`folder` {os.fspath(folder)!r} holds no var-clip pipeline "
                         f"({'; '.join(problems) or class_name!r})")
    return str(CUSTOM_PIPELINES_DIR / CUSTOM_PIPELINE_FILES[class_name])


def _read_json(path: Path, problems: list[str]) -> dict:
    """A JSON object from ``path``; an unreadable or non-object file adds a problem and reads as ``{}``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(f"{path.name} cannot be read as JSON ({' '.join(str(error).split())})")
        return {}
    if not isinstance(value, dict):
        return {}
    return value


def is_pickle_file(path: str | os.PathLike) -> bool:
    """Whether loading ``path`` could unpickle (run code), judged by its content, never its suffix.

    A pickle stream (any protocol: it parses up to its STOP opcode), a zip-based ``torch.save`` file (it holds a
    ``data.pkl``), or a numpy ``.npy`` array of object dtype. A safetensors file (an 8-byte header length, then a
    JSON header) is not, even when its first bytes happen to read as a pickle opcode.
    """
    with open(path, "rb") as handle:
        head = handle.read(16)
        if len(head) >= 9:
            header_length = int.from_bytes(head[:8], "little")
            if head[8:9] == b"{" and 8 + header_length <= os.fstat(handle.fileno()).st_size:
                return False  # safetensors
        if head.startswith(b"PK\x03\x04"):
            try:
                with zipfile.ZipFile(path) as archive:
                    return any(name.endswith(".pkl") for name in archive.namelist())
            except zipfile.BadZipFile:
                return False
        if head.startswith(b"\x93NUMPY"):
            handle.seek(0)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            try:
                reader = readers.get(np.lib.format.read_magic(handle))
                if reader is None:  # a format version this check does not know: assume the worst
                    return True
                _, _, dtype = reader(handle)
            except ValueError:
                return True
            return bool(dtype.hasobject)
        handle.seek(0)
        try:
            for opcode, _, _ in pickletools.genops(handle):
                if opcode.name == "STOP":
                    return True
        except Exception:  # noqa: BLE001 - anything pickletools cannot parse is not a pickle
            return False
    return False


def _symlinks_leaving(folder: Path) -> list[str]:
    """Symlinks under ``folder`` (files or folders) whose target is outside it, or missing."""
    leaving = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.exists() or (target != folder and folder not in target.parents):
                    leaving.append(path.relative_to(folder).as_posix())
    return sorted(leaving)


def check_folder(folder: str | os.PathLike) -> list[str]:
    """Check that a pipeline or model folder is complete and safe to publish; returns its files (relative paths).

    A pipeline folder has ``model_index.json`` and, for every component it names, a folder with a configuration
    and (for models) safetensors weights; a model folder has ``config.json`` and safetensors weights. Both need a
    ``README.md`` model card, may not contain pickle-format files (by content: see :func:`is_pickle_file`) and
    may not contain symlinks that leave the folder (an upload would publish their targets). var-clip's own marker
    and lock files are not part of what is published.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`folder` {str(folder)!r} is not a folder")
    folder = folder.resolve()
    problems = []
    leaving = _symlinks_leaving(folder)
    if leaving:
        problems.append(f"symlinks to outside the folder {leaving} (an upload would publish their targets)")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name not in _NOT_PUBLISHED
                   and not any(part in leaving for part in _prefixes(p.relative_to(folder).as_posix())))
    pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES) or is_pickle_file(folder / f)]
    if pickled:
        problems.append(f"pickle-format files {pickled} (publish safetensors only)")
    if "README.md" not in files:
        problems.append("no README.md model card")
    if "model_index.json" in files:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        for name, value in index.items():
            if name.startswith("_") or not isinstance(value, list) or value[0] is None:
                continue
            inside = [f[len(name) + 1:] for f in files if f.startswith(name + "/")]
            if not inside:
                problems.append(f"component {name!r} is named in model_index.json but its folder is missing or empty")
            elif "config.json" not in inside and "tokenizer_config.json" not in inside:
                problems.append(f"component {name!r} has no config.json")
            elif "config.json" in inside and not any(_variant_of(f)[0] for f in inside):
                problems.append(f"component {name!r} has no safetensors weights")
    elif "config.json" in files:
        if not any(_variant_of(f)[0] for f in files if "/" not in f):
            problems.append("no safetensors weights next to config.json")
    else:
        problems.append("neither model_index.json (a pipeline) nor config.json (a model)")
    if problems:
        raise ValueError(f"`folder` {str(folder)!r} is not ready to publish: " + "; ".join(problems))
    return files


def _prefixes(relative: str) -> list[str]:
    """``a/b/c`` → ``["a", "a/b", "a/b/c"]``."""
    parts = relative.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def push_pipeline_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | bool | None = None,
    commit_message: str = "Upload var-clip pipeline",
    revision: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload a complete pipeline or model folder with its model card.

    The folder is checked first (:func:`check_folder`). Returns the URL of the commit.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must be 'owner/name', got {repo_id!r}")
    files = check_folder(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    # exactly the checked files: nothing added to the folder since, no marker or lock file
    commit = api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), repo_type="model",
                               commit_message=commit_message, revision=revision,
                               allow_patterns=[glob.escape(f) for f in files])
    return getattr(commit, "commit_url", None) or str(commit)
