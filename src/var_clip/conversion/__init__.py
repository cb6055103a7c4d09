"""Convert original VAR-CLIP / VAR checkpoints into a diffusers pipeline folder (safetensors, model card).

The logic behind ``var-clip convert-var-clip`` and ``var-clip convert-var`` (and the thin
``conversion_scripts/convert_*_to_diffusers.py`` wrappers), one module per step:

1. ``infer``: read both ``.pth`` files without running code (``torch.load(weights_only=True)``), recognise swapped,
   truncated, HTML or Git-LFS-pointer files and name the argument that holds them; infer every hyperparameter from
   the checkpoints (:mod:`var_clip.original_format` consumes every key and checks every shape); optionally attach a
   CLIP text encoder and tokenizer, checking its projection width against the transformer;
2. ``describe``: the inferred configuration as the printed table;
3. ``write``: write the pipeline (and its model card, ``card``) into a hidden temporary folder next to
   ``output_dir``, load it back and generate one image from it (``check``), and only then move it into place; a
   failure or an interruption leaves no output;
4. ``cli``: the commands' arguments, one-line errors and exit codes.

Progress goes through :mod:`logging` (logger ``var_clip.conversion``); the commands print it.
"""

from .card import MODEL_CARDS_DIR, model_card_template, render_model_card
from .check import check_pipeline_folder
from .cli import conversion_main, conversion_parser, main_var, main_var_clip
from .describe import describe_pipeline, format_table
from .infer import DEFAULT_TEXT_ENCODER, ConversionError, load_original_pipeline, load_text_encoder, parse_patch_nums
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
