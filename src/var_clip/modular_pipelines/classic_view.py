"""The classic pipeline's prompt and settings code, run on a modular pipeline's components.

The modular blocks validate and encode exactly as :class:`VARCLIPPipeline` does (one implementation of the prompt
checks, CLIP truncation warnings, token states, negative prompts, the learned null condition and the sampling
settings): they call its methods on a pipeline assembled from the same component objects, built per call and
never stored.
"""

from __future__ import annotations

from ..pipelines.pipeline_var_clip import VARCLIPPipeline


def classic_pipeline(components, required: tuple[str, ...] = ("transformer",)) -> VARCLIPPipeline:
    """A :class:`VARCLIPPipeline` over the modular pipeline's tokenizer, text encoder, transformer and VQ-VAE.

    ``required`` names the components the calling block needs (a ValueError says how to load them); any other may be
    None, as the classic pipeline allows, and its constructor checks that those given agree (scales, codebook, text
    widths).
    """
    missing = [name for name in required if getattr(components, name, None) is None]
    if missing:
        raise ValueError(f"this modular pipeline has no {' or '.join(missing)} loaded: call `pipe.load_components()` "
                         f"(or pass them with `pipe.update_components(...)`)")
    return VARCLIPPipeline(
        tokenizer=getattr(components, "tokenizer", None),
        text_encoder=getattr(components, "text_encoder", None),
        transformer=getattr(components, "transformer", None),
        vqvae=getattr(components, "vqvae", None),
    )
