"""The web demo without a browser: uploads, the page's fields, the engine (previews, results, cancellation,
concurrent requests, LoRA changes) and the command. Gradio is not needed; the browser tests are in
``test_demo_browser.py``."""

from __future__ import annotations

import io
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import var_clip
from tests.conftest import assert_same_image
from var_clip.demo.engine import Cancelled, DemoEngine, DemoRequest, Preview, Result, SharedExclusiveLock, verdict_for
from var_clip.demo.forms import enlarge, mask_from_layers, resolve_seed, verdict_table
from var_clip.demo.uploads import UploadError, UploadLimits, fit_to_square, read_upload
from var_clip.pipelines.loading import load_pipeline
from var_clip.shapes_world import render_scene, sample_scene

REPO = Path(__file__).resolve().parents[1]


# -- uploads ------------------------------------------------------------------------------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    """A valid PNG of a black image, written by hand so that a huge one stays a few kilobytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1-bit greyscale
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def noise_png() -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def upload(tmp_path):
    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


def test_read_upload_accepts_images_and_converts_them_to_rgb(upload):
    buffer = io.BytesIO()
    PIL.Image.new("RGBA", (30, 20), (10, 20, 30, 128)).save(buffer, format="WEBP")
    image = read_upload(upload("photo.webp", buffer.getvalue()))
    assert image.mode == "RGB" and image.size == (30, 20)


@pytest.mark.parametrize("name, data, words", [
    ("notes.png", b"just some text, not an image", "not an image the demo reads"),
    ("empty.png", b"", "empty"),
    ("truncated.png", noise_png()[:6000], "could not be decoded"),
    ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not an image the demo reads"),
    ("bomb.png", png_bytes(30000, 30000), "decompression bomb"),
])
def test_read_upload_refuses_bad_files_with_a_sentence(upload, name, data, words):
    with pytest.raises(UploadError, match=words):
        read_upload(upload(name, data))


@pytest.mark.parametrize("side", [5000, 30000])
def test_read_upload_refuses_a_bomb_before_decoding_it(upload, monkeypatch, side):
    """25 million pixels: over the demo's limit (its own check); 900 million: over Pillow's too (refused on open)."""
    path = upload("bomb.png", png_bytes(side, side))
    assert path.stat().st_size < 200_000  # a file of kilobytes that would inflate to gigabytes
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(UploadError, match="decompression bomb"):
        read_upload(path)


def test_read_upload_refuses_files_over_the_size_limit(upload):
    with pytest.raises(UploadError, match="accepts images up to"):
        read_upload(upload("big.png", noise_png()), UploadLimits(max_bytes=1000))


def test_fit_to_square_takes_the_centre_square_and_says_so():
    image = PIL.Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # the centre third is blue
    square, note = fit_to_square(image, 64)
    assert square.size == (64, 64) and square.getpixel((32, 32)) == (0, 0, 255)
    assert "centre square" in note and "300×100" in note
    same = PIL.Image.new("RGB", (64, 64))
    assert fit_to_square(same, 64) == (same, None)


# -- the page's fields -------------------------------------------------------------------------------------------------


def test_resolve_seed():
    assert resolve_seed(7, False) == 7 and resolve_seed(7.0, False) == 7
    assert 0 <= resolve_seed(7, True) < 2**31
    for bad in (-1, 1.5, None):
        with pytest.raises(ValueError, match="seed"):
            resolve_seed(bad, False)


def test_mask_from_layers_marks_every_pixel_the_brush_touched():
    layer = PIL.Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (0, 0, 130, 40))  # columns 0..32.5 and rows 0..10 of the 64-pixel image
    mask = np.asarray(mask_from_layers([layer], (64, 64)))
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    assert mask[:10, :33].all() and not mask[10:].any() and not mask[:, 33:].any()
    assert not np.asarray(mask_from_layers([], (64, 64))).any()


def test_enlarge_keeps_pixels_sharp():
    image = PIL.Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3) % 251)
    big = enlarge(image, 256)
    assert big.size == (256, 256)
    assert np.array_equal(np.asarray(big)[::4, ::4], np.asarray(image))
    assert enlarge(big, 256).size == (256, 256)


def test_verdict_for_scores_shapes_world_captions_only():
    import random

    scene = sample_scene(random.Random(3))
    verdict = verdict_for(render_scene(scene), scene.caption)
    assert verdict is not None and verdict.caption and verdict.color and verdict.shape
    assert verdict.describe().startswith("matches")
    assert verdict_for(render_scene(scene), "a photograph of a fox in the snow") is None
    assert verdict_for(render_scene(scene).resize((128, 128)), scene.caption) is None


