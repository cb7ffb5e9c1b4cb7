"""What the page's events call: the separation (on a ZeroGPU Space under `spaces.GPU`) and the
views redrawn from a saved run.

Each separation writes its layers, figures and diagnostics to a run folder (`runs`); the
session keeps the run's id in `gr.State`, so the level/stream/expert views are redrawn from the
saved diagnostics without running the network again. A lazily cached example carries the same
id in its cached summary, so it behaves like a fresh run.
"""
from __future__ import annotations

try:  # ZeroGPU (app.py imports it first, before torch initialises CUDA)
    import spaces
except ImportError:
    spaces = None

import logging
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from ..images import InvalidImageError, frame_count
from ..pipeline import Pipeline, SeparationResult, working_size
from . import figures
from .runs import Run, RunNotFound, RunStore
from .storage import MB, StorageFull, StorageQuota, holds_outputs
from .uploads import refuse, uploaded_file
from .views import ScanView

MAX_DISK_MB = 4096
"""Default of --max-disk-mb: the run folders and Gradio's cache together (a 24 MP photo takes
about 35 MB of them, a 1 MP one about 3 MB)."""
QUOTA = StorageQuota(MAX_DISK_MB * MB, [Path(tempfile.gettempdir()) / "dmdnet_runs",
                                        Path(gr.utils.get_upload_folder())])
RUNS = RunStore(QUOTA.folders[0], quota=QUOTA)

log = logging.getLogger(__name__)
PIPELINE: Pipeline | None = None
"""Set once by `app.main` before the server starts."""
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
def run_network(path: str) -> SeparationResult:
    """Separates one image file with diagnostics; tensors come back on the CPU."""
    with NETWORK_LOCK:
        result = PIPELINE.separate(path, diagnostics=True)
    for name in ("transmission", "reflection", "depth", "image"):
        setattr(result, name, getattr(result, name).detach().cpu())
    return result


def storage_full(message: str) -> gr.Error:
    """The refusal when no room can be made on disk for a request."""
    return refuse(message, "Storage full")


copied_by_gradio = holds_outputs(QUOTA, storage_full)
"""Room is made for what a function returns before Gradio copies it into its cache."""


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
    except InvalidImageError as error:
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
