"""Convert VAR-CLIP's original checkpoints into a var-clip (diffusers-format) pipeline folder with a model card.

    python conversion_scripts/convert_var_clip_to_diffusers.py \
        --var_checkpoint local_output/ar-ckpt-last.pth --vae_checkpoint pretrained/vae_ch160v4096z32.pth \
        --output_dir var-clip-d16 [--dtype fp16] [--push_to_hub user/var-clip-d16 [--private]]

A thin wrapper kept for diffusers-style workflows: the command is ``var-clip convert-var-clip`` (same options, also
spelled ``--output-dir``), implemented in ``var_clip.conversion``.
"""

import sys

from var_clip.conversion import main_var_clip as main

if __name__ == "__main__":
    sys.exit(main())
