"""Real training pairs: a photo through glass and the shot of the same scene without the glass.

Real pairs teach what synthesis cannot: how real glass dims and tints the scene and what
real reflections look like. They have no reflection ground truth, and the two shots differ
slightly in position and exposure; `dmdnet.training.losses` says how they are scored.

A fixed set of pairs is held out for validation and model selection (`VALIDATION_PAIRS`):
whole scenes, so that no training pair shows the same scene as a validation pair.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..datasets import dataset_pairs
from .synthesis import load_images, random_patch

VALIDATION_PAIRS = ("zhang_real82/027", "zhang_real82/037", "zhang_real82/043", "zhang_real82/057",
                    "zhang_real82/072", "zhang_real82/076", "zhang_real82/090", "zhang_real82/096",
                    "zhang_real82/104", "zhang_real82/109")
"""Held-out pairs, named `<folder>/<stem>`. Each is the only shot of its scene in
`real_train/zhang_real82` (checked on a contact sheet of all 82: many scenes there have
two or three shots with consecutive ids, e.g. 048-050). Fixed before any score was seen."""


@dataclass(frozen=True)
class RealPair:
    name: str
    """`<folder>/<stem>`, the name `VALIDATION_PAIRS` uses."""
    blended: Path
    transmission: Path


def real_pairs(folders: Iterable[str | Path]) -> list[RealPair]:
    """Every pair with a transmission ground truth in folders of the `blended/`,
    `transmission_layer/` layout."""
    return [RealPair(f"{Path(folder).name}/{pair.name}", pair.blended, pair.transmission)
            for folder in folders for pair in dataset_pairs(Path(folder)) if pair.transmission]


def split_validation(pairs: list[RealPair], held_out: Iterable[str] = VALIDATION_PAIRS
                     ) -> tuple[list[RealPair], list[RealPair]]:
    """(training pairs, validation pairs): the pairs named in `held_out` never train."""
    held_out = set(held_out)
    return ([p for p in pairs if p.name not in held_out], [p for p in pairs if p.name in held_out])


def reflection_estimate(blended: torch.Tensor, transmission: torch.Tensor) -> torch.Tensor:
    """What the glass added to the scene, `clip(I - T, 0, 1)`: the reflection target of a
    real pair, which has none of its own."""
    return (blended - transmission).clamp(0, 1)


def load_pair(pair: RealPair) -> torch.Tensor:
    """(6, H, W) uint8: blended then transmission, so that one crop cuts both alike."""
    blended, transmission = load_images([pair.blended, pair.transmission])
    if blended.shape != transmission.shape:
        raise ValueError(f"{pair.name}: blended {tuple(blended.shape)} and transmission "
                         f"{tuple(transmission.shape)} differ in size")
    return torch.cat([blended, transmission])


class RealPairSampler:
    """Draws random crops of real pairs with the synthetic pairs' augmentation (rescale,
    flips, rotations, P x P crop), blended and transmission cut alike."""

    def __init__(self, pairs: list[RealPair], patch: int, seed: int | tuple[int, ...] = 0):
        if not pairs:
            raise ValueError("no real training pairs (every pair found is held out for validation)")
        self.names = [pair.name for pair in pairs]
        self.pairs = [load_pair(pair) for pair in pairs]
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, T target, R estimate), each (batch, 3, P, P) in [0, 1]."""
        crops = torch.stack([random_patch(self.pairs[int(self.rng.integers(len(self.pairs)))],
                                          self.patch, self.rng) for _ in range(batch)])
        blended, transmission = crops[:, :3], crops[:, 3:]
        return blended, transmission, reflection_estimate(blended, transmission)


def validation_images(pairs: list[RealPair]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, input, T) of each validation pair, (1, 3, H, W) in [0, 1] at full size."""
    images = []
    for pair in pairs:
        both = load_pair(pair)[None].float() / 255
        images.append((pair.name, both[:, :3], both[:, 3:]))
    return images
