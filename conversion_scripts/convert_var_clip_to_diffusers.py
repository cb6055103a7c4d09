"""Convert VAR-CLIP's original checkpoints into a var-clip (diffusers-format) pipeline folder with a model card.

    python conversion_scripts/convert_var_clip_to_diffusers.py \\
        --var_checkpoint local_output/ar-ckpt-last.pth --vae_checkpoint pretrained/vae_ch160v4096z32.pth \\
        --output_dir var-clip-d16 [--dtype fp16] [--push_to_hub user/var-clip-d16 [--private]]

Every hyperparameter is inferred from the checkpoints; files are read without running code; the folder appears only
once it is complete and has been loaded back and used to generate an image. The logic is in var_clip.conversion.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "var_clip_d16.md"
CONDITION_TYPE = "text"


def build_parser() -> argparse.ArgumentParser:
    from var_clip.conversion import DEFAULT_TEXT_ENCODER, DTYPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var_checkpoint", required=True,
                        help="the transformer: VAR-CLIP's ar-ckpt-last.pth (or a bare transformer state dict)")
    parser.add_argument("--vae_checkpoint", required=True, help="VAR's VQ-VAE, vae_ch160v4096z32.pth")
    parser.add_argument("--output_dir", required=True, help="the pipeline folder to create")
    parser.add_argument("--patch_nums", default=None,
                        help="comma-separated scale sides (default: the checkpoint's own, else 1,2,3,4,5,6,8,10,13,16)")
    parser.add_argument("--text_encoder", default=DEFAULT_TEXT_ENCODER,
                        help=f"Hub id or local folder of a CLIP model (text tower with projection and tokenizer; "
                             f"default {DEFAULT_TEXT_ENCODER}); 'none' writes a pipeline without text encoder and "
                             f"tokenizer, used with prompt_embeds")
    parser.add_argument("--dtype", default="fp32", choices=tuple(DTYPES),
                        help="weight precision; fp16/bf16 are saved as the diffusers variant of that name")
    parser.add_argument("--num_heads", type=int, default=None,
                        help="only for checkpoints without L2-normalised attention (default: heads = depth, as VAR)")
    parser.add_argument("--quant_resi", type=float, default=0.5, help="φ's residual ratio (VAR: 0.5)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output_dir (only once the new conversion is complete)")
    parser.add_argument("--skip_check", action="store_true",
                        help="do not load the written folder back and generate an image before finishing")
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from var_clip.conversion import convert_original_checkpoints
    from var_clip.hub import push_pipeline_to_hub

    text_encoder = None if args.text_encoder.strip().lower() == "none" else args.text_encoder
    # Progress from the library goes to stdout; SIGTERM unwinds like Ctrl-C, so the temporary folder is removed.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("var_clip.conversion")
    log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.INFO)
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        start = time.perf_counter()
        result = convert_original_checkpoints(
            args.var_checkpoint, args.vae_checkpoint, args.output_dir, condition_type=CONDITION_TYPE,
            text_encoder=text_encoder, patch_nums=args.patch_nums, num_heads=args.num_heads,
            quant_resi=args.quant_resi, dtype=args.dtype, overwrite=args.overwrite,
            model_card_template=MODEL_CARD_TEMPLATE, repo_id=args.push_to_hub, check=not args.skip_check,
        )
        total = time.perf_counter() - start
    except (ValueError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no output folder was written", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)
        signal.signal(signal.SIGTERM, previous_sigterm)

    s = result.seconds
    print(f"wrote {result.output_dir}" + (f" (variant {result.variant!r})" if result.variant else "")
          + f" in {total:.1f} s (load {s['load']:.1f} s, save {s['save']:.1f} s"
          + (f", check {s['check']:.1f} s: generated a {result.check_image_size[0]}×{result.check_image_size[1]} image"
             if result.check_image_size else ", check skipped") + ")")
    if args.push_to_hub:
        try:
            message = "Upload VAR-CLIP pipeline converted from the original checkpoints"
            url = push_pipeline_to_hub(result.output_dir, args.push_to_hub, private=args.private,
                                       commit_message=message)
        except Exception as e:  # noqa: BLE001 - network, permissions, quota: the local folder is complete either way
            print(f"error: the upload to {args.push_to_hub} failed ({_one_line(e)}); the converted folder "
                  f"{result.output_dir} is complete", file=sys.stderr)
            return 1
        print(f"uploaded to https://huggingface.co/{args.push_to_hub} ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
