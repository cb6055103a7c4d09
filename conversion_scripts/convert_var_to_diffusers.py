"""Convert VAR's class-conditional checkpoints (var_d16.pth ... var_d30.pth) into a var-clip pipeline folder.

    python conversion_scripts/convert_var_to_diffusers.py \\
        --var_checkpoint var_d16.pth --vae_checkpoint vae_ch160v4096z32.pth \\
        --output_dir var-d16 [--dtype fp16] [--push_to_hub user/var-d16 [--private]]

Every hyperparameter is inferred from the checkpoints; files are read without running code; the folder appears only
once it is complete and has been loaded back and used to generate an image. The logic is in var_clip.conversion.
"""

from __future__ import annotations

import sys
from pathlib import Path

from var_clip.conversion import conversion_main, conversion_parser

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "var_class_conditional.md"
CONDITION_TYPE = "class"


def build_parser():
    return conversion_parser(CONDITION_TYPE, __doc__, "the class-conditional transformer: VAR's var_d16.pth ... var_d30.pth")


def main(argv: list[str] | None = None) -> int:
    return conversion_main(argv, build_parser(), CONDITION_TYPE, MODEL_CARD_TEMPLATE, 'Upload VAR pipeline converted from the original checkpoints')


if __name__ == "__main__":
    sys.exit(main())
