"""dmdnet.demo.figures: matplotlib colour maps and figures at known values, region outlines, whole titles."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from dmdnet.demo import figures, views
from dmdnet.network import dascan
from dmdnet.network.dascan import global_order, regional_order


def _blobs(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    """A proximity map with a few near blobs (several DAScan regions) plus noise."""
    y, x = np.mgrid[:height, :width]
    rng = np.random.default_rng(seed)
    near = sum(np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 18.0)
               for cy, cx in ((5, 6), (16, 24), (18, 7)))
    return (near + 0.05 * rng.random((height, width))).astype(np.float32)


def _view(proximity: np.ndarray, regional: bool, level: int = 1) -> views.ScanView:
    order_fn = regional_order if regional else global_order
    order = order_fn(torch.from_numpy(proximity)[None, None])[0].numpy()
    return views.ScanView(level, "main", 0, "T" if regional else "R",
                          "regional" if regional else "global", proximity, order)


def _is_monotonic(values: np.ndarray, tolerance: float = 0.0) -> bool:
    steps = np.diff(values)
    return bool((steps >= -tolerance).all() or (steps <= tolerance).all())


def _top_colour(name: str, value: float) -> np.ndarray:
    """matplotlib's own colour for `value` in the colormap behind role `name`, as uint8 RGB."""
    return np.array(matplotlib.colormaps[figures.COLORMAPS[name]](value, bytes=True)[:3])


def _map_area(figure: Image.Image, width: int, height: int) -> np.ndarray:
    """The map of a one-map figure (depth, scan order), by its documented place."""
    return np.asarray(figure)[figures.MAP_TOP:figures.MAP_TOP + height, figures.MAP_LEFT:figures.MAP_LEFT + width]


@pytest.mark.parametrize("role, name", [("order", "viridis"), ("depth", "inferno"), ("gate", "Purples")])
def test_colormap_is_matplotlibs_with_monotonic_luminance(role, name):
    values = np.linspace(0, 1, 256)
    colours = figures.colormap(values, role)
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours, matplotlib.colormaps[name](values, bytes=True)[:, :3])
    assert _is_monotonic(figures.luminance(colours), tolerance=0.5)  # up to 8-bit rounding
    assert figures.luminance(colours[0]) != figures.luminance(colours[-1])
    np.testing.assert_array_equal(figures.colormap(np.array([-1.0, 2.0, np.nan]), role),
                                  figures.colormap(np.array([0.0, 1.0, 0.0]), role))
    assert figures.colormap(np.zeros((4, 5)), role).shape == (4, 5, 3)


def test_percentile_range_and_constant_map():
    values = np.arange(101, dtype=float)
    assert figures.percentile_range(values, 0, 100) == (0, 100)
    assert figures.percentile_range(values) == (2, 98)
    assert figures.percentile_range(np.full((3, 3), 7.0)) == (6, 8)


def test_depth_figure_near_end_is_the_colormaps_top_colour():
    depth = np.tile(np.linspace(0.0, 5.0, 40), (30, 1))  # larger = nearer: the right edge is nearest
    figure = figures.depth_figure(depth, max_side=200)
    assert figure.size == (figures.MAP_LEFT + 200 + 62, figures.MAP_TOP + 150 + figures.MAP_BOTTOM)
    picture = _map_area(figure, 200, 150)
    np.testing.assert_array_equal(picture[75, -1], _top_colour("depth", 1.0))
    np.testing.assert_array_equal(picture[75, 0], _top_colour("depth", 0.0))
    luma = figures.luminance(picture[75])
    assert _is_monotonic(luma) and luma[-1] > luma[0]


def test_depth_figure_colour_bar_runs_far_to_near_beside_the_map():
    figure = np.asarray(figures.depth_figure(np.random.default_rng(1).random((30, 40)), max_side=200))
    bar = figure[figures.MAP_TOP:figures.MAP_TOP + 150, figures.MAP_LEFT + 200 + 8:figures.MAP_LEFT + 200 + 20, :]
    column = bar[1:-1, 6].astype(int)  # top (near) to bottom (far), inside the bar's outline
    expected = figures.colormap(1 - (np.arange(1, 149) + 0.5) / 150, "depth")
    np.testing.assert_allclose(column, expected, atol=3)
    labels = figure[figures.MAP_TOP:figures.MAP_TOP + 150, figures.MAP_LEFT + 200 + 22:]
    assert (labels[:12] < 128).any() and (labels[-12:] < 128).any(), "near/far labels are missing"
    assert (figure[:figures.MAP_TOP - 2, figures.MAP_LEFT:figures.MAP_LEFT + 200] < 128).any(), "title is missing"


