"""The page: Gradio Blocks over a :class:`~var_clip.demo.engine.DemoEngine`.

Three tabs (text to image, editing, LoRA). Every handler turns a failure into a sentence in the page: a bad value or
upload says what is wrong, an unexpected error is logged with its traceback on the server and shown as one line.
"""

import atexit
import collections
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import PIL.Image

from ..cli import describe_failure
from ..utils.image_grid import make_image_grid
from .engine import EDIT_MODES, MAX_IMAGES, Cancelled, DemoEngine, DemoRequest, Preview, Result
from .forms import (
    enlarge,
    gallery_items,
    mask_from_layers,
    resolve_seed,
    result_summary,
    unknown_word_warning,
    verdict_table,
)
from .uploads import UploadError, UploadLimits, fit_to_square, read_upload

__all__ = ["build_demo", "CSS"]

logger = logging.getLogger(__name__)

#: Small images are enlarged in the page (previews to the box's width): keep their pixels sharp.
CSS = """#preview img, #edit-preview img, #gallery img, #edit-gallery img { image-rendering: pixelated; }
#preview img, #edit-preview img { width: 100%; height: 100%; object-fit: contain; }"""
EDIT_MODE_LABELS = {"Inpaint (paint the region to redraw)": "inpaint", "Outpaint (extend the sides)": "outpaint",
                    "Image to image (keep the coarse scales)": "img2img"}
assert set(EDIT_MODE_LABELS.values()) == set(EDIT_MODES)


def _sentence(error: Exception, what: str) -> str:
    """What the page says of a failure: the command line's one-line description of an expected one (bad settings,
    unreachable Hub, missing files, out of memory); for anything else (a bug) the traceback goes to the server's log.
    """
    message = describe_failure(error)
    if message is None:
        logger.error(what, exc_info=error)
        return "Something went wrong on the server; its log has the details."
    return message


