"""The step before the scale loop: sampling settings per scale, the scales the guider guides, the condition rows."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.modular_pipelines import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam

from ..models.multiscale_vq import MultiScaleVQModel
from ..models.var_transformer import VARTransformer2DModel
from ..pipelines.pipeline_var_clip import PromptEmbeddings
from ..sampling import DEFAULT_GUIDANCE_SCALE, DEFAULT_TOP_K, DEFAULT_TOP_P, SamplingSchedule
from .classic_view import classic_pipeline
from .encoders import EMBEDDING_OUTPUTS, MODEL_NAME
from .guidance import guided_scales

# VAR's classifier-free guidance: logits (1 + t)·cond − t·uncond, diffusers' "original formulation" with t the
# guidance scale; the classic pipeline's default strength
GUIDER_SPEC = ComponentSpec(
    "guider", ClassifierFreeGuidance,
    config=FrozenDict({"guidance_scale": DEFAULT_GUIDANCE_SCALE, "use_original_formulation": True}),
    default_creation_method="from_config",
)


class VARCLIPPrepareStep(ModularPipelineBlocks):
    """Validate the sampling settings, ask the guider which scales it guides, and build the transformer's condition.

    The settings are checked and expanded per scale by the classic pipeline's own code; ``guidance_schedule`` gives
    the ramp's shape (``"linear"``: weight ``k / (S − 1)`` at scale k, as VAR; ``"constant"``: 1), the guider its
    strength and its interval. With guidance at any scale the condition has 2B rows, the B conditional ones then the
    B unconditional ones (the negative prompt's, or the transformer's learned null condition).
    """

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Prepare step: validates the sampling settings (one value per scale), asks the guider which scales it "
                "guides, and builds the transformer's condition rows and the empty accumulated latent f_hat")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("transformer", VARTransformer2DModel), ComponentSpec("vqvae", MultiScaleVQModel),
                GUIDER_SPEC]

    @property
    def inputs(self) -> list[InputParam]:
        embeddings = [InputParam(out.name, type_hint=out.type_hint, required=out.name == "prompt_embeds")
                      for out in EMBEDDING_OUTPUTS]
        return [
            *embeddings,
            InputParam("num_images", type_hint=int, required=True, description="prompts × num_images_per_prompt"),
            InputParam("guidance_schedule", type_hint=str, default="linear",
                       description='"linear" (the guidance ramps from 0 at the first scale to the guider\'s scale at '
                                   'the last, as VAR) or "constant"'),
            InputParam("top_k", type_hint=int | list[int], default=DEFAULT_TOP_K,
                       description="keep the k most likely tokens (0: no filter); one value or one per scale"),
            InputParam("top_p", type_hint=float | list[float], default=DEFAULT_TOP_P,
                       description="nucleus filtering in [0, 1] (0: no filter); one value or one per scale"),
            InputParam("temperature", type_hint=float | list[float], default=1.0,
                       description="softmax temperature, one value or one per scale"),
            InputParam("prune_ratios", type_hint=dict | list | None,
                       description="FastVAR's cached token pruning per scale side, e.g. {8: 0.4} (an approximation)"),
            InputParam("more_smooth", type_hint=bool, default=False,
                       description="Gumbel-softmax smoothing of the sampled embeddings (the original's visual "
                                   "setting)"),
            InputParam("generator", type_hint=torch.Generator | list[torch.Generator],
                       description="the only source of randomness; a list gives each image its own"),
            InputParam("output_type", type_hint=str, default="pil",
                       description='"pil", "np", "pt", "latent" (f_hat) or "tokens" (checked here, before sampling)'),
            InputParam("height", type_hint=int, description="accepted only as the model's own image side"),
            InputParam("width", type_hint=int, description="accepted only as the model's own image side"),
            InputParam("num_inference_steps", type_hint=int, description="accepted only as the number of scales"),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("schedule", type_hint=SamplingSchedule,
                        description="top-k, top-p, temperature and pruning per scale; `guidance` holds the ramp's "
                                    "weights"),
            OutputParam("guided_scales", type_hint=tuple,
                        description="the scale indices where the guider guides and the ramp's weight is not 0"),
            OutputParam("condition", type_hint=dict,
                        description="the transformer's condition arguments: B rows, or 2B with guidance"),
            OutputParam("f_hat", type_hint=torch.Tensor,
                        description="the accumulated latent (B, C, pn_S, pn_S), zeros"),
            OutputParam("next_BChw", type_hint=torch.Tensor, description="the next scale's input; None at the first"),
            OutputParam("tokens", type_hint=list, description="the sampled token indices, one (B, pn²) per scale"),
        ]

    @torch.no_grad()
    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        pipe = classic_pipeline(components, required=("transformer", "vqvae"))
        B = block_state.num_images

        # 1. every setting checked and expanded per scale, as the classic pipeline does; the guidance entries of the
        #    schedule are the ramp's weights (strength 1), the guider gives the strength
        request = pipe.prepare_request(
            B, generator=block_state.generator, output_type=block_state.output_type,
            more_smooth=block_state.more_smooth, height=block_state.height, width=block_state.width,
            num_inference_steps=block_state.num_inference_steps, guidance_scale=1.0,
            guidance_schedule=block_state.guidance_schedule, top_k=block_state.top_k, top_p=block_state.top_p,
            temperature=block_state.temperature, prune_ratios=block_state.prune_ratios,
        )
        block_state.schedule = request.schedule

        # 2. the scales the guider guides (its start/stop over the scales), less those where the ramp is at 0
        patch_nums = components.transformer.config.patch_nums
        block_state.guided_scales = tuple(si for si in guided_scales(components.guider, patch_nums)
                                          if request.schedule.guidance[si] != 0)

        # 3. the condition rows (the unconditional half only when some scale is guided) and the empty latent
        embeddings = PromptEmbeddings(*(getattr(block_state, out.name) for out in EMBEDDING_OUTPUTS))
        block_state.condition = pipe.text_condition(embeddings, guided=bool(block_state.guided_scales))
        C, side = components.vqvae.config.latent_channels, patch_nums[-1]
        block_state.f_hat = torch.zeros(B, C, side, side, dtype=torch.float32, device=embeddings.prompt_embeds.device)
        block_state.next_BChw = None
        block_state.tokens = []
        self.set_block_state(state, block_state)
        return components, state
