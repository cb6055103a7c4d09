"""The old import path of the shapes world's faithfulness report (``var-clip eval-shapes``), kept for scripts written
against it. Its place is :mod:`var_clip.shapes_world.report`; nothing in the package imports this module."""

import sys

from .shapes_world.report import (
    REPORT_FILES,
    SPLITS,
    build_parser,
    evaluate_prompts,
    evaluate_shapes,
    headline,
    inpainting_grid,
    main,
    sample_grid,
)

__all__ = ["REPORT_FILES", "SPLITS", "build_parser", "evaluate_prompts", "evaluate_shapes", "headline",
           "inpainting_grid", "main", "sample_grid"]

if __name__ == "__main__":
    sys.exit(main())
