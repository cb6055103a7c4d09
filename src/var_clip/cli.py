"""The `var-clip` command line: generate, edit, train, caption, analyse and evaluate.

    var-clip generate "a red circle above a blue square" -o shapes.png
    var-clip generate "a red fox" --model path/or/repo-id --num-images 4 --seed 1 -o foxes.png
    var-clip inpaint "a red circle" --image scene.png --mask mask.png -o inpainted.png
    var-clip img2img "a blue square" --image scene.png --strength 0.5 -o variation.png
    var-clip outpaint "a green triangle on the right" --image scene.png --right 64 -o wider.png
    var-clip train-var --help

Every subcommand exits with 0 on success, 2 on bad arguments and 1 when the work itself fails, with one line naming
the cause and the fix; `--debug` (or VAR_CLIP_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from .utils.arguments import (
    ArgumentParser,
    UsageError,
    add_device_option,
    add_dtype_option,
    add_model_option,
    add_option,
    float_between,
    int_at_least,
    seed_at_most,
)
from .utils.files import OutputLockedError, check_writable, image_format_of, release_held_locks, save_image
from .utils.pretrained import is_network_error

# Subcommands implemented by other modules' `main(argv)` (or the function after a colon):
# name -> (module, one-line help)
DELEGATED = {
    "convert-var-clip": ("var_clip.conversion.cli:main_var_clip",
                         "convert VAR-CLIP's original checkpoints into a pipeline folder with a model card"),
    "convert-var": ("var_clip.conversion.cli:main_var",
                    "convert VAR's class-conditional checkpoints (var_d16 ... var_d30) into a pipeline folder"),
    "train-vqvae": ("var_clip.training.train_vqvae", "train the multi-scale VQ-VAE (accelerate-ready)"),
    "train-clip": ("var_clip.training.train_clip", "train a CLIP model contrastively on image-caption pairs"),
    "train-var": ("var_clip.training.train_var", "train the VAR-CLIP transformer on a frozen VQ-VAE and CLIP"),
    "caption": ("var_clip.training.captioning", "caption a folder of images with an image-to-text model (BLIP-2)"),
    "word-position": ("var_clip.analysis.word_position", "how a word's position in a caption steers CLIP guidance"),
    "phrase-position": ("var_clip.analysis.phrase_position",
                        "whole-caption accuracy while a key phrase moves through the caption (shapes world)"),
    "plot-log": ("var_clip.training.metrics_log", "draw training runs' logs: loss, accuracy, learning rate by step"),
    "eval-shapes": ("var_clip.shapes_world.report", "faithfulness report on the shapes world (accuracy per attribute)"),
    "generate-batch": ("var_clip.generate_batch", "many images from a prompt file, dataset or class labels; resumable, "
                                                  "multi-process (accelerate), imagefolder + .npz output"),
    "eval-fid": ("var_clip.metrics.fid", "FID between generated and reference images (local Inception weights)"),
    "eval-clip-score": ("var_clip.metrics.clip_score", "CLIP score of generated images against their prompts"),
    "demo": ("var_clip.demo.server", "web demo (Gradio): previews scale by scale, editing, LoRA; runs as a Space"),
}


#: The most images one generation command draws at once (into one grid); var-clip generate-batch makes any number.
MAX_GRID_IMAGES = 256
#: The largest --seed: image i is drawn with seed + i, and torch's generators take 64-bit seeds.
MAX_SEED = 2**64 - 1 - MAX_GRID_IMAGES


class CLIError(Exception):
    """A failure to report as one line, with exit code 1."""


# Optional packages → the extra that installs them.
INSTALL_HINTS = {"datasets": "pip install 'var-clip[train]'", "tensorboard": "pip install 'var-clip[train]'",
                 "peft": "pip install 'var-clip[lora]'", "matplotlib": "pip install 'var-clip[analysis]'",
                 "torchmetrics": "pip install 'var-clip[eval]'", "accelerate": "pip install accelerate",
                 "jinja2": "pip install 'var-clip[convert]'", "scipy": "pip install scipy",
                 "gradio": "pip install 'var-clip[demo]'"}

#: What a command imports beyond the core requirements: command → packages it always needs, and (option, value or
#: None for any) → packages that option needs. Checked before any work starts, so a missing extra costs no time.
COMMAND_EXTRAS = {
    "train-vqvae": (("datasets",), {("--report-to", "tensorboard"): ("tensorboard",)}),
    "train-clip": (("datasets",), {("--report-to", "tensorboard"): ("tensorboard",)}),
    "train-var": (("datasets",), {("--report-to", "tensorboard"): ("tensorboard",), ("--lora-rank", None): ("peft",),
                                  ("--train-text-encoder", None): ("peft",)}),
    "word-position": (("matplotlib",), {}),
    "phrase-position": (("matplotlib",), {}),
    "plot-log": (("matplotlib",), {}),
    "eval-fid": (("torchmetrics",), {}),
    "demo": (("gradio",), {}),
}


def missing_extras(command: str, argv: list[str]) -> list[str]:
    """The packages ``command`` run with ``argv`` needs and cannot import (found without importing them)."""
    import importlib.util

    always, by_option = COMMAND_EXTRAS.get(command, ((), {}))
    needed = list(always)
    for (option, value), packages in by_option.items():
        spellings = (option, "--" + option[2:].replace("-", "_"))
        for i, arg in enumerate(argv):
            name, _, inline = arg.partition("=")
            given = inline if inline else (argv[i + 1] if i + 1 < len(argv) else None)
            if name in spellings and (value is None or given == value):
                needed += packages
    return [name for name in dict.fromkeys(needed) if importlib.util.find_spec(name) is None]


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("VAR_CLIP_DEBUG", "").strip().lower() in ("1", "true", "yes")


def describe_failure(error: BaseException) -> str | None:
    """One line naming the cause of an expected failure and its fix; None for an unexpected one (a bug: traceback)."""
    import PIL.Image

    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (CLIError, ValueError, OutputLockedError)):
        return text
    if is_network_error(error):
        from huggingface_hub import constants

        if constants.is_offline_mode():  # the advice to go offline would be no advice at all
            return (f"HF_HUB_OFFLINE is set, so the Hub is not asked, and the local cache does not hold what is needed "
                    f"({text}); pass a local folder with --model, or unset HF_HUB_OFFLINE to download it once")
        return (f"the Hugging Face Hub cannot be reached ({text}); check the connection or the repo id, pass a local "
                f"folder with --model, or set HF_HUB_OFFLINE=1 to use the cache")
    if isinstance(error, ModuleNotFoundError):
        name = (error.name or "").split(".")[0]
        return f"a missing optional dependency: {name or text} ({INSTALL_HINTS.get(name, f'pip install {name}')})"
    if isinstance(error, ImportError):
        return f"an import failed ({text}); reinstall var-clip's dependencies (pip install -e .)"
    if isinstance(error, MemoryError):
        return "out of memory; generate fewer images at once (--num-images), or use --dtype bfloat16"
    if isinstance(error, (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning)):
        return f"{text} (raise PIL.Image.MAX_IMAGE_PIXELS only for images you trust)"
    if isinstance(error, OSError):
        where = f" ({error.filename})" if getattr(error, "filename", None) and str(error.filename) not in text else ""
        return f"{text}{where}"
    if isinstance(error, RuntimeError) and "out of memory" in text.lower():
        return f"{text.split('.')[0]}; generate fewer images at once (--num-images), or use --dtype bfloat16"
    return None


def load_pipeline(model, cls=None, dtype: str = "float32", device: str | None = "cpu", flag: str = "--model"):
    """:func:`var_clip.pipelines.loading.load_pipeline`, imported when a command loads a model: torch and diffusers
    come with the pipelines, and ``var-clip --help`` starts without them."""
    from .pipelines.loading import load_pipeline as load

    return load(model, cls, dtype, device, flag)


def _run_reporting(command: str, run, debug: bool) -> int:
    """Run ``run()``; an expected failure becomes one line on stderr and exit code 1 (2 for a usage error)."""
    try:
        return run()
    except UsageError as error:
        if debug:
            raise
        print(f"var-clip {command}: error: {describe_failure(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - only the kinds describe_failure knows; others re-raise below
        message = describe_failure(error)
        if message is None or debug:
            raise
        print(f"var-clip {command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1
    finally:
        release_held_locks()  # however the command ended, its output folders are free again


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    from .sampling import add_sampling_options  # torch: only when this command runs


    p.add_argument("prompt", help="what to draw (English text; quote it)")
    add_model_option(p)
    add_option(p, "negative-prompt", default=None, help="replaces the learned null embedding in guidance")
    add_option(p, "num-images", type=int_at_least(1), default=1,
               help=f"images to generate, up to {MAX_GRID_IMAGES}; several make a grid "
                    f"(default 1; more: generate-batch)")
    p.add_argument("--seed", type=seed_at_most(MAX_SEED), default=0,
                   help="random seed; image i uses seed + i (default 0)")
    add_sampling_options(p)
    add_dtype_option(p)
    add_device_option(p)
    add_option(p, "save-progress", metavar="PNG", default=None,
                   help="also write the coarse-to-fine progression (one preview per scale) as a strip")
    p.add_argument("-o", "--output", default="var_clip.png",
                   help="image file to write; the suffix names the format "
                        "(.png, .jpg, .webp, ...; default var_clip.png)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of a failure")


#: The generation commands: name -> (one-line help, description)
GENERATION_COMMANDS = {
    "generate": ("text-to-image", "Generate images from a text prompt."),
    "inpaint": ("regenerate a masked region from a prompt",
                "Inpaint: regenerate the white region of --mask in --image following the prompt."),
    "outpaint": ("extend an image beyond its borders",
                 "Outpaint: extend --image by the given margins (pixels) and fill them following the prompt, window by "
                 "window; the original pixels stay unchanged."),
    "img2img": ("keep an image's coarse scales, regenerate the rest",
                "Image-to-image: keep --image's first scales and sample the finer ones under the prompt."),
}


def _add_command_args(name: str, p: argparse.ArgumentParser) -> None:
    _add_generation_args(p)
    if name == "inpaint":
        p.add_argument("--image", required=True,
                       help="image to edit: the model's size, or larger (filled window by window, never resized)")
        p.add_argument("--mask", required=True, help="mask image of the same size: white = regenerate")
    elif name == "outpaint":
        p.add_argument("--image", required=True, help="image to extend")
        for side in ("left", "right", "top", "bottom"):
            p.add_argument(f"--{side}", type=int_at_least(0), default=0,
                           help=f"pixels to add on the {side} (default 0)")
        p.add_argument("--fill", default="border",
                       help="colour of the new area before it is drawn: 'border' (the image's own border colour, "
                            "default), or a colour such as '#ebebeb', 'grey' or '235,235,235'")
    elif name == "img2img":
        p.add_argument("--image", required=True, help="starting image")
        p.add_argument("--strength", type=float_between(0.0, 1.0), default=0.6,
                       help="share of scales regenerated: 0 reconstructs the image, 1 ignores it (default 0.6)")


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The command line's parser; only the generation commands in ``commands`` (default: all) get their options,
    so that ``var-clip --help`` lists the commands without importing torch."""
    parser = ArgumentParser(prog="var-clip", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, description) in GENERATION_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        if commands is None or name in commands:
            _add_command_args(name, p)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _run_delegated(command: str, argv: list[str]) -> int:
    module, _, function = DELEGATED[command][0].partition(":")
    return getattr(importlib.import_module(module), function or "main")(argv)


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


