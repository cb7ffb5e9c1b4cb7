"""Figures for the demo: colour maps, legends, depth, DAScan orders and MECM expert maps.

Everything here is a pure function of numpy arrays (and PIL images), so the figures
are testable without the network. `scan_views` / `expert_views` turn a forward
pass's `Diagnostics` into the plain per-record arrays the figures take, and
`views_to_arrays` / `views_from_arrays` store them (e.g. in an `.npz`) so a UI can
redraw any view later without running the network again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .dascan import region_ranks
from .diagnostics import Diagnostics

# Colour ramps as (position, RGB) anchors, interpolated linearly. Each anchor's
# luminance rises (falls for "gate"), so every map is monotonic in luminance and
# reads correctly in grayscale. "order" and "depth" sample viridis and inferno.
_RAMPS: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    "order": [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)),
              (0.75, (94, 201, 98)), (1.0, (253, 231, 37))],
    "depth": [(0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)),
              (0.75, (249, 142, 9)), (1.0, (252, 255, 164))],
    "gate": [(0.0, (248, 249, 252)), (0.5, (140, 150, 230)), (1.0, (49, 46, 129))],
}
BACKGROUND = (255, 255, 255)
INK = (31, 41, 55)
MUTED = (107, 114, 128)
BOUNDARY = (255, 255, 255)
UNVISITED = (45, 45, 52)


def colormap(values: np.ndarray, name: str = "order") -> np.ndarray:
    """Maps values in [0, 1] (clipped) to uint8 RGB, shape (..., 3), through ramp `name`."""
    anchors = _RAMPS[name]
    positions = np.array([p for p, _ in anchors])
    colours = np.array([c for _, c in anchors], dtype=np.float64)
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    rgb = np.stack([np.interp(x, positions, colours[:, k]) for k in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 luma of uint8 RGB values, shape (...)."""
    return np.asarray(rgb, dtype=np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def normalize(values: np.ndarray, low_percentile: float = 0.0,
              high_percentile: float = 100.0) -> np.ndarray:
    """Rescales to [0, 1] between two percentiles (clipped); a constant map becomes 0.5."""
    values = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(values, [low_percentile, high_percentile])
    if not high > low:
        return np.full(values.shape, 0.5)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_width(text: str, size: int) -> int:
    left, _, right, _ = _font(size).getbbox(text)
    return int(math.ceil(right - left))


def fit(image: Image.Image, max_side: int, upscale: bool = True) -> Image.Image:
    """Resizes so the longer side is `max_side`: nearest-neighbour when enlarging (maps
    keep their cells visible), Lanczos when shrinking."""
    scale = max_side / max(image.size)
    if scale == 1 or (scale > 1 and not upscale):
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def colorbar(width: int, ramp: str, low_label: str, high_label: str,
             title: str = "") -> Image.Image:
    """A horizontal legend: the ramp from left (0) to right (1), end labels below it."""
    bar_height, size, pad = 14, 13, 6
    bar = colormap(np.tile(np.linspace(0, 1, width), (bar_height, 1)), ramp)
    height = bar_height + size + 3 * pad + (size + pad if title else 0)
    legend = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(legend)
    top = pad
    if title:
        draw.text((width // 2, top), title, fill=INK, font=_font(size), anchor="mt")
        top += size + pad
    legend.paste(Image.fromarray(bar), (0, top))
    draw.rectangle((0, top, width - 1, top + bar_height - 1), outline=MUTED)
    labels_top = top + bar_height + pad
    draw.text((0, labels_top), low_label, fill=MUTED, font=_font(size))
    draw.text((width, labels_top), high_label, fill=MUTED, font=_font(size), anchor="ra")
    return legend


def stack(*parts: Image.Image, gap: int = 8) -> Image.Image:
    """Stacks images top to bottom, centred, on a white background."""
    width = max(p.width for p in parts)
    height = sum(p.height for p in parts) + gap * (len(parts) - 1)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    top = 0
    for part in parts:
        canvas.paste(part, ((width - part.width) // 2, top))
        top += part.height + gap
    return canvas


def caption(text: str, width: int, size: int = 14, colour: tuple[int, int, int] = INK) -> Image.Image:
    """One centred line of text as an image strip, widened if the text needs it."""
    width = max(width, _text_width(text, size) + 8)
    strip = Image.new("RGB", (width, size + 8), BACKGROUND)
    ImageDraw.Draw(strip).text((width // 2, 4), text, fill=colour, font=_font(size), anchor="mt")
    return strip


# ----------------------------------------------------------------------------------------
# Layers and depth


def remix(transmission: np.ndarray, reflection: np.ndarray, alpha: float) -> np.ndarray:
    """Recomposes `T + alpha * R`, both float (H, W, 3) in [0, 1], as uint8."""
    mixed = np.asarray(transmission, np.float32) + float(alpha) * np.asarray(reflection, np.float32)
    return np.round(np.clip(mixed, 0.0, 1.0) * 255).astype(np.uint8)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """(H, W) relative inverse depth (larger = nearer) -> uint8 RGB, near bright, far dark.

    Stretched between the 2nd and 98th percentiles so a few outliers do not flatten it."""
    return colormap(normalize(depth, 2.0, 98.0), "depth")


def depth_figure(depth: np.ndarray, max_side: int = 384) -> Image.Image:
    """The colour-mapped depth map with a far/near legend."""
    picture = fit(Image.fromarray(depth_image(depth)), max_side)
    legend = colorbar(min(picture.width, 320), "depth", "far", "near")
    return stack(picture, legend)


# ----------------------------------------------------------------------------------------
# DAScan orders


@dataclass
class ScanView:
    """One DSMamba stream's scan, as plain arrays (batch item 0)."""

    level: int
    branch: str
    block: int
    stream: str
    kind: str
    proximity: np.ndarray
    """(h, w) float32 in [0, 1]; larger = nearer."""
    order: np.ndarray
    """(h*w,) int64 flat pixel indices in scan order."""

    @property
    def label(self) -> str:
        return f"level {self.level} · {branch_label(self.branch)} · block {self.block + 1} · {self.stream} ({self.kind})"


@dataclass
class ExpertView:
    """One MECM call: gate coefficients and per-expert weighted contributions (batch item 0)."""

    level: int
    branch: str
    stream: str
    coefficients: np.ndarray
    """(E,) float; zero for experts the gate did not select."""
    contributions: dict[int, np.ndarray]
    """expert index -> (h, w) mean |coefficient * expert output| over channels."""

    @property
    def label(self) -> str:
        return f"L{self.level} {branch_label(self.branch)} · {self.stream}"


def branch_label(branch: str) -> str:
    """"main" -> "main", "depth_T" -> "depth-T" (the depth-semantic branch feeding stream T)."""
    return branch.replace("_", "-")


def scan_views(diagnostics: Diagnostics) -> list[ScanView]:
    """The recorded scans as numpy views, in call order."""
    return [ScanView(s.level, s.branch, s.block, s.stream, s.kind,
                     s.proximity[0, 0].float().numpy(), s.order[0].numpy().astype(np.int64))
            for s in diagnostics.scans]


def expert_views(diagnostics: Diagnostics) -> list[ExpertView]:
    """The recorded MECM calls as numpy views, in call order."""
    return [ExpertView(e.level, e.branch, e.stream, e.coefficients[0].float().numpy(),
                       {k: v[0].float().numpy() for k, v in e.contributions.items()})
            for e in diagnostics.experts]


def views_to_arrays(scans: list[ScanView], experts: list[ExpertView]) -> dict[str, np.ndarray]:
    """Flattens views into named arrays (for `np.savez`); `views_from_arrays` inverts it."""
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(scans):
        arrays[f"scan{i}_site"] = np.array([s.level, s.block])
        arrays[f"scan{i}_names"] = np.array([s.branch, s.stream, s.kind])
        arrays[f"scan{i}_proximity"] = s.proximity.astype(np.float32)
        arrays[f"scan{i}_order"] = s.order.astype(np.int32)
    for i, e in enumerate(experts):
        arrays[f"expert{i}_level"] = np.array(e.level)
        arrays[f"expert{i}_names"] = np.array([e.branch, e.stream])
        arrays[f"expert{i}_coefficients"] = e.coefficients.astype(np.float32)
        for k, c in e.contributions.items():
            arrays[f"expert{i}_contribution{k}"] = c.astype(np.float32)
    return arrays


def views_from_arrays(arrays) -> tuple[list[ScanView], list[ExpertView]]:
    """Rebuilds the views from `views_to_arrays` output (a dict or an opened `.npz`)."""
    scans, experts = [], []
    while f"scan{len(scans)}_site" in arrays:
        i = len(scans)
        level, block = (int(v) for v in arrays[f"scan{i}_site"])
        branch, stream, kind = (str(v) for v in arrays[f"scan{i}_names"])
        scans.append(ScanView(level, block=block, branch=branch, stream=stream, kind=kind,
                              proximity=arrays[f"scan{i}_proximity"],
                              order=arrays[f"scan{i}_order"].astype(np.int64)))
    while f"expert{len(experts)}_level" in arrays:
        i = len(experts)
        prefix = f"expert{i}_contribution"
        contributions = {int(name[len(prefix):]): arrays[name]
                         for name in arrays if name.startswith(prefix)}
        branch, stream = (str(v) for v in arrays[f"expert{i}_names"])
        experts.append(ExpertView(int(arrays[f"expert{i}_level"]), branch, stream,
                                  arrays[f"expert{i}_coefficients"], dict(sorted(contributions.items()))))
    return scans, experts


def valid_shape(map_shape: tuple[int, int], processed_size: tuple[int, int],
                level: int) -> tuple[int, int]:
    """The part of a level-`level` map that covers the image (the rest is padding)."""
    return (min(map_shape[0], math.ceil(processed_size[0] / 2 ** (level - 1))),
            min(map_shape[1], math.ceil(processed_size[1] / 2 ** (level - 1))))


def scan_rank(order: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) map of each pixel's position in the scan sequence (0 = scanned first)."""
    rank = np.empty(shape[0] * shape[1], dtype=np.int64)
    rank[np.asarray(order)] = np.arange(rank.size)
    return rank.reshape(shape)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """True on pixels whose right or lower 4-neighbour has another label."""
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edges


def _upscale(array: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def _scan_layers(view: ScanView, processed_size: tuple[int, int],
                 max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank map, its colours and the region-boundary mask of the image part of a scan,
    each cell enlarged to about `max_side` overall."""
    shape = view.proximity.shape
    rank = scan_rank(view.order, shape)
    height, width = valid_shape(shape, processed_size, view.level)
    factor = max(1, max_side // max(height, width))
    rank = _upscale(rank[:height, :width], factor)
    colours = colormap(rank / max(view.order.size - 1, 1), "order")
    edges = np.zeros(rank.shape, dtype=bool)
    if view.kind == "regional":
        edges = boundaries(_upscale(region_ranks(view.proximity)[:height, :width], factor))
    return rank, colours, edges


def _scan_frame(rank: np.ndarray, colours: np.ndarray, edges: np.ndarray, visited: int) -> np.ndarray:
    frame = colours.copy()
    frame[rank >= visited] = UNVISITED
    frame[edges] = BOUNDARY
    return frame


def scan_picture(view: ScanView, processed_size: tuple[int, int], max_side: int = 384,
                 progress: float = 1.0) -> np.ndarray:
    """(H, W, 3) uint8: each image pixel coloured by its scan position, cells enlarged to
    about `max_side`. Pixels past `progress` (fraction of the sequence) are not yet
    scanned and drawn dark. Regional scans get white region boundaries."""
    rank, colours, edges = _scan_layers(view, processed_size, max_side)
    return _scan_frame(rank, colours, edges, round(progress * view.order.size))


def scan_figure(view: ScanView, processed_size: tuple[int, int], max_side: int = 384) -> Image.Image:
    """The scan-order map of one stream above a first/last legend."""
    picture = fit(Image.fromarray(scan_picture(view, processed_size, max_side)), max_side)
    return stack(picture, colorbar(min(picture.width, 320), "order", "scanned first", "last"))


def scan_animation(view: ScanView, processed_size: tuple[int, int], frames: int = 24,
                   max_side: int = 256) -> list[Image.Image]:
    """Frames of the scan progressing from 1/frames of the sequence to all of it."""
    layers = _scan_layers(view, processed_size, max_side)
    return [fit(Image.fromarray(_scan_frame(*layers, round((i + 1) / frames * view.order.size))), max_side)
            for i in range(frames)]


def save_gif(frames: list[Image.Image], path: str | Path, frame_ms: int = 90,
             hold_ms: int = 1200) -> None:
    """Writes an endlessly looping GIF that pauses on its last frame."""
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                   loop=0, optimize=False, disposal=1)


def scan_overview(views: list[ScanView], processed_size: tuple[int, int], tile: int = 150) -> Image.Image:
    """A grid of the main branch's first-block scans: streams T and R (rows) by level
    (columns, labelled underneath), above a first/last legend."""
    chosen = {(v.stream, v.level): v for v in views if v.branch == "main" and v.block == 0}
    levels = sorted({level for _, level in chosen})
    streams = [s for s in ("T", "R") if any((s, level) in chosen for level in levels)]
    label_width, gap, foot = 110, 8, 24
    grid = Image.new("RGB", (label_width + len(levels) * (tile + gap), len(streams) * (tile + gap) + foot),
                     BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for row, stream in enumerate(streams):
        top = row * (tile + gap)
        name = "T  regional" if stream == "T" else "R  global"
        draw.text((0, top + tile // 2), name, fill=INK, font=_font(14), anchor="lm")
        for column, level in enumerate(levels):
            if (stream, level) in chosen:
                cell = fit(Image.fromarray(scan_picture(chosen[stream, level], processed_size, tile)), tile)
                cell.thumbnail((tile, tile))
                grid.paste(cell, (label_width + column * (tile + gap), top))
    for column, level in enumerate(levels):
        draw.text((label_width + column * (tile + gap) + tile // 2, grid.height - foot + 4),
                  f"level {level}", fill=INK, font=_font(14), anchor="mt")
    return stack(grid, colorbar(min(grid.width, 320), "order", "scanned first", "last"))


# ----------------------------------------------------------------------------------------
# MECM memory experts


def expert_figure(view: ExpertView, processed_size: tuple[int, int], tile: int = 220) -> Image.Image:
    """One map per expert of its weighted contribution, all on one colour scale (the
    selected experts' joint min..max), captioned with its gate coefficient; experts the
    gate did not select are drawn as empty tiles."""
    maps = {}
    for expert, contribution in view.contributions.items():
        height, width = valid_shape(contribution.shape, processed_size, view.level)
        maps[expert] = contribution[:height, :width]
    low = min((float(m.min()) for m in maps.values()), default=0.0)
    high = max((float(m.max()) for m in maps.values()), default=0.0)
    tiles = []
    for expert, coefficient in enumerate(view.coefficients):
        if expert in maps:
            scaled = (maps[expert] - low) / (high - low) if high > low else np.full(maps[expert].shape, 0.5)
            cell = fit(Image.fromarray(colormap(scaled, "depth")), tile)
            cell.thumbnail((tile, tile))
            text = f"expert {expert + 1} · gate {coefficient:.2f}"
        else:
            cell = Image.new("RGB", (tile, tile), (229, 231, 235))
            ImageDraw.Draw(cell).text((tile // 2, tile // 2), "not selected", fill=MUTED,
                                      font=_font(14), anchor="mm")
            text = f"expert {expert + 1} · gate 0"
        tiles.append(stack(cell, caption(text, tile), gap=2))
    gap = 10
    row = Image.new("RGB", (len(tiles) * (tile + gap) - gap, max(t.height for t in tiles)), BACKGROUND)
    for i, part in enumerate(tiles):
        row.paste(part, (i * (tile + gap), 0))
    return stack(row, colorbar(min(row.width, 360), "depth", f"{low:.3g}", f"{high:.3g}",
                          "mean |gate x expert output| per pixel (shared scale)"))


def gate_heatmap(coefficients: np.ndarray, row_labels: list[str], cell: tuple[int, int] = (72, 24)) -> Image.Image:
    """Gate coefficients of every MECM call (rows, labelled) by expert (columns), with values."""
    coefficients = np.asarray(coefficients, dtype=np.float64)
    rows, columns = coefficients.shape
    if len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    size, pad = 13, 8
    label_width = max((_text_width(text, size) for text in row_labels), default=0) + 2 * pad
    head = size + 2 * pad
    image = Image.new("RGB", (label_width + columns * cell[0] + 1, head + rows * cell[1] + 1), BACKGROUND)
    draw = ImageDraw.Draw(image)
    colours = colormap(coefficients, "gate")
    for column in range(columns):
        draw.text((label_width + column * cell[0] + cell[0] // 2, pad), f"expert {column + 1}",
                  fill=INK, font=_font(size), anchor="mt")
    for row in range(rows):
        top = head + row * cell[1]
        draw.text((label_width - pad, top + cell[1] // 2), row_labels[row], fill=INK,
                  font=_font(size), anchor="rm")
        for column in range(columns):
            left = label_width + column * cell[0]
            colour = tuple(int(v) for v in colours[row, column])
            draw.rectangle((left, top, left + cell[0], top + cell[1]), fill=colour, outline=BACKGROUND)
            value = coefficients[row, column]
            if value > 0:
                ink = BACKGROUND if luminance(colours[row, column]) < 140 else INK
                draw.text((left + cell[0] // 2, top + cell[1] // 2), f"{value:.2f}", fill=ink,
                          font=_font(size), anchor="mm")
    return stack(image, colorbar(min(image.width, 300), "gate", "0 (not selected)", "1",
                                 "gate coefficient"))
