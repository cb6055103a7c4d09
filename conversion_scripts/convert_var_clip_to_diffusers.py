"""Convert VAR-CLIP's original checkpoints into a var-clip (diffusers-format) pipeline folder with a model card.

    python conversion_scripts/convert_var_clip_to_diffusers.py \\
        --var_checkpoint local_output/ar-ckpt-last.pth --vae_checkpoint pretrained/vae_ch160v4096z32.pth \\
        --output_dir var-clip-d16 [--dtype fp16] [--push_to_hub user/var-clip-d16 [--private]]

Every hyperparameter is inferred from the checkpoints; files are read without running code; the folder appears only
once it is complete and has been loaded back and used to generate an image. The logic is in var_clip.conversion.
"""

from __future__ import annotations

import sys
from pathlib import Path

from var_clip.conversion import conversion_main, conversion_parser

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "var_clip_d16.md"
CONDITION_TYPE = "text"


def build_parser():
    return conversion_parser(CONDITION_TYPE, __doc__, "the transformer: VAR-CLIP's ar-ckpt-last.pth (or a bare transformer state dict)")


def main(argv: list[str] | None = None) -> int:
    return conversion_main(argv, build_parser(), CONDITION_TYPE, MODEL_CARD_TEMPLATE, 'Upload VAR-CLIP pipeline converted from the original checkpoints')


if __name__ == "__main__":
    sys.exit(main())
