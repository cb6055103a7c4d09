"""The web demo in a real browser: `var-clip demo` started as a user starts it, driven in headless Chromium.

Run with ``python -m pytest -q -s -m browser tests/test_demo_browser.py`` (``-s`` prints the measured timings). It
needs the ``demo`` extra, Playwright (``pip install playwright``; its browsers are not downloaded) and the system's
Chromium (``apt-get install chromium``; ``VAR_CLIP_CHROMIUM`` names another binary). Without them the tests skip,
except under ``CI``, where they fail. ``VAR_CLIP_DEMO_SCREENSHOTS=docs/images`` writes the README's screenshots.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from .conftest import assert_same_image
from .test_demo import noise_png, png_bytes

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("VAR_CLIP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The speed targets on two CPU cores. The tests measure and print them (run with -s) against the targets, and fail
# only past a hang bound of HANG_FACTOR × target: speed is measured, correctness is asserted, and a CI machine busy
# with other work must not fail a correct page. VAR_CLIP_DEMO_STRICT=1 asserts the targets themselves.
PAGE_READY_S, FIRST_PREVIEW_S, FOUR_IMAGES_S = 10.0, 1.0, 2.0
HANG_FACTOR = 1.0 if os.environ.get("VAR_CLIP_DEMO_STRICT") == "1" else 10.0


def check_timing(name: str, seconds: float, target: float) -> None:
    print(f"\n[demo timing] {name}: {seconds:.2f} s (target {target:g} s: {'met' if seconds <= target else 'missed'})")
    assert seconds <= HANG_FACTOR * target, f"{name} took {seconds:.1f} s, over {HANG_FACTOR:g} × the {target:g} s target"
SESSIONS = 8


def _missing() -> str | None:
    for module in ("gradio", "playwright"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install 'var-clip[demo]' playwright)"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VAR_CLIP_CHROMIUM)"
    return None


@pytest.fixture(scope="module", autouse=True)
def requirements():
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests cannot run under CI: {reason}")
        pytest.skip(reason)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    started: float
    cwd: Path
    log: Path
    timings: dict = field(default_factory=dict)

    def workspace(self) -> Path:
        match = re.search(r"working in (\S+)", self.log.read_text())
        assert match, self.log.read_text()
        return Path(match.group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(requirements):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # each launch runs on a fresh temporary profile (user-data dir) that Playwright creates and removes
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(browser, tmp_path_factory):
    """`var-clip demo` in a fresh folder, as a user runs it; its output goes to a log file."""
    cwd = tmp_path_factory.mktemp("started-here")
    log = tmp_path_factory.mktemp("log") / "demo.log"
    port = _free_port()
    with open(log, "w") as out:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "var_clip.cli", "demo", "--server-port", str(port)],
                                   cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}/", process, started, cwd, log,
                    timings={"load_average_at_start": round(os.getloadavg()[0], 2)})
    yield server
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    print(f"\ndemo timings: {json.dumps(server.timings)}")


@pytest.fixture(scope="module")
def ready_server(server, browser):
    """The server once its page is up: the time from the start of the command to a usable page is measured."""
    deadline = time.monotonic() + 120
    while True:  # poll over HTTP: a browser backs off after refused connections
        try:
            urllib.request.urlopen(server.url, timeout=5).close()
            break
        except OSError:
            assert server.process.poll() is None, server.log.read_text()
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.05)
    server.timings["http_ready_s"] = round(time.monotonic() - server.started, 2)
    page = browser.new_page()
    page.goto(server.url)
    page.locator("#generate").wait_for(timeout=30000)
    server.timings["page_ready_s"] = round(time.monotonic() - server.started, 2)
    page.locator("#model-status").get_by_text("Model ready").wait_for(timeout=120000)
    server.timings["model_ready_s"] = round(time.monotonic() - server.started, 2)
    page.close()
    return server


def open_page(browser, server: Server, viewport=(1280, 1400)):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.goto(server.url)
    page.locator("#model-status").get_by_text("Model ready").wait_for(timeout=60000)
    return page


# In the page: press a button and log, in ms after the press, every new preview and gallery the page shows.
PRESS_AND_WATCH = """([button, preview, gallery, status]) => {
  const log = window.__demo = {previews: [], galleries: [], statuses: [], pressed: 0};
  const srcs = (sel) => [...document.querySelectorAll(sel + ' img')].map((i) => i.src);
  let lastPreview = srcs(preview).join(), lastGallery = srcs(gallery).join(), lastStatus = null;
  const check = () => {
    const t = performance.now() - log.pressed;
    const p = srcs(preview).join(), g = srcs(gallery), s = (document.querySelector(status) || {}).innerText;
    if (p && p !== lastPreview) { lastPreview = p; log.previews.push([t, p]); }
    if (g.length && g.join() !== lastGallery) { lastGallery = g.join(); log.galleries.push([t, g]); }
    if (s !== lastStatus) { lastStatus = s; log.statuses.push([t, s]); }
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                      characterData: true});
  log.pressed = performance.now();
  document.querySelector(button).click();
}"""

DONE = """([count]) => window.__demo.galleries.some(([t, g]) => g.length === count)
  && window.__demo.statuses.some(([t, s]) => / in [0-9.]+ s /.test(s || ''))"""


def press_and_watch(page, prefix: str = ""):
    button = "#edit-run" if prefix else "#generate"
    page.evaluate(PRESS_AND_WATCH, [button, f"#{prefix}preview", f"#{prefix}gallery", f"#{prefix}status"])


def wait_done(page, count: int, timeout_s: float = 60) -> dict:
    page.wait_for_function(DONE, arg=[count], timeout=timeout_s * 1000, polling=50)
    return page.evaluate("() => window.__demo")


def gallery_images(page, log: dict, count: int) -> list[np.ndarray]:
    srcs = next(g for _, g in log["galleries"] if len(g) == count)
    return [np.asarray(PIL.Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")) for src in srcs]


def fill_prompt(page, prompt: str, seed: int, count: int, prefix: str = ""):
    page.fill(f"#{prefix}prompt textarea", prompt)
    page.fill(f"#{prefix}seed input", str(seed))
    if not prefix:
        page.fill("#num-images input[type=number]", str(count))
        page.locator("#num-images input[type=number]").press("Enter")


@pytest.fixture(scope="module")
def reference():
    """The pipeline's own images, computed here as the server computes them (one CPU thread)."""
    import torch

    from var_clip.pipelines.loading import load_pipeline

    pipe = load_pipeline(None)
    pipe.set_progress_bar_config(disable=True)

    def images(prompt: str, seed: int, count: int) -> list[np.ndarray]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
            return [np.asarray(im) for im in pipe(prompt, num_images_per_prompt=count, generator=generators).images]
        finally:
            torch.set_num_threads(threads)

    return images


