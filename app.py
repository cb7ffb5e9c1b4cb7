"""DMDNet demo: split a photo taken through glass into the scene behind it and the reflection.

    python app.py [--host 0.0.0.0] [--port 7860] [--share] [--device cpu]
                  [--model FILE --memory FILE --depth FILE | --hub-repo REPO] [--max-pixels N]
                  [--native-scale | --short-side PX] [--max-queue N] [--max-disk-mb N]
                  [--dtype bfloat16|float16|float32|float64]

On a GPU (the Space's included) the network runs in bfloat16 unless `--dtype` says otherwise.

The Space's entry: the page's layout, its wiring and `main`. What the widgets call is in
`dmdnet.demo.callbacks` (the separation, and the views redrawn from a saved run without running
the network again), what counts as an image in `dmdnet.demo.uploads`, and what the page says,
with its CSS and script, in `dmdnet.demo.texts`.
"""
from __future__ import annotations

try:  # ZeroGPU: `spaces` has to be imported before torch initialises CUDA.
    import spaces  # noqa: F401  (dmdnet.demo.callbacks runs the network under spaces.GPU)
except ImportError:
    pass

import argparse
import functools
import gc
import hashlib
import logging
import os
import sys
from pathlib import Path

import gradio as gr
import torch
from starlette.middleware import Middleware

import dmdnet
from dmdnet.cli import add_weight_options, positive_int
from dmdnet.demo import callbacks
from dmdnet.demo.callbacks import MAX_DISK_MB, QUOTA, RUNS, separate, show_experts, show_remix, show_run, show_scan
from dmdnet.demo.storage import MB, QuotaMiddleware
from dmdnet.demo.texts import API_HELP, CITATION, CSS, EXPERT_HELP, HEADER, SCAN_HELP, TOAST_TITLE_JS, weights_line
from dmdnet.demo.uploads import UploadedImage
from dmdnet.devices import resolve_device
from dmdnet.images import image_files
from dmdnet.pipeline import DEFAULT_MAX_PIXELS

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
CPU_MAX_PIXELS = 1024 * 1024
QUEUE_SIZE = 16
"""Default of --max-queue: requests waiting beyond it are answered "queue full" (clients retry)."""
STREAMS = [("T · regional", "T"), ("R · global", "R")]

log = logging.getLogger("dmdnet.app")


def example_files() -> list[str]:
    """The bundled example photos, sorted by name."""
    return [str(p) for p in image_files(EXAMPLES_DIR)]


def build_demo(pipe: dmdnet.Pipeline) -> gr.Blocks:
    """The Blocks page; `pipe` only provides the weights/device line (`callbacks.PIPELINE`
    runs the network)."""
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    try:
        device = resolve_device(args.device)
        max_pixels = args.max_pixels or (CPU_MAX_PIXELS if device.type == "cpu" else DEFAULT_MAX_PIXELS)
        pipe = dmdnet.load_pipeline(args.model, args.memory, args.depth, device=device,
                                    dtype=inference_dtype(args.dtype, device), hub_repo=args.hub_repo,
                                    max_pixels=max_pixels, native_scale=args.native_scale,
                                    short_side=args.short_side)
    except (dmdnet.CheckpointError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("loaded %s on %s", pipe.weights.label, pipe.device)
    callbacks.PIPELINE = pipe
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(RUNS.root / f"examples-{weights_key(pipe)}"))
    QUOTA.max_bytes = args.max_disk_mb * MB
    demo = build_demo(pipe)
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
