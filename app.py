"""DMDNet demo: split a photo taken through glass into the scene behind it and the reflection.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--device cpu]
                  [--model FILE --memory FILE --depth FILE | --hub-repo REPO] [--max-pixels N]
                  [--native-scale] [--max-queue N] [--max-disk-mb N]
                  [--dtype bfloat16|float16|float32|float64]

On a GPU (the Space's included) the network runs in bfloat16 unless `--dtype` says otherwise.

A thin Gradio front end: `dmdnet` separates, `dmdnet.demo` draws every figure. Each run
writes its layers, figures and diagnostics to a run folder (`dmdnet.demo.runs`); the session keeps the run's
id in `gr.State`, so the level/stream/expert views are redrawn from the saved
diagnostics without running the network again. A lazily cached example carries the same
id in its cached summary, so it behaves like a fresh run.
"""
from __future__ import annotations

try:  # ZeroGPU: `spaces` has to be imported before torch initialises CUDA.
    import spaces
except ImportError:
    spaces = None

import argparse
import functools
import gc
import hashlib
import logging
import os
import reprlib
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio.data_classes import ImageData
from PIL import Image
from pydantic import ConfigDict
from starlette.middleware import Middleware

import dmdnet
from dmdnet.cli import add_weight_options, positive_int
from dmdnet.demo import figures
from dmdnet.demo.runs import Run, RunNotFound, RunStore
from dmdnet.demo.storage import MB, QuotaMiddleware, StorageFull, StorageQuota, holds_outputs
from dmdnet.demo.texts import API_HELP, CITATION, CSS, EXPERT_HELP, HEADER, SCAN_HELP, TOAST_TITLE_JS, weights_line
from dmdnet.demo.views import ScanView
from dmdnet.devices import resolve_device
from dmdnet.images import frame_count, image_files
from dmdnet.pipeline import DEFAULT_MAX_PIXELS, working_size

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MAX_DISK_MB = 4096
"""Default of --max-disk-mb: the run folders and Gradio's cache together (a 24 MP photo takes
about 35 MB of them, a 1 MP one about 3 MB)."""
QUOTA = StorageQuota(MAX_DISK_MB * MB, [Path(tempfile.gettempdir()) / "dmdnet_runs",
                                        Path(gr.utils.get_upload_folder())])
RUNS = RunStore(QUOTA.folders[0], quota=QUOTA)
CPU_MAX_PIXELS = 1024 * 1024
MAX_UPLOAD_PIXELS = 50_000_000
QUEUE_SIZE = 16
"""Default of --max-queue: requests waiting beyond it are answered "queue full" (clients retry)."""
STREAMS = [("T · regional", "T"), ("R · global", "R")]

log = logging.getLogger("dmdnet.app")
PIPELINE: dmdnet.Pipeline | None = None
"""Loaded once by `main()` before the server starts."""
NETWORK_LOCK = threading.Lock()
"""One separation at a time, whichever event (button, API, example caching) asks."""


# ----------------------------------------------------------------------------------------
# Running the network


def gpu_seconds(path: str) -> int:
    """ZeroGPU time to reserve for one image: grows with the pixels the network will run."""
    try:
        with Image.open(path) as probe:
            height, width = working_size(probe.height, probe.width, PIPELINE.max_pixels,
                                         PIPELINE.max_short_side)
    except (OSError, ValueError, Image.DecompressionBombError):
        height = width = 0
    return int(30 + 60 * height * width / 1e6)


def _on_gpu(function):
    """`spaces.GPU` with a size-dependent duration on ZeroGPU; unchanged elsewhere."""
    return spaces.GPU(duration=gpu_seconds)(function) if spaces is not None else function


@_on_gpu
def run_network(path: str) -> dmdnet.SeparationResult:
    """Separates one image file with diagnostics; tensors come back on the CPU."""
    with NETWORK_LOCK:
        result = PIPELINE.separate(path, diagnostics=True)
    for name in ("transmission", "reflection", "depth", "image"):
        setattr(result, name, getattr(result, name).detach().cpu())
    return result


