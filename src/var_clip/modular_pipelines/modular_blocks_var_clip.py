"""VAR-CLIP text-to-image as diffusers modular blocks: text → prepare → next-scale loop → decode."""

from __future__ import annotations

import os

from diffusers.modular_pipelines import ModularPipeline, SequentialPipelineBlocks

from .before_sampling import VARCLIPPrepareStep
from .decoders import VARCLIPDecodeStep
from .encoders import VARCLIPTextEncoderStep
from .scale_loop import VARCLIPNextScaleLoop


class VARCLIPBlocks(SequentialPipelineBlocks):
    """The VAR-CLIP text-to-image pipeline as blocks; the same images as :class:`VARCLIPPipeline` for the same seed.

    ``VARCLIPBlocks().init_pipeline(folder)`` makes a diffusers ``ModularPipeline`` over a var-clip pipeline folder
    (``load_components()`` loads its tokenizer, text encoder, transformer and VQ-VAE); its guidance is the ``guider``
    component (diffusers' ``ClassifierFreeGuidance`` in VAR's formulation by default). Any block can be replaced
    before ``init_pipeline``: ``blocks.sub_blocks["next_scale"].sub_blocks["sample"] = MySampler()``.
    """

    block_classes = [VARCLIPTextEncoderStep, VARCLIPPrepareStep, VARCLIPNextScaleLoop, VARCLIPDecodeStep]
    block_names = ["text_encoder", "prepare", "next_scale", "decode"]

    @property
    def description(self) -> str:
        return ("VAR-CLIP text-to-image: encode the prompt, prepare the settings and the guidance, predict, guide, "
                "sample and accumulate scale by scale, decode")

    def init_pipeline(self, pretrained_model_name_or_path: str | os.PathLike | None = None, components_manager=None,
                      collection: str | None = None) -> ModularPipeline:
        """diffusers' ``init_pipeline``, with a folder given as a ``pathlib.Path`` passed on as a ``str``.

        diffusers (0.42) builds each component's loading spec from the folder as given and later handles it as a string:
        from a ``Path`` every component fails to load in ``load_components()``, with a logged warning only.
        """
        if pretrained_model_name_or_path is not None:
            pretrained_model_name_or_path = os.fspath(pretrained_model_name_or_path)
        return super().init_pipeline(pretrained_model_name_or_path, components_manager, collection)
