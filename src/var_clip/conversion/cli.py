"""The conversion commands: ``var-clip convert-var-clip`` and ``var-clip convert-var``.

    var-clip convert-var-clip --var-checkpoint ar-ckpt-last.pth --vae-checkpoint vae_ch160v4096z32.pth \\
        --output-dir var-clip-d16 [--dtype fp16] [--push-to-hub user/var-clip-d16 [--private]]
    var-clip convert-var --var-checkpoint var_d16.pth --vae-checkpoint vae_ch160v4096z32.pth --output-dir var-d16

Every option is also accepted in ``--snake_case`` (``--output_dir``), as the original scripts spell them. Errors are
one line with exit code 1 (130 when interrupted), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

from ..pipelines.single_file import DEFAULT_TEXT_ENCODER
from ..utils.arguments import ArgumentParser, add_dtype_option, add_option
from .write import convert_original_checkpoints


@dataclass(frozen=True)
class ConversionCommand:
    """One conversion command: what it converts, its help, and the shipped model-card template it writes."""

    name: str
    condition_type: str
    description: str
    var_help: str
    model_card: str
    upload_message: str


VAR_CLIP = ConversionCommand(
    name="convert-var-clip", condition_type="text",
    description="Convert VAR-CLIP's original checkpoints into a var-clip (diffusers-format) pipeline folder with a "
                "model card.",
    var_help="the transformer: VAR-CLIP's ar-ckpt-last.pth (or a bare transformer state dict)",
    model_card="var_clip_d16.md", upload_message="Upload VAR-CLIP pipeline converted from the original checkpoints",
)
VAR = ConversionCommand(
    name="convert-var", condition_type="class",
    description="Convert VAR's class-conditional checkpoints (var_d16.pth ... var_d30.pth) into a var-clip pipeline "
                "folder with a model card.",
    var_help="the class-conditional transformer: VAR's var_d16.pth ... var_d30.pth",
    model_card="var_class_conditional.md", upload_message="Upload VAR pipeline converted from the original checkpoints",
)
_EPILOG = ("Every hyperparameter is inferred from the checkpoints; files are read without running code; the folder "
           "appears only once it is complete and has been loaded back and used to generate an image. Every option is "
           "also accepted in --snake_case.")


def conversion_parser(condition_type: str, description: str, var_help: str,
                      prog: str | None = None) -> argparse.ArgumentParser:
    """The arguments of a conversion command (``var-clip convert-var-clip`` / ``convert-var``)."""
    parser = ArgumentParser(prog=prog, description=description, epilog=_EPILOG)
    add_option(parser, "var-checkpoint", required=True, help=var_help)
    add_option(parser, "vae-checkpoint", required=True, help="VAR's VQ-VAE, vae_ch160v4096z32.pth")
    add_option(parser, "output-dir", required=True, help="the pipeline folder to create")
    add_option(parser, "patch-nums", default=None,
               help="comma-separated scale sides (default: the checkpoint's own, else 1,2,3,4,5,6,8,10,13,16)")
    if condition_type == "text":
        add_option(parser, "text-encoder", default=DEFAULT_TEXT_ENCODER,
                   help=f"Hub id or local folder of a CLIP model (text tower with projection and tokenizer; default "
                        f"{DEFAULT_TEXT_ENCODER}); 'none' writes a pipeline without text encoder and tokenizer, used "
                        f"with prompt_embeds")
    add_dtype_option(parser, what="weights' precision; float16 and bfloat16 are saved as the diffusers variants fp16 "
                                  "and bf16")
    add_option(parser, "num-heads", type=int, default=None,
               help="only for checkpoints without L2-normalised attention (default: heads = depth, as VAR)")
    add_option(parser, "quant-resi", type=float, default=0.5, help="φ's residual ratio (VAR: 0.5)")
    add_option(parser, "push-to-hub", metavar="REPO_ID", default=None, help="upload the folder to this Hub repo")
    add_option(parser, "private", action="store_true", help="create the Hub repo as private")
    add_option(parser, "overwrite", action="store_true",
               help="replace a non-empty --output-dir (only once the new conversion is complete)")
    add_option(parser, "skip-check", action="store_true",
               help="do not load the written folder back and generate an image before finishing")
    return parser


def run_command(command: ConversionCommand, argv: list[str] | None = None) -> int:
    """Parse ``argv`` for ``command`` and convert, writing the command's shipped model card."""
    parser = conversion_parser(command.condition_type, command.description, command.var_help,
                               prog=f"var-clip {command.name}")
    return conversion_main(argv, parser, command.condition_type, command.model_card, command.upload_message)


def main_var_clip(argv: list[str] | None = None) -> int:
    """``var-clip convert-var-clip``."""
    return run_command(VAR_CLIP, argv)


def main_var(argv: list[str] | None = None) -> int:
    """``var-clip convert-var``."""
    return run_command(VAR, argv)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def conversion_main(argv: list[str] | None, parser: argparse.ArgumentParser, condition_type: str,
                    model_card_template: str | os.PathLike, upload_message: str) -> int:
    """Run a conversion script: one-line errors and exit codes (0 done, 1 failed, 130 interrupted), no traceback."""
    from ..hub import push_pipeline_to_hub

    args = parser.parse_args(argv)
    text_encoder = getattr(args, "text_encoder", None)
    if text_encoder is not None and text_encoder.strip().lower() == "none":
        text_encoder = None
    # Progress from the library goes to stdout; SIGTERM unwinds like Ctrl-C, so the temporary folder is removed.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # the conversion's progress, what the reader assumed, and where a symlinked output folder resolves to
    logs = [logging.getLogger("var_clip.conversion"), logging.getLogger("var_clip.pipelines.single_file"),
            logging.getLogger("var_clip.utils.files")]
    previous_levels = [log.level for log in logs]
    for log in logs:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        start = time.perf_counter()
        result = convert_original_checkpoints(
            args.var_checkpoint, args.vae_checkpoint, args.output_dir, condition_type=condition_type,
            text_encoder=text_encoder, patch_nums=args.patch_nums, num_heads=args.num_heads,
            quant_resi=args.quant_resi, dtype=args.dtype, overwrite=args.overwrite,
            model_card_template=model_card_template, repo_id=args.push_to_hub, check=not args.skip_check,
        )
        total = time.perf_counter() - start
    except (ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no output folder was written", file=sys.stderr)
        return 130
    finally:
        for log, level in zip(logs, previous_levels):
            log.removeHandler(handler)
            log.setLevel(level)
        signal.signal(signal.SIGTERM, previous_sigterm)

    s = result.seconds
    print(f"wrote {result.output_dir}" + (f" (variant {result.variant!r})" if result.variant else "")
          + f" in {total:.1f} s (load {s['load']:.1f} s, save {s['save']:.1f} s"
          + (f", check {s['check']:.1f} s: generated a {result.check_image_size[0]}×{result.check_image_size[1]} image"
             if result.check_image_size else ", check skipped") + ")")
    if args.push_to_hub:
        try:
            url = push_pipeline_to_hub(result.output_dir, args.push_to_hub, private=args.private,
                                       commit_message=upload_message)
        except Exception as e:  # noqa: BLE001 - network, permissions, quota: the local folder is complete either way
            print(f"error: the upload to {args.push_to_hub} failed ({_one_line(e)}); the converted folder "
                  f"{result.output_dir} is complete", file=sys.stderr)
            return 1
        print(f"uploaded to https://huggingface.co/{args.push_to_hub} ({url})")
    return 0
