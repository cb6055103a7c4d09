"""Small helpers shared by the command line, training and reports.

``arguments``, ``atomic``, ``dtypes``, ``files`` and ``pretrained`` import neither torch nor diffusers at import time,
so the command line can use them before it knows whether it needs a model.
"""


def __getattr__(name: str):
    # make_image_grid and resolve_device import Pillow and torch: loaded on first use
    if name == "make_image_grid":
        from .image_grid import make_image_grid

        return make_image_grid
    if name == "resolve_device":
        from .device import resolve_device

        return resolve_device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["make_image_grid", "resolve_device"]
