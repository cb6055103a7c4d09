"""The text step: prompts (or precomputed embeddings) → what the transformer reads of them."""

from __future__ import annotations

import torch
from diffusers.modular_pipelines import ComponentSpec, InputParam, ModularPipelineBlocks, OutputParam
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from ..models.var_transformer import VARTransformer2DModel
from ..pipelines.pipeline_var_clip import PromptInputs
from .classic_view import classic_pipeline

MODEL_NAME = "var-clip"

# the text step's outputs, in the order of `PromptEmbeddings`; the token fields stay None for pooled-only models
EMBEDDING_OUTPUTS = (
    OutputParam("prompt_embeds", type_hint=torch.Tensor,
                description="pooled, L2-normalised CLIP text embeddings (B, E), one row per image"),
    OutputParam("negative_prompt_embeds", type_hint=torch.Tensor,
                description="the negative prompt's (B, E); None: the transformer's learned null embedding"),
    OutputParam("prompt_token_embeds", type_hint=torch.Tensor,
                description="token-level conditioning: CLIP's last hidden states (B, T, H)"),
    OutputParam("prompt_attention_mask", type_hint=torch.Tensor, description="which of them are real tokens (B, T)"),
    OutputParam("negative_prompt_token_embeds", type_hint=torch.Tensor,
                description="the negative prompt's token states; None: the learned null token"),
    OutputParam("negative_prompt_attention_mask", type_hint=torch.Tensor, description="their mask"),
)


class VARCLIPTextEncoderStep(ModularPipelineBlocks):
    """Encode the prompts with CLIP's text tower, as :meth:`VARCLIPPipeline.encode_prompt` does, one row per image.

    Given embeddings instead of prompts are checked and passed on. Without a negative prompt the negative fields
    stay None: the transformer then applies its learned null condition to the unconditional rows.
    """

    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return ("Text step: validates the prompt arguments against the transformer and encodes the prompts (pooled "
                "CLIP embeddings and, for token-level models, the token states), repeated num_images_per_prompt times")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [
            ComponentSpec("tokenizer", CLIPTokenizer),
            ComponentSpec("text_encoder", CLIPTextModelWithProjection),
            ComponentSpec("transformer", VARTransformer2DModel),
        ]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("prompt", type_hint=str | list[str], description="what to draw"),
            InputParam("negative_prompt", type_hint=str | list[str],
                       description="takes the place of the learned null embedding in guidance"),
            InputParam("num_images_per_prompt", type_hint=int, default=1),
            *(InputParam(out.name, type_hint=out.type_hint, description=f"precomputed: {out.description}")
              for out in EMBEDDING_OUTPUTS),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [*EMBEDDING_OUTPUTS, OutputParam("num_images", type_hint=int,
                                                description="images generated: prompts × num_images_per_prompt")]

    @torch.no_grad()
    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        pipe = classic_pipeline(components)
        prompts = PromptInputs(*(getattr(block_state, name) for name in (
            "prompt", "negative_prompt", *(out.name for out in EMBEDDING_OUTPUTS))))

        # 1. the classic checks (prompt or embeddings, widths, token states, images per prompt)
        block_state.num_images = prompts.num_images(pipe, block_state.num_images_per_prompt)
        pipe.warn_unknown_words(prompts.prompt)

        # 2. encode; a negative prompt is encoded whenever given (the guider decides later which scales use it)
        has_negative = prompts.negative_prompt is not None or prompts.negative_prompt_embeds is not None
        embeddings = pipe.encode_prompt(
            prompts.prompt, components._execution_device, block_state.num_images_per_prompt, has_negative,
            prompts.negative_prompt, prompts.prompt_embeds, prompts.negative_prompt_embeds, prompts.prompt_token_embeds,
            prompts.prompt_attention_mask, prompts.negative_prompt_token_embeds, prompts.negative_prompt_attention_mask,
        )
        for out, value in zip(EMBEDDING_OUTPUTS, embeddings):
            setattr(block_state, out.name, value)
        self.set_block_state(state, block_state)
        return components, state