# -- the engine -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs
    yield DemoEngine(lambda: load_pipeline(None)).start()
    torch.set_num_threads(threads)


def expected_images(engine: DemoEngine, prompt: str, seed: int, n: int, **kwargs) -> list[np.ndarray]:
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    images = engine.pipe(prompt, num_images_per_prompt=n, generator=generators, **kwargs).images
    return [np.asarray(image) for image in images]


def run(engine: DemoEngine, request: DemoRequest, cancel: threading.Event | None = None) -> list:
    return list(engine.generate(request, cancel))


def test_generate_streams_previews_then_the_pipelines_images_with_verdicts(engine):
    prompt = "a red circle above a blue square"
    events = run(engine, DemoRequest(prompt, num_images=3, seed=5))
    previews, result = events[:-1], events[-1]
    assert isinstance(result, Result) and all(isinstance(p, Preview) for p in previews)
    assert previews and [p.scale_index for p in previews] == sorted({p.scale_index for p in previews})
    assert previews[0].image.width >= 3 * 64  # the three images side by side
    assert [g.seed for g in result.images] == [5, 6, 7]
    for got, want in zip(result.images, expected_images(engine, prompt, 5, 3)):
        assert_same_image(got.image, want)
        assert got.verdict is not None
    assert "| 5 |" in verdict_table(result) and result.unknown_words == []


def test_generate_names_unknown_words(engine):
    result = run(engine, DemoRequest("a red fox above a blue square"))[-1]
    assert result.unknown_words == ["fox"]


def test_requests_are_checked_before_any_work(engine):
    for request, words in [(DemoRequest("  "), "prompt"), (DemoRequest("a", num_images=9), "between 1 and 8"),
                           (DemoRequest("a", mode="inpaint"), "upload an image"),
                           (DemoRequest("a", mode="inpaint", image=PIL.Image.new("RGB", (64, 64)),
                                        mask=PIL.Image.new("L", (64, 64))), "paint over"),
                           (DemoRequest("a", mode="outpaint", image=PIL.Image.new("RGB", (64, 64))), "margin"),
                           (DemoRequest("a", mode="outpaint", image=PIL.Image.new("RGB", (64, 64)),
                                        margins=(0, 0, 500, 0)), "between 0 and 128")]:
        with pytest.raises(ValueError, match=words):
            run(engine, request)


def test_a_cancelled_request_stops(engine):
    cancel = threading.Event()
    events = engine.generate(DemoRequest("a red circle", num_images=8), cancel)
    next(events)  # the first preview: the request is running
    cancel.set()
    with pytest.raises(Cancelled):
        list(events)


def test_concurrent_requests_get_their_own_images(engine):
    """Different guidance scales at once: a pipeline keeps the running scale on itself, so shared objects would mix."""
    settings = [(seed, guidance) for seed, guidance in ((1, 0.0), (2, 8.0), (3, 4.0), (4, 2.0))]
    results: dict[int, Result] = {}

    def one(seed, guidance):
        results[seed] = run(engine, DemoRequest("a green triangle on the left", num_images=2, seed=seed,
                                                guidance_scale=guidance))[-1]

    threads = [threading.Thread(target=one, args=s) for s in settings]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed, guidance in settings:
        want = expected_images(engine, "a green triangle on the left", seed, 2, guidance_scale=guidance)
        for g, w in zip(results[seed].images, want):
            assert_same_image(g.image, w)


def test_editing_modes(engine):
    import random

    scene = render_scene(sample_scene(random.Random(0)))
    mask = PIL.Image.new("L", (64, 64))
    mask.paste(255, (0, 32, 64, 64))
    inpainted = run(engine, DemoRequest("a red circle at the bottom", mode="inpaint", image=scene, mask=mask))[-1]
    kept = np.asarray(inpainted.images[0].image)[:32]
    assert np.array_equal(kept, np.asarray(scene)[:32])  # outside the mask the input's own pixels
    wider = run(engine, DemoRequest("a red circle", mode="outpaint", image=scene, margins=(0, 0, 32, 0)))[-1]
    assert wider.images[0].image.size == (96, 64) and wider.images[0].verdict is None
    varied = run(engine, DemoRequest("a red circle", mode="img2img", image=scene, strength=0.5, seed=2))[-1]
    assert varied.images[0].image.size == (64, 64)


def test_shared_exclusive_lock_lets_a_change_wait_for_running_work_and_hold_back_new_work():
    lock, order = SharedExclusiveLock(), []
    first = lock.shared()
    first.__enter__()
    changer = threading.Thread(target=lambda: (lock.exclusive().__enter__(), order.append("change")))
    changer.start()
    time.sleep(0.05)
    late = threading.Thread(target=lambda: (lock.shared().__enter__(), order.append("late request")))
    late.start()
    time.sleep(0.05)
    assert order == []  # the change waits for the running request; the new request waits for the change
    first.__exit__(None, None, None)
    changer.join(1)
    assert order == ["change"]
    lock._release_exclusive()
    late.join(1)
    assert order == ["change", "late request"]


