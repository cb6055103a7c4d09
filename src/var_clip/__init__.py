"""var-clip: VAR-CLIP text-to-image generation (next-scale prediction) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

import importlib as _importlib
import os as _os

#: Folder of the small shapes-world pipeline that ships with the package:
#: `VARCLIPPipeline.from_pretrained(DEFAULT_MODEL)`.
DEFAULT_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "default_model")

# The models and pipelines import torch and diffusers: they load on first use, so that `import var_clip.cli` (and
# `var-clip --help`) stays light.
_LAZY = {
    "MultiScaleVQModel": ".models",
    "VARTransformer2DModel": ".models",
    "VARCLIPPipeline": ".pipelines",
    "VARCLIPInpaintPipeline": ".pipelines",
    "VARCLIPImg2ImgPipeline": ".pipelines",
    "VARPipeline": ".pipelines",
    "VARInpaintPipeline": ".pipelines",
    "prepare_outpainting": ".pipelines",
    "VARCLIPBlocks": ".modular_pipelines",
    "guider_interval": ".modular_pipelines",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "MultiScaleVQModel",
    "VARTransformer2DModel",
    "VARCLIPPipeline",
    "VARCLIPInpaintPipeline",
    "VARCLIPImg2ImgPipeline",
    "VARPipeline",
    "VARInpaintPipeline",
    "prepare_outpainting",
    "VARCLIPBlocks",
    "guider_interval",
    "DEFAULT_MODEL",
    "__version__",
]
