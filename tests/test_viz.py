"""dmdnet.viz: colour maps, legends, scan-order maps, region boundaries, expert figures."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dmdnet import dascan, viz
from dmdnet.dascan import global_order, regional_order
from dmdnet.diagnostics import CallSite, Diagnostics


def _blobs(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    """A proximity map with a few near blobs (several DAScan regions) plus noise."""
    y, x = np.mgrid[:height, :width]
    rng = np.random.default_rng(seed)
    near = sum(np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 18.0)
               for cy, cx in ((5, 6), (16, 24), (18, 7)))
    return (near + 0.05 * rng.random((height, width))).astype(np.float32)


def _view(proximity: np.ndarray, regional: bool, level: int = 1) -> viz.ScanView:
    order_fn = regional_order if regional else global_order
    order = order_fn(torch.from_numpy(proximity)[None, None])[0].numpy()
    return viz.ScanView(level, "main", 0, "T" if regional else "R",
                        "regional" if regional else "global", proximity, order)


def _is_monotonic(values: np.ndarray) -> bool:
    steps = np.diff(values)
    return bool((steps >= 0).all() or (steps <= 0).all())


@pytest.mark.parametrize("ramp", ["order", "depth", "gate"])
def test_colormap_shape_range_and_monotonic_luminance(ramp):
    values = np.linspace(0, 1, 256)
    colours = viz.colormap(values, ramp)
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert _is_monotonic(viz.luminance(colours))
    assert viz.luminance(colours[0]) != viz.luminance(colours[-1])
    np.testing.assert_array_equal(viz.colormap(np.array([-1.0, 2.0, np.nan]), ramp),
                                  viz.colormap(np.array([0.0, 1.0, 0.0]), ramp))
    assert viz.colormap(np.zeros((4, 5)), ramp).shape == (4, 5, 3)


def test_normalize_percentiles_and_constant_map():
    values = np.arange(101, dtype=float)
    np.testing.assert_allclose(viz.normalize(values)[[0, 50, 100]], [0, 0.5, 1])
    clipped = viz.normalize(values, 10, 90)
    assert clipped[5] == 0 and clipped[95] == 1
    np.testing.assert_array_equal(viz.normalize(np.full((3, 3), 7.0)), 0.5)


def test_depth_image_near_is_brighter():
    depth = np.tile(np.linspace(0.0, 5.0, 64), (4, 1))  # larger = nearer
    luma = viz.luminance(viz.depth_image(depth))[0]
    assert _is_monotonic(luma) and luma[-1] > luma[0]


def test_colorbar_has_ramp_and_labels():
    legend = np.asarray(viz.colorbar(200, "depth", "far", "near", "title"))
    assert legend.shape[1] == 200
    ramp_rows = [r for r in range(legend.shape[0])
                 if np.array_equal(legend[r, 1:-1], viz.colormap(np.linspace(0, 1, 200), "depth")[1:-1])]
    assert ramp_rows, "the colour ramp row is missing"
    below = legend[ramp_rows[-1] + 2:]
    left, right = below[:, :60], below[:, -60:]
    assert (left != 255).any() and (right != 255).any(), "end labels are missing"


def test_depth_figure_puts_legend_under_the_map():
    figure = viz.depth_figure(np.random.default_rng(1).random((30, 40)), max_side=200)
    assert figure.width == 200 and figure.height > 150 + 20
    bottom = np.asarray(figure)[150:]
    assert (viz.luminance(bottom) < 40).any(), "the dark (far) end of the legend is missing"


def test_scan_rank_is_inverse_of_order():
    order = np.random.default_rng(2).permutation(12)
    rank = viz.scan_rank(order, (3, 4))
    assert rank.shape == (3, 4)
    np.testing.assert_array_equal(rank.ravel()[order], np.arange(12))


def test_scan_picture_colours_equal_order_rank():
    proximity = _blobs()
    view = _view(proximity, regional=False)
    picture = viz.scan_picture(view, proximity.shape, max_side=1)
    rank = viz.scan_rank(view.order, proximity.shape)
    np.testing.assert_array_equal(picture, viz.colormap(rank / (rank.size - 1), "order"))
    # the nearest pixel of a global scan is first, the farthest last
    assert rank.ravel()[proximity.argmax()] == 0 and rank.ravel()[proximity.argmin()] == rank.size - 1


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


def test_boundaries_where_labels_change():
    labels = np.zeros((4, 6), dtype=int)
    labels[:, 3:] = 1
    labels[3, :] = 2
    edges = viz.boundaries(labels)
    expected = np.zeros((4, 6), dtype=bool)
    expected[:3, 2] = True
    expected[2, :] = True
    np.testing.assert_array_equal(edges, expected)


def test_regional_scan_picture_draws_boundaries():
    proximity = _blobs()
    view = _view(proximity, regional=True)
    picture = viz.scan_picture(view, proximity.shape, max_side=1)
    edges = viz.boundaries(dascan.region_ranks(proximity))
    assert edges.any()
    assert (picture[edges] == viz.BOUNDARY).all()
    global_picture = viz.scan_picture(_view(proximity, regional=False), proximity.shape, max_side=1)
    assert not (global_picture == viz.BOUNDARY).all(axis=-1).any()


def test_scan_picture_enlarges_crops_padding_and_shows_progress():
    proximity = _blobs(16, 16)
    view = _view(proximity, regional=False, level=2)
    picture = viz.scan_picture(view, (27, 20), max_side=64)  # level 2 of 27x20 covers 14x10 cells
    assert picture.shape == (14 * 4, 10 * 4, 3)
    half = viz.scan_picture(view, (32, 32), max_side=16, progress=0.25)
    unvisited = (half == viz.UNVISITED).all(axis=-1).mean()
    assert unvisited == pytest.approx(0.75, abs=0.01)


def test_valid_shape():
    assert viz.valid_shape((64, 64), (100, 37), 1) == (64, 37)
    assert viz.valid_shape((8, 8), (100, 37), 4) == (8, 5)
    assert viz.valid_shape((2, 2), (1, 1), 5) == (1, 1)


def test_scan_figure_and_animation(tmp_path):
    proximity = _blobs()
    view = _view(proximity, regional=True)
    figure = viz.scan_figure(view, proximity.shape, max_side=128)
    assert figure.width >= 128 and figure.height > 96
    frames = viz.scan_animation(view, proximity.shape, frames=6, max_side=64)
    assert len(frames) == 6 and len({f.size for f in frames}) == 1
    path = tmp_path / "scan.gif"
    viz.save_gif(frames, path)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 6 and gif.info["loop"] == 0


def _diagnostics() -> Diagnostics:
    record = Diagnostics()
    for level, (h, w) in ((2, (4, 5)), (1, (8, 10))):
        proximity = torch.rand(1, 1, h, w)
        record.add_scan(CallSite(level), 0, "T", "regional", proximity, regional_order(proximity))
        record.add_scan(CallSite(level), 0, "R", "global", proximity, global_order(proximity))
        record.add_experts(CallSite(level), "T", torch.tensor([[0.6, 0.0, 0.4, 0.0]]),
                           {0: torch.rand(1, h, w), 2: torch.rand(1, h, w)})
    return record


def test_views_from_diagnostics_round_trip_through_npz(tmp_path):
    scans, experts = viz.scan_views(_diagnostics()), viz.expert_views(_diagnostics())
    assert [(s.level, s.stream, s.proximity.shape) for s in scans] == [
        (2, "T", (4, 5)), (2, "R", (4, 5)), (1, "T", (8, 10)), (1, "R", (8, 10))]
    np.savez(tmp_path / "d.npz", **viz.views_to_arrays(scans, experts))
    with np.load(tmp_path / "d.npz") as arrays:
        scans2, experts2 = viz.views_from_arrays(dict(arrays))
    for a, b in zip(scans, scans2, strict=True):
        assert (a.level, a.branch, a.block, a.stream, a.kind) == (b.level, b.branch, b.block, b.stream, b.kind)
        np.testing.assert_array_equal(a.order, b.order)
        np.testing.assert_array_equal(a.proximity, b.proximity)
    for a, b in zip(experts, experts2, strict=True):
        assert a.label == b.label == f"L{a.level} main · T"
        np.testing.assert_array_equal(a.coefficients, b.coefficients)
        assert a.contributions.keys() == b.contributions.keys() == {0, 2}


def test_expert_figure_has_one_tile_per_expert():
    view = viz.expert_views(_diagnostics())[1]
    figure = np.asarray(viz.expert_figure(view, (8, 10), tile=60))
    assert figure.shape[1] == 4 * 60 + 3 * 10
    tile_row = figure[5:55]  # tiles on top, captions under them
    unselected_grey = (tile_row == (229, 231, 235)).all(axis=-1)
    assert unselected_grey[:, 70:130].mean() > 0.5 and unselected_grey[:, 210:270].mean() > 0.5
    assert unselected_grey[:, :60].mean() < 0.1 and unselected_grey[:, 140:200].mean() < 0.1


def test_gate_heatmap_rows_and_columns():
    coefficients = np.array([[0.7, 0.0, 0.3, 0.0], [0.0, 0.5, 0.0, 0.5], [0.2, 0.8, 0.0, 0.0]])
    cell = (40, 20)
    image = viz.gate_heatmap(coefficients, ["first", "second", "third"], cell=cell)
    pixels = np.asarray(image)
    # locate the grid: the top-left pixel of the first cell has the colour of coefficient [0, 0]
    grid_colour = viz.colormap(coefficients, "gate")
    rows, columns = np.nonzero((pixels == grid_colour[0, 0]).all(axis=-1))
    top, left = rows.min(), columns.min()
    for r in range(3):
        for c in range(4):
            corner = pixels[top + r * cell[1] + 2, left + c * cell[0] + 2]
            np.testing.assert_array_equal(corner, grid_colour[r, c])
    assert left > 30, "row labels sit left of the grid"
    assert (pixels[top + 2 * cell[1] + 2: top + 3 * cell[1] - 2, :left - 4] != 255).any()
    with pytest.raises(ValueError, match="row labels"):
        viz.gate_heatmap(coefficients, ["only one"])


def test_scan_overview_grid_and_remix():
    scans = viz.scan_views(_diagnostics())
    overview = viz.scan_overview(scans, (8, 10), tile=50)
    assert overview.width >= 110 + 2 * 58 and overview.height > 2 * 58
    t = np.full((2, 2, 3), 0.25, np.float32)
    r = np.full((2, 2, 3), 0.5, np.float32)
    np.testing.assert_array_equal(viz.remix(t, r, 0.0), 64)
    np.testing.assert_array_equal(viz.remix(t, r, 1.0), 191)
    np.testing.assert_array_equal(viz.remix(t, 4 * r, 1.0), 255)