def test_scan_figure_colours_equal_order_rank():
    proximity = _blobs()  # 24x32 cells, drawn 8 px each
    view = _view(proximity, regional=False)
    figure = figures.scan_figure(view, proximity.shape, max_side=256)
    assert figure.size == (figures.MAP_LEFT + 256 + 78, figures.MAP_TOP + 192 + figures.MAP_BOTTOM)
    centres = _map_area(figure, 256, 192)[4::8, 4::8]
    rank = views.scan_rank(view.order, proximity.shape)
    np.testing.assert_array_equal(centres, figures.colormap(rank / (rank.size - 1), "order"))
    # the nearest pixel of a global scan is first, the farthest last
    assert rank.ravel()[proximity.argmax()] == 0 and rank.ravel()[proximity.argmin()] == rank.size - 1
    first, last = np.unravel_index(proximity.argmax(), rank.shape), np.unravel_index(proximity.argmin(), rank.shape)
    np.testing.assert_array_equal(centres[first], _top_colour("order", 0.0))
    np.testing.assert_array_equal(centres[last], _top_colour("order", 1.0))


def test_region_ranks_match_regional_order():
    for seed in range(4):
        proximity = _blobs(seed=seed)
        view = _view(proximity, regional=True)
        labels = dascan.region_ranks(proximity)
        visited = labels.ravel()[view.order]
        assert (np.diff(visited) >= 0).all(), "regions must be scanned one after another"
        assert 2 <= labels.max() + 1 <= 6
        for region in range(labels.max() + 1):
            inside = proximity.ravel()[view.order][visited == region]
            assert (np.diff(inside) <= 0).all(), "near-to-far inside a region"


def test_boundary_segments_outline_regions():
    labels = np.zeros((4, 6), dtype=int)
    labels[:, 3:] = 1
    labels[3, :] = 2
    segments = {tuple(map(tuple, s)) for s in figures.boundary_segments(labels)}
    assert segments == {((2.5, -0.5), (2.5, 2.5)), ((-0.5, 2.5), (5.5, 2.5))}
    assert figures.boundary_segments(np.zeros((3, 3), dtype=int)).shape == (0, 2, 2)


def test_boundary_segments_cover_exactly_the_edges_between_labels():
    labels = np.random.default_rng(5).integers(0, 3, (9, 11))
    unit_edges = set()
    for (x0, y0), (x1, y1) in figures.boundary_segments(labels):
        if x0 == x1:  # vertical, between columns x - 0.5 and x + 0.5
            unit_edges |= {("v", int(y), int(x0 - 0.5)) for y in np.arange(y0 + 0.5, y1)}
        else:
            unit_edges |= {("h", int(y0 - 0.5), int(x)) for x in np.arange(x0 + 0.5, x1)}
    expected = {("v", r, c) for r, c in zip(*np.nonzero(labels[:, :-1] != labels[:, 1:]))}
    expected |= {("h", r, c) for r, c in zip(*np.nonzero(labels[:-1] != labels[1:]))}
    assert unit_edges == expected


def test_regional_scan_figure_outlines_regions_in_white():
    proximity = _blobs()
    view = _view(proximity, regional=True)
    picture = _map_area(figures.scan_figure(view, proximity.shape, max_side=256), 256, 192).astype(int)
    rows, columns = np.nonzero(dascan.region_ranks(proximity)[:, :-1] != dascan.region_ranks(proximity)[:, 1:])
    assert len(rows)
    beside = np.maximum(picture[rows * 8 + 4, (columns + 1) * 8 - 1].min(axis=-1),
                        picture[rows * 8 + 4, (columns + 1) * 8].min(axis=-1))
    assert (beside > 190).all(), "every vertical region edge is drawn in white"
    global_picture = _map_area(figures.scan_figure(_view(proximity, regional=False), proximity.shape,
                                               max_side=256), 256, 192)
    assert not (global_picture.min(axis=-1) > 190).any(), "a global scan has no outlines"


