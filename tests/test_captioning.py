"""Captioning a folder with a tiny, randomly initialised BLIP-2 built offline: layout, resume after a crash, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from var_clip.training import captioning
from var_clip.training.captioning import ImageCaptioner, caption_images, list_images, main, read_metadata

PROMPT = "a photo of"
WORDS = "a photo of red green blue circle square triangle small large on the left right top bottom and with cat dog sky"


def _save_tiny_blip2(folder: Path) -> Path:
    """A real BLIP-2 (ViT + Q-Former + OPT) a few thousand parameters large, with a word-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
        PreTrainedTokenizerFast,
    )

    vocab = {word: i for i, word in enumerate(["<pad>", "</s>", "<unk>", *WORDS.split()])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="</s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    # the processor adds BLIP-2's <image> placeholder token to the tokenizer
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=4)
    text_config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, ffn_dim=64,
                            num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32),
        text_config=text_config.to_dict(), num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # large random weights, so that different images get different captions
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory) -> Path:
    return _save_tiny_blip2(tmp_path_factory.mktemp("tiny-blip2"))


@pytest.fixture(scope="module")
def captioner(blip2_dir) -> ImageCaptioner:
    return ImageCaptioner.from_pretrained(blip2_dir, device="cpu", prompt=PROMPT, max_new_tokens=6)


EXPECTED = ["a.png", "b.jpg", "c.PNG", "d.webp", "sub/e.png", "sub/deeper/f.jpeg"]


def _make_folder(root: Path) -> Path:
    for i, name in enumerate(EXPECTED):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        color = (40 * i, 255 - 35 * i, (90 * i) % 256)
        Image.new("RGB", (24 + 4 * i, 20), color).save(path)
    (root / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".cache" / "hidden.png")
    return root


