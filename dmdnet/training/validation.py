"""How checkpoints are judged: scores on fixed synthetic pairs and on held-out real pairs,
and the rule that ranks them (`selection_key`). Training and calibration both score here."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..evaluation import batch_psnr, invariant_psnr, to_255
from ..network.model import DMDNet
from ..pipeline import Pipeline

PSNR_CAP = 100.0
"""dB: where an untouched photo's invariant PSNR stops (as `batch_psnr` stops), so logs stay finite."""


@torch.no_grad()
def validate(model: DMDNet, depth_model: nn.Module, pairs: tuple[torch.Tensor, ...], device) -> dict:
    """Mean `pair_scores` on fixed synthetic pairs (the caller switches the models to eval mode
    and back)."""
    inputs, t_targets, _ = pairs
    outputs = _transmissions(model, depth_model, inputs, device)
    return mean_scores([pair_scores(*triple) for triple in zip(outputs.split(1), inputs.split(1),
                                                               t_targets.split(1))])


@torch.no_grad()
def validate_reflection_free(model: DMDNet, depth_model: nn.Module, photos: torch.Tensor, device) -> dict:
    """Mean PSNR and invariant PSNR of T against its input for (N, 3, H, W) photos with no reflection
    in them: how much of a scene the network takes away where there is nothing to remove (higher:
    less). Watched, not selected on: a run can learn to take bright scene structure for reflection
    (docs/training.md, "Scenes taken for reflections")."""
    outputs = _transmissions(model, depth_model, photos, device)
    return mean_scores([{"psnr_t": batch_psnr(output, photo),
                         "psnr_inv_t": min(invariant_psnr(to_255(output), to_255(photo)), PSNR_CAP)}
                        for output, photo in zip(outputs.split(1), photos.split(1))])


def _transmissions(model: DMDNet, depth_model: nn.Module, inputs: torch.Tensor, device) -> torch.Tensor:
    """The model's T for a batch of inputs, four at a time, on the CPU."""
    outputs = []
    for image in inputs.split(4):
        image = image.to(device)
        outputs.append(model(image, depth_model(image))[0].cpu())
    return torch.cat(outputs)


def pair_scores(prediction: torch.Tensor, image: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR and photometry-invariant PSNR (`dmdnet.evaluation.invariant_psnr`) of a predicted T
    and of the identity, for (1, 3, H, W) prediction, input and target."""
    truth = to_255(target)
    return {"psnr_t": batch_psnr(prediction, target), "psnr_identity": batch_psnr(image, target),
            "psnr_inv_t": invariant_psnr(to_255(prediction), truth),
            "psnr_inv_identity": invariant_psnr(to_255(image), truth)}


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Each score's mean over a list of `pair_scores`."""
    return {name: sum(score[name] for score in scores) / len(scores) for name in scores[0]}


def validate_real(model: DMDNet, depth_model: nn.Module, pairs: list[tuple[str, torch.Tensor, torch.Tensor]],
                  device, short_side: int) -> dict:
    """Mean `pair_scores` on the real validation pairs at their full size, and the model's
    invariant PSNR per pair. The model runs as `Pipeline` runs photos (at `short_side`, the
    full-size T composed from it), so scores compare across scales."""
    return pipeline_scores(Pipeline(model, depth_model, device, max_short_side=short_side), pairs)


def pipeline_scores(pipeline: Pipeline, pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict:
    """Mean `pair_scores` of `pipeline` on (name, image, target) pairs at their full size, and its
    invariant PSNR per pair: how training checkpoints and calibrated gains are both judged."""
    scores = {name: pair_scores(pipeline.separate(image).transmission.cpu(), image, target)
              for name, image, target in pairs}
    return {**mean_scores(list(scores.values())),
            "per_pair_inv": {name: round(score["psnr_inv_t"], 3) for name, score in scores.items()}}


def invariant_gain(scores: dict) -> float:
    """What a model's T gains over the identity on the photometry-invariant PSNR."""
    return scores["psnr_inv_t"] - scores["psnr_inv_identity"]


def psnr_gain(scores: dict) -> float:
    """What a model's T gains over the identity on plain PSNR (photometry counts)."""
    return scores["psnr_t"] - scores["psnr_identity"]


def selection_key(scores: dict) -> tuple[float, float] | None:
    """How checkpoints are ranked: the real validation split's invariant gain first (to 0.01 dB),
    its PSNR second. None (never kept) where the synthetic pairs show a collapse: their T no
    better than the input."""
    synthetic, real = scores.get("validation"), scores.get("real_validation")
    if real is None or (synthetic is not None and synthetic["psnr_t"] <= synthetic["psnr_identity"]):
        return None
    return round(invariant_gain(real), 2), real["psnr_t"]