class _Sessions:
    """One cancel flag per browser session, so that Stop stops that session's request only."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def begin(self, session: str) -> threading.Event:
        with self._lock:
            flag = self._flags[session] = threading.Event()
        return flag

    def cancel(self, session: str) -> None:
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()

    def end(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]


class _ImageFiles:
    """The PNG files the page hands to Gradio: each written once, under a fresh name, and renamed into place.

    Gradio saves a returned PIL image to a file named by the image's hash and rewrites that file in place each time;
    two sessions showing the same image (the same prompt and seed, or the same coarse first scale) then race, and a
    page can be sent a half-written file (the server logs "Too little data for declared Content-Length"). A returned
    path is instead copied into Gradio's cache under a temporary name and renamed, never rewritten. Only the newest
    ``keep`` files stay here: Gradio copies each one as the handler yields it, long before ``keep`` more are written.
    """

    def __init__(self, folder: Path, keep: int = 512):
        self.folder, self.keep = folder, keep
        self.folder.mkdir(parents=True, exist_ok=True)
        self._written: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def write(self, image: PIL.Image.Image) -> str:
        path = self.folder / f"{uuid.uuid4().hex}.png"
        staging = path.with_suffix(".tmp")
        image.save(staging, format="PNG")
        os.replace(staging, path)
        with self._lock:
            self._written.append(path)
            stale = [self._written.popleft() for _ in range(max(0, len(self._written) - self.keep))]
        for old in stale:
            old.unlink(missing_ok=True)
        return str(path)


def _stream(engine: DemoEngine, sessions: _Sessions, request: DemoRequest, session: str,
            files: _ImageFiles) -> Iterator[tuple]:
    """(preview, gallery, verdicts, warning, status) as the request runs; failures end it with a sentence."""
    flag = sessions.begin(session)
    skip = gr.skip()
    try:
        yield skip, skip, skip, skip, "Generating…"
        for event in engine.generate(request, flag):
            if isinstance(event, Preview):
                status = f"Scale {event.scale_index + 1} of {event.num_scales} ({event.side}×{event.side} tokens)"
                yield files.write(event.image), skip, skip, skip, status  # enlarged by the page (CSS): a small file
            elif isinstance(event, Result):
                final = [g.image for g in event.images]
                preview = final[0] if len(final) == 1 else make_image_grid(final, cols=min(len(final), 4))
                gallery = [(files.write(image), caption) for image, caption in gallery_items(event)]
                yield (files.write(preview), gallery, verdict_table(event),
                       unknown_word_warning(event.unknown_words, engine.vocabulary), result_summary(event))
    except Cancelled:
        yield skip, skip, skip, skip, "Stopped."
    except Exception as error:  # noqa: BLE001 - every failure ends as a sentence in the page
        yield skip, skip, skip, skip, f"⚠️ {_sentence(error, 'a demo request failed')}"
    finally:
        sessions.end(session, flag)


def build_demo(engine: DemoEngine, model_label: str, limits: UploadLimits = UploadLimits(),
               allow_lora: bool = True, image_dir: Path | None = None) -> gr.Blocks:
    """The demo's page over ``engine``; ``model_label`` names the model in the header; the images it shows are
    written to ``image_dir`` (default: a new temporary folder, removed at exit)."""
    sessions = _Sessions()
    if image_dir is None:
        image_dir = Path(tempfile.mkdtemp(prefix="var-clip-demo-images-"))
        atexit.register(shutil.rmtree, image_dir, ignore_errors=True)
    files = _ImageFiles(image_dir)

    def sampling_controls():
        with gr.Accordion("Sampling", open=False):
            with gr.Row():
                # the tunable defaults are the pipeline's: filled in when the model has loaded (see `on_page_load`)
                guidance = gr.Slider(0, 10, value=None, step=0.5, label="Guidance scale")
                schedule = gr.Radio(["linear", "constant"], value="linear", label="Guidance schedule")
            with gr.Row():
                top_k = gr.Number(None, precision=0, minimum=0, label="Top-k (0: off)")
                top_p = gr.Slider(0, 1, value=None, step=0.01, label="Top-p (0: off)")
                temperature = gr.Slider(0.1, 2, value=1.0, step=0.05, label="Temperature")
        return [guidance, schedule, top_k, top_p, temperature]

    def seed_controls(prefix: str):
        with gr.Row():
            seed = gr.Number(0, precision=0, minimum=0, label="Seed (image i uses seed + i)", elem_id=f"{prefix}seed")
            randomize = gr.Checkbox(False, label="Random seed", elem_id=f"{prefix}random")
        return seed, randomize

    def sampling(guidance, schedule, top_k, top_p, temperature) -> dict:
        """The request's sampling settings; a field still empty (the page has just loaded) keeps the default."""
        given = dict(guidance_scale=guidance, guidance_schedule=schedule, top_k=top_k, top_p=top_p,
                     temperature=temperature)
        kinds = dict(guidance_scale=float, guidance_schedule=str, top_k=int, top_p=float, temperature=float)
        return {name: kinds[name](value) for name, value in given.items() if value is not None}

    def lora_status() -> str:
        lora = engine.lora
        return "No LoRA loaded." if lora is None else f"LoRA loaded: `{lora[0]}` at weight {lora[1]:g}"

    with gr.Blocks(title="var-clip demo", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"## var-clip: next-scale text-to-image\nModel: {model_label}. Each image is drawn coarse to fine, "
                    "one scale at a time; shapes-world images are checked against their caption.")
        model_status = gr.Markdown("Loading the model…", elem_id="model-status")
        header_lora = gr.Markdown(elem_id="lora-header")
        with gr.Tabs(selected="text") as tabs:
            # -- text to image ------------------------------------------------------------------------------------
            with gr.Tab("Text to image", id="text"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", value="a red circle above a blue square", elem_id="prompt")
                        negative = gr.Textbox(label="Negative prompt (optional)", elem_id="negative")
                        num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="num-images")
                        seed, randomize = seed_controls("")
                        controls = sampling_controls()
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop = gr.Button("Stop", elem_id="stop")
                    with gr.Column(scale=3):
                        preview = gr.Image(label="Scales as they arrive", type="pil", format="png", height=256,
                                           interactive=False, elem_id="preview")
                        status = gr.Markdown(elem_id="status")
                        warning = gr.Markdown(elem_id="warning")
                gallery = gr.Gallery(label="Images (click one, then send it to editing)", columns=4, height=320,
                                     format="png", type="pil", object_fit="contain", elem_id="gallery")
                verdicts = gr.Markdown(elem_id="verdicts")
                send = gr.Button("Send the selected image to editing", elem_id="send-to-edit")
                selected = gr.State(None)

            # -- editing ------------------------------------------------------------------------------------------
            with gr.Tab("Edit", id="edit"):
                source = gr.State(None)  # the image being edited, at the model's size
                with gr.Row():
                    with gr.Column(scale=2):
                        # a button, not an image box: the file reaches `take_upload` undecoded, to be checked first
                        upload = gr.UploadButton("Upload an image to edit", file_types=["image"], type="filepath",
                                                 elem_id="upload")
                        upload_status = gr.Markdown(elem_id="upload-status")
                        editor = gr.ImageEditor(label="Paint the region to redraw (inpainting)", type="pil",
                                                image_mode="RGBA", sources=(), transforms=(), layers=False,
                                                brush=gr.Brush(default_size=24, colors=["#ff00ff"], color_mode="fixed"),
                                                eraser=gr.Eraser(default_size=24), height=360, elem_id="editor")
                    with gr.Column(scale=2):
                        edit_prompt = gr.Textbox(label="Prompt", value="a green triangle", elem_id="edit-prompt")
                        mode = gr.Radio(list(EDIT_MODE_LABELS), value=next(iter(EDIT_MODE_LABELS)), label="Edit",
                                        elem_id="edit-mode")
                        strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength (image to image)")
                        with gr.Row():
                            margins = [gr.Slider(0, 128, value=0, step=8, label=f"{side} (px, outpainting)",
                                                 elem_id=f"margin-{side}")
                                       for side in ("left", "top", "right", "bottom")]
                        edit_images = gr.Slider(1, MAX_IMAGES, value=2, step=1, label="Images")
                        edit_seed, edit_randomize = seed_controls("edit-")
                        edit_controls = sampling_controls()
                        with gr.Row():
                            edit_run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                            edit_stop = gr.Button("Stop", elem_id="edit-stop")
                with gr.Row():
                    edit_preview = gr.Image(label="Scales as they arrive", type="pil", format="png", height=320,
                                            interactive=False, elem_id="edit-preview")
                    edit_gallery = gr.Gallery(label="Edited images", columns=4, height=320, format="png", type="pil",
                                              object_fit="contain", elem_id="edit-gallery")
                edit_status = gr.Markdown(elem_id="edit-status")
                edit_warning = gr.Markdown(elem_id="edit-warning")
                edit_verdicts = gr.Markdown(elem_id="edit-verdicts")

            # -- LoRA ---------------------------------------------------------------------------------------------
            with gr.Tab("LoRA", id="lora", visible=allow_lora):
                gr.Markdown("Adapters change the one model every visitor shares: what is loaded here applies to all.")
                lora_source = gr.Textbox(label="LoRA folder, .safetensors file or Hub id", elem_id="lora-source")
                lora_weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Weight", elem_id="lora-weight")
                with gr.Row():
                    lora_load = gr.Button("Load", elem_id="lora-load")
                    lora_set = gr.Button("Set weight", elem_id="lora-set")
                    lora_unload = gr.Button("Unload", elem_id="lora-unload")
                lora_message = gr.Markdown(elem_id="lora-status")

        # -- handlers -----------------------------------------------------------------------------------------------
        def run_text(request: gr.Request, prompt_, negative_, num_, seed_, randomize_, guidance_, schedule_, top_k_,
                     top_p_, temperature_):
            sampling_values = (guidance_, schedule_, top_k_, top_p_, temperature_)
            try:
                chosen = resolve_seed(seed_, randomize_)
                job = DemoRequest(prompt_, negative_ or None, int(num_), chosen, **sampling(*sampling_values))
            except ValueError as error:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"⚠️ {error}", gr.skip()
                return
            for outputs in _stream(engine, sessions, job, request.session_hash, files):
                yield *outputs, chosen

        def run_edit(request: gr.Request, image, editor_value, prompt_, mode_label, strength_, left, top, right, bottom,
                     num_, seed_, randomize_, guidance_, schedule_, top_k_, top_p_, temperature_):
            sampling_values = (guidance_, schedule_, top_k_, top_p_, temperature_)
            try:
                chosen = resolve_seed(seed_, randomize_)
                mode_ = EDIT_MODE_LABELS[mode_label]
                mask = None
                if mode_ == "inpaint" and image is not None:
                    mask = mask_from_layers((editor_value or {}).get("layers"), image.size)
                job = DemoRequest(prompt_, None, int(num_), chosen, **sampling(*sampling_values), mode=mode_,
                                  image=image, mask=mask, strength=float(strength_),
                                  margins=(int(left), int(top), int(right), int(bottom)))
            except ValueError as error:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"⚠️ {error}", gr.skip()
                return
            for outputs in _stream(engine, sessions, job, request.session_hash, files):
                yield *outputs, chosen

        def stop_request(request: gr.Request):
            sessions.cancel(request.session_hash)

        def take_upload(path):
            """Check an upload by content; on success it becomes the image to edit, at the model's size."""
            if path is None:
                return gr.skip(), gr.skip(), ""
            try:
                image, note = fit_to_square(read_upload(path, limits), engine.sample_size)
            except UploadError as error:
                return gr.skip(), gr.skip(), f"⚠️ Upload refused: {error}"
            except ValueError as error:
                return gr.skip(), gr.skip(), f"⚠️ {error}"
            return image, enlarge(image), f"Ready to edit{f' ({note})' if note else ''}."

        def remember_selection(evt: gr.SelectData):
            return evt.index

        def send_to_edit(items, index):
            if not items:
                return gr.skip(), gr.skip(), gr.skip(), "⚠️ Generate images first."
            image = items[index if isinstance(index, int) and index < len(items) else 0][0]
            image, note = fit_to_square(image.convert("RGB"), engine.sample_size)
            message = "Sent from the gallery" + (f" ({note})." if note else ".")
            return image, enlarge(image), gr.Tabs(selected="edit"), message

        def lora_action(action):
            def handler(source_, weight_):
                try:
                    if action == "load":
                        engine.load_lora(source_, weight_)
                    elif action == "set":
                        engine.set_lora_weight(weight_)
                    else:
                        engine.unload_lora()
                    message = lora_status()
                except Exception as error:  # noqa: BLE001 - every failure ends as a sentence in the page
                    message = f"⚠️ {_sentence(error, 'a LoRA change failed')}"
                return message, lora_status()

            return handler

        text_inputs = [prompt, negative, num_images, seed, randomize, *controls]
        text_outputs = [preview, gallery, verdicts, warning, status, seed]
        # the status line and the previews show the progress: no spinners and timers, which cost the browser more
        # than the generation costs the server
        generate.click(run_text, text_inputs, text_outputs, concurrency_id="generate", show_progress="hidden")
        prompt.submit(run_text, text_inputs, text_outputs, concurrency_id="generate", show_progress="hidden")
        stop.click(stop_request, None, None, queue=False)

        edit_inputs = [source, editor, edit_prompt, mode, strength, *margins, edit_images, edit_seed, edit_randomize,
                       *edit_controls]
        edit_outputs = [edit_preview, edit_gallery, edit_verdicts, edit_warning, edit_status, edit_seed]
        edit_run.click(run_edit, edit_inputs, edit_outputs, concurrency_id="generate", show_progress="hidden")
        edit_stop.click(stop_request, None, None, queue=False)

        upload.upload(take_upload, upload, [source, editor, upload_status], queue=False)
        gallery.select(remember_selection, None, selected, queue=False)
        send.click(send_to_edit, [gallery, selected], [source, editor, tabs, upload_status], queue=False)
        for button, action in ((lora_load, "load"), (lora_set, "set"), (lora_unload, "unload")):
            button.click(lora_action(action), [lora_source, lora_weight], [lora_message, header_lora],
                         concurrency_id="lora", concurrency_limit=1)
        def on_page_load():
            """Once the model is loaded: say so, and show the pipeline's sampling defaults in both tabs."""
            engine.start()  # the first page is on screen: the model may take the CPU now (see `serve`)
            readiness = engine.describe_readiness()
            from .. import sampling  # torch: loaded with the model

            defaults = [sampling.DEFAULT_GUIDANCE_SCALE, gr.skip(), sampling.DEFAULT_TOP_K, sampling.DEFAULT_TOP_P,
                        gr.skip()]
            return readiness, lora_status(), *defaults, *defaults

        demo.load(on_page_load, None, [model_status, header_lora, *controls, *edit_controls], queue=False)
    return demo