def refuse(message: str, title: str) -> gr.Error:
    """A user-facing error: shown in the UI (AppError for API clients), not logged as a crash."""
    return gr.Error(message, title=title, print_exception=False)


def storage_full(message: str) -> gr.Error:
    return refuse(message, "Storage full")


copied_by_gradio = holds_outputs(QUOTA, storage_full)
"""Room is made for what a function returns before Gradio copies it into its cache."""


class UploadedImage(ImageData):
    """The image payload of `/separate` (Gradio's own, same schema), whose refusal of a plain
    string or number is a message of the app rather than pydantic's text."""

    model_config = ConfigDict(title="ImageData")

    @classmethod
    def model_validate(cls, obj: object, **kwargs: object) -> UploadedImage:
        if not isinstance(obj, dict):
            raise refuse(f"The image has to be an uploaded file, not the value {reprlib.repr(obj)}: with "
                         "gradio_client, pass handle_file(\"photo.jpg\").", "Not a file")
        return super().model_validate(obj, **kwargs)


def uploaded_file(image: dict | None) -> tuple[Path, str]:
    """The uploaded file and its original name; refuses missing, unreadable and huge images, and
    paths outside Gradio's upload folder (with `preprocess=False` Gradio does not check a bare
    {"path": ...} from an API client, which would let it name any file on the server)."""
    path = (image or {}).get("path")
    if not path:
        raise refuse("No image yet: upload a photo, paste one, take one with the webcam "
                     "or click an example.", "No image")
    if not Path(path).resolve().is_relative_to(Path(gr.utils.get_upload_folder()).resolve()):
        raise refuse("The image has to be uploaded: this demo does not read files named by a path on "
                     "the server (with gradio_client, pass handle_file(\"photo.jpg\")).", "Not an upload")
    name = Path(image.get("orig_name") or path).name
    if not Path(path).is_file():
        raise refuse(f"{name} is no longer on the server (the oldest files make room for new ones): "
                     "please upload it again.", "Upload expired")
    limit = f"{MAX_UPLOAD_PIXELS // 1_000_000} MP"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as probe:
                width, height = probe.size
    except Image.DecompressionBombError:
        raise refuse(f"{name} is far larger than the {limit} this demo accepts.", "Image too large") from None
    except (OSError, ValueError, SyntaxError):
        raise refuse(f"{name} is not an image this demo can read: use a PNG, JPEG, WebP, TIFF, "
                     "BMP or GIF file.", "Not an image") from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise refuse(f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP); this demo accepts "
                     f"up to {limit}. Please downscale it.", "Image too large")
    return Path(path), name


@copied_by_gradio
def separate(image: dict | None, progress: gr.Progress = gr.Progress()) -> tuple:
    """Separates the photo, saves the run and returns its files (the `/separate` API)."""
    path, name = uploaded_file(image)
    progress(0.05, desc="Estimating depth and separating the layers")
    try:
        started = time.perf_counter()
        result = run_network(str(path))
        seconds = time.perf_counter() - started
        progress(0.9, desc="Drawing the figures")
        run = RUNS.save(result, name, seconds, weights=PIPELINE.weights.label, device=str(PIPELINE.device),
                        frames=frame_count(path))
    except dmdnet.InvalidImageError as error:
        raise refuse(str(error).replace(str(path), name).replace(path.name, name), "Unreadable image") from None
    except StorageFull as error:
        raise storage_full(f"{error}; please try again in a few minutes.") from None
    except Exception as error:
        log.exception("separation failed for %s", name)
        reason = (str(error).splitlines() or [""])[0][:200]
        raise refuse(f"The separation failed ({type(error).__name__}: {reason}).",
                     "Separation failed") from None
    return (run.file("transmission"), run.file("reflection"), run.file("depth"),
            run.file("scan_order"), run.file("gates"), run.summary)


def load_run(run_id: object) -> Run:
    """The run a session's state names, or a message that it is gone."""
    try:
        return RUNS.load(run_id)
    except RunNotFound:
        raise refuse("This result is no longer kept on the server. Press Separate to run "
                     "the photo again.", "Result expired") from None


