"""Reading the JSON Lines and JSON files users hand to the commands, with one-line errors naming the file and line.

Every format error is a ``ValueError`` whose message says where (``path line N``), what was found and how to fix it,
so that a command prints it as its one error line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .files import check_regular_file

__all__ = ["read_json_object", "read_jsonl"]


def _shown(line: str) -> str:
    return repr(line.strip()[:120])


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = (), types: dict[str, type | tuple] | None = None,
               fix: str = "fix or remove that line") -> list[dict]:
    """The objects of a JSON Lines file (blank lines skipped), each holding every key of ``required`` with a value of
    the type ``types`` names for it; any other line is a ``ValueError`` naming the file, the line and ``fix``."""
    path = check_regular_file(path, "file")
    required, types = list(required), dict(types or {})
    records = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise ValueError(f"{path} line {number} is not JSON ({getattr(error, 'msg', error)}): "
                                     f"{_shown(line)}; {fix}") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path} line {number} is not a JSON object: {_shown(line)}; {fix}")
                missing = [key for key in required if key not in record]
                if missing:
                    raise ValueError(f"{path} line {number} has no `{missing[0]}` (it has {sorted(record)}); {fix}")
                wrong = [key for key, kind in types.items() if key in record and not isinstance(record[key], kind)]
                if wrong:
                    raise ValueError(f"{path} line {number}: `{wrong[0]}` must be "
                                     f"{_type_names(types[wrong[0]])}, got {record[wrong[0]]!r}; {fix}")
                records.append(record)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    return records


def read_json_object(path: str | os.PathLike, what: str, fix: str) -> dict:
    """The JSON object in ``path``; anything else is a ``ValueError`` naming ``what``, the file and ``fix``."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {str(path)!r} is not JSON ({' '.join(str(error).split())}); {fix}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {str(path)!r} is not a JSON object; {fix}")
    return value


def _type_names(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
             dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
