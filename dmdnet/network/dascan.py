"""Depth-aware scan orders (DAScan) for DMDNet's depth-aware Mamba blocks.

A selective scan reads a feature map as a 1-D sequence, so the order of the
pixels decides what each state has already seen.  DAScan derives that order
from a proximity map (high = near the camera):

* the transmission layer is mostly the near scene, so ``regional_order`` scans
  the large near regions first, each one near-to-far, and the rest afterwards;
* reflections carry no such region structure, so ``global_order`` scans every
  pixel near-to-far.

Both functions take a ``(B, 1, h, w)`` floating-point tensor and return
``(B, h*w)`` int64 flat pixel indices on the input's device.  The regional
order reproduces the reference implementation exactly, ties included.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

MIN_REGION_FRACTION = 0.05
MAX_REGIONS = 5


def _check_proximity(proximity: torch.Tensor) -> None:
    if not isinstance(proximity, torch.Tensor):
        raise TypeError(f"proximity must be a torch.Tensor, got {type(proximity).__name__}")
    if proximity.dim() != 4 or proximity.shape[1] != 1 or proximity.shape[2] < 1 or proximity.shape[3] < 1:
        raise ValueError(
            f"proximity must have shape (B, 1, h, w) with h, w >= 1, got {tuple(proximity.shape)}"
        )
    if not proximity.is_floating_point():
        raise TypeError(f"proximity must be a floating-point tensor, got {proximity.dtype}")


def global_order(proximity: torch.Tensor) -> torch.Tensor:
    """All pixels by proximity descending; equal values keep ascending pixel index."""
    _check_proximity(proximity)
    flat = proximity.detach().flatten(1)
    return torch.sort(flat, dim=1, descending=True, stable=True).indices


def region_ranks(p: np.ndarray) -> np.ndarray:
    """(h, w) proximity map -> (h, w) int64 visiting rank of each pixel's region (0 = first).

    Regions are the 4-connected components of p >= its median; at most MAX_REGIONS
    components of at least MIN_REGION_FRACTION of the map count as regions of their
    own, every other pixel joins one "rest" region (counted by its pixels below the
    median), and regions are visited by pixel count, largest first.
    """
    h, w = p.shape
    mask = p >= np.percentile(p, 50)
    labels, _ = ndimage.label(mask)  # 4-connected, numbered in raster order of first pixel

    counts = np.bincount(labels.ravel())  # counts[0] = pixels outside the mask
    areas = counts[1:]
    valid = np.flatnonzero(areas >= MIN_REGION_FRACTION * h * w) + 1
    if len(valid) > MAX_REGIONS:
        kept = valid[np.argsort(areas[valid - 1])[::-1][:MAX_REGIONS]]
    else:
        kept = valid

    region_labels = [*kept.tolist(), 0]
    ordered = sorted(region_labels, key=lambda label: counts[label], reverse=True)

    rank_of_label = np.full(len(counts), ordered.index(0), dtype=np.int64)
    rank_of_label[ordered] = np.arange(len(ordered))
    return rank_of_label[labels]


def _regional_order_2d(p: np.ndarray) -> np.ndarray:
    """Regional scan order of one (h, w) proximity map as flat pixel indices."""
    return np.lexsort((-p.ravel(), region_ranks(p).ravel()))


def regional_order(proximity: torch.Tensor) -> torch.Tensor:
    """Large near regions first (largest first), then the rest; near-to-far inside each."""
    _check_proximity(proximity)
    maps = proximity.detach().cpu().numpy()[:, 0]
    h, w = maps.shape[1:]
    orders = np.empty((len(maps), h * w), dtype=np.int64)
    for index, p in enumerate(maps):
        orders[index] = _regional_order_2d(p)
    return torch.from_numpy(orders).to(proximity.device)
