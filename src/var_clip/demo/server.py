"""`var-clip demo`: serve the web demo, and the workspace it owns.

    var-clip demo                                   # the embedded shapes-world model, http://127.0.0.1:7860
    var-clip demo --model path/or/repo-id --server-name 0.0.0.0 --server-port 8080
    var-clip demo --share                           # a public gradio.live link

The page is served while the weights load in the background; a request made before they are ready waits for them.
Everything the server writes (uploads, images it serves) goes into one temporary folder it creates and removes on
exit; the server also works from inside it, so nothing lands in the folder it was started from.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ..utils.arguments import (
    ArgumentParser,
    add_device_option,
    add_dtype_option,
    add_model_option,
    add_option,
    int_at_least,
)

__all__ = ["Workspace", "build_parser", "main", "serve"]

#: Seconds after the server starts at which the model loads if no page has asked for it yet.
MODEL_LOAD_DELAY_S = 3.0


class Workspace:
    """A temporary folder the demo creates, works in and removes at exit."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="var-clip-demo-")).resolve()
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)

    @property
    def gradio_dir(self) -> Path:
        """Where Gradio keeps uploads and the files it serves (its ``GRADIO_TEMP_DIR``)."""
        return self.root / "gradio"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="var-clip demo", description=__doc__)
    add_model_option(p)
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    add_option(p, "server-name", default=None,
               help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME; 0.0.0.0 for every interface)")
    add_option(p, "server-port", type=int_at_least(1), default=None,
               help="port (default 7860 or the next free one, or $GRADIO_SERVER_PORT)")
    add_option(p, "queue-size", type=int_at_least(1), default=16,
               help="requests waiting at most; more are refused with a message in the page (default 16)")
    add_option(p, "workers", type=int_at_least(1), default=2,
               help="requests generating at once, one CPU thread each on a CPU (default 2)")
    add_option(p, "max-upload-mb", type=int_at_least(1), default=10, help="largest upload accepted (default 10 MB)")
    add_option(p, "no-lora", action="store_true", help="hide the LoRA tab (visitors cannot change the shared model)")
    add_dtype_option(p)
    add_device_option(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    serve(model=args.model, share=args.share, server_name=args.server_name, server_port=args.server_port,
          queue_size=args.queue_size, workers=args.workers, max_upload_mb=args.max_upload_mb,
          allow_lora=not args.no_lora, dtype=args.dtype, device=args.device)
    return 0


def serve(model: str | None = None, share: bool = False, server_name: str | None = None, server_port: int | None = None,
          queue_size: int = 16, workers: int = 2, max_upload_mb: int = 10, allow_lora: bool = True,
          dtype: str = "float32", device: str = "cpu", block: bool = True):
    """Start the demo; returns the Gradio app when ``block`` is False (the server then runs in the background)."""
    workspace = Workspace()
    print(f"var-clip demo: working in {workspace.root} (removed on exit)", flush=True)
    if threading.current_thread() is threading.main_thread():  # a stopped server removes its workspace too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())  # the server works from its workspace
    # before Gradio is imported: it reads its folder when imported
    os.environ["GRADIO_TEMP_DIR"] = str(workspace.gradio_dir)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.chdir(workspace.root)

    import PIL.Image

    from .engine import DemoEngine
    from .uploads import UploadLimits

    limits = UploadLimits(max_bytes=max_upload_mb * 2**20)
    # Gradio decodes the image editor's layers itself: the same pixel limit guards that path
    PIL.Image.MAX_IMAGE_PIXELS = limits.max_pixels

    def load():
        import torch

        from ..pipelines.loading import load_pipeline

        if device == "cpu":
            torch.set_num_threads(1)  # one thread per request: small models run fastest so, and requests share cores
        return load_pipeline(model, dtype=dtype, device=device)

    engine = DemoEngine(load)

    from .ui import CSS, build_demo  # Gradio

    label = f"`{model}`" if model else "the embedded shapes-world model"
    demo = build_demo(engine, label, limits=limits, allow_lora=allow_lora, image_dir=workspace.root / "images")
    demo.queue(max_size=queue_size, default_concurrency_limit=workers)
    demo.launch(share=share, server_name=server_name, server_port=server_port, max_file_size=limits.max_bytes,
                css=CSS, ssr_mode=False, show_error=False, prevent_thread_lock=True, footer_links=[])
    # Torch, the pipelines and the weights load once the first visitor's page is on screen (its load event starts
    # them), or after a few seconds without visitors. Importing them holds the interpreter for seconds, and the page's
    # own requests (scripts, configuration) would wait behind it: first the page, then the model, takes as long in all
    # and shows the page sooner.
    timer = threading.Timer(MODEL_LOAD_DELAY_S, engine.start)
    timer.daemon = True
    timer.start()
    if block:
        demo.block_thread()
    return demo
