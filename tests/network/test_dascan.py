"""DAScan orders: golden parity with the reference, a slow literal re-reading of the rules, edge cases."""
from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from dmdnet.network.dascan import global_order, regional_order

ORDER_FUNCTIONS = {"regional": regional_order, "global": global_order}
PARITY_FILES = ["parity_64x64_s3.pt", "parity_72x88_s7.pt"]


def _slow_labels(mask: np.ndarray) -> np.ndarray:
    """4-connected components numbered 1..n in raster order of their first pixel."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int64)
    count = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or labels[y, x]:
                continue
            count += 1
            labels[y, x] = count
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = count
                        queue.append((ny, nx))
    return labels


def _slow_regional(p: np.ndarray) -> np.ndarray:
    """The regional rule read literally, with Python loops (small maps only)."""
    h, w = p.shape
    labels = _slow_labels(p >= np.percentile(p, 50))
    count = int(labels.max())

    def area(label: int) -> int:
        return int((labels == label).sum())

    areas = np.array([area(label) for label in range(1, count + 1)], dtype=np.int64)
    valid = np.array([label for label in range(1, count + 1) if areas[label - 1] >= 0.05 * h * w], dtype=np.int64)
    kept = valid[np.argsort(areas[valid - 1])[::-1][:5]] if len(valid) > 5 else valid
    ordered = sorted([*kept.tolist(), 0], key=area, reverse=True)
    rank = {label: index for index, label in enumerate(ordered)}
    flat_p, flat_labels = p.ravel(), labels.ravel()
    keys = [(rank.get(int(flat_labels[i]), rank[0]), -flat_p[i], i) for i in range(h * w)]
    return np.array(sorted(range(h * w), key=keys.__getitem__), dtype=np.int64)


def _slow_order(kind: str, proximity: torch.Tensor) -> torch.Tensor:
    rows = []
    for p in proximity.numpy()[:, 0]:
        if kind == "regional":
            rows.append(_slow_regional(p))
        else:
            rows.append(np.array(sorted(range(p.size), key=lambda i: (-p.flat[i], i)), dtype=np.int64))
    return torch.from_numpy(np.stack(rows))


def _smooth_map(rng: np.random.Generator, h: int, w: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(gaussian_filter(rng.random((h, w)), sigma)).to(dtype)[None, None]


# ---------------------------------------------------------------- golden parity


def _dascan_cases(golden_dir: Path) -> list[dict]:
    return torch.load(golden_dir / "dascan_cases.pt", weights_only=True)["cases"]


def test_golden_dascan_cases(golden_dir: Path) -> None:
    cases = _dascan_cases(golden_dir)
    kinds = {case["kind"] for case in cases}
    assert kinds == {"regional", "global"}
    for index, case in enumerate(cases):
        got = ORDER_FUNCTIONS[case["kind"]](case["proximity"])
        assert torch.equal(got, case["order"]), f"case {index} ({case['kind']}, {tuple(case['proximity'].shape)})"


@pytest.mark.parametrize("file_name", PARITY_FILES)
def test_golden_network_scans(golden_dir: Path, file_name: str) -> None:
    scans = torch.load(golden_dir / file_name, weights_only=True)["scans"]
    assert len(scans) == 38
    mismatches = [
        f"{index}: {scan['module']} {scan['kind']}"
        for index, scan in enumerate(scans)
        if not torch.equal(ORDER_FUNCTIONS[scan["kind"]](scan["proximity"]), scan["order"])
    ]
    assert not mismatches


def test_golden_regional_cases_match_slow_rule(golden_dir: Path) -> None:
    """The literal rule reproduces the golden orders too, so it is a fair oracle for the random tests."""
    for case in _dascan_cases(golden_dir):
        if case["kind"] == "regional" and case["proximity"].shape[-1] * case["proximity"].shape[-2] <= 2304:
            assert torch.equal(_slow_order("regional", case["proximity"]), case["order"])


# ---------------------------------------------------------------- hand-worked and edge cases


def test_strip_by_hand() -> None:
    # median 5 -> mask 0 1 1 0 1 1 0 0: components {1,2}, {4,5} (2 px each) and 4 px outside the mask,
    # so the outside goes first, then the components in label order (equal areas keep their order).
    p = torch.tensor([1.0, 9, 8, 2, 7, 6, 3, 4], dtype=torch.float64).view(1, 1, 1, 8)
    assert regional_order(p).tolist() == [[7, 6, 3, 0, 1, 2, 4, 5]]
    assert global_order(p).tolist() == [[1, 2, 4, 5, 7, 6, 3, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 5, 7), (2, 1, 1, 9), (1, 1, 6, 1)])
def test_constant_map_keeps_raster_order(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    p = torch.full(shape, 0.25, dtype=dtype)
    expected = torch.arange(shape[-1] * shape[-2]).expand(shape[0], -1)
    for order_function in ORDER_FUNCTIONS.values():
        got = order_function(p)
        assert got.dtype == torch.int64
        assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", ["regional", "global"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 61), (1, 1, 47, 1)])
def test_strips_match_slow_rule(kind: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(shape[-1])
    p = torch.from_numpy(rng.random(shape))
    assert torch.equal(ORDER_FUNCTIONS[kind](p), _slow_order(kind, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_maps_match_slow_rule(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(11)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(2, 25, size=2))
        p = _smooth_map(rng, h, w, rng.uniform(0.0, 2.5), dtype)
        for kind, order_function in ORDER_FUNCTIONS.items():
            assert torch.equal(order_function(p), _slow_order(kind, p)), (kind, h, w)


def test_plateau_maps_match_slow_rule() -> None:
    """Few distinct values: ties in proximity, in the median and in region areas."""
    rng = np.random.default_rng(5)
    for levels in (2, 3, 4):
        for _ in range(4):
            h, w = (int(v) for v in rng.integers(3, 20, size=2))
            p = torch.from_numpy(rng.integers(0, levels, size=(1, 1, h, w)) / levels)
            for kind, order_function in ORDER_FUNCTIONS.items():
                assert torch.equal(order_function(p), _slow_order(kind, p)), (kind, levels, h, w)


def _blob_map(rng: np.random.Generator, blobs: list[tuple[slice, slice]]) -> tuple[torch.Tensor, np.ndarray]:
    """40x40 map: blobs in [2, 3), background in [0, 1); returns the map and a blob-id image (0 = background)."""
    p = rng.random((40, 40))
    blob_id = np.zeros((40, 40), dtype=np.int64)
    for index, (rows, cols) in enumerate(blobs, start=1):
        p[rows, cols] += 2.0
        blob_id[rows, cols] = index
    assert (blob_id > 0).sum() == 800  # half the map, so the median falls between background and blobs
    return torch.from_numpy(p)[None, None], blob_id


def test_more_than_five_regions_keeps_five_largest() -> None:
    blobs = [
        (slice(0, 12), slice(0, 12)),  # 144
        (slice(0, 11), slice(13, 24)),  # 121
        (slice(0, 10), slice(25, 36)),  # 110
        (slice(13, 23), slice(0, 10)),  # 100
        (slice(13, 22), slice(13, 23)),  # 90
        (slice(13, 22), slice(25, 34)),  # 81: valid (>= 80) but not among the five largest
        (slice(24, 32), slice(0, 10)),  # 80: valid, dropped
        (slice(38, 40), slice(0, 37)),  # 74: below 5 % of the map
    ]
    p, blob_id = _blob_map(np.random.default_rng(3), blobs)
    # Background (800 px) outranks every blob; dropped blobs scan with the background, by proximity.
    group = np.where(blob_id > 5, 0, blob_id).ravel()
    expected = np.lexsort((-p.numpy().ravel(), group))
    assert torch.equal(regional_order(p), torch.from_numpy(expected)[None])


def test_more_than_five_equal_regions_follow_reference_selection() -> None:
    # eight separate 10x10 blobs: eight valid regions of equal area
    corners = [(0, 0), (0, 11), (0, 22), (11, 0), (11, 11), (11, 22), (22, 0), (22, 11)]
    blobs = [(slice(r, r + 10), slice(c, c + 10)) for r, c in corners]
    p, blob_id = _blob_map(np.random.default_rng(4), blobs)
    got = regional_order(p)
    assert torch.equal(got, _slow_order("regional", p))
    # Whatever five the reference's argsort picks, they scan as five contiguous blocks after the rest.
    blocks = blob_id.ravel()[got[0, 1100:].numpy()].reshape(5, 100)
    assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0])) == 5


def test_small_near_component_scans_with_the_background() -> None:
    p = np.zeros((10, 10))
    p[:, 5:] = 1.0  # a 50 px near half (a plateau: the median is 1.0)
    p[0, 0] = 9.0  # the nearest pixel, but an isolated 1 px region (< 5 px)
    order = regional_order(torch.from_numpy(p)[None, None])[0].tolist()
    # The half (50 px) outranks label 0 (49 px); the lone pixel leads label 0's group by proximity.
    right = [r * 10 + c for r in range(10) for c in range(5, 10)]
    left = [r * 10 + c for r in range(10) for c in range(5) if r or c]
    assert order == right + [0] + left


def test_threshold_is_taken_in_the_map_dtype() -> None:
    a = np.float32(1.0)
    values = [10.0, float(a), float(np.nextafter(a, np.float32(2))), 0.0]
    # float32 median rounds to 1.0, so pixel 1 joins the mask; in float64 it stays out.
    assert regional_order(torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 4)).tolist() == [[0, 2, 1, 3]]
    assert regional_order(torch.tensor(values, dtype=torch.float64).view(1, 1, 1, 4)).tolist() == [[1, 3, 0, 2]]


def test_batch_rows_are_independent() -> None:
    rng = np.random.default_rng(8)
    p = torch.cat([_smooth_map(rng, 14, 18, 1.5, torch.float64), _smooth_map(rng, 14, 18, 0.7, torch.float64)])
    for order_function in ORDER_FUNCTIONS.values():
        got = order_function(p)
        assert got.shape == (2, 14 * 18)
        assert not torch.equal(got[0], got[1])
        for row in range(2):
            assert torch.equal(got[row], order_function(p[row : row + 1])[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_is_an_int64_permutation_on_the_input_device(dtype: torch.dtype) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    p_cpu = _smooth_map(np.random.default_rng(2), 9, 13, 1.0, dtype).requires_grad_()
    for device in devices:
        p = p_cpu.to(device)
        for order_function in ORDER_FUNCTIONS.values():
            got = order_function(p)
            assert got.dtype == torch.int64 and got.device == p.device and got.shape == (1, 9 * 13)
            assert torch.equal(got.sort().values.cpu(), torch.arange(9 * 13)[None])
            assert torch.equal(got.cpu(), order_function(p_cpu.detach()))


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (1, 2, 4, 4), (1, 1, 0, 4), (1, 1, 4, 0), (1, 1, 1, 4, 4)])
@pytest.mark.parametrize("kind", ["regional", "global"])
def test_bad_shapes_raise(kind: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        ORDER_FUNCTIONS[kind](torch.zeros(shape))


@pytest.mark.parametrize("kind", ["regional", "global"])
def test_integer_map_raises(kind: str) -> None:
    with pytest.raises(TypeError, match="floating-point"):
        ORDER_FUNCTIONS[kind](torch.zeros(1, 1, 3, 3, dtype=torch.int64))
