"""The old import path of :func:`load_pipeline`, kept for scripts written against it; nothing in the package uses it.

The canonical places: :func:`var_clip.pipelines.loading.load_pipeline` (a whole pipeline for a command, beside the
pipelines it loads) and :mod:`var_clip.utils.pretrained` (``ModelLoadError``, ``is_network_error``,
``load_clip_text_encoder``).
"""


def __getattr__(name: str):
    # Looked up on first use, not imported with this module: utils sit below the pipelines, and this alias is the one
    # arrow from them back up, there only so that `from var_clip.utils.loading import load_pipeline` keeps working.
    if name == "load_pipeline":
        from ..pipelines.loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