def _check_outputs(args) -> None:
    """Before any compute: the output files' suffixes name a format and their folders accept files."""
    for flag, path in (("--output", args.output), ("--save-progress", args.save_progress)):
        if path is not None:
            try:
                image_format_of(path, flag)
            except ValueError as error:
                raise UsageError(str(error)) from None
            check_writable(path, flag, (getattr(args, "image", None), getattr(args, "mask", None)))


def _load_image(path: str, flag: str):
    from .utils.image_files import read_image  # one line on failure (a ValueError naming the flag and the file)

    return read_image(path, flag, "RGB" if flag == "--image" else "L")


def run_generation(args) -> int:
    import torch

    from . import VARCLIPImg2ImgPipeline, VARCLIPInpaintPipeline, VARCLIPPipeline
    from .sampling import given_sampling_options
    from .utils.device import resolve_device
    from .utils.image_grid import make_image_grid

    cls = {"generate": VARCLIPPipeline, "inpaint": VARCLIPInpaintPipeline, "outpaint": VARCLIPInpaintPipeline,
           "img2img": VARCLIPImg2ImgPipeline}[args.command]
    _check_outputs(args)
    if args.num_images > MAX_GRID_IMAGES:
        raise UsageError(f"--num-images {args.num_images} is more than {MAX_GRID_IMAGES} (one batch, one grid); "
                         "use var-clip generate-batch for more")
    extra = {}
    if args.command == "inpaint":
        image, mask = _load_image(args.image, "--image"), _load_image(args.mask, "--mask")
        if image.size != mask.size:
            raise CLIError(f"--mask is {mask.size[0]}×{mask.size[1]} but --image is {image.size[0]}×{image.size[1]}")
        extra = dict(image=image, mask_image=mask)
    elif args.command == "outpaint":
        from .pipelines.pipeline_var_clip_edit import prepare_outpainting

        if not (args.left or args.right or args.top or args.bottom):
            raise UsageError("outpaint needs at least one of --left, --right, --top, --bottom > 0")
        source = _load_image(args.image, "--image")
        fill = tuple(int(v) for v in args.fill.split(",")) if args.fill.replace(",", "").isdigit() else args.fill
        try:
            canvas, mask = prepare_outpainting(source, left=args.left, top=args.top, right=args.right,
                                               bottom=args.bottom, fill=fill)
        except ValueError as error:  # the pipeline names `right`; the command line --right
            raise UsageError(re.sub(r"`(\w+)`", r"--\1", str(error))) from None
        extra = dict(image=canvas, mask_image=mask)
    elif args.command == "img2img":
        extra = dict(image=_load_image(args.image, "--image"), strength=args.strength)
    pipe = load_pipeline(args.model, cls, args.dtype, args.device)

    previews: list = []

    def keep_preview(p, si, pn, tensors):
        previews.append(p.decode_preview(tensors["f_hat"][:1])[0])
        return {}

    device = resolve_device(args.device)  # "auto" names no device a generator takes
    generators = [torch.Generator(device=device).manual_seed(args.seed + i) for i in range(args.num_images)]
    images = pipe(
        args.prompt, negative_prompt=args.negative_prompt, num_images_per_prompt=args.num_images, generator=generators,
        callback_on_step_end=keep_preview if args.save_progress else None,
        callback_on_step_end_tensor_inputs=["f_hat"] if args.save_progress else None,
        **given_sampling_options(args), **extra,
    ).images
    picture = images[0] if len(images) == 1 else make_image_grid(images, cols=min(len(images), 4))
    save_image(picture, args.output, "--output")
    print(f"wrote {args.output} ({len(images)} image{'s' if len(images) > 1 else ''}, "
          f"{picture.width}×{picture.height})")
    if args.save_progress:
        sides = [f"{pn}x{pn}" for pn in pipe.transformer.config.patch_nums]  # plain x: every font has it
        size = max(previews[0].width, 64)
        strip = make_image_grid([p.resize((size, size)) for p in previews], captions=sides, cols=len(previews))
        save_image(strip, args.save_progress, "--save-progress")
        print(f"wrote {args.save_progress} (progression over {len(previews)} scales)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(commands=argv[:1])
    if argv and argv[0] in DELEGATED:
        # the delegated parsers do not know --debug: it is taken out here
        debug = _debug_requested(argv[1:])
        rest = [a for a in argv[1:] if a != "--debug"]
        missing = [] if "-h" in rest or "--help" in rest else missing_extras(argv[0], rest)
        if missing:
            hints = sorted({INSTALL_HINTS.get(name, f"pip install {name}") for name in missing})
            print(f"var-clip {argv[0]}: error: needs {', '.join(missing)}, not installed ({'; '.join(hints)})",
                  file=sys.stderr)
            return 1
        return _run_reporting(argv[0], lambda: _run_delegated(argv[0], rest), debug)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return _run_reporting(args.command, lambda: run_generation(args), _debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
