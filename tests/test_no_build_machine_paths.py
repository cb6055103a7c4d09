"""No tracked text file names an absolute path of the machine it was built on (a workspace, a home folder, /tmp).

Such a path means nothing on a user's machine: a config's ``_name_or_path``, a docstring that points into the
author's checkout, a script that reads a file of the author's temporary folder. Paths are spelled relative to the repository instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import REPO

# "/<root>/<name>": a workspace, a home folder (Linux, macOS) or a temporary folder, followed by a name. The slash
# must not continue a word, a URL or a relative path ("https://host/home/x", "docs/tmp/x" are not machine paths).
_ROOTS = ("work", "root", "home", "Users", "tmp")
_MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:" + "|".join(_ROOTS) + r")/[A-Za-z0-9_.][\w.+-]*")

def _tracked_text_files() -> dict[str, str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    texts = {}
    for name in filter(None, names):
        path = REPO / name.decode()
        if not path.is_file():  # deleted in the working tree, or a submodule
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary: weights, images
            continue
        texts[name.decode()] = data.decode("utf-8", errors="replace")
    return texts


def _traces(texts: dict[str, str]) -> dict[str, list[str]]:
    found = {}
    for name, text in texts.items():
        hits = sorted({m.group(0) for m in _MACHINE_PATH.finditer(text)})
        if hits:
            found[name] = hits
    return found


def test_pattern_finds_machine_paths_and_nothing_else():
    def p(root: str, rest: str) -> str:  # spelled in pieces, so that this file names no such path itself
        return "/" + root + "/" + rest

    machine = [p("work", "dm/model"), f'"{p("root", ".cache/x")}"', f"cd {p('home', 'alice/var-clip')}",
               p("Users", "bob/x"), f"open('{p('tmp', 'run3/a')}')"]
    ordinary = ["https://example.com" + p("home", "page"), "docs" + p("tmp", "x"), "src/var_clip" + p("work", "x"),
                "~" + p("work", "x"), "a/b", p("tmp", " alone")]
    assert all(_MACHINE_PATH.search(text) for text in machine)
    assert not any(_MACHINE_PATH.search(text) for text in ordinary)


def test_no_tracked_file_names_a_build_machine_path():
    found = _traces(_tracked_text_files())
    assert found == {}, f"absolute paths of the build machine in tracked files: {found}"