def test_scan_figure_crops_padding_and_animation_shows_progress():
    proximity = _blobs(16, 16)
    view = _view(proximity, regional=False, level=2)
    figure = figures.scan_figure(view, (27, 20), max_side=140)  # level 2 of 27x20 covers 14x10 cells
    title = figures.scan_title(view, (27, 20))
    assert title == "L2 main · block 1 · R global (10x14)"
    # the title is wider than the map and its colour bar: the figure widens to hold it
    assert figure.size == (math.ceil(figures.text_width(title)) + 2 * figures.TEXT_MARGIN,
                           figures.MAP_TOP + 140 + figures.MAP_BOTTOM)
    frames = figures.scan_animation(view, (32, 32), frames=4, max_side=64)
    unscanned = np.array(matplotlib.colors.to_rgb(figures.UNSCANNED)) * 255
    grey = [(np.abs(np.asarray(f).astype(int) - unscanned).max(axis=-1) <= 1).sum() for f in frames]
    assert grey[-1] == 0
    # 16x16 cells of 4x4 pixels: a quarter of the sequence scanned per frame
    assert grey[:3] == [192 * 16, 128 * 16, 64 * 16]


def test_scan_animation_frames_and_gif(tmp_path):
    proximity = _blobs()
    view = _view(proximity, regional=True)
    frames = figures.scan_animation(view, proximity.shape, frames=6, max_side=64)
    width = math.ceil(figures.text_width(figures.progress_title(view, 1.0))) + 2 * figures.TEXT_MARGIN
    assert len(frames) == 6 and {f.size for f in frames} == {(width, 48 + 26)}
    path = tmp_path / "scan.gif"
    figures.save_gif(frames, path)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 6 and gif.info["loop"] == 0


def test_expert_figure_has_one_tile_per_expert(recorded_diagnostics):
    view = views.expert_views(recorded_diagnostics)[1]  # level 1, 8x10 maps; experts 1 and 3 selected
    figure = np.asarray(figures.expert_figure(view, (8, 10), tile=60))
    assert figure.shape[:2] == (6 + 48 + 80, 4 * 60 + 3 * 10 + 8)
    tiles = [figure[6:6 + 48, 4 + i * 70:4 + i * 70 + 60] for i in range(4)]
    assert all((figure[6 + 48 + 4:6 + 48 + 20, 4 + i * 70:4 + i * 70 + 60] < 128).any() for i in range(4)), \
        "every tile is captioned below"
    grey = np.array(matplotlib.colors.to_rgb(figures.NOT_SELECTED)) * 255
    unselected = [(np.abs(t.astype(int) - grey).max(axis=-1) <= 1).mean() for t in tiles]
    assert unselected[1] > 0.5 and unselected[3] > 0.5
    assert unselected[0] < 0.1 and unselected[2] < 0.1
    # one scale for all: the largest contribution of either map is inferno's top colour, the smallest its bottom
    maps = {0: view.contributions[0], 2: view.contributions[2]}

    def cell_colour(expert: int, index: int) -> np.ndarray:
        row, column = np.unravel_index(index, maps[expert].shape)
        return tiles[expert][row * 6 + 3, column * 6 + 3]  # 6 px per cell

    brightest = max(maps, key=lambda e: maps[e].max())
    darkest = min(maps, key=lambda e: maps[e].min())
    np.testing.assert_array_equal(cell_colour(brightest, maps[brightest].argmax()), _top_colour("depth", 1.0))
    np.testing.assert_array_equal(cell_colour(darkest, maps[darkest].argmin()), _top_colour("depth", 0.0))


def test_gate_heatmap_rows_columns_and_annotations():
    coefficients = np.array([[0.7, 0.0, 0.3, 0.0], [0.0, 0.5, 0.0, 0.5], [0.1, 0.9, 0.0, 0.0]])
    cell = (40, 20)
    image = figures.gate_heatmap(coefficients, ["first", "second", "third"], cell=cell)
    pixels = np.asarray(image)
    assert image.width > 4 * cell[0] + 60 and image.height > 3 * cell[1] + 40
    # locate the grid: the top-left pixel of the first cell has the colour of coefficient [0, 0]
    grid_colour = figures.colormap(coefficients, "gate")
    np.testing.assert_array_equal(grid_colour, matplotlib.colormaps["Purples"](coefficients, bytes=True)[..., :3])
    rows, columns = np.nonzero((pixels == grid_colour[0, 0]).all(axis=-1))
    top, left = rows.min(), columns.min()
    for r in range(3):
        for c in range(4):
            corner = pixels[top + r * cell[1] + 2, left + c * cell[0] + 2]
            np.testing.assert_array_equal(corner, grid_colour[r, c])
    assert left > 30, "row labels sit left of the grid"
    assert (pixels[top + 2 * cell[1] + 2: top + 3 * cell[1] - 2, :left - 4] != 255).any()
    assert (pixels[:top - 2, left:left + cell[0]] < 128).any(), "column labels sit above the grid"

    def cell_pixels(r: int, c: int) -> np.ndarray:
        return pixels[top + r * cell[1] + 3: top + (r + 1) * cell[1] - 4,
                      left + c * cell[0] + 3: left + (c + 1) * cell[0] - 4].reshape(-1, 3).astype(int)

    dark_cell, light_cell, empty_cell = cell_pixels(2, 1), cell_pixels(2, 0), cell_pixels(0, 1)
    assert (dark_cell.min(axis=-1) > 240).any(), "values on dark cells are written in white"
    assert (light_cell.max(axis=-1) < 100).any(), "values on light cells are written in dark ink"
    assert (empty_cell == grid_colour[0, 1]).all(), "unselected experts get no value"
    with pytest.raises(ValueError, match="row labels"):
        figures.gate_heatmap(coefficients, ["only one"])


