"""Scoring separations against ground truth with scikit-image's metrics, as the authors do.

The settings are those of the authors' `util/index.py` (scikit-image, what their
environment lists and what the reflection-separation papers' tables are computed with),
on images on a 0-255 scale:

* PSNR: `peak_signal_noise_ratio(truth, estimate, data_range=255)`, the MSE over all RGB
  values together (the convention behind the data sets' published identity baselines,
  e.g. 15.71 dB on locationaware_sirr).
* SSIM: `structural_similarity(truth, estimate, data_range=255, channel_axis=-1)`: the
  mean SSIM of each RGB channel, averaged over the channels, with scikit-image's default
  window, 7x7 uniform with sample covariance (K1 = 0.01, K2 = 0.03). Not the Gaussian
  window (sigma 1.5, population covariance) of Wang et al. 2004: the field's tables use
  the defaults, and a reader compares with those.
* PSNR-Y, SSIM-Y: the same two on the Y channel of BT.601 YCbCr (range 16-235,
  scikit-image's `rgb2ycbcr`) of the 8-bit values, as their `quality_assess` computes it.
  (Their `eval.py`, which scores saved PNGs for the paper, takes a full-range Y from
  OpenCV instead, which scores lower: the identity baseline's PSNR-Y on locationaware_sirr
  is 15.90 dB that way against 17.23 dB here. The RGB columns agree with it up to the
  outputs' 8-bit rounding.)
* PSNR-inv, the photometry-invariant PSNR (this project's, not the field's): the PSNR after the
  estimate is mapped onto the truth by its own least-squares gain and offset per channel
  (`invariant_psnr`). Real glass dims and tints the whole scene and the truth is shot without
  it, so a global brightness and colour change earns plain PSNR; PSNR-inv gives the identity
  and every method that change for free, and what a method gains over the identity on it is
  reflection structure removed.

Outputs are clamped to [0, 1] and scaled by 255 without rounding, like their tensor2im.
Folders use the common layout of `dmdnet.datasets`.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .datasets import PairFiles, dataset_pairs
from .files import atomic_path, write_text
from .images import InvalidImageError, to_tensor
from .photometry import match_photometry

DATA_RANGE = 255.0
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "psnr_inv")


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of two images on a 0-255 scale (MSE over every value); inf if identical."""
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(truth.astype(np.float64), estimate.astype(np.float64),
                                             data_range=DATA_RANGE))


def batch_psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of a batch of (N, 3, H, W) tensors in [0, 1]; the trainer's
    quick validation score (prediction clamped to [0, 1]), the same MSE-over-all-values PSNR
    as `psnr` computed on the tensors where they are."""
    mse = (prediction.clamp(0, 1) - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def invariant_psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """The best PSNR (dB) that any per-channel gain and offset of `estimate` reaches against `truth`,
    both (H, W, 3) on a 0-255 scale: the estimate is mapped onto the truth by the least-squares
    gain and offset of each channel (no clipping), then scored by `psnr`. Unchanged by any such
    map of the estimate, so it measures structure, not photometry."""
    def as_batch(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float64) / DATA_RANGE).permute(2, 0, 1)[None]
    matched = match_photometry(as_batch(estimate), as_batch(truth))
    return psnr(matched[0].permute(1, 2, 0).numpy() * DATA_RANGE, truth)


def ssim(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM of two (H, W) or (H, W, 3) images on a 0-255 scale (RGB: each channel's,
    averaged), 7x7 uniform window with sample covariance; both sides at least 7 pixels."""
    return float(structural_similarity(truth.astype(np.float64), estimate.astype(np.float64),
                                       data_range=DATA_RANGE, channel_axis=-1 if truth.ndim == 3 else None))


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 Y (16-235) of an (H, W, 3) image on a 0-255 scale, from its 8-bit values."""
    return rgb2ycbcr(np.clip(np.floor(rgb), 0, 255).astype(np.uint8))[..., 0]


def image_scores(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All metrics for (H, W, 3) images on a 0-255 scale."""
    estimate_y, truth_y = luma(estimate), luma(truth)
    return {"psnr": psnr(estimate, truth), "ssim": ssim(estimate, truth),
            "psnr_y": psnr(estimate_y, truth_y), "ssim_y": ssim(estimate_y, truth_y),
            "psnr_inv": invariant_psnr(estimate, truth)}