def screenshot_dir(tmp_path) -> Path:
    folder = os.environ.get("VAR_CLIP_DEMO_SCREENSHOTS")
    return Path(folder) if folder else tmp_path


# -- tests ---------------------------------------------------------------------------------------------------------------


def test_page_is_ready_in_time(ready_server):
    check_timing("page ready after start", ready_server.timings["page_ready_s"], PAGE_READY_S)


def test_scales_stream_in_and_the_gallery_holds_the_pipelines_images(ready_server, browser, reference):
    page = open_page(browser, ready_server)
    prompt = "a red circle above a blue square"
    fill_prompt(page, prompt, seed=11, count=4)
    press_and_watch(page)
    log = wait_done(page, 4)
    first_preview_s = log["previews"][0][0] / 1000
    done_s = next(t for t, g in log["galleries"] if len(g) == 4) / 1000
    ready_server.timings.update(first_preview_s=round(first_preview_s, 3), four_images_s=round(done_s, 3),
                                previews_seen=len(log["previews"]))
    # partial scales arrive before the result (on a busy machine the previewer skips to the newest scale)
    statuses = [s for _, s in log["statuses"]]
    assert len(log["previews"]) >= 2 and log["previews"][0][0] < log["galleries"][0][0], log
    assert any(re.match(r"Scale [1-6] of 7", s or "") for s in statuses), statuses
    check_timing("first preview after pressing generate", first_preview_s, FIRST_PREVIEW_S)
    check_timing("4 images done", done_s, FOUR_IMAGES_S)
    got, want = gallery_images(page, log, 4), reference(prompt, 11, 4)
    for g, w in zip(got, want):
        assert_same_image(g, w)
    verdicts = page.locator("#verdicts").inner_text()
    assert all(str(seed) in verdicts for seed in (11, 12, 13, 14)) and "whole caption" in verdicts
    assert page.locator("#gallery").get_by_text("seed 11").count() >= 1
    page.context.close()


