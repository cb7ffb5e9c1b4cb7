"""Per-channel gain and offset fits: what separates two images beyond brightness and colour.

A photo through glass differs from the scene shot without it in two ways: the glass (and the
exposure of the second shot) dims and tints the whole scene, and the reflection adds structure.
Mapping an image onto a reference by the least-squares gain and offset of each channel takes the
first away; what is left is the second. `dmdnet.evaluation.invariant_psnr` scores removal that
way, and `dmdnet.training.losses` teaches removal from real pairs that way. `fit_gain` is the
brightness alone, what DMDNet-Lite's global gain is calibrated to (`dmdnet.training.calibration`).
"""
from __future__ import annotations

import torch


def fit_gain_offset(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-6
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) source and target -> (gain, offset), each (B, C, 1, 1): per image and channel
    the a and b that minimise the squared error of a * source + b against target.

    Differentiable in both inputs. A flat source channel (variance below `eps`) gets gain 0 and
    the target's mean as offset, the best a flat image can do."""
    source, target = source.flatten(2), target.flatten(2)
    source_mean, target_mean = source.mean(2, keepdim=True), target.mean(2, keepdim=True)
    centred = source - source_mean
    covariance = (centred * (target - target_mean)).mean(2, keepdim=True)
    gain = covariance / (centred.square().mean(2, keepdim=True) + eps)
    offset = target_mean - gain * source_mean
    return gain[..., None], offset[..., None]


def match_photometry(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`source` mapped onto `target` by its per-image, per-channel least-squares gain and offset."""
    gain, offset = fit_gain_offset(source, target)
    return gain * source + offset


def fit_gain(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) source and target -> (B, 1, 1, 1): per image the one gain a, over all channels
    and without offset, that minimises the squared error of a * source against target."""
    source, target = source.flatten(1), target.flatten(1)
    gain = (source * target).sum(1) / source.square().sum(1).clamp_min(eps)
    return gain[:, None, None, None]
