"""Scene lights: small lamps in the transmission, so that bright blobs are not always reflections."""
from __future__ import annotations

import numpy as np
import torch
from test_real_pairs import PHOTOS

from dmdnet.training.synthesis import (
    NO_REFLECTION,
    PairSampler,
    SynthesisSettings,
    list_images,
    random_patch,
    with_scene_lights,
)


def test_scene_lights_add_small_saturated_lamps_and_only_brighten():
    photo = torch.full((3, 128, 128), 0.3)
    lit = with_scene_lights(photo, np.random.default_rng(0), count=(2, 2))
    assert (lit >= photo).all() and lit.max() <= 1
    saturated = (lit[0] > 0.99).float().mean()
    changed = ((lit - photo).abs().amax(0) > 0.05).float().mean()
    assert 0 < saturated < changed < 0.5, (saturated, changed)  # clipped cores in glows; most of the frame as it was


def test_the_sampler_keeps_the_lamps_in_the_target_and_leaves_runs_without_them_unchanged():
    files = list_images([PHOTOS])[:4]
    blended, transmission, _ = PairSampler(files, 32, 2, SynthesisSettings(scene_light_share=1.0)).sample(
        4, NO_REFLECTION)
    plain = PairSampler(files, 32, 2, SynthesisSettings()).sample(1, NO_REFLECTION)[1][0]
    assert torch.equal(blended, transmission)
    assert (transmission[0] >= plain).all() and (transmission[0] - plain).max() > 0.3  # the same crop, lit
    assert (transmission[:, 0] > 0.99).flatten(1).any(1).all()  # every scene got a lamp's clipped core

    # a share of 0 draws no random number for it, so runs from before the option keep their crops
    sampler = PairSampler(files, 32, 5, SynthesisSettings())
    rng = np.random.default_rng(5)
    for crop in sampler.sample(3, NO_REFLECTION)[1]:
        assert torch.equal(crop, random_patch(sampler.images[int(rng.integers(len(sampler.images)))], 32, rng))
