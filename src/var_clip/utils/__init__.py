"""Small helpers shared by the command line, training and reports."""

from .device import resolve_device
from .image_grid import make_image_grid

__all__ = ["make_image_grid", "resolve_device"]
