"""Caption a folder of images with an image-to-text model, resumably, into a Hugging Face ``imagefolder`` dataset.

VAR-CLIP trains on image–caption pairs; most image collections come without captions. This module writes them with
any ``transformers`` image-to-text model (BLIP-2 ``Salesforce/blip2-opt-2.7b`` by default) into ``metadata.jsonl`` at
the root of the folder, one ``{"file_name": <path relative to the folder>, "text": <caption>}`` per line, which is the
layout ``datasets.load_dataset("imagefolder", data_dir=...)`` reads.

Captioning a large folder takes hours, so the file is the progress record: each batch is appended and flushed to disk
(``fsync``) before the next one starts, a crash loses at most the batch in flight, and a new run captions only the
images that have no line yet. A last line cut short by a crash is dropped (the file is rewritten atomically without
it) and its image captioned again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..utils.arguments import ArgumentParser, add_device_option, add_option, dtype_name
from ..utils.atomic import atomic_open
from ..utils.device import resolve_device
from ..utils.dtypes import DTYPE_NAMES, torch_dtype
from ..utils.image_files import read_image

__all__ = [
    "DEFAULT_CAPTION_MODEL",
    "IMAGE_EXTENSIONS",
    "METADATA_FILE",
    "CaptioningResult",
    "ImageCaptioner",
    "list_images",
    "read_metadata",
    "caption_images",
    "build_parser",
    "main",
]

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_MODEL = "Salesforce/blip2-opt-2.7b"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA_FILE = "metadata.jsonl"
# Chat models (LLaVA, Qwen-VL, ...) answer an instruction rather than continue a caption prefix.
DEFAULT_CHAT_PROMPT = "Describe this image in one sentence."
DTYPES = DTYPE_NAMES


# ----------------------------------------------------------------------------------------------------------------------
# The folder and its metadata file
# ----------------------------------------------------------------------------------------------------------------------


def list_images(image_dir: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the images under ``image_dir`` (recursively, sorted; hidden files and folders skipped).

    Raises:
        ValueError: ``image_dir`` is missing, not a folder, or holds no image with one of ``IMAGE_EXTENSIONS``.
    """
    root = Path(image_dir)
    if not root.exists():
        raise ValueError(f"`image_dir` {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"`image_dir` {str(root)!r} is not a folder")
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # .cache, .git, editor swap files, our own temporary files
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(relative.as_posix())
    if not found:
        raise ValueError(f"`image_dir` {str(root)!r} holds no image (looked recursively for "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found)


def read_metadata(metadata_path: str | os.PathLike) -> list[dict]:
    """The records of a ``metadata.jsonl`` (an empty list when the file does not exist).

    A last line that a crash cut short (not valid JSON) is dropped and a missing final newline is added; either repair
    rewrites the file atomically. Any other malformed line is an error, not something to guess about.

    Raises:
        ValueError: a complete line is not a JSON object with a string ``file_name`` and a string ``text``.
    """
    path = Path(metadata_path)
    if not path.exists():
        return []
    chunks = path.read_bytes().split(b"\n")
    # after the last "\n" comes either nothing (a complete file) or the tail of a line that was being written
    complete, tail = chunks[:-1], chunks[-1]
    records = []
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{str(path)!r} line {number} is not valid JSON ({error}); fix or remove that "
                             "line") from error
        records.append(_check_record(record, path, number))
    if tail.strip():
        try:
            record = _check_record(json.loads(tail.decode("utf-8")), path, len(complete) + 1)
        except (UnicodeDecodeError, json.JSONDecodeError):
            logger.warning(f"{path}: dropping the last line, cut short by an interrupted run: {tail[:80]!r}")
        else:
            records.append(record)  # complete but without its newline
        _write_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


def _check_record(record, path: Path, number: int) -> dict:
    if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
        raise ValueError(f"{str(path)!r} line {number} is not a JSON object with a string 'file_name'")
    if not isinstance(record.get("text"), str):
        # appending our own line for this image would list it twice in the dataset
        raise ValueError(f"{str(path)!r} line {number} ({record['file_name']!r}) has no string 'text'; captioning "
                         "writes the 'text' column, so add it or remove that line first")
    return record


