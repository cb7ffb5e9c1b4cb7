"""Saved separations ("runs"): what a demo session's state points to.

A run folder holds the full-resolution layers, previews, the figures and the
diagnostics of one separation, so the UI can redraw any view later without
running the network again. Folders nobody has looked at for a day are pruned.

PIL lets go of the GIL while it resamples and compresses, and matplotlib holds it while
it draws: a run's PNGs are written on worker threads while its figures are drawn. The
threads get PIL images only: torch called from another thread would start a second team
of OpenMP threads, which slowed the next separation by 40% here.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import PARTIAL_SUFFIX, atomic_path
from ..images import PNG_COMPRESS_LEVEL, to_uint8
from ..pipeline import SeparationResult
from . import figures, views
from .storage import StorageQuota

RUN_ID = re.compile(r"run-[0-9a-f]{32}")
RUN_LIFETIME_S = 24 * 3600
PREVIEW_SIDE = 1280
PARTIAL_LIFETIME_S = 3600
"""A hidden, half-written run folder older than this was left by a killed server."""
FIGURE_BYTES = 400_000
"""Room made for each figure (and the summary) of a run: the PNGs measured 12-170 kB."""
IMAGE_WRITERS = concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="run-images")
"""Writes the PNGs of runs: layers, previews and figures (the two layers and the input's
preview at a time)."""


class RunNotFound(LookupError):
    """The id names no kept run (malformed, pruned, or never existed)."""


@dataclass
class Run:
    """One saved separation: its folder, summary and diagnostics."""

    folder: Path
    info: dict
    scans: list[views.ScanView]
    experts: list[views.ExpertView]

    @property
    def id(self) -> str:
        return self.folder.name

    def file(self, key: str) -> str:
        return str(self.folder / self.info["files"][key])

    @property
    def summary(self) -> dict:
        """What the API reports about the run (everything but the file table)."""
        return {key: value for key, value in self.info.items() if key != "files"}

    @property
    def processed_size(self) -> tuple[int, int]:
        return self.info["processed"]["height"], self.info["processed"]["width"]

    @functools.cached_property
    def layers(self) -> tuple[np.ndarray, np.ndarray]:
        """Transmission and reflection previews as float arrays in [0, 1], for the remix."""
        def read(key: str) -> np.ndarray:
            with Image.open(self.file(key)) as image:
                return np.asarray(image.convert("RGB"), np.float32) / 255
        return read("transmission_preview"), read("reflection_preview")

    def scan_animation(self, view: views.ScanView) -> Path:
        """The GIF of one scan, drawn on first request and kept in the folder."""
        path = self.folder / f"scan_L{view.level}_{view.stream}_{view.branch}_{view.block}.gif"
        if not path.is_file():
            with atomic_path(path) as partial:
                figures.save_gif(figures.scan_animation(view, self.processed_size), partial)
        return path


def _png_bound(width: int, height: int, max_side: int | None = None) -> int:
    """The most bytes an RGB PNG of that size (shrunk to fit `max_side`) can take: zlib
    stores data it cannot compress, plus a filter byte a row and the chunks' headers."""
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return 3 * width * height + height + (3 * width * height) // 1000 + 4096


def _size_bound(result: SeparationResult, arrays: dict[str, np.ndarray]) -> int:
    """The most bytes the files of a run can take: two full-size layers and their previews
    where they are larger than one, the input's preview, the diagnostics arrays, and
    FIGURE_BYTES for each figure and the summary."""
    height, width = result.image.shape[-2:]
    previews = 1 if max(height, width) <= PREVIEW_SIDE else 3
    return (2 * _png_bound(width, height) + previews * _png_bound(width, height, PREVIEW_SIDE)
            + sum(array.nbytes + 1024 for array in arrays.values()) + 4 * FIGURE_BYTES)


