"""Fitting DMDNet-Lite's global gain on real pairs, after training (`python -m dmdnet calibrate`).

Through glass, the whole scene is dimmed and tinted and a reflection brightens and veils the
whole photo, so the scene without the glass is, as a whole, a multiple of what a network that
removes reflections locally returns: on the real training pairs the best such multiple per photo
is worth about 2 dB. How large it is can be read from plain statistics of the
photo (`dmdnet.network.model.image_statistics`: how bright, how veiled, how saturated). The gain is a
linear map of those statistics in log space (`dmdnet.network.model.GlobalGain`), fitted here in closed
form by ridge regression on the real training pairs and crops of them; the held-out validation
pairs only choose the ridge strength.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import config_from_checkpoint, load_memory_banks, read_lite_checkpoint, save_dmdnet_checkpoint
from ..network.model import DMDNet, GlobalGain, image_statistics
from ..photometry import fit_gain
from ..pipeline import Pipeline, recorded_short_side
from ..weights import MEMORY_NAME, MODEL_NAME, lite_depth_model
from .real_pairs import RealPair, real_pairs, split_validation, validation_images
from .validation import pipeline_scores
from .warm_start import warm_start

RIDGES = (1.0, 3.0, 10.0, 30.0, 100.0)
"""Ridge strengths tried (on standardised statistics); validation picks one."""


@dataclass
class GainSamples:
    """What the fit needs: statistics of the images the network saw and, per image, the log
    gain that best maps the network's transmission onto the ground truth (least squares)."""

    statistics: np.ndarray
    """(N, STATISTICS) float64."""
    log_gains: np.ndarray
    """(N, 1) float64."""


@dataclass
class Calibration:
    ridge: float
    validation_psnr: dict[float, float]
    """Mean T-PSNR on the validation pairs for each ridge strength tried."""
    validation_identity: float
    validation_before: float
    """Mean T-PSNR on the validation pairs with a gain of 1."""
    samples: int


def crops(image: torch.Tensor, target: torch.Tensor, count: int, rng: np.random.Generator
          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole pair and `count` random crops of it (half to all of each side), cut alike."""
    pieces = [(image, target)]
    height, width = image.shape[-2:]
    for _ in range(count):
        h, w = (int(rng.integers(side // 2, side + 1)) for side in (height, width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        window = (..., slice(top, top + h), slice(left, left + w))
        pieces.append((image[window], target[window]))
    return pieces


@torch.no_grad()
def gain_samples(pipeline: Pipeline, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> GainSamples:
    """Runs each (image, ground-truth T) piece through `pipeline` with its gain at 1."""
    head = pipeline.model.global_gain
    seen = []
    hook = head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    statistics, log_gains = [], []
    try:
        with _gain_of_one(head):
            for image, target in pieces:
                transmission = pipeline.separate(image).transmission.double().clamp(0, 1)
                statistics.append(_statistics(seen.pop()))
                gain = fit_gain(transmission, target.double().to(transmission.device))
                log_gains.append(gain.clamp_min(1e-3).log().clamp(*GlobalGain.log_range).reshape(1).cpu().numpy())
    finally:
        hook.remove()
    return GainSamples(np.stack(statistics), np.stack(log_gains))


def _statistics(image: torch.Tensor) -> np.ndarray:
    return image_statistics(image)[0].double().cpu().numpy()


@contextmanager
def _gain_of_one(head: GlobalGain) -> Iterator[None]:
    """A gain of 1 (the head's weights at zero) inside the block; the head's weights after it."""
    saved = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        for tensor in head.state_dict().values():
            tensor.zero_()
    try:
        yield
    finally:
        head.load_state_dict(saved)


def fit_gain_regression(samples: GainSamples, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (1, STATISTICS), bias (1,)) of the ridge regression of the log gains on the
    statistics (standardised for the fit, folded back to act on raw statistics). The intercept
    is penalised too, so that a weak fit shrinks towards a gain of 1, leaving photos as the
    network returns them, rather than towards the training pairs' mean gain."""
    mean = samples.statistics.mean(0)
    scale = samples.statistics.std(0) + 1e-6
    design = np.c_[(samples.statistics - mean) / scale, np.ones(len(samples.statistics))]
    gram = design.T @ design + ridge * np.eye(design.shape[1])
    coefficients = np.linalg.solve(gram, design.T @ samples.log_gains)  # (S + 1, 1)
    weight = (coefficients[:-1] / scale[:, None]).T
    bias = coefficients[-1] - weight @ mean
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def set_gain(head: GlobalGain, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)


def calibrate(pipeline: Pipeline, train: list[RealPair], validation: list[RealPair],
              crops_per_pair: int = 3, ridges: tuple[float, ...] = RIDGES, seed: int = 0,
              progress=None) -> Calibration:
    """Fits the gain of `pipeline.model` (which must have one) on `train`, keeps the ridge
    strength that scores best on `validation` and leaves that gain set."""
    head = pipeline.model.global_gain
    if head is None:
        raise ValueError("this network has no global gain to fit (DMDNetConfig.global_gain)")
    rng = np.random.default_rng(seed)
    pieces = [piece for _, image, target in validation_images(train)
              for piece in crops(image, target, crops_per_pair, rng)]
    samples = gain_samples(pipeline, progress(pieces) if progress else pieces)
    held_out = validation_images(validation)
    with _gain_of_one(head):
        before = pipeline_scores(pipeline, held_out)
    scores = {}
    for ridge in ridges:
        set_gain(head, *fit_gain_regression(samples, ridge))
        scores[ridge] = pipeline_scores(pipeline, held_out)["psnr_t"]
    best = max(scores, key=scores.get)
    set_gain(head, *fit_gain_regression(samples, best))
    return Calibration(best, scores, before["psnr_identity"], before["psnr_t"], len(samples.log_gains))


def calibrate_files(model_path: Path, memory_path: Path, real: list[Path], out: Path,
                    crops_per_pair: int = 3, device: str = "cpu", progress=None) -> Calibration:
    """Fits the gain of a DMDNet-Lite model file (one saved without a gain gets one) on the
    real pairs under `real` (`dmdnet.training.real_pairs.VALIDATION_PAIRS` held out) and writes the
    model and memory-bank files (`model_latest.pt`, `memory_banks_latest.pt`), with the fit
    recorded under "global_gain_fit", into `out`. The memory banks must fit the model as they are."""
    checkpoint = read_lite_checkpoint(model_path)
    config = replace(config_from_checkpoint(checkpoint, model_path), global_gain=True)
    model, estimator = DMDNet(config), lite_depth_model(config)
    warm_start(model, estimator, model_path, memory_path)
    load_memory_banks(model, memory_path)
    pipeline = Pipeline(model, estimator, device, max_short_side=recorded_short_side(checkpoint))
    train, validation = split_validation(real_pairs(real))
    if not train or not validation:
        raise ValueError("calibration needs real training pairs and the held-out validation pairs under "
                         + ", ".join(map(str, real)))
    result = calibrate(pipeline, train, validation, crops_per_pair, progress=progress)
    extra = {k: v for k, v in checkpoint.items() if k != "network"}
    extra.update(config=config.to_dict(), global_gain_fit={
        "ridge": result.ridge, "samples": result.samples, "validation_psnr_t": result.validation_psnr[result.ridge],
        "validation_psnr_t_without_gain": result.validation_before, "validation_pairs": [p.name for p in validation]})
    save_dmdnet_checkpoint(model.cpu(), out / MODEL_NAME, out / MEMORY_NAME, **extra)
    return result