def _write_atomically(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def _load_image(root: Path, file_name: str) -> Image.Image:
    # camera photos store their rotation in EXIF, 16-bit scans their depth: caption what a viewer sees
    try:
        return read_image(root / file_name, "image")
    except ValueError as error:
        raise ValueError(f"{error}; remove or replace it") from None


# ----------------------------------------------------------------------------------------------------------------------
# The captioner
# ----------------------------------------------------------------------------------------------------------------------


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        # half precision halves the memory of a 2.7B-parameter model on GPU; CPU kernels are fastest in float32
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in [torch_dtype(name) for name in DTYPES]:
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return torch_dtype(dtype)
    raise ValueError(f"`dtype` must be one of 'auto', {', '.join(repr(d) for d in DTYPES)}; got {dtype!r}")


class ImageCaptioner:
    """A ``transformers`` image-to-text model and its processor, turning a batch of PIL images into captions.

    Args:
        model: an image-to-text model (anything ``AutoModelForImageTextToText`` loads: BLIP-2, BLIP, GIT,
            vision-encoder-decoder, LLaVA-style chat models, ...).
        processor: its processor (``AutoProcessor``): image processor and tokenizer.
        prompt: text the caption starts from. Caption models continue it ("a photo of" → "a photo of a dog on a
            beach"); chat models (processors with a chat template) take it as the instruction, by default
            ``DEFAULT_CHAT_PROMPT``.
        max_new_tokens: the longest caption, in tokens.
        num_beams: beam search width; 1 is greedy decoding. Decoding never samples, so the captions are reproducible.
        keep_prompt: keep a caption-prefix prompt in the caption (the default: "a photo of a dog ..."); False keeps only
            the generated continuation (for question prompts such as "Question: what is shown? Answer:"). Chat
            models' answers never include the prompt.
    """

    def __init__(
        self,
        model,
        processor,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        keep_prompt: bool = True,
    ):
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ValueError(f"`prompt` must be None or a non-empty string, got {prompt!r}")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}")
        if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
            raise ValueError(f"`num_beams` must be a positive int, got {num_beams!r}")
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("`processor` has no tokenizer to decode captions with; load it with AutoProcessor from "
                             "the model's folder or repo")
        self.uses_chat_template = getattr(processor, "chat_template", None) is not None
        self.prompt = prompt.strip() if prompt is not None else None
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.keep_prompt = keep_prompt
        if not model.config.is_encoder_decoder:
            # a decoder-only model continues the last position of each row: pad prompts of unequal length on the left
            self.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike = DEFAULT_CAPTION_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs,
    ) -> ImageCaptioner:
        """Load an image-to-text model and its processor from a Hub repo id or a local folder.

        ``device`` defaults to CUDA when available; ``dtype`` ('auto', 'float32', 'float16', 'bfloat16') to float16 on
        CUDA and float32 elsewhere. Remote code is never executed. Other keyword arguments go to ``__init__``.

        Raises:
            ValueError: the model cannot be found, or it is not an image-to-text model.
        """
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        name = str(model_name_or_path)
        device = resolve_device(device)
        dtype = _resolve_dtype(dtype, device)
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise ValueError(f"`model` {name!r} is neither a local model folder nor a reachable Hub repo with a "
                             f"transformers config: {error}") from error
        if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            raise ValueError(f"`model` {name!r} is a {config.model_type!r} model, not an image-to-text model; use one "
                             "that AutoModelForImageTextToText loads, e.g. 'Salesforce/blip2-opt-2.7b' (blip-2), "
                             "'Salesforce/blip-image-captioning-large' (blip) or 'microsoft/git-large-coco' (git)")
        processor = AutoProcessor.from_pretrained(name)
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype).to(device).eval()
        return cls(model, processor, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The precision the model computes in (``model.dtype`` names its first parameter's, which may be one that
        transformers keeps in float32, such as BLIP-2's query tokens, in a float16 model)."""
        embeddings = self.model.get_input_embeddings()
        return embeddings.weight.dtype if embeddings is not None else self.model.dtype

    def _inputs(self, images: list[Image.Image]):
        if self.uses_chat_template:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.prompt or DEFAULT_CHAT_PROMPT}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self.processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
        elif self.prompt is not None:
            inputs = self.processor(images=images, text=[self.prompt] * len(images), padding=True, return_tensors="pt")
        else:
            inputs = self.processor(images=images, return_tensors="pt")
        # BatchFeature.to casts only the floating-point entries (pixel values) to the model's dtype
        return inputs.to(self.device, dtype=self.dtype)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, on a single line each."""
        images = list(images)
        if not images:
            return []
        inputs = self._inputs(images)
        output_ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                         do_sample=False)
        # decoder-only models return prompt + continuation, encoder-decoder models the continuation alone
        input_ids = inputs.get("input_ids")
        prompt_len = 0
        if input_ids is not None and output_ids.shape[1] >= input_ids.shape[1]:
            if torch.equal(output_ids[:, : input_ids.shape[1]], input_ids.to(output_ids.device)):
                prompt_len = input_ids.shape[1]
        continuation_only = self.uses_chat_template or not self.keep_prompt
        texts = self.tokenizer.batch_decode(output_ids[:, prompt_len:] if continuation_only else output_ids,
                                            skip_special_tokens=True)
        captions = []
        for text in texts:
            text = " ".join(text.split())  # one line: newlines would break nothing in JSON but read badly as captions
            if continuation_only and self.prompt and not self.uses_chat_template and text.startswith(self.prompt):
                text = text[len(self.prompt):].lstrip()  # models (BLIP) that echo the prompt inside the continuation
            captions.append(text)
        return captions


# ----------------------------------------------------------------------------------------------------------------------
# Captioning a folder
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptioningResult:
    """What a `caption_images` run did."""

    metadata_path: Path
    num_images: int  # images in the folder
    num_skipped: int  # already captioned before this run
    num_captioned: int  # captioned by this run
    num_empty: int  # of those, how many captions came out empty


def caption_images(
    image_dir: str | os.PathLike,
    model: str | os.PathLike | ImageCaptioner = DEFAULT_CAPTION_MODEL,
    batch_size: int = 8,
    prompt: str | None = None,
    max_new_tokens: int = 30,
    num_beams: int = 1,
    keep_prompt: bool = True,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    show_progress: bool = True,
) -> CaptioningResult:
    """Caption every image under ``image_dir`` that ``metadata.jsonl`` does not list yet, appending batch by batch.

    Args:
        image_dir: the folder; images in subfolders are listed by their relative path (``"cats/001.jpg"``).
        model: a Hub repo id or local folder of an image-to-text model, or a ready `ImageCaptioner` (then
            ``prompt``, ``max_new_tokens``, ``num_beams``, ``keep_prompt``, ``device`` and ``dtype`` are its own).
            The model is loaded only when some image still needs a caption.
        batch_size: images per forward pass; also the most a crash can lose.
        prompt, max_new_tokens, num_beams, keep_prompt: see `ImageCaptioner`.
        device, dtype: see `ImageCaptioner.from_pretrained`.
        show_progress: show a tqdm progress bar.

    Raises:
        ValueError: a missing or image-less folder, a malformed ``metadata.jsonl``, an unreadable image, a model that
            is not an image-to-text model, or a bad argument.
    """
    root = Path(image_dir)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    # 1. what is there and what is done
    file_names = list_images(root)
    metadata_path = root / METADATA_FILE
    done = {record["file_name"] for record in read_metadata(metadata_path)}
    todo = [name for name in file_names if name not in done]
    num_skipped = len(file_names) - len(todo)
    if not todo:
        return CaptioningResult(metadata_path, len(file_names), num_skipped, 0, 0)

    # 2. the model
    if isinstance(model, ImageCaptioner):
        captioner = model
    else:
        captioner = ImageCaptioner.from_pretrained(model, device=device, dtype=dtype, prompt=prompt,
                                                   max_new_tokens=max_new_tokens, num_beams=num_beams,
                                                   keep_prompt=keep_prompt)

    # 3. caption batch by batch; each batch reaches the disk before the next one starts
    num_captioned = num_empty = 0
    with open(metadata_path, "a", encoding="utf-8") as f, tqdm(
        total=len(file_names), initial=num_skipped, unit="img", desc="captioning", disable=not show_progress
    ) as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            captions = captioner([_load_image(root, name) for name in batch])
            if len(captions) != len(batch):
                raise RuntimeError(f"the captioner returned {len(captions)} captions for {len(batch)} images")
            # one write per batch, so a crash leaves at most one partial line, at the end
            f.write("".join(json.dumps({"file_name": n, "text": c}, ensure_ascii=False) + "\n"
                            for n, c in zip(batch, captions)))
            f.flush()
            os.fsync(f.fileno())
            num_captioned += len(batch)
            num_empty += sum(not c for c in captions)
            progress.update(len(batch))
    if num_empty:
        logger.warning(f"{num_empty} of {num_captioned} captions came out empty; try a longer `max_new_tokens` or a "
                       "`prompt` such as 'a photo of'")
    return CaptioningResult(metadata_path, len(file_names), num_skipped, num_captioned, num_empty)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="var-clip caption",
        description="Caption a folder of images with an image-to-text model into metadata.jsonl (Hugging Face "
                    "imagefolder layout). Interrupted runs resume: images already listed are skipped.",
    )
    parser.add_argument("image_dir", help="folder of images (searched recursively)")
    add_option(parser, "model", default=DEFAULT_CAPTION_MODEL,
                        help="Hub repo id or local folder of an image-to-text model "
                             f"(default: {DEFAULT_CAPTION_MODEL})")
    add_option(parser, "batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    add_option(parser, "prompt", default=None,
                        help="text the caption starts from, e.g. 'a photo of' (chat models: the instruction)")
    add_option(parser, "no-keep-prompt", dest="keep_prompt", action="store_false",
                        help="write only the generated continuation, without the prompt")
    add_option(parser, "max-new-tokens", type=int, default=30, help="longest caption in tokens (default: 30)")
    add_option(parser, "num-beams", type=int, default=1, help="beam search width; 1 = greedy (default: 1)")
    add_device_option(parser)
    add_option(parser, "dtype", default="auto", type=lambda text: text if text == "auto" else dtype_name(text),
               metavar="{auto,float32,bfloat16,float16}",
               help="model precision; 'auto' = float16 on CUDA, float32 otherwise (fp32, bf16, fp16 also accepted)")
    add_option(parser, "no-progress", dest="show_progress", action="store_false", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = caption_images(
            args.image_dir, model=args.model, batch_size=args.batch_size, prompt=args.prompt,
            max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, keep_prompt=args.keep_prompt,
            device=args.device, dtype=args.dtype, show_progress=args.show_progress,
        )
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(f"{result.metadata_path}: captioned {result.num_captioned} image(s), {result.num_skipped} already had a "
          f"caption, {result.num_images} in total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
