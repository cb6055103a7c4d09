"""Convert original VAR-CLIP / VAR checkpoints into a diffusers pipeline folder (safetensors, model card).

The logic behind ``var-clip convert-var-clip`` and ``var-clip convert-var`` (and the thin
``conversion_scripts/convert_*_to_diffusers.py`` wrappers), one module per step:

1. ``infer``: the pipeline the files make. The reading is the pipelines' own, shared with ``from_single_file``
   (:mod:`var_clip.pipelines.single_file`): both ``.pth`` files read without running code
   (``torch.load(weights_only=True)``), swapped, truncated, HTML or Git-LFS-pointer files recognised and named by the
   argument that holds them, every hyperparameter inferred from the checkpoints (:mod:`var_clip.original_format`
   consumes every key and checks every shape), optionally a CLIP text encoder and tokenizer, its projection width
   checked against the transformer's;
2. ``describe``: the inferred configuration as the printed table;
3. ``write``: write the pipeline (and its model card, ``card``) into a hidden temporary folder next to
   ``output_dir``, load it back and generate one image from it (``check``), and only then move it into place; a
   failure or an interruption leaves no output;
4. ``cli``: the commands' arguments, one-line errors and exit codes.

Progress goes through :mod:`logging` (loggers ``var_clip.conversion`` and, for what the reader infers,
``var_clip.pipelines.single_file``); the commands print it.
"""

from ..pipelines.single_file import DEFAULT_TEXT_ENCODER, ConversionError, load_text_encoder, parse_patch_nums
from .card import MODEL_CARDS_DIR, model_card_template, render_model_card
from .check import check_pipeline_folder
from .cli import conversion_main, conversion_parser, main_var, main_var_clip
from .describe import describe_pipeline, format_table
from .infer import load_original_pipeline
from .write import DTYPES, ConversionResult, convert_original_checkpoints

__all__ = [
    "ConversionError",
    "ConversionResult",
    "DTYPES",
    "DEFAULT_TEXT_ENCODER",
    "MODEL_CARDS_DIR",
    "check_pipeline_folder",
    "conversion_main",
    "conversion_parser",
    "convert_original_checkpoints",
    "describe_pipeline",
    "format_table",
    "load_original_pipeline",
    "load_text_encoder",
    "main_var",
    "main_var_clip",
    "model_card_template",
    "parse_patch_nums",
    "render_model_card",
]
