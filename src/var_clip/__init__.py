"""var-clip: VAR-CLIP text-to-image generation (next-scale prediction) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

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
    "__version__",
]