def test_screenshots_of_previews_gallery_and_unknown_words(ready_server, browser, tmp_path):
    from var_clip.utils.image_grid import make_image_grid

    page = open_page(browser, ready_server)
    out = screenshot_dir(tmp_path)
    # the previews the page showed for one image, in order, with the status line of that moment
    fill_prompt(page, "a red circle on the left", seed=4, count=1)
    press_and_watch(page)
    log = wait_done(page, 1)
    shown = [PIL.Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB") for _, src in log["previews"]]
    # each preview came with one status line ("Scale 3 of 7 (3×3 tokens)"), the result with the summary
    scales = [re.sub(r"Scale (\d) of \d+ \((\d+)×\d+ tokens\)", r"scale \1: \2x\2", s)
              for _, s in log["statuses"] if s and s.startswith("Scale")]
    captions = (scales + ["result"])[-len(shown):] if len(shown) <= len(scales) + 1 else None
    strip = make_image_grid([im.resize((128, 128), PIL.Image.Resampling.NEAREST) for im in shown], captions=captions,
                            cols=len(shown))
    strip.save(out / "demo_previews.png")
    # a run seen in the middle (a scale's status), then the page with its gallery and verdicts
    fill_prompt(page, "a red circle on the left", seed=3, count=4)
    page.click("#generate")
    page.locator("#status").get_by_text(re.compile(r"Scale [1-6] of")).wait_for(timeout=30000)
    page.locator("#status").get_by_text("(seeds 3–6)").wait_for(timeout=60000)
    page.screenshot(path=str(out / "demo_gallery.png"), full_page=True)
    fill_prompt(page, "a red fox above a blue square", seed=0, count=1)
    page.click("#generate")
    page.locator("#warning").get_by_text("never saw").wait_for(timeout=30000)
    assert "fox" in page.locator("#warning").inner_text()
    page.context.close()


def test_stop_cancels_a_request(ready_server, browser):
    page = open_page(browser, ready_server)
    fill_prompt(page, "a green square on the left", seed=0, count=8)
    page.click("#generate")
    page.locator("#status").get_by_text(re.compile("Generating|Scale")).wait_for(timeout=30000)
    page.click("#stop")
    page.locator("#status").get_by_text("Stopped.").wait_for(timeout=30000)
    page.context.close()


def test_bad_uploads_show_a_sentence_not_a_traceback(ready_server, browser, tmp_path):
    page = open_page(browser, ready_server)
    page.get_by_role("tab", name="Edit").click()
    bad = {"notes.png": b"not an image at all", "bomb.png": png_bytes(5000, 5000),
           "truncated.png": noise_png()[:3000], "huge.png": b"\x89PNG" + os.urandom(11 * 2**20)}
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        upload(page, path)
        if name == "huge.png":  # refused by the server before it is stored: Gradio's own message
            page.get_by_text(re.compile("too large|exceeds|maximum", re.I)).first.wait_for(timeout=30000)
        else:
            page.locator("#upload-status").get_by_text("Upload refused").wait_for(timeout=30000)
        assert "Traceback" not in page.content()
        ready_server.timings.setdefault("bad_uploads", []).append(
            f"{name}: {page.locator('#upload-status').inner_text() if name != 'huge.png' else 'size limit'}")
        page.reload()
        page.get_by_role("tab", name="Edit").click()
    page.context.close()


def upload(page, path: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(str(path))


def draw_strokes(page, rows=(0.6, 0.7, 0.8, 0.9), left=0.05, right=0.6):
    """Paint horizontal brush strokes over the editor's image (fractions of its side)."""
    canvas = page.locator("#editor canvas").first.bounding_box()
    zoom = float(page.locator("#editor").get_by_text(re.compile(r"^\d+%$")).first.inner_text().rstrip("%")) / 100
    side = 256 * zoom  # the image is enlarged to 256 pixels, drawn at the editor's zoom, centred
    x0, y0 = canvas["x"] + (canvas["width"] - side) / 2, canvas["y"] + (canvas["height"] - side) / 2
    for fy in rows:
        page.mouse.move(x0 + left * side, y0 + fy * side)
        page.mouse.down()
        page.mouse.move(x0 + right * side, y0 + fy * side, steps=12)
        page.mouse.up()


def test_inpaint_with_a_brush_mask(ready_server, browser, tmp_path):
    import random

    from var_clip.shapes_world import render_scene, sample_scene

    page = open_page(browser, ready_server)
    out = screenshot_dir(tmp_path)
    scene = render_scene(sample_scene(random.Random(1)))  # a purple square at the top
    scene.save(tmp_path / "scene.png")
    page.get_by_role("tab", name="Edit").click()
    upload(page, tmp_path / "scene.png")
    page.locator("#upload-status").get_by_text("Ready to edit").wait_for(timeout=30000)
    page.wait_for_timeout(300)
    draw_strokes(page)
    fill_prompt(page, "a red circle at the bottom", seed=4, count=2, prefix="edit-")
    press_and_watch(page, "edit-")
    log = wait_done(page, 2)
    edited = gallery_images(page, log, 2)
    source = np.asarray(scene)
    for image in edited:
        assert image.shape == (64, 64, 3)
        assert np.array_equal(image[:30], source[:30])  # above the strokes: the input's own pixels
        assert not np.array_equal(image, source)  # under them: redrawn
    page.screenshot(path=str(out / "demo_inpaint.png"), full_page=True)
    page.context.close()


def test_send_to_edit_then_outpaint_and_img2img(ready_server, browser):
    page = open_page(browser, ready_server)
    fill_prompt(page, "a blue circle on the left", seed=0, count=2)
    press_and_watch(page)
    wait_done(page, 2)
    page.locator("#gallery img").nth(1).click()
    page.click("#send-to-edit")
    page.locator("#upload-status").get_by_text("Sent from the gallery").wait_for(timeout=30000)
    assert page.get_by_role("tab", name="Edit").get_attribute("aria-selected") == "true"
    page.get_by_label(re.compile("Outpaint")).check()
    page.fill("#margin-right input[type=number]", "32")
    page.locator("#margin-right input[type=number]").press("Enter")
    press_and_watch(page, "edit-")
    log = wait_done(page, 2)
    assert all(image.shape == (64, 96, 3) for image in gallery_images(page, log, 2))
    page.get_by_label(re.compile("Image to image")).check()
    press_and_watch(page, "edit-")
    log = wait_done(page, 2)
    assert all(image.shape == (64, 64, 3) for image in gallery_images(page, log, 2))
    page.context.close()


def test_lora_load_and_unload(ready_server, browser, tmp_path):
    import torch

    from var_clip.loaders import lora_config
    from var_clip.pipelines.loading import load_pipeline

    source = load_pipeline(None)
    source.transformer.add_adapter(lora_config(source.transformer, 4), adapter_name="style")
    with torch.no_grad():
        for name, param in source.transformer.named_parameters():
            if "lora_B.style." in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    folder = tmp_path / "adapter"
    source.save_lora_adapter_weights(folder, adapter_name="style")

    page = open_page(browser, ready_server)
    page.get_by_role("tab", name="LoRA").click()
    page.fill("#lora-source textarea", str(tmp_path / "missing"))
    page.click("#lora-load")
    page.locator("#lora-status").get_by_text("⚠️").wait_for(timeout=30000)
    page.fill("#lora-source textarea", str(folder))
    page.click("#lora-load")
    page.locator("#lora-status").get_by_text("LoRA loaded").wait_for(timeout=30000)
    assert "LoRA loaded" in page.locator("#lora-header").inner_text()
    page.click("#lora-unload")
    page.locator("#lora-status").get_by_text("No LoRA loaded").wait_for(timeout=30000)
    page.context.close()


def test_eight_sessions_at_once_each_get_their_own_images(ready_server, browser, reference):
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow circle on the left",
               "a purple square at the top", "an orange triangle at the bottom", "a red square on the right",
               "a blue triangle in the center"]
    pages = [open_page(browser, ready_server, viewport=(1000, 900)) for _ in range(SESSIONS)]
    for i, (page, prompt) in enumerate(zip(pages, prompts)):
        fill_prompt(page, prompt, seed=100 + i, count=4)
    started = time.monotonic()
    for page in pages:  # all pressed within a few milliseconds
        press_and_watch(page)
    logs = [wait_done(page, 4, timeout_s=120) for page in pages]
    ready_server.timings["eight_sessions_s"] = round(time.monotonic() - started, 2)
    ready_server.timings["eight_sessions_each_s"] = [
        round(next(t for t, g in log["galleries"] if len(g) == 4) / 1000, 2) for log in logs]
    for i, (page, log, prompt) in enumerate(zip(pages, logs, prompts)):
        for got, want in zip(gallery_images(page, log, 4), reference(prompt, 100 + i, 4)):
            assert_same_image(got, want, f"session {i} shows images that are not its own")
        page.context.close()


def test_app_py_serves_the_demo(tmp_path):
    """The Space's entry point, run as a Space runs it (the address from Gradio's environment variables)."""
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "app.py")], cwd=tmp_path,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200 and b"var-clip" in response.read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_the_server_writes_only_in_its_workspace(ready_server):
    workspace = ready_server.workspace()
    assert workspace.is_dir() and (workspace / "gradio").is_dir()
    assert list(ready_server.cwd.iterdir()) == []  # nothing where the command was started
    ready_server.process.send_signal(signal.SIGTERM)
    ready_server.process.wait(30)
    assert not workspace.exists()  # removed on exit
    assert "Traceback" not in ready_server.log.read_text()

