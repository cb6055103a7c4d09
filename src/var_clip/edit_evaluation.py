"""The old import path of the measured edits on the shapes world (inpainting, outpainting, image-to-image), kept for
scripts written against it. Its place is :mod:`var_clip.shapes_world.edit_report`; nothing in the package imports
this module."""

from .shapes_world.edit_report import (
    MASKED_HALF,
    REDRAWN_PSNR,
    InpaintingTask,
    evaluate_img2img,
    evaluate_inpainting,
    evaluate_outpainting,
    inpainting_scenes,
    inpainting_tasks,
    psnr,
)

__all__ = ["MASKED_HALF", "REDRAWN_PSNR", "InpaintingTask", "evaluate_img2img", "evaluate_inpainting",
           "evaluate_outpainting", "inpainting_scenes", "inpainting_tasks", "psnr"]