def to_255(tensor) -> np.ndarray:
    """(1, 3, H, W) tensor -> (H, W, 3) float array, clamped to [0, 1] and scaled by 255."""
    return tensor[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0


Separator = Callable[[Path], tuple[np.ndarray, np.ndarray]]
"""blended file -> (T, R) as (H, W, 3) arrays on a 0-255 scale."""


class UnscorablePair(ValueError):
    """A pair that cannot be scored; the message says why."""


class NoGroundTruth(UnscorablePair):
    """A blended image without its transmission (some sets have such by design)."""


@dataclass
class DatasetScores:
    """What `evaluate_dataset` found: one row per scored image and layer, the pairs it could
    not score for a fault of their files, and the blended images that have no transmission to
    score against (both as {"dataset", "image", "reason"})."""

    rows: list[dict]
    skipped: list[dict]
    without_truth: list[dict]


def _read_pair(pair: PairFiles) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Blended, T and R (None when absent) on a 0-255 scale; raises UnscorablePair or
    InvalidImageError (both name what is wrong)."""
    if pair.transmission is None:
        raise NoGroundTruth("no transmission_layer/ image")
    blended = to_255(to_tensor(pair.blended))
    truths = [to_255(to_tensor(file)) if file else None for file in (pair.transmission, pair.reflection)]
    for file, truth in zip((pair.transmission, pair.reflection), truths):
        if truth is not None and truth.shape != blended.shape:
            raise UnscorablePair(f"{file.parent.name}/{file.name} is {truth.shape[1]}x{truth.shape[0]}, "
                                 f"blended/{pair.blended.name} {blended.shape[1]}x{blended.shape[0]}")
    return blended, *truths


def evaluate_dataset(folder: Path, separate: Separator, progress=None,
                     select: Callable[[list[PairFiles]], list[PairFiles]] = list) -> DatasetScores:
    """One row per image: method ("model" or "identity"), layer, metrics; `select` picks the
    pairs to score (a distributed run's share, `dmdnet.training.distributed.Ranks.share`). Pairs without
    a transmission, with an unreadable file or with sizes that differ are set aside, each with
    its reason, before the model runs on them."""
    scores = DatasetScores([], [], [])
    pairs = select(dataset_pairs(folder))
    for pair in progress(pairs) if progress else pairs:
        try:
            blended, *truths = _read_pair(pair)
        except (UnscorablePair, InvalidImageError) as error:
            unscored = scores.without_truth if isinstance(error, NoGroundTruth) else scores.skipped
            unscored.append({"dataset": folder.name, "image": pair.name, "reason": str(error)})
            continue
        outputs = {"model": separate(pair.blended), "identity": (blended, blended)}
        for layer, truth, index in (("T", truths[0], 0), ("R", truths[1], 1)):
            if truth is None:
                continue
            for method, layers in outputs.items():
                if method == "identity" and layer == "R":
                    continue
                if layers[index].shape != truth.shape:
                    raise ValueError(f"{pair.name}: output {layers[index].shape} and ground truth "
                                     f"{truth.shape} differ in size")
                scores.rows.append({"dataset": folder.name, "image": pair.name, "method": method,
                                    "layer": layer, **image_scores(layers[index], truth)})
    return scores


def summarize(rows: list[dict]) -> list[dict]:
    """Mean metrics per (dataset, method, layer), with the image count."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"], row["layer"]), []).append(row)
    return [{"dataset": d, "method": m, "layer": layer, "images": len(g),
             **{k: float(np.mean([r[k] for r in g])) for k in METRICS}}
            for (d, m, layer), g in groups.items()]


def write_tables(rows: list[dict], out: Path, skipped: list[dict] = ()) -> str:
    """Writes per_image.csv, summary.csv, skipped.csv (`skipped`: {"dataset", "image", "reason"}
    of the pairs not scored) and summary.md into `out`; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    for name, table, fields in (("per_image.csv", rows, list(rows[0])), ("summary.csv", summary, list(summary[0])),
                                ("skipped.csv", skipped, ["dataset", "image", "reason"])):
        with atomic_path(out / name) as partial, open(partial, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(table)
    lines = ["| dataset | method | layer | images | PSNR | SSIM | PSNR-Y | SSIM-Y | PSNR-inv |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {s['dataset']} | {s['method']} | {s['layer']} | {s['images']} | {s['psnr']:.2f} | "
              f"{s['ssim']:.4f} | {s['psnr_y']:.2f} | {s['ssim_y']:.4f} | {s['psnr_inv']:.2f} |" for s in summary]
    markdown = "\n".join(lines) + "\n"
    write_text(out / "summary.md", markdown)
    return markdown
