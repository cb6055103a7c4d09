"""VAR-CLIP as diffusers modular pipeline blocks (``diffusers.modular_pipelines``).

Layout as diffusers' own: ``encoders`` (text), ``before_sampling`` (settings, guidance, condition), ``scale_loop``
(the loop over the scales and its four steps), ``decoders``, ``modular_blocks_var_clip`` (the assembled blocks), and
``guidance`` (guiders' start/stop as scale indices).
"""

from .before_sampling import VARCLIPPrepareStep
from .decoders import VARCLIPDecodeStep
from .encoders import VARCLIPTextEncoderStep
from .guidance import guided_scales, guider_interval
from .modular_blocks_var_clip import VARCLIPBlocks
from .scale_loop import (
    VARCLIPLoopAccumulator,
    VARCLIPLoopGuidance,
    VARCLIPLoopPredictor,
    VARCLIPLoopSampler,
    VARCLIPNextScaleLoop,
)

__all__ = [
    "VARCLIPBlocks",
    "VARCLIPDecodeStep",
    "VARCLIPLoopAccumulator",
    "VARCLIPLoopGuidance",
    "VARCLIPLoopPredictor",
    "VARCLIPLoopSampler",
    "VARCLIPNextScaleLoop",
    "VARCLIPPrepareStep",
    "VARCLIPTextEncoderStep",
    "guided_scales",
    "guider_interval",
]
