"""The demo's model: one pipeline loaded once and shared by every request, generating with streamed previews.

Requests run concurrently. Each one builds its own light pipeline object over the shared components (a pipeline
keeps per-call values such as the running guidance scale on itself, so two calls on one object could mix them),
while the weights are shared. A LoRA change modifies those weights, so it waits for the running generations to end
and holds new ones back until it is done (:class:`SharedExclusiveLock`). Nothing here imports Gradio, and torch and
the pipelines are imported only when the model loads, so that the page can be served first.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import PIL.Image

from ..utils.image_grid import make_image_grid
from ..vocabulary import unknown_words

if TYPE_CHECKING:
    import torch

    from ..pipelines import VARCLIPPipeline

__all__ = ["DemoEngine", "DemoRequest", "EDIT_MODES", "GeneratedImage", "Cancelled", "Preview", "Result",
           "SharedExclusiveLock", "Verdict", "MAX_IMAGES"]

#: The modes of one request: text-to-image and the three edits.
EDIT_MODES = ("inpaint", "outpaint", "img2img")
#: The most images one request may ask for.
MAX_IMAGES = 8
#: The request's fields passed to the pipeline as they are (None: the pipeline's default).
SAMPLING_SETTINGS = ("guidance_scale", "guidance_schedule", "top_k", "top_p", "temperature")
#: The adapter name the demo loads LoRA files under (one adapter at a time).
LORA_NAME = "demo"


class Cancelled(Exception):
    """A request stopped by its user (or by its consumer going away) before it finished."""


@dataclass(frozen=True)
class DemoRequest:
    """One generation asked for in the page: every setting in one object, validated by :meth:`check`.

    Image ``i`` uses seed ``seed + i``; a sampling setting left at None takes the pipeline's default. ``mode`` is
    ``"text"`` or one of :data:`EDIT_MODES`; the edits read ``image`` (the model's size), inpainting also ``mask``
    (white = regenerate), outpainting ``margins`` (left, top, right, bottom in pixels) and image-to-image
    ``strength``.
    """

    prompt: str
    negative_prompt: str | None = None
    num_images: int = 1
    seed: int = 0
    guidance_scale: float | None = None
    guidance_schedule: str | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    mode: str = "text"
    image: PIL.Image.Image | None = None
    mask: PIL.Image.Image | None = None
    strength: float = 0.6
    margins: tuple[int, int, int, int] = (0, 0, 0, 0)

    def check(self, max_margin: int) -> None:
        if not self.prompt or not self.prompt.strip():
            raise ValueError("write a prompt first")
        if not 1 <= self.num_images <= MAX_IMAGES:
            raise ValueError(f"the number of images must be between 1 and {MAX_IMAGES}, got {self.num_images}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"the seed must be an integer in [0, 2^63), got {self.seed}")
        if self.mode not in ("text", *EDIT_MODES):
            raise ValueError(f"mode must be one of {('text', *EDIT_MODES)}, got {self.mode!r}")
        if self.mode != "text" and self.image is None:
            raise ValueError("upload an image (or send a generated one) to edit first")
        if self.mode == "inpaint" and (self.mask is None or self.mask.getextrema()[1] == 0):
            raise ValueError("paint over the region to regenerate with the brush first")
        if self.mode == "outpaint":
            if not any(self.margins):
                raise ValueError("give at least one side a margin to outpaint")
            if min(self.margins) < 0 or max(self.margins) > max_margin:
                raise ValueError(f"each margin must be between 0 and {max_margin} pixels, got {self.margins}")


@dataclass(frozen=True)
class Verdict:
    """The shapes-world evaluator's judgement of one image against its caption (None: not applicable)."""

    color: bool
    shape: bool
    place: bool | None
    relation: bool | None
    size: bool | None
    caption: bool

    def describe(self) -> str:
        """One line, e.g. ``matches: colour ✓ · shape ✓ · place ✗``."""
        marks = {"colour": self.color, "shape": self.shape, "place": self.place, "relation": self.relation,
                 "size": self.size}
        parts = [f"{name} {'✓' if ok else '✗'}" for name, ok in marks.items() if ok is not None]
        return f"{'matches' if self.caption else 'does not match'}: {' · '.join(parts)}"

    def short(self) -> str:
        """A few words for a thumbnail: ``✓ matches`` or what is wrong, e.g. ``✗ shape, place``."""
        if self.caption:
            return "✓ matches"
        marks = {"colour": self.color, "shape": self.shape, "place": self.place, "relation": self.relation,
                 "size": self.size}
        wrong = [name for name, ok in marks.items() if ok is False]
        return f"✗ {', '.join(wrong)}" if wrong else "✗ another object too"


@dataclass(frozen=True)
class GeneratedImage:
    seed: int
    image: PIL.Image.Image
    verdict: Verdict | None = None


@dataclass(frozen=True)
class Preview:
    """The images of one request as they stand after scale ``scale_index`` (side ``side``), side by side."""

    scale_index: int
    side: int
    num_scales: int
    image: PIL.Image.Image


@dataclass(frozen=True)
class Result:
    images: list[GeneratedImage]
    unknown_words: list[str] = field(default_factory=list)
    seconds: float = 0.0


class SharedExclusiveLock:
    """Many holders at once in shared mode (generations), one alone in exclusive mode (a LoRA change).

    A waiting exclusive holder blocks new shared ones, so a LoRA change is not starved by a stream of requests.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    def shared(self):
        return _Hold(self._acquire_shared, self._release_shared)

    def exclusive(self):
        return _Hold(self._acquire_exclusive, self._release_exclusive)

    def _acquire_shared(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and not self._waiting_exclusive)
            self._shared += 1

    def _release_shared(self):
        with self._condition:
            self._shared -= 1
            self._condition.notify_all()

    def _acquire_exclusive(self):
        with self._condition:
            self._waiting_exclusive += 1
            self._condition.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._waiting_exclusive -= 1
            self._exclusive = True

    def _release_exclusive(self):
        with self._condition:
            self._exclusive = False
            self._condition.notify_all()


class _Hold:
    def __init__(self, acquire: Callable[[], None], release: Callable[[], None]):
        self._acquire, self._release = acquire, release

    def __enter__(self):
        self._acquire()
        return self

    def __exit__(self, *exc):
        self._release()


class DemoEngine:
    """The shared pipeline, its LoRA state, and generation with previews; safe to call from many threads.

    ``loader`` builds the :class:`~var_clip.VARCLIPPipeline` (called once, in a background thread by :meth:`start`,
    so the page can be served while the weights load); with ``warm_up`` one small generation follows, so that the
    first visitor does not pay the first call's one-off costs.
    """

    def __init__(self, loader: Callable[[], VARCLIPPipeline], warm_up: bool = True):
        self._loader, self._warm_up = loader, warm_up
        self._pipe: VARCLIPPipeline | None = None
        self._load_error: BaseException | None = None
        self._loaded = threading.Event()
        self._started, self._start_lock = False, threading.Lock()
        self._lock = SharedExclusiveLock()
        self._lora: tuple[str, float] | None = None  # (source, weight) of the loaded adapter

    # -- the model -----------------------------------------------------------------------------------------------------

    def start(self) -> DemoEngine:
        """Load the pipeline in a background thread (the first call; later ones do nothing); requests wait for it."""
        with self._start_lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._load, name="var-clip-demo-load", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            pipe = self._loader()
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
            if self._warm_up:  # the first call pays one-off costs (kernel choices, lazy imports): not the first visitor
                self._run(DemoRequest("a red circle"), _decode_preview)
        except BaseException as error:  # noqa: BLE001 - reported to every request instead
            self._load_error = error
        finally:
            self._loaded.set()

    def describe_readiness(self) -> str:
        """Waits for the model; one line saying it is ready, or why it could not be loaded."""
        self._loaded.wait()
        if self._load_error is not None:
            return f"⚠️ The model could not be loaded: {' '.join(str(self._load_error).split())}"
        return "Model ready."

    @property
    def pipe(self) -> VARCLIPPipeline:
        """The shared pipeline, once loaded (waits for it)."""
        self._loaded.wait()
        if self._load_error is not None:
            raise ValueError(f"the model could not be loaded: {self._load_error}")
        return self._pipe

    @property
    def sample_size(self) -> int:
        return self.pipe.vqvae.sample_size

    @property
    def vocabulary(self) -> list[str]:
        """The words that steer the model, the loaded adapter's included ([] when the model records none)."""
        return self.pipe.known_words() or []

    @property
    def judges_shapes_world(self) -> bool:
        """Whether the model draws the shapes world (its images and words), so that its images can be scored."""
        from ..shapes_world import COLORS, IMAGE_SIZE, SHAPES

        words = set(self.vocabulary)
        return self.sample_size == IMAGE_SIZE and set(COLORS) <= words and set(SHAPES) <= words

    # -- generation ----------------------------------------------------------------------------------------------------

    def generate(self, request: DemoRequest, cancel: threading.Event | None = None) -> Iterator[Preview | Result]:
        """Run ``request``: a :class:`Preview` of the scales as they come (the newest one when decoding falls behind;
        none for the last, which is the result), then one :class:`Result`.

        Setting ``cancel`` stops the request after the scale in progress (:class:`Cancelled` is raised); so does
        closing the iterator early.
        """
        request.check(max_margin=2 * self.sample_size)
        cancel = cancel or threading.Event()
        events: queue.Queue = queue.Queue()
        previews = _Previewer(self, events)
        start = time.perf_counter()

        def on_scale(pipe, si, pn, tensors):
            if cancel.is_set():
                raise Cancelled()
            if si < len(pipe.transformer.config.patch_nums) - 1:  # the last scale's preview is the result itself
                previews.offer(si, pn, tensors["f_hat"])
            return {}

        def work():
            try:
                with self._lock.shared():
                    images = self._run(request, on_scale)
                result = self._result(request, images, time.perf_counter() - start)
            except BaseException as error:  # noqa: BLE001 - handed to the consumer
                result = error
            previews.close()
            events.put(result)

        threading.Thread(target=work, name="var-clip-demo-request", daemon=True).start()
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Result):
                    return
        finally:
            cancel.set()  # a consumer that stops listening stops the work

    def _run(self, request: DemoRequest, callback) -> list[PIL.Image.Image]:
        import torch

        from ..pipelines import VARCLIPImg2ImgPipeline, VARCLIPInpaintPipeline, VARCLIPPipeline, prepare_outpainting

        base = self._pipe  # loaded: `generate` waited for it
        cls = {"text": VARCLIPPipeline, "inpaint": VARCLIPInpaintPipeline, "outpaint": VARCLIPInpaintPipeline,
               "img2img": VARCLIPImg2ImgPipeline}[request.mode]
        pipe = cls(**base.components)  # this request's own object over the shared weights
        pipe.set_progress_bar_config(disable=True)
        extra = {}
        if request.mode == "inpaint":
            extra = dict(image=request.image, mask_image=request.mask)
        elif request.mode == "outpaint":
            left, top, right, bottom = request.margins
            canvas, mask = prepare_outpainting(request.image, left=left, top=top, right=right, bottom=bottom)
            extra = dict(image=canvas, mask_image=mask)
        elif request.mode == "img2img":
            extra = dict(image=request.image, strength=request.strength)
        sampling = {name: getattr(request, name) for name in SAMPLING_SETTINGS if getattr(request, name) is not None}
        generators = [torch.Generator().manual_seed(request.seed + i) for i in range(request.num_images)]
        return pipe(
            request.prompt, negative_prompt=request.negative_prompt or None, num_images_per_prompt=request.num_images,
            generator=generators, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["f_hat"],
            **sampling, **extra,
        ).images

    def _result(self, request: DemoRequest, images: list[PIL.Image.Image], seconds: float) -> Result:
        # an inpainting or outpainting prompt describes the new part, not the whole image: nothing to judge it by
        judge = self.judges_shapes_world and request.mode in ("text", "img2img")
        out = [GeneratedImage(request.seed + i, image, verdict_for(image, request.prompt) if judge else None)
               for i, image in enumerate(images)]
        return Result(out, unknown_words([request.prompt], self.vocabulary) if self.vocabulary else [], seconds)

    # -- LoRA ---------------------------------------------------------------------------------------------------------

    @property
    def lora(self) -> tuple[str, float] | None:
        """The loaded adapter's source and weight, or None."""
        return self._lora

    def load_lora(self, source: str, weight: float = 1.0) -> None:
        """Load a LoRA folder, file or Hub id (replacing any loaded one) at ``weight``, once no generation runs."""
        source = (source or "").strip()
        if not source:
            raise ValueError("give a LoRA folder or Hub id to load")
        pipe = self.pipe
        with self._lock.exclusive():
            self._drop_lora(pipe)
            pipe.load_lora_weights(source, adapter_name=LORA_NAME)
            pipe.set_adapters(LORA_NAME, adapter_weights=float(weight))
            self._lora = (source, float(weight))

    def set_lora_weight(self, weight: float) -> None:
        if self._lora is None:
            raise ValueError("no LoRA is loaded")
        pipe = self.pipe
        with self._lock.exclusive():
            pipe.set_adapters(LORA_NAME, adapter_weights=float(weight))
            self._lora = (self._lora[0], float(weight))

    def unload_lora(self) -> None:
        pipe = self.pipe
        with self._lock.exclusive():
            self._drop_lora(pipe)

    def _drop_lora(self, pipe: VARCLIPPipeline) -> None:
        if self._lora is not None:
            pipe.delete_adapters(LORA_NAME)
            self._lora = None