def _write_png(image: Image.Image, path: Path, max_side: int | None = None) -> None:
    """Writes `image` as a PNG, shrunk first to fit in `max_side` if given (a copy: the
    full-size image may be written at the same time)."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    with atomic_path(path) as partial:
        image.save(partial, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


@functools.lru_cache(maxsize=8)
def _read_run(folder: Path) -> Run:
    with np.load(folder / "diagnostics.npz") as arrays:
        scans, experts = views.views_from_arrays(dict(arrays))
    return Run(folder, json.loads((folder / "info.json").read_text()), scans, experts)


class RunStore:
    """Run folders under one root directory, within `quota` when given (see `dmdnet.demo.storage`)."""

    def __init__(self, root: Path, lifetime_s: float = RUN_LIFETIME_S, quota: StorageQuota | None = None):
        self.root = Path(root)
        self.lifetime_s = lifetime_s
        self.quota = quota

    def save(self, result: SeparationResult, name: str, seconds: float, **details: object) -> Run:
        """Writes the layers (full resolution), previews, figures and diagnostics of one
        separation (run with diagnostics); `details` go into its summary.

        The folder is written under a hidden name and renamed to its run id once complete, so
        no reader ever finds a run half-written. With a quota, room for the most the run can
        take is made before anything is written; raises `dmdnet.demo.storage.StorageFull` when
        none can be made."""
        self.prune()
        run_id = f"run-{uuid.uuid4().hex}"
        partial = self.root / f".{run_id}{PARTIAL_SUFFIX}"
        partial.mkdir(parents=True)
        try:
            scans, experts = views.scan_views(result.diagnostics), views.expert_views(result.diagnostics)
            arrays = views.views_to_arrays(scans, experts)
            room = self.quota.reserve(_size_bound(result, arrays)) if self.quota else contextlib.nullcontext()
            with room:
                info = self._write(partial, result, name, seconds, run_id, scans, experts, arrays, details)
            folder = self.root / run_id
            partial.rename(folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return Run(folder, info, scans, experts)

    @staticmethod
    def _write(folder: Path, result: SeparationResult, name: str, seconds: float, run_id: str,
               scans: list[views.ScanView], experts: list[views.ExpertView], arrays: dict[str, np.ndarray],
               details: dict) -> dict:
        """Writes a run's files into `folder`; returns its info."""
        stem = re.sub(r"[^\w.-]+", "_", Path(name).stem)[:60] or "image"
        files = {"transmission": f"{stem}_transmission.png", "reflection": f"{stem}_reflection.png",
                 "input_preview": "input_preview.png", "transmission_preview": "transmission_preview.png",
                 "reflection_preview": "reflection_preview.png", "depth": f"{stem}_depth.png",
                 "scan_order": f"{stem}_scan_order.png", "gates": f"{stem}_mecm_gates.png",
                 "diagnostics": "diagnostics.npz"}
        layers = {key: Image.fromarray(to_uint8(getattr(result, key))) for key in ("transmission", "reflection")}
        writes = [IMAGE_WRITERS.submit(_write_png, image, folder / files[key]) for key, image in layers.items()]
        try:  # no error leaves this function while a worker still writes into `folder`
            writes.append(IMAGE_WRITERS.submit(_write_png, Image.fromarray(to_uint8(result.image)),
                                               folder / files["input_preview"], PREVIEW_SIDE))
            for key, image in layers.items():
                if max(image.size) <= PREVIEW_SIDE:  # the layer itself is its preview
                    files[f"{key}_preview"] = files[key]
                else:
                    writes.append(IMAGE_WRITERS.submit(_write_png, image, folder / files[f"{key}_preview"],
                                                       PREVIEW_SIDE))
            np.savez(folder / files["diagnostics"], **arrays)
            drawings = {"depth": lambda: figures.depth_figure(result.depth[0, 0].float().numpy()),
                        "scan_order": lambda: figures.scan_overview(scans, result.processed_size),
                        "gates": lambda: figures.gate_heatmap(np.stack([e.coefficients for e in experts]),
                                                              [e.label for e in experts])}
            for key, draw in drawings.items():  # each figure is written while the next is drawn
                writes.append(IMAGE_WRITERS.submit(_write_png, draw(), folder / files[key]))
            for write in writes:
                write.result()
        finally:
            concurrent.futures.wait(writes)
        height, width = result.image.shape[-2:]
        info = {
            "source": name,
            "input": {"width": width, "height": height},
            "processed": {"width": result.processed_size[1], "height": result.processed_size[0]},
            "seconds": round(seconds, 2),
            **details,
            "mecm_gates": {e.label: [round(float(c), 4) for c in e.coefficients] for e in experts},
            **({} if result.diagnostics.global_gain is None else
               {"transmission_gain": round(float(result.diagnostics.global_gain.flatten()[0]), 4)}),
            "run": run_id,
            "files": files,
        }
        (folder / "info.json").write_text(json.dumps(info, indent=1))
        return info

    def load(self, run_id: object) -> Run:
        """The run `run_id` names (ids come from browsers, so they are checked); marks it as
        recently used. Raises RunNotFound."""
        folder = self.root / run_id if isinstance(run_id, str) and RUN_ID.fullmatch(run_id) else None
        if folder is None or not (folder / "info.json").is_file():
            raise RunNotFound(run_id)
        os.utime(folder)
        return _read_run(folder)

    def prune(self, now: float | None = None) -> None:
        """Deletes run folders nobody has looked at for `lifetime_s`, and folders a killed
        server left half-written (older than PARTIAL_LIFETIME_S)."""
        now = time.time() if now is None else now
        for pattern, lifetime in (("run-*", self.lifetime_s), (f".run-*{PARTIAL_SUFFIX}", PARTIAL_LIFETIME_S)):
            for folder in self.root.glob(pattern):
                try:
                    if now - folder.stat().st_mtime > lifetime:
                        shutil.rmtree(folder)
                except OSError:
                    continue
