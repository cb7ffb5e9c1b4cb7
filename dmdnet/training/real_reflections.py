"""Real reflections taken out of real pairs, to composite over natural photos.

A real pair (a photo through glass and the scene shot without it) carries a real reflection:
what is left of the photo once the scene, dimmed and tinted by the glass, is taken away. Each
channel of the photo is fitted as gain * T + offset (`dmdnet.photometry.fit_gain_offset`); the
residual, shifted so that its darkest percent is zero, is the reflection layer (the offset holds
the reflection's mean, so the shift gives it back). The gains are the glass's.
`dmdnet.training.synthesis` lays these layers over natural photos (its "real reflections" model).
Only training pairs may feed it: the validation pairs (`real_pairs.VALIDATION_PAIRS`) never do.
"""
from __future__ import annotations

import torch

from ..photometry import fit_gain_offset
from .real_pairs import RealPair, load_pair
from .synthesis import GLASS_GAIN_RANGE, RealReflection

FLOOR_QUANTILE = 0.01
"""The share of a residual's values that may fall below zero before the shift (then clipped)."""


def reflection_layer(blended: torch.Tensor, transmission: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) photo through glass and scene without it, in [0, 1] -> (reflection (B, 3, H, W)
    in [0, 1], glass gain (B, 3, 1, 1)): the residual of the per-channel gain/offset fit of the photo
    on the scene, shifted so that its darkest `FLOOR_QUANTILE` is zero."""
    gain, offset = fit_gain_offset(transmission, blended)
    residual = blended - gain * transmission - offset
    floor = torch.quantile(residual.flatten(2), FLOOR_QUANTILE, dim=2)[..., None, None]
    return (residual - floor).clamp(0, 1), gain


def real_reflections(pairs: list[RealPair]) -> list[RealReflection]:
    """The reflection layer (uint8, full size) and glass gain of each pair. Fitted gains are
    clamped into `GLASS_GAIN_RANGE`: the fits of a few nearly flat channels give gains near or
    below zero, which no glass has."""
    reflections = []
    for pair in pairs:
        both = load_pair(pair)[None].float() / 255
        layer, gain = reflection_layer(both[:, :3], both[:, 3:])
        reflections.append(RealReflection(pair.name, (layer[0] * 255).round().to(torch.uint8),
                                          gain[0].clamp(*GLASS_GAIN_RANGE)))
    return reflections
