"""The data of the demo's views: each recorded DSMamba scan and MECM call as plain numpy arrays.

`scan_views` / `expert_views` turn a forward pass's `Diagnostics` into these views;
`views_to_arrays` / `views_from_arrays` store them (e.g. in a run's `.npz`) so that the page
can redraw any view later without running the network again. `dmdnet.demo.figures` draws them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..network.diagnostics import Diagnostics


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
