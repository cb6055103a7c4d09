"""The var-clip web demo as a Hugging Face Space (or locally: `python app.py`, the same as `var-clip demo`).

The Space's card is `space/README.md`; its requirements are `requirements.txt`. Settings come from the environment:
VAR_CLIP_DEMO_MODEL (a pipeline folder or Hub id; default the embedded shapes-world model) and VAR_CLIP_DEMO_LORA=0 to
hide the LoRA tab; Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address, as a Space sets them.
"""

import os

from var_clip.demo.server import serve

if __name__ == "__main__":
    serve(model=os.environ.get("VAR_CLIP_DEMO_MODEL") or None,
          allow_lora=os.environ.get("VAR_CLIP_DEMO_LORA", "1").strip().lower() not in ("0", "false", "no"))