# ----------------------------------------------------------------------------------------
# Views redrawn from a run (no network)


def _site(view: ScanView) -> str:
    return f"{view.branch}:{view.block}"


def _site_label(view: ScanView) -> str:
    if view.branch == "main":
        return f"main decoder · block {view.block + 1}"
    return f"depth branch for {view.branch[-1]} · block {view.block + 1}"


@copied_by_gradio
def show_layers(run_id: str, alpha: float) -> tuple:
    """Input/layer sliders, the T + alpha*R remix and the run summary line."""
    run = load_run(run_id)
    info = run.info
    size = f"{info['input']['width']}x{info['input']['height']}"
    if info["processed"] != info["input"]:
        size += f" (run at {info['processed']['width']}x{info['processed']['height']})"
    line = f"Separated **{info['source']}**, {size}, in {info['seconds']:.1f} s on {info['device']}."
    if info.get("frames", 1) > 1:
        line += f" It has {info['frames']} frames: the first was separated."
    if "transmission_gain" in info:
        line += f" Scene brightness ×{info['transmission_gain']:.2f} (the weights' global gain)."
    return ((run.file("input_preview"), run.file("transmission_preview")),
            (run.file("input_preview"), run.file("reflection_preview")),
            figures.remix(*run.layers, alpha), line)


@copied_by_gradio
def show_remix(run_id: str | None, alpha: float) -> np.ndarray | dict:
    """The transmission plus `alpha` times the reflection."""
    if not run_id:
        return gr.skip()
    return figures.remix(*load_run(run_id).layers, alpha)


@copied_by_gradio
def show_scan(run_id: str | None, level: int, stream: str, site: str) -> tuple:
    """The scan-order map and animation of the chosen level, stream and block.

    A level without DSMamba blocks (level 1 of DMDNet-Lite) moves the slider to the nearest
    level that has them."""
    if not run_id:
        return gr.skip()
    run = load_run(run_id)
    level = min({v.level for v in run.scans}, key=lambda scanned: (abs(scanned - level), scanned))
    views = sorted((v for v in run.scans if v.level == level and v.stream == stream),
                   key=lambda v: (v.branch != "main", v.branch, v.block))
    view = next((v for v in views if _site(v) == site), views[0])
    animation = run.scan_animation(view)
    choices = [(_site_label(v), _site(v)) for v in views]
    return (gr.update(value=level), gr.update(choices=choices, value=_site(view)),
            figures.scan_figure(view, run.processed_size), str(animation))


@copied_by_gradio
def show_experts(run_id: str | None, call: int | None) -> tuple:
    """Per-expert contribution maps of the chosen MECM call."""
    if not run_id:
        return gr.skip()
    run = load_run(run_id)
    if not (isinstance(call, int) and 0 <= call < len(run.experts)):  # first view: the finest main-branch T
        call = min(range(len(run.experts)), key=lambda i: (
            (run.experts[i].branch, run.experts[i].stream) != ("main", "T"), run.experts[i].level))
    choices = [(view.label, index) for index, view in enumerate(run.experts)]
    return (gr.update(choices=choices, value=call),
            figures.expert_figure(run.experts[call], run.processed_size))


def show_run(summary: dict | None, alpha: float, level: int, stream: str, site: str,
             call: int | None) -> tuple:
    """After Separate or an example: the run's id (for the session state) and every view."""
    run_id = (summary or {}).get("run")
    if not run_id:
        return gr.skip()
    return ((run_id,) + show_layers(run_id, alpha) + show_scan(run_id, level, stream, site)
            + show_experts(run_id, call))


# ----------------------------------------------------------------------------------------
# Page


def example_files() -> list[str]:
    """The bundled example photos, sorted by name."""
    return [str(p) for p in image_files(EXAMPLES_DIR)]


