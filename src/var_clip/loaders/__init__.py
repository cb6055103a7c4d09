"""Loading adapters into the pipelines: LoRA (:mod:`var_clip.loaders.lora`, the canonical place, which the package
imports from). The names are re-exported here, as ``diffusers.loaders`` does, so ``from var_clip.loaders import
VARCLIPLoraLoaderMixin`` keeps working.
"""

from .lora import (
    ADAPTER_WORDS_KEY,
    LORA_WEIGHT_NAME,
    TEXT_ENCODER_LORA_TARGETS,
    VARCLIPLoraLoaderMixin,
    adapter_parts,
    add_text_encoder_adapter,
    loaded_adapters,
    lora_config,
    lora_target_modules,
    remove_adapter,
    require_peft,
    text_encoder_lora_config,
)

__all__ = [
    "ADAPTER_WORDS_KEY",
    "LORA_WEIGHT_NAME",
    "TEXT_ENCODER_LORA_TARGETS",
    "VARCLIPLoraLoaderMixin",
    "adapter_parts",
    "add_text_encoder_adapter",
    "loaded_adapters",
    "lora_config",
    "lora_target_modules",
    "remove_adapter",
    "require_peft",
    "text_encoder_lora_config",
]
