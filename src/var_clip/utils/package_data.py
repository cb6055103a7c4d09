"""Folders of data files that ship with the package but live at the top of the source tree.

The custom-pipeline files (``pipelines/``) and the model-card templates (``model_cards/``) sit beside ``src/`` in the
repository, where a reader of the project finds them; ``setup.py`` maps them into the wheel as
``var_clip/custom_pipelines`` and ``var_clip/model_cards``. One lookup serves both layouts.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["shipped_folder"]

_PACKAGE = Path(__file__).resolve().parents[1]  # .../var_clip


def shipped_folder(in_package: str, in_checkout: str) -> Path:
    """``var_clip/<in_package>`` of an installed wheel, else ``<checkout>/<in_checkout>`` of a source checkout
    (an editable install, or ``src/`` on ``sys.path``)."""
    installed = _PACKAGE / in_package
    if installed.is_dir():
        return installed
    checkout = _PACKAGE.parents[1] / in_checkout  # .../src/var_clip → the repository root
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"var-clip's {in_checkout}/ folder is missing from this installation (looked in "
                            f"{installed} and {checkout}); reinstall var-clip")
