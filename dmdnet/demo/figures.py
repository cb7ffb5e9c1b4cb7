"""Figures for the demo, drawn with matplotlib: depth, DAScan orders, MECM experts and gates.

Each figure is a pure function of numpy arrays that returns a PIL image, so the
figures are testable without the network. They are drawn on a bare
`matplotlib.figure.Figure` with the headless Agg canvas: no pyplot, hence no display,
no global figure registry and nothing left open once the image is rendered, which is
what a web server drawing in worker threads needs. Colours are matplotlib colormaps
(`COLORMAPS`). The views they draw are `dmdnet.demo.views`.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from PIL import Image

from ..network.dascan import region_ranks
from .views import ExpertView, ScanView, branch_label, scan_rank, valid_shape

COLORMAPS = {"order": "viridis", "depth": "inferno", "gate": "Purples"}
"""Figure role -> matplotlib colormap: scan position, depth and expert maps, gate coefficients.
All three are perceptually ordered and monotonic in luminance, so they read in grayscale too."""
UNSCANNED = "#d4d4d8"
"""Pixels the scan has not reached yet (light grey: outside every colour of viridis)."""
BOUNDARY = "white"
"""DAScan region outlines."""
NOT_SELECTED = "#e5e7eb"
"""Face of an expert the gate did not select."""
INK, MUTED = "#1f2937", "#6b7280"
"""Text on light cells; secondary text."""
DPI = 100
"""Figure sizes are given in pixels: inches x DPI."""
MAP_LEFT, MAP_TOP = 6, 24
"""Where a figure of one map (depth, scan order) puts it: under its title, its colour bar
to its right."""
MAP_BOTTOM = 10
"""Room under a map for the half of its colour bar's last tick label that hangs below it."""
TITLE_SIZE = 10
TEXT_MARGIN = 4
"""Pixels kept free between a title and the figure's left and right edges."""


