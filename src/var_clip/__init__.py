"""var-clip: VAR-CLIP text-to-image generation (next-scale prediction) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

import os as _os

#: Folder of the small shapes-world pipeline that ships with the package: `VARCLIPPipeline.from_pretrained(DEFAULT_MODEL)`.
DEFAULT_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "default_model")

from .models import MultiScaleVQModel, VARTransformer2DModel
from .pipelines import (
    VARCLIPImg2ImgPipeline,
    VARCLIPInpaintPipeline,
    VARCLIPPipeline,
    VARInpaintPipeline,
    VARPipeline,
    prepare_outpainting,
)

__all__ = [
    "MultiScaleVQModel",
    "VARTransformer2DModel",
    "VARCLIPPipeline",
    "VARCLIPInpaintPipeline",
    "VARCLIPImg2ImgPipeline",
    "VARPipeline",
    "VARInpaintPipeline",
    "prepare_outpainting",
    "DEFAULT_MODEL",
    "__version__",
]