def build_demo(pipe: dmdnet.Pipeline) -> gr.Blocks:
    """The Blocks page; `pipe` only provides the weights/device line (the module's
    `PIPELINE` runs the network)."""
    figure = functools.partial(gr.Image, interactive=False, format="png", elem_classes="figure")
    with gr.Blocks(title="DMDNet reflection separation", delete_cache=(3600, RUNS.lifetime_s)) as demo:
        gr.Markdown(HEADER, elem_id="header")
        gr.Markdown(weights_line(pipe), elem_id="weights")
        run_state = gr.State()
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(label="Photo through glass", type="filepath", image_mode=None, height=340,
                                 sources=["upload", "webcam", "clipboard"], elem_id="photo")
                image.data_model = UploadedImage
                run_button = gr.Button("Separate", variant="primary", size="lg", elem_id="separate")
                summary = gr.Markdown(elem_id="summary")
                examples_slot = gr.Column()
            with gr.Column(scale=5):
                with gr.Tabs():
                    with gr.Tab("Layers"):
                        with gr.Row():
                            slider_t = gr.ImageSlider(label="Input | Transmission (scene)", type="filepath",
                                                      format="png", interactive=False, elem_id="slider-t")
                            slider_r = gr.ImageSlider(label="Input | Reflection", type="filepath",
                                                      format="png", interactive=False, elem_id="slider-r")
                        with gr.Row(equal_height=False):
                            with gr.Column():
                                alpha = gr.Slider(0, 1, value=0, step=0.05, label="Reflection strength α",
                                                  info="Recomposes T + α·R: 0 removes the reflection, "
                                                       "1 puts all of it back.", elem_id="alpha")
                                t_file = gr.File(label="Transmission PNG (full resolution)", height=90,
                                                 elem_id="transmission-file")
                                r_file = gr.File(label="Reflection PNG (full resolution)", height=90,
                                                 elem_id="reflection-file")
                            remix = figure(label="Remix T + α·R", height=360, elem_id="remix")
                    with gr.Tab("Depth & scan order"):
                        gr.Markdown(SCAN_HELP)
                        with gr.Row():
                            level = gr.Slider(1, 5, value=3, step=1, precision=0, label="Level",
                                              info="1 = full resolution, 5 = 1/16", elem_id="level")
                            stream = gr.Radio(STREAMS, value="T", label="Stream",
                                              info="T: scene, R: reflection", elem_id="stream")
                            site = gr.Dropdown([("main decoder · block 1", "main:0")], value="main:0",
                                               label="DSMamba block", info="blocks of the chosen level",
                                               elem_id="site")
                        with gr.Row():
                            depth = figure(label="Depth map", type="filepath", height=400, elem_id="depth")
                            scan = figure(label="Scan order", height=400, elem_id="scan")
                            animation = figure(label="Scan progressing", type="filepath", height=400,
                                               elem_id="animation")
                        with gr.Accordion("All levels at a glance (main decoder, first block)", open=False):
                            overview = figure(label="Scan order of every level", type="filepath",
                                              elem_id="overview")
                    with gr.Tab("Memory experts"):
                        gr.Markdown(EXPERT_HELP)
                        call = gr.Dropdown([], value=None, label="MECM call", elem_id="call")
                        experts = figure(label="Per-expert contributions", elem_id="experts")
                        gates = figure(label="MECM gates of every call", type="filepath", height=640,
                                       elem_id="gates")
                    with gr.Tab("API"):
                        gr.Markdown(API_HELP)
                        details = gr.JSON(label="Summary", open=False, max_height=420, elem_id="details")
        with gr.Accordion("Citation and example sources", open=False):
            gr.Markdown(CITATION)

        run_outputs = [t_file, r_file, depth, overview, gates, details]
        views = [run_state, slider_t, slider_r, remix, summary, level, site, scan, animation, call, experts]
        private = {"api_visibility": "private", "show_progress": "hidden"}
        run = run_button.click(separate, [image], run_outputs, api_name="separate", preprocess=False,
                               api_description="Separate a photo into transmission and reflection layers.")
        with examples_slot:
            examples = gr.Examples([[path] for path in example_files()], [image], run_outputs, separate,
                                   cache_examples=True, cache_mode="lazy", preprocess=False,
                                   api_visibility="private", examples_per_page=8, label="Examples")
        for finished in (run, examples.load_input_event):
            finished.success(show_run, [details, alpha, level, stream, site, call], views, **private)
        alpha.input(show_remix, [run_state, alpha], remix, trigger_mode="always_last", **private)
        for selector in (level, stream, site):
            selector.input(show_scan, [run_state, level, stream, site], [level, site, scan, animation],
                           trigger_mode="always_last", **private)
        call.input(show_experts, [run_state, call], [call, experts], **private)
    return demo