def colormap(values: np.ndarray, name: str = "order") -> np.ndarray:
    """Maps values in [0, 1] (clipped; NaN as 0) to uint8 RGB, shape (..., 3), through the
    matplotlib colormap of role `name` (see `COLORMAPS`)."""
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    return _cmap(name)(x, bytes=True)[..., :3]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of uint8 RGB values, shape (...)."""
    return np.asarray(rgb, dtype=np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def _cmap(name: str) -> Colormap:
    return matplotlib.colormaps[COLORMAPS[name]]


def _canvas(width: float, height: float) -> tuple[Figure, Axes]:
    """A `width` x `height` pixel figure on an Agg canvas with one axes over all of it, without
    ticks or frame, whose data coordinates are the figure's pixels (x right, y down).

    Maps, outlines and captions are placed on it by pixel boxes; matplotlib draws them. A
    layout engine would draw every text twice, and an axes per map costs more than the map
    itself: these figures are drawn for each request, so one axes keeps them fast (and
    their sizes exact)."""
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.autoscale(False)
    return figure, axes


def _show(axes: Axes, array: np.ndarray, box: tuple[float, float, float, float], **style) -> AxesImage:
    """`imshow` of `array` stretched over the pixel box (left, top, width, height)."""
    left, top, width, height = box
    return axes.imshow(array, extent=(left, left + width, top + height, top), aspect="auto", **style)


def _text(axes: Axes, x: float, y: float, text: str, **style) -> Text:
    """Text at pixel (x, y) of a `_canvas`. Placed on the figure rather than the axes: an axes
    text gets the axes' clip path, which costs more than drawing it, and `_canvas` texts are
    never clipped."""
    return axes.figure.text(x, y, text, transform=axes.transData, **style)


@functools.lru_cache(maxsize=512)
def text_width(text: str, fontsize: float = TITLE_SIZE) -> float:
    """The width in pixels of one line of `text` drawn on these figures (kept: a figure asks for
    its title's width twice, to size the canvas and to place the title)."""
    width, _, _ = RendererAgg(1, 1, DPI).get_text_width_height_descent(text, FontProperties(size=fontsize),
                                                                         ismath=False)
    return width


def _room_for(layout_width: int, *texts: str) -> int:
    """A figure width in whole pixels that holds both the layout and each of `texts` whole."""
    return max(layout_width, *(math.ceil(text_width(text)) + 2 * TEXT_MARGIN for text in texts))


def _centre_within(axes: Axes, centre: float, text: str) -> float:
    """`centre` moved as little as needed for `text` centred there to stay inside the figure."""
    half = text_width(text) / 2 + TEXT_MARGIN
    return min(max(centre, half), axes.get_xlim()[1] - half)


def _caption(axes: Axes, box: tuple[float, float, float, float], text: str, below: bool = False) -> None:
    """A line of text centred above (or below) a pixel box, shifted to stay inside the figure."""
    left, top, width, height = box
    _text(axes, _centre_within(axes, left + width / 2, text), top + height + 4 if below else top - 4, text,
          ha="center", va="top" if below else "bottom", fontsize=TITLE_SIZE)


def _colorbar(figure: Figure, image: AxesImage, box: tuple[float, float, float, float], label: str,
              ticks: list[float] | None = None, tick_labels: list[str] | None = None) -> None:
    """A matplotlib colour bar for `image` in a pixel box (horizontal if wider than tall)."""
    left, top, width, height = box
    size = figure.bbox
    bar_axes = figure.add_axes((left / size.width, 1 - (top + height) / size.height,
                                width / size.width, height / size.height))
    bar = figure.colorbar(image, cax=bar_axes, ticks=ticks,
                          orientation="horizontal" if width > height else "vertical")
    if tick_labels:
        bar.set_ticklabels(tick_labels)
    bar.ax.tick_params(labelsize=9, length=2, pad=2)
    bar.set_label(label, fontsize=10, labelpad=2)
    bar.outline.set_linewidth(0.5)


def _render(figure: Figure) -> Image.Image:
    """Draws the figure and returns it as an RGB image (the figure can then be dropped)."""
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def _map_box(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) in pixels of a map of `shape` (h, w) scaled so its longer side is `max_side`."""
    scale = max_side / max(shape)
    return max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))


# ----------------------------------------------------------------------------------------
# Layers and depth


def remix(transmission: np.ndarray, reflection: np.ndarray, alpha: float) -> np.ndarray:
    """Recomposes `T + alpha * R`, both float (H, W, 3) in [0, 1], as uint8."""
    mixed = np.asarray(transmission, np.float32) + float(alpha) * np.asarray(reflection, np.float32)
    return np.round(np.clip(mixed, 0.0, 1.0) * 255).astype(np.uint8)


def percentile_range(values: np.ndarray, low: float = 2.0, high: float = 98.0) -> tuple[float, float]:
    """The values at two percentiles, the colour scale of a map (a few outliers do not
    flatten it); a constant map gets a range centred on its value."""
    bottom, top = (float(v) for v in np.percentile(values, [low, high]))
    return (bottom, top) if top > bottom else (bottom - 1.0, bottom + 1.0)


def depth_figure(depth: np.ndarray, max_side: int = 384) -> Image.Image:
    """(H, W) relative inverse depth (larger = nearer) in inferno, near bright, scaled
    between its 2nd and 98th percentiles, beside a far/near colour bar. The map's longer
    side is `max_side` pixels."""
    width, height = _map_box(depth.shape, max_side)
    title = "estimated depth"
    figure, axes = _canvas(_room_for(MAP_LEFT + width + 62, title), MAP_TOP + height + MAP_BOTTOM)
    box = (MAP_LEFT, MAP_TOP, width, height)
    low, high = percentile_range(depth)
    image = _show(axes, depth, box, cmap=_cmap("depth"), vmin=low, vmax=high, interpolation="antialiased")
    _caption(axes, box, title)
    _colorbar(figure, image, (MAP_LEFT + width + 8, MAP_TOP, 12, height), "", [low, high], ["far", "near"])
    return _render(figure)


# ----------------------------------------------------------------------------------------
# DAScan orders


def boundary_segments(labels: np.ndarray) -> np.ndarray:
    """(K, 2, 2) line segments, in image coordinates (cell centres at integers), along the
    cell edges between different labels, the outlines of the labelled regions; collinear
    neighbouring edges are joined into one segment."""
    def runs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs of True down each column of `edges`: column, first row, row after the last."""
        padded = np.zeros((edges.shape[0] + 2, edges.shape[1]), dtype=np.int8)
        padded[1:-1] = edges
        steps = np.diff(padded, axis=0).T
        columns, starts = np.nonzero(steps == 1)
        _, stops = np.nonzero(steps == -1)
        return columns, starts, stops

    column, start, stop = runs(labels[:, :-1] != labels[:, 1:])
    vertical = np.stack([np.stack([column + 0.5, start - 0.5], -1),
                         np.stack([column + 0.5, stop - 0.5], -1)], 1)
    row, start, stop = runs((labels[:-1, :] != labels[1:, :]).T)
    horizontal = np.stack([np.stack([start - 0.5, row + 0.5], -1),
                           np.stack([stop - 0.5, row + 0.5], -1)], 1)
    return np.concatenate([vertical, horizontal]).astype(np.float64)


def _scan_map(view: ScanView, processed_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The image part of a scan: each cell's scan position as a fraction of the sequence
    (0 = first, 1 = last) and the region outlines (none for a global scan)."""
    shape = view.proximity.shape
    height, width = valid_shape(shape, processed_size, view.level)
    position = scan_rank(view.order, shape)[:height, :width] / max(view.order.size - 1, 1)
    outlines = (boundary_segments(region_ranks(view.proximity)[:height, :width])
                if view.kind == "regional" else np.empty((0, 2, 2)))
    return position, outlines


def _draw_scan(axes: Axes, position: np.ndarray, outlines: np.ndarray,
               box: tuple[float, float, float, float], line_width: float) -> AxesImage:
    """The scan-position map in viridis over a pixel box (values above 1, cells not scanned
    yet, in grey) with the region outlines as one white line; returns the image artist."""
    image = _show(axes, position, box, cmap=_cmap("order").with_extremes(over=UNSCANNED),
                  norm=Normalize(0.0, 1.0), interpolation="nearest")
    if len(outlines):
        left, top, width, height = box
        cell = (width / position.shape[1], height / position.shape[0])
        gaps = np.full((len(outlines), 1), np.nan)
        x = left + (np.hstack([outlines[:, :, 0], gaps]) + 0.5) * cell[0]
        y = top + (np.hstack([outlines[:, :, 1], gaps]) + 0.5) * cell[1]
        axes.add_line(Line2D(x.ravel(), y.ravel(), color=BOUNDARY, linewidth=line_width,
                             solid_capstyle="projecting"))
    return image


def _scan_colorbar(figure: Figure, image: AxesImage, box: tuple[float, float, float, float]) -> None:
    _colorbar(figure, image, box, "position in the scan", [0, 1], ["first", "last"])


def scan_title(view: ScanView, processed_size: tuple[int, int]) -> str:
    """"L3 main · block 1 · T regional (64x48)"."""
    height, width = valid_shape(view.proximity.shape, processed_size, view.level)
    return (f"L{view.level} {branch_label(view.branch)} · block {view.block + 1} · "
            f"{view.stream} {view.kind} ({width}x{height})")


def scan_figure(view: ScanView, processed_size: tuple[int, int], max_side: int = 384) -> Image.Image:
    """One stream's scan: each image cell coloured by its position in the sequence (viridis,
    first dark, last yellow), regional scans outlined by region in white, beside a
    first/last colour bar. The map's longer side is `max_side` pixels."""
    position, outlines = _scan_map(view, processed_size)
    width, height = _map_box(position.shape, max_side)
    title = scan_title(view, processed_size)
    figure, axes = _canvas(_room_for(MAP_LEFT + width + 78, title), MAP_TOP + height + MAP_BOTTOM)
    box = (MAP_LEFT, MAP_TOP, width, height)
    image = _draw_scan(axes, position, outlines, box, line_width=1.2)
    _caption(axes, box, title)
    _scan_colorbar(figure, image, (MAP_LEFT + width + 8, MAP_TOP, 12, height))
    return _render(figure)


def progress_title(view: ScanView, reached: float) -> str:
    """"L3 T regional: 50% scanned"."""
    return f"L{view.level} {view.stream} {view.kind}: {reached:.0%} scanned"


def scan_animation(view: ScanView, processed_size: tuple[int, int], frames: int = 24,
                   max_side: int = 256) -> list[Image.Image]:
    """Frames of the scan progressing from 1/frames of the sequence to all of it, the map's
    longer side `max_side` pixels: cells not reached yet are grey (`UNSCANNED`)."""
    position, outlines = _scan_map(view, processed_size)
    width, height = _map_box(position.shape, max_side)
    longest = progress_title(view, 1.0)
    canvas_width = _room_for(width + 8, longest)
    figure, axes = _canvas(canvas_width, height + 26)
    box = ((canvas_width - width) / 2, 22, width, height)
    image = _draw_scan(axes, position, outlines, box, line_width=1.0)
    title = _text(axes, canvas_width / 2, 18, "", ha="center", va="bottom", fontsize=TITLE_SIZE)
    rank = np.rint(position * max(view.order.size - 1, 1))
    pictures = []
    for frame in range(1, frames + 1):
        reached = frame / frames
        image.set_data(np.where(rank < round(reached * view.order.size), position, 2.0))
        title.set_text(progress_title(view, reached))
        pictures.append(_render(figure))
    return pictures


def save_gif(frames: list[Image.Image], path: str | Path, frame_ms: int = 90,
             hold_ms: int = 1200) -> None:
    """Writes an endlessly looping GIF that pauses on its last frame."""
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                   loop=0, optimize=False, disposal=1)


