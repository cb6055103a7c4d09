"""The decoding step: the accumulated latent → images (or the latent, or the tokens, as they are)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.image_processor import VaeImageProcessor
from diffusers.modular_pipelines import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam

from ..models.multiscale_vq import MultiScaleVQModel
from ..pipelines.next_scale import OUTPUT_TYPES
from .encoders import MODEL_NAME


class VARCLIPDecodeStep(ModularPipelineBlocks):
    """Decode ``f_hat`` with the VQ-VAE into images in ``output_type``; ``"latent"`` and ``"tokens"`` skip decoding."""

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return "Decode step: the VQ-VAE decodes the accumulated latent f_hat into images"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [
            ComponentSpec("vqvae", MultiScaleVQModel),
            ComponentSpec("image_processor", VaeImageProcessor,
                          config=FrozenDict({"do_resize": False, "do_normalize": True}),
                          default_creation_method="from_config"),
        ]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("f_hat", type_hint=torch.Tensor, required=True),
            InputParam("tokens", type_hint=list),
            InputParam("output_type", type_hint=str, default="pil",
                       description='"pil", "np", "pt", "latent" (f_hat) or "tokens" (checked here, before sampling)'),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("images", type_hint=list, description="the generated images in `output_type`")]

    @torch.no_grad()
    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        output_type = block_state.output_type
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if output_type == "tokens":
            block_state.images = block_state.tokens
        elif output_type == "latent":
            block_state.images = block_state.f_hat
        else:
            images = components.vqvae.decode_latent(block_state.f_hat).float()
            block_state.images = components.image_processor.postprocess(images, output_type=output_type)
        self.set_block_state(state, block_state)
        return components, state
