"""The pipeline the original checkpoints make: a :class:`VARCLIPPipeline` or a :class:`VARPipeline` of the components
that :func:`~var_clip.pipelines.single_file.read_original_components` reads and infers from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..pipelines import VARCLIPPipeline, VARPipeline
from ..pipelines.single_file import DEFAULT_TEXT_ENCODER, read_original_components


def load_original_pipeline(
    var_checkpoint: str | os.PathLike,
    vae_checkpoint: str | os.PathLike,
    condition_type: str = "text",
    text_encoder: str | None = DEFAULT_TEXT_ENCODER,
    patch_nums: Sequence[int] | None = None,
    num_heads: int | None = None,
    quant_resi: float = 0.5,
):
    """Build a :class:`VARCLIPPipeline` (``condition_type="text"``) or :class:`VARPipeline` from original files.

    ``patch_nums`` defaults to the transformer checkpoint's own (VAR saves the per-token scale index ``lvl_1L``),
    else VAR's 256-px schedule. ``num_heads`` is needed only for checkpoints without L2-normalised attention (the
    only place the head count is stored); without it VAR's convention heads = depth is assumed, with a warning.
    """
    components = read_original_components(var_checkpoint, vae_checkpoint, condition_type, text_encoder=text_encoder,
                                          patch_nums=patch_nums, num_heads=num_heads, quant_resi=quant_resi)
    return (VARPipeline if condition_type == "class" else VARCLIPPipeline)(**components)