def scan_overview(views: list[ScanView], processed_size: tuple[int, int], tile: int = 150) -> Image.Image:
    """The main branch's first-block scans in a grid, streams T (regional) and R (global)
    as rows by level as columns (captioned underneath), each map's longer side `tile`
    pixels, above one first/last colour bar."""
    chosen = {(v.stream, v.level): v for v in views if v.branch == "main" and v.block == 0}
    levels = sorted({level for _, level in chosen})
    streams = [s for s in ("T", "R") if any((s, level) in chosen for level in levels)]
    maps = {key: _scan_map(view, processed_size) for key, view in chosen.items()}
    width, height = _map_box(next(iter(maps.values()))[0].shape, tile) if maps else (tile, tile)
    left, top, gap = 24, 6, 8
    grid_bottom = top + len(streams) * (height + gap) - gap
    figure, axes = _canvas(left + len(levels) * (width + gap), grid_bottom + 76)
    image = None
    for (stream, level), (position, outlines) in maps.items():
        box = (left + levels.index(level) * (width + gap), top + streams.index(stream) * (height + gap),
               width, height)
        image = _draw_scan(axes, position, outlines, box, line_width=0.8)
    for column, level in enumerate(levels):
        cells = next(position.shape for (_, scanned), (position, _) in maps.items() if scanned == level)
        _caption(axes, (left + column * (width + gap), grid_bottom - height, width, height),
                 f"level {level} ({cells[1]}x{cells[0]})", below=True)
    for row, stream in enumerate(streams):
        _text(axes, left - 6, top + row * (height + gap) + height / 2,
                  "T · regional" if stream == "T" else "R · global", fontsize=10, rotation=90,
                  ha="right", va="center")
    if image is not None:
        bar_width = min(320, figure.bbox.width - 2 * left)
        _scan_colorbar(figure, image, ((figure.bbox.width - bar_width) / 2, grid_bottom + 28, bar_width, 12))
    return _render(figure)