def test_scan_overview_grid_and_remix(recorded_diagnostics):
    scans = views.scan_views(recorded_diagnostics)  # levels 1 and 2, streams T and R, 8x10 and 4x5 maps
    overview = np.asarray(figures.scan_overview(scans, (8, 10), tile=50))
    assert overview.shape[:2] == (6 + 2 * 40 + 8 + 76, 24 + 2 * (50 + 8))
    tiles = {(row, column): overview[6 + row * 48: 6 + row * 48 + 40, 24 + column * 58: 24 + column * 58 + 50]
             for row in range(2) for column in range(2)}
    by_key = {(v.stream, v.level): v for v in scans}
    for (row, column), tile in tiles.items():
        view = by_key["TR"[row], column + 1]
        shape = view.proximity.shape
        centres = tile[(np.arange(shape[0]) * 40 // shape[0] + 40 // shape[0] // 2)[:, None],
                       np.arange(shape[1]) * 50 // shape[1] + 50 // shape[1] // 2]
        rank = views.scan_rank(view.order, shape) / (view.order.size - 1)
        np.testing.assert_array_equal(centres, figures.colormap(rank, "order"))
    assert (overview[6 + 88 + 4:6 + 88 + 20, 24:74] < 128).any(), "level captions under the grid are missing"
    assert (overview[6:46, :20] < 128).any(), "stream labels left of the grid are missing"
    t = np.full((2, 2, 3), 0.25, np.float32)
    r = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_array_equal(figures.remix(t, r, 0.0), 64)
    np.testing.assert_array_equal(figures.remix(t, r, 1.0), 191)
    np.testing.assert_array_equal(figures.remix(t, 4 * r, 1.0), 255)


def test_figures_leave_no_pyplot_figures_open(recorded_diagnostics):
    import matplotlib.pyplot as plt

    scans, experts = views.scan_views(recorded_diagnostics), views.expert_views(recorded_diagnostics)
    figures.depth_figure(np.random.default_rng(0).random((8, 10)))
    figures.scan_overview(scans, (8, 10))
    figures.scan_animation(scans[0], (8, 10), frames=2)
    figures.expert_figure(experts[0], (8, 10))
    figures.gate_heatmap(np.stack([e.coefficients for e in experts]), [e.label for e in experts])
    assert plt.get_fignums() == []


def test_titles_are_drawn_whole_on_a_narrow_map():
    """A portrait photo's maps are narrow: every title still fits inside its figure, with
    background on both sides of it."""
    proximity = _blobs(64, 43)
    view = _view(proximity, regional=True, level=3)
    size = (256, 171)
    drawn = {"estimated depth": figures.depth_figure(proximity),
             figures.scan_title(view, size): figures.scan_figure(view, size),
             figures.progress_title(view, 1.0): figures.scan_animation(view, size)[-1]}
    for title, picture in drawn.items():
        band = np.asarray(picture)[:figures.MAP_TOP - 4 if "scanned" not in title else 18]
        ink_columns = np.nonzero((band.min(axis=(0, 2)) < 128))[0]
        assert len(ink_columns), title
        assert ink_columns[0] >= 2 and ink_columns[-1] <= picture.width - 3, (title, ink_columns[[0, -1]], picture.width)
        assert figures.text_width(title) + 2 * figures.TEXT_MARGIN <= picture.width