def test_lora_load_weight_unload(engine, tmp_path):
    pytest.importorskip("peft")
    from var_clip.loaders import adapter_parts, lora_config

    pipe = engine.pipe
    source = load_pipeline(None)
    source.transformer.add_adapter(lora_config(source.transformer, 4), adapter_name="style")
    with torch.no_grad():
        for name, param in source.transformer.named_parameters():
            if "lora_B.style." in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * 2)
    source.save_lora_weights(tmp_path / "adapter", adapter_words=["huge"],
                             **adapter_parts({"transformer": source.transformer}, "style"))

    base = run(engine, DemoRequest("a red circle", seed=1))[-1].images[0].image
    assert run(engine, DemoRequest("a huge red circle"))[-1].unknown_words == ["huge"]
    engine.load_lora(str(tmp_path / "adapter"), 1.0)
    assert engine.lora == (str(tmp_path / "adapter"), 1.0)
    # the word the adapter taught is not called unknown while it is loaded
    assert run(engine, DemoRequest("a huge red circle"))[-1].unknown_words == []
    assert "huge" in engine.vocabulary
    adapted = run(engine, DemoRequest("a red circle", seed=1))[-1].images[0].image
    assert not np.array_equal(np.asarray(adapted), np.asarray(base))
    engine.set_lora_weight(0.0)
    assert np.array_equal(np.asarray(run(engine, DemoRequest("a red circle", seed=1))[-1].images[0].image),
                          np.asarray(base))
    engine.unload_lora()
    assert engine.lora is None and pipe.get_list_adapters() in ({}, {"transformer": []})
    assert "huge" not in engine.vocabulary
    with pytest.raises(ValueError, match="no LoRA"):
        engine.set_lora_weight(1.0)
    with pytest.raises(ValueError, match="LoRA folder"):
        engine.load_lora(" ", 1.0)


# -- the command and the Space ------------------------------------------------------------------------------------------


def test_demo_command_help_needs_no_gradio(capsys):
    from var_clip.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--share", "--server-port", "--server-name", "--queue-size"):
        assert flag in out


def test_space_files():
    app = (REPO / "app.py").read_text()
    assert "var_clip.demo.server" in app
    requirements = (REPO / "requirements.txt").read_text()
    assert ".[demo]" in requirements
    card = (REPO / "space" / "README.md").read_text()
    assert card.startswith("---\n") and "sdk: gradio" in card and "app_file: app.py" in card
    assert Path(var_clip.DEFAULT_MODEL, "model_index.json").is_file()


def test_the_page_builds_without_loading_the_model():
    """The page is served while the weights load: building it must not wait for (or touch) the model."""
    pytest.importorskip("gradio")
    from var_clip.demo.ui import build_demo

    def never():
        raise AssertionError("the model was loaded to build the page")

    demo = build_demo(DemoEngine(never), "a test model")
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"prompt", "generate", "stop", "preview", "gallery", "verdicts", "warning", "upload", "editor",
            "edit-run", "lora-source", "lora-load", "model-status"} <= ids


def test_failures_become_sentences(caplog):
    pytest.importorskip("gradio")
    from var_clip.demo.ui import _sentence

    assert _sentence(ValueError("the seed must be a whole number"), "x") == "the seed must be a whole number"
    assert "cannot be reached" in _sentence(ConnectionError("no route"), "x")
    assert _sentence(KeyError("bug"), "a request failed") == "Something went wrong on the server; its log has the details."
    assert "a request failed" in caplog.text and "KeyError" in caplog.text  # the traceback is in the log


def test_every_image_the_page_shows_is_a_new_file_written_whole(tmp_path):
    """Gradio rewrites its hash-named copy of a returned PIL image in place, so two sessions showing the same image
    raced (a page was sent a half-written file): the page hands Gradio paths to files written once, renamed into place."""
    pytest.importorskip("gradio")
    from var_clip.demo.ui import _ImageFiles

    files = _ImageFiles(tmp_path / "images", keep=3)
    image = PIL.Image.new("RGB", (8, 8), (200, 30, 30))
    paths = [files.write(image) for _ in range(5)]
    assert len(set(paths)) == 5  # the same image twice: two files, neither rewritten
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(Path(p).name for p in paths[-3:])
    with PIL.Image.open(paths[-1]) as written:
        assert written.format == "PNG" and np.array_equal(np.asarray(written), np.asarray(image))