# ----------------------------------------------------------------------------------------
# MECM memory experts


def expert_figure(view: ExpertView, processed_size: tuple[int, int], tile: int = 220) -> Image.Image:
    """One map per expert of its weighted contribution, all on one inferno scale (the
    selected experts' joint min..max, with a colour bar), titled with its gate
    coefficient; experts the gate did not select are grey tiles. Each map's longer side
    is `tile` pixels."""
    maps = {}
    for expert, contribution in view.contributions.items():
        height, width = valid_shape(contribution.shape, processed_size, view.level)
        maps[expert] = contribution[:height, :width]
    low = min((float(m.min()) for m in maps.values()), default=0.0)
    high = max((float(m.max()) for m in maps.values()), default=1.0)
    if not high > low:
        low, high = low - 0.5, low + 0.5
    width, height = _map_box(next(iter(maps.values())).shape, tile) if maps else (tile, tile)
    gap, top = 10, 6
    figure, axes = _canvas(len(view.coefficients) * (width + gap) - gap + 8, top + height + 80)
    image = None
    for expert, coefficient in enumerate(view.coefficients):
        box = (4 + expert * (width + gap), top, width, height)
        if expert in maps:
            image = _show(axes, maps[expert], box, cmap=_cmap("depth"), vmin=low, vmax=high,
                          interpolation="nearest")
            _caption(axes, box, f"expert {expert + 1} · gate {coefficient:.2f}", below=True)
        else:
            axes.add_patch(Rectangle(box[:2], width, height, color=NOT_SELECTED))
            _text(axes, box[0] + width / 2, top + height / 2, "not selected", ha="center", va="center",
                      fontsize=10, color=MUTED)
            _caption(axes, box, f"expert {expert + 1} · gate 0", below=True)
    if image is not None:
        bar_width = min(360, figure.bbox.width - 40)
        _colorbar(figure, image, ((figure.bbox.width - bar_width) / 2, top + height + 30, bar_width, 12),
                  "mean |gate × expert output| per pixel (shared scale)")
    return _render(figure)