def weights_key(pipe: dmdnet.Pipeline) -> str:
    """Short hash naming the loaded weights, so cached examples never outlive them."""
    parts = [pipe.weights.label, str(pipe.dtype), str(pipe.max_pixels), str(pipe.max_short_side)]
    for role, name in sorted(pipe.weights.files.items()):
        path = Path(name)
        stat = path.stat() if path.is_file() else None
        parts += [role, str(path.resolve()), str(stat and stat.st_size), str(stat and stat.st_mtime_ns)]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="DMDNet reflection-separation demo (Gradio).")
    parser.add_argument("--host", help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--max-pixels", type=positive_int,
                        help=f"larger photos run downscaled (default: {CPU_MAX_PIXELS:,} on CPU, "
                             f"{DEFAULT_MAX_PIXELS:,} on GPU)")
    parser.add_argument("--max-queue", type=positive_int, default=QUEUE_SIZE,
                        help="requests that may wait for the network; beyond it clients get "
                             f"\"queue full\" and should retry (default {QUEUE_SIZE})")
    parser.add_argument("--max-disk-mb", type=positive_int, default=MAX_DISK_MB,
                        help="disk space of the saved runs and Gradio's cache together; the least recently "
                             f"used are deleted to stay under it (default {MAX_DISK_MB})")
    add_weight_options(parser, default_dtype=None)
    return parser


def inference_dtype(requested: str | None, device: torch.device) -> str:
    """--dtype when given, else bfloat16 on a GPU (the Space's) and float32 on a CPU."""
    return requested or ("bfloat16" if device.type == "cuda" else "float32")


def main(argv: list[str] | None = None) -> int:
    global PIPELINE
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        device = resolve_device(args.device)
        max_pixels = args.max_pixels or (CPU_MAX_PIXELS if device.type == "cpu" else DEFAULT_MAX_PIXELS)
        PIPELINE = dmdnet.load_pipeline(args.model, args.memory, args.depth, device=device,
                                        dtype=inference_dtype(args.dtype, device), hub_repo=args.hub_repo, max_pixels=max_pixels,
                                        native_scale=args.native_scale)
    except (dmdnet.CheckpointError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("loaded %s on %s", PIPELINE.weights.label, PIPELINE.device)
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(RUNS.root / f"examples-{weights_key(PIPELINE)}"))
    QUOTA.max_bytes = args.max_disk_mb * MB
    demo = build_demo(PIPELINE)
    QUOTA.protect(Path(os.environ["GRADIO_EXAMPLES_CACHE"]))
    QUOTA.protect_existing()  # the example photos Gradio has copied into its cache
    demo.queue(default_concurrency_limit=1, max_size=args.max_queue)
    # Everything made so far (the weights, Gradio's app) lives as long as the server: leaving
    # it out of the garbage collector's full passes spares a request a 0.3 s pause now and then.
    gc.freeze()
    # show_error: Gradio's own refusals (a file that was not uploaded, a payload that is not a
    # file) reach the client as their message instead of an empty error; every error of ours
    # is already a gr.Error with a message.
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size="100mb",
                show_error=True, app_kwargs={"middleware": [Middleware(QuotaMiddleware, quota=QUOTA)]},
                theme=gr.themes.Soft(primary_hue="indigo", neutral_hue="slate"), css=CSS, js=TOAST_TITLE_JS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
