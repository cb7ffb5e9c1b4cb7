"""dmdnet.demo.views: scan ranks, the image part of padded maps, views stored and read back."""
from __future__ import annotations

import numpy as np

from dmdnet.demo import views


def test_scan_rank_is_inverse_of_order():
    order = np.random.default_rng(2).permutation(12)
    rank = views.scan_rank(order, (3, 4))
    assert rank.shape == (3, 4)
    np.testing.assert_array_equal(rank.ravel()[order], np.arange(12))


def test_valid_shape():
    assert views.valid_shape((64, 64), (100, 37), 1) == (64, 37)
    assert views.valid_shape((8, 8), (100, 37), 4) == (8, 5)
    assert views.valid_shape((2, 2), (1, 1), 5) == (1, 1)


def test_views_from_diagnostics_round_trip_through_npz(tmp_path, recorded_diagnostics):
    scans, experts = views.scan_views(recorded_diagnostics), views.expert_views(recorded_diagnostics)
    assert [(s.level, s.stream, s.proximity.shape) for s in scans] == [
        (2, "T", (4, 5)), (2, "R", (4, 5)), (1, "T", (8, 10)), (1, "R", (8, 10))]
    np.savez(tmp_path / "d.npz", **views.views_to_arrays(scans, experts))
    with np.load(tmp_path / "d.npz") as arrays:
        scans2, experts2 = views.views_from_arrays(dict(arrays))
    for a, b in zip(scans, scans2, strict=True):
        assert (a.level, a.branch, a.block, a.stream, a.kind) == (b.level, b.branch, b.block, b.stream, b.kind)
        np.testing.assert_array_equal(a.order, b.order)
        np.testing.assert_array_equal(a.proximity, b.proximity)
    for a, b in zip(experts, experts2, strict=True):
        assert a.label == b.label == f"L{a.level} main · T"
        np.testing.assert_array_equal(a.coefficients, b.coefficients)
        assert a.contributions.keys() == b.contributions.keys() == {0, 2}