def gate_heatmap(coefficients: np.ndarray, row_labels: list[str], cell: tuple[int, int] = (72, 24)) -> Image.Image:
    """Gate coefficients of every MECM call (rows, labelled) by expert (columns), each
    selected cell annotated with its value, above a 0..1 colour bar; cells are `cell`
    (width, height) pixels."""
    coefficients = np.asarray(coefficients, dtype=np.float64)
    rows, columns = coefficients.shape
    if len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    left, top = 112, 24
    box = (left, top, columns * cell[0], rows * cell[1])
    figure, axes = _canvas(left + box[2] + 18, top + box[3] + 60)
    image = _show(axes, coefficients, box, cmap=_cmap("gate"), vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.hlines(top + np.arange(rows + 1) * cell[1], left, left + box[2], colors="white", linewidth=1.5)
    axes.vlines(left + np.arange(columns + 1) * cell[0], top, top + box[3], colors="white", linewidth=1.5)
    centre_x = left + (np.arange(columns) + 0.5) * cell[0]
    centre_y = top + (np.arange(rows) + 0.5) * cell[1]
    _text(axes, left - 6, top - 4, "MECM call", ha="right", va="bottom", fontsize=9, fontweight="bold")
    for column in range(columns):
        _text(axes, centre_x[column], top - 4, f"expert {column + 1}", ha="center", va="bottom", fontsize=9)
    for row, label in enumerate(row_labels):
        _text(axes, left - 6, centre_y[row], label, ha="right", va="center", fontsize=9)
    dark = luminance(colormap(coefficients, "gate")) < 140
    for (row, column), value in np.ndenumerate(coefficients):
        if value > 0:
            _text(axes, centre_x[column], centre_y[row], f"{value:.2f}", ha="center", va="center",
                      fontsize=9, color="white" if dark[row, column] else INK)
    _colorbar(figure, image, (left, top + box[3] + 10, box[2], 10),
              "gate coefficient (0: expert not selected)", [0, 0.25, 0.5, 0.75, 1])
    return _render(figure)
