"""Convert VAR's class-conditional checkpoints (var_d16.pth ... var_d30.pth) into a var-clip pipeline folder.

    python conversion_scripts/convert_var_to_diffusers.py \
        --var_checkpoint var_d16.pth --vae_checkpoint vae_ch160v4096z32.pth \
        --output_dir var-d16 [--dtype fp16] [--push_to_hub user/var-d16 [--private]]

A thin wrapper kept for diffusers-style workflows: the command is ``var-clip convert-var`` (same options, also
spelled ``--output-dir``), implemented in ``var_clip.conversion``.
"""

import sys

from var_clip.conversion import main_var as main

if __name__ == "__main__":
    sys.exit(main())
