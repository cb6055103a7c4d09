from .pipeline_var import VARPipeline
from .pipeline_var_clip import VARCLIPPipeline

__all__ = ["VARCLIPPipeline", "VARPipeline"]
