#!/usr/bin/env python
"""Caption a folder of images into metadata.jsonl (Hugging Face imagefolder layout); see var_clip.training.captioning.

    python scripts/caption_images.py path/to/images --prompt "a photo of" --batch-size 16

A thin wrapper: the command is ``var-clip caption``.
"""

import sys

from var_clip.training.captioning import main

if __name__ == "__main__":
    sys.exit(main())
