"""Scoring separations against ground truth, as the authors' eval.py does.

PSNR over all RGB values (the convention behind the data sets' published identity
baselines, e.g. 15.71 dB on locationaware_sirr), SSIM per RGB channel averaged (as
the authors' `util/index.py`), and both on the Y channel of ITU-R BT.601 YCbCr
(range 16-235, as their rgb2ycbcr), all on a 0-255 scale;
SSIM is the standard 7x7 uniform-window form with sample covariance. Outputs
are clamped to [0, 1] and scaled by 255 without rounding, like their tensor2im.
Folders use the common layout `blended/`, `transmission_layer/`, `reflection_layer/`.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from .images import image_files, to_tensor

SSIM_WINDOW = 7
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of two images on a 0-255 scale (MSE over every value)."""
    mse = float(np.mean((estimate.astype(np.float64) - truth.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def batch_psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of a batch of (N, 3, H, W) tensors in [0, 1]; the trainer's
    quick validation score (prediction clamped to [0, 1])."""
    mse = (prediction.clamp(0, 1) - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM of two single-channel images on a 0-255 scale (7x7 window, sample covariance)."""
    x, y = estimate.astype(np.float64), truth.astype(np.float64)
    count = SSIM_WINDOW**2
    correction = count / (count - 1)
    mean_x, mean_y = uniform_filter(x, SSIM_WINDOW), uniform_filter(y, SSIM_WINDOW)
    var_x = correction * (uniform_filter(x * x, SSIM_WINDOW) - mean_x**2)
    var_y = correction * (uniform_filter(y * y, SSIM_WINDOW) - mean_y**2)
    cov = correction * (uniform_filter(x * y, SSIM_WINDOW) - mean_x * mean_y)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)
             / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)))
    pad = (SSIM_WINDOW - 1) // 2
    return float(index[pad:-pad, pad:-pad].mean()) if min(x.shape) > 2 * pad else float(index.mean())


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 Y (16-235) of an (H, W, 3) image on a 0-255 scale, from its 8-bit values."""
    rgb = np.floor(rgb) / 255.0
    return 16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def image_scores(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All metrics for (H, W, 3) images on a 0-255 scale."""
    return {
        "psnr": psnr(estimate, truth),
        "ssim": float(np.mean([ssim(estimate[..., c], truth[..., c]) for c in range(3)])),
        "psnr_y": psnr(luma(estimate), luma(truth)),
        "ssim_y": ssim(luma(estimate), luma(truth)),
    }


def to_255(tensor) -> np.ndarray:
    """(1, 3, H, W) tensor -> (H, W, 3) float array, clamped to [0, 1] and scaled by 255."""
    return tensor[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0


@dataclass
class PairFiles:
    name: str
    blended: Path
    transmission: Path | None
    reflection: Path | None


def dataset_pairs(folder: Path) -> list[PairFiles]:
    """Pairs of a dataset folder, matched by file stem; missing ground truth is None."""
    def by_stem(sub: str) -> dict[str, Path]:
        path = folder / sub
        if not path.is_dir():
            return {}
        return {p.stem: p for p in image_files(path)}
    blended = by_stem("blended")
    if not blended:
        raise ValueError(f"{folder} has no blended/ images")
    transmission, reflection = by_stem("transmission_layer"), by_stem("reflection_layer")
    return [PairFiles(stem, path, transmission.get(stem), reflection.get(stem))
            for stem, path in sorted(blended.items())]


Separator = Callable[[Path], tuple[np.ndarray, np.ndarray]]
"""blended file -> (T, R) as (H, W, 3) arrays on a 0-255 scale."""


def evaluate_dataset(folder: Path, separate: Separator, progress=None,
                     select: Callable[[list[PairFiles]], list[PairFiles]] = list) -> list[dict]:
    """One row per image: method ("model" or "identity"), layer, metrics; `select` picks the
    pairs to score (a distributed run's share, `dmdnet.distributed.Ranks.share`)."""
    rows = []
    pairs = select(dataset_pairs(folder))
    for pair in progress(pairs) if progress else pairs:
        blended = to_255(to_tensor(pair.blended))
        outputs = {"model": separate(pair.blended), "identity": (blended, blended)}
        for layer, truth_file, index in (("T", pair.transmission, 0), ("R", pair.reflection, 1)):
            if truth_file is None:
                continue
            truth = to_255(to_tensor(truth_file))
            for method, layers in outputs.items():
                if method == "identity" and layer == "R":
                    continue
                if layers[index].shape != truth.shape:
                    raise ValueError(f"{pair.name}: output {layers[index].shape} and ground truth "
                                     f"{truth.shape} differ in size")
                rows.append({"dataset": folder.name, "image": pair.name, "method": method,
                             "layer": layer, **image_scores(layers[index], truth)})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean metrics per (dataset, method, layer), with the image count."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"], row["layer"]), []).append(row)
    return [{"dataset": d, "method": m, "layer": layer, "images": len(g),
             **{k: float(np.mean([r[k] for r in g])) for k in METRICS}}
            for (d, m, layer), g in groups.items()]


def write_tables(rows: list[dict], out: Path) -> str:
    """Writes per_image.csv, summary.csv and summary.md into `out`; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    for name, table in (("per_image.csv", rows), ("summary.csv", summary)):
        with open(out / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    lines = ["| dataset | method | layer | images | PSNR | SSIM | PSNR-Y | SSIM-Y |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {s['dataset']} | {s['method']} | {s['layer']} | {s['images']} | {s['psnr']:.2f} | "
              f"{s['ssim']:.4f} | {s['psnr_y']:.2f} | {s['ssim_y']:.4f} |" for s in summary]
    markdown = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(markdown)
    return markdown