def _lines(root: Path) -> list[dict]:
    text = (root / "metadata.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_list_images_recurses_and_filters(tmp_path):
    assert list_images(_make_folder(tmp_path)) == sorted(EXPECTED)


def test_caption_folder_through_cli(tmp_path, blip2_dir, capsys):
    root = _make_folder(tmp_path / "images")
    argv = [str(root), "--model", str(blip2_dir), "--batch_size", "4", "--prompt", PROMPT, "--max_new_tokens", "6",
            "--device", "cpu", "--no_progress"]
    assert main(argv) == 0
    assert "captioned 6 image(s)" in capsys.readouterr().out
    lines = _lines(root)
    assert sorted(line["file_name"] for line in lines) == sorted(EXPECTED)
    assert all(set(line) == {"file_name", "text"} for line in lines)
    assert all(line["text"].startswith(PROMPT + " ") for line in lines)  # the prompt is kept, then the continuation
    assert len({line["text"] for line in lines}) > 1  # captions depend on the image

    datasets = pytest.importorskip("datasets")
    dataset = datasets.load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.num_rows == 6 and set(dataset.column_names) == {"image", "text"}

    # a second run finds nothing to do and leaves the file alone
    before = (root / "metadata.jsonl").read_bytes()
    assert main(argv) == 0
    assert (root / "metadata.jsonl").read_bytes() == before


def test_crash_after_first_batch_then_resume(tmp_path, captioner, monkeypatch):
    reference_root = _make_folder(tmp_path / "reference")
    caption_images(reference_root, model=captioner, batch_size=6, show_progress=False)
    reference = {line["file_name"]: line["text"] for line in _lines(reference_root)}

    root = _make_folder(tmp_path / "run")
    calls = []
    real_call = ImageCaptioner.__call__

    def crash_on_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_call(self, images)

    monkeypatch.setattr(ImageCaptioner, "__call__", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        caption_images(root, model=captioner, batch_size=2, show_progress=False)
    assert [line["file_name"] for line in _lines(root)] == sorted(EXPECTED)[:2]  # the first batch is on disk

    monkeypatch.setattr(ImageCaptioner, "__call__", real_call)
    seen = []
    real_load = captioning._load_image
    monkeypatch.setattr(captioning, "_load_image", lambda root, name: seen.append(name) or real_load(root, name))
    result = caption_images(root, model=captioner, batch_size=2, show_progress=False)
    assert (result.num_images, result.num_skipped, result.num_captioned) == (6, 2, 4)
    assert seen == sorted(EXPECTED)[2:]  # only the missing images were captioned
    lines = _lines(root)
    assert len(lines) == 6 and len({line["file_name"] for line in lines}) == 6
    # greedy decoding: the same captions as an uninterrupted run with another batch size
    assert {line["file_name"]: line["text"] for line in lines} == reference


def test_truncated_last_line_is_dropped_and_recaptioned(tmp_path, captioner):
    root = _make_folder(tmp_path)
    caption_images(root, model=captioner, batch_size=3, show_progress=False)
    complete = (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # a crash in the middle of writing the fourth line
    (root / "metadata.jsonl").write_text("".join(complete[:3]) + complete[3][:17], encoding="utf-8")

    assert [r["file_name"] for r in read_metadata(root / "metadata.jsonl")] == sorted(EXPECTED)[:3]
    assert (root / "metadata.jsonl").read_text(encoding="utf-8") == "".join(complete[:3])  # repaired on disk

    result = caption_images(root, model=captioner, batch_size=3, show_progress=False)
    assert (result.num_skipped, result.num_captioned) == (3, 3)
    assert (root / "metadata.jsonl").read_text(encoding="utf-8") == "".join(complete)


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": "b.png", "text": "y"}', encoding="utf-8")
    assert [r["file_name"] for r in read_metadata(path)] == ["a.png", "b.png"]
    assert path.read_text(encoding="utf-8").endswith('"y"}\n')


def test_malformed_line_in_the_middle_raises(tmp_path):
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"file_name": "a.png", "text": "x"}\n{"file_na\n{"file_name": "c.png", "text": "z"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metadata(path)
    path.write_text('{"file_name": "a.png", "caption": "x"}\n')
    with pytest.raises(ValueError, match="'text'"):
        read_metadata(path)


def test_bad_folders_raise(tmp_path, blip2_dir):
    with pytest.raises(ValueError, match="image_dir.*does not exist"):
        caption_images(tmp_path / "missing", model=blip2_dir)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="image_dir.*holds no image"):
        caption_images(tmp_path / "empty", model=blip2_dir)
    assert main([str(tmp_path / "empty"), "--model", str(blip2_dir)]) == 2


def test_unreadable_image_raises_naming_it(tmp_path, captioner):
    root = _make_folder(tmp_path)
    (root / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        caption_images(root, model=captioner, batch_size=8, show_progress=False)


def test_model_that_is_not_image_to_text_raises(tmp_path):
    from .conftest import make_tiny_text_encoder, make_tiny_tokenizer

    make_tiny_text_encoder(make_tiny_tokenizer()).save_pretrained(tmp_path / "clip-text")
    root = _make_folder(tmp_path / "images")
    with pytest.raises(ValueError, match="not an image-to-text model"):
        caption_images(root, model=tmp_path / "clip-text", device="cpu", show_progress=False)
    with pytest.raises(ValueError, match="`model`"):
        caption_images(root, model=tmp_path / "no-such-model", device="cpu", show_progress=False)
    assert not (root / "metadata.jsonl").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(batch_size=0), "batch_size"), (dict(dtype="float64"), "dtype"), (dict(device="gpu0"), "device")],
)
def test_bad_arguments_raise(tmp_path, blip2_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        caption_images(_make_folder(tmp_path), model=blip2_dir, show_progress=False, **kwargs)


def test_no_keep_prompt_writes_the_continuation_only(captioner):
    images = [Image.new("RGB", (20, 20), (200, 30, 30)), Image.new("RGB", (20, 20), (30, 30, 200))]
    full = captioner(images)
    continuation = ImageCaptioner(captioner.model, captioner.processor, prompt=PROMPT, max_new_tokens=6,
                                  keep_prompt=False)(images)
    assert [f"{PROMPT} {c}".strip() for c in continuation] == full


def test_half_precision_feeds_pixels_in_the_model_precision(blip2_dir):
    # transformers keeps BLIP-2's Q-Former in float32 inside a float16 model: the pixels follow the vision tower
    captioner = ImageCaptioner.from_pretrained(blip2_dir, device="cpu", dtype="bfloat16", prompt=PROMPT,
                                               max_new_tokens=3)
    image = Image.new("RGB", (20, 20), (200, 30, 30))
    assert captioner._inputs([image])["pixel_values"].dtype == torch.bfloat16
    assert captioner([image])[0].startswith(PROMPT)
    fp16 = ImageCaptioner.from_pretrained(blip2_dir, device="cpu", dtype="float16")
    assert fp16.dtype == torch.float16 and fp16._inputs([image])["pixel_values"].dtype == torch.float16


def _save_tiny_llava(folder: Path) -> Path:
    """A chat-style image-text model (LLaVA: CLIP vision tower + Llama) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "</s>", "<s>", "<unk>", "<image>", "USER:", "ASSISTANT:", *WORDS.split(), "describe", "image"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", additional_special_tokens=["<image>"])
    template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", chat_template=template,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=16, patch_size=8).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_chat_model_gets_an_instruction_and_returns_only_its_answer(tmp_path, monkeypatch):
    captioner = ImageCaptioner.from_pretrained(_save_tiny_llava(tmp_path / "llava"), device="cpu", max_new_tokens=4)
    assert captioner.uses_chat_template
    texts = []
    real_processor_call = type(captioner.processor).__call__
    monkeypatch.setattr(type(captioner.processor), "__call__",
                        lambda self, **kwargs: texts.append(kwargs["text"]) or real_processor_call(self, **kwargs))
    images = [Image.new("RGB", (20, 30), (60 * i, 0, 200 - 50 * i)) for i in range(3)]
    captions = captioner(images)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert texts[0] == ["USER: <image> " + captioning.DEFAULT_CHAT_PROMPT + " ASSISTANT: "] * 3
    assert not any(c.startswith("USER:") for c in captions)  # the conversation is not part of the caption
