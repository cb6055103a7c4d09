from .pipeline_var import VARInpaintPipeline, VARPipeline
from .pipeline_var_clip import VARCLIPPipeline
from .pipeline_var_clip_edit import VARCLIPImg2ImgPipeline, VARCLIPInpaintPipeline, prepare_outpainting

__all__ = ["VARCLIPPipeline", "VARCLIPInpaintPipeline", "VARCLIPImg2ImgPipeline", "VARPipeline", "VARInpaintPipeline",
           "prepare_outpainting"]