class _Previewer:
    """Decodes the newest partial latent of a request on its own thread, while sampling goes on.

    Decoding a preview costs about as much as a scale of sampling; done on the sampling thread it would nearly
    double the time to the final images. Here the next scale is sampled while the previous one is decoded, and when
    decoding falls behind (a busy machine) only the newest latent is decoded: previews are never stale.
    """

    def __init__(self, engine: DemoEngine, events: queue.Queue):
        self._engine, self._events = engine, events
        self._condition = threading.Condition()
        self._latest: tuple[int, int, torch.Tensor] | None = None
        self._closed = False
        threading.Thread(target=self._loop, name="var-clip-demo-preview", daemon=True).start()

    def offer(self, si: int, pn: int, f_hat: torch.Tensor) -> None:
        with self._condition:
            self._latest = (si, pn, f_hat.clone())
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()

    def _loop(self) -> None:
        pipe, num_scales = self._engine.pipe, len(self._engine.pipe.transformer.config.patch_nums)
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._latest is not None or self._closed)
                if self._closed:
                    return
                (si, pn, f_hat), self._latest = self._latest, None
            image = _side_by_side(pipe.decode_preview(f_hat))
            with self._condition:
                if self._closed:  # the result is out: a late preview would replace it in the page
                    return
                self._events.put(Preview(si, pn, num_scales, image))


def verdict_for(image: PIL.Image.Image, prompt: str) -> Verdict | None:
    """The evaluator's verdict on a shapes-world image, or None when the prompt is not a caption of that world."""
    from ..shapes_world import IMAGE_SIZE, parse_caption, score_image

    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        return None
    try:
        spec = parse_caption(prompt)
    except ValueError:
        return None
    scores = score_image(image, spec)
    return Verdict(color=scores["color"], shape=scores["shape"], place=scores["position"], relation=scores["relation"],
                   size=scores["size"], caption=scores["caption"])


def _decode_preview(pipe, si, pn, tensors) -> dict:
    pipe.decode_preview(tensors["f_hat"])
    return {}


def _side_by_side(images: list[PIL.Image.Image]) -> PIL.Image.Image:
    return images[0] if len(images) == 1 else make_image_grid(images, cols=min(len(images), 4))
