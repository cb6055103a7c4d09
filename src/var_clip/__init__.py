"""var-clip: VAR-CLIP text-to-image generation (next-scale prediction) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .models import MultiScaleVQModel, VARTransformer2DModel
from .pipelines import VARCLIPPipeline, VARPipeline

__all__ = ["MultiScaleVQModel", "VARTransformer2DModel", "VARCLIPPipeline", "VARPipeline", "__version__"]
