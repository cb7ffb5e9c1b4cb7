"""DMDNet-Lite's global gain on T: a no-op until fitted, one factor on T once fitted, kept through
the model files and through the composition of photos run at a reduced size."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dmdnet.checkpoints import load_dmdnet_weights, save_dmdnet_checkpoint
from dmdnet.network.config import DMDNetConfig
from dmdnet.network.model import DMDNet
from dmdnet.network.proximity import ProximityEstimator

LITE = replace(DMDNetConfig.lite(), global_gain=True)


@pytest.fixture(scope="module")
def models() -> tuple[DMDNet, DMDNet, ProximityEstimator]:
    """The Lite network with its gain and the same weights without it, in eval mode."""
    torch.manual_seed(0)
    with_gain = DMDNet(LITE).eval()
    torch.nn.init.normal_(with_gain.head.weight, std=0.05)  # so that T is not just the input
    without_gain = DMDNet(DMDNetConfig.lite()).eval()
    without_gain.load_state_dict({k: v for k, v in with_gain.state_dict().items()
                                  if not k.startswith("global_gain.")})
    without_gain.memory.load(with_gain.memory.as_dict())  # the banks are not in the state dict
    return with_gain, without_gain, ProximityEstimator(LITE.depth_feature_channels).eval()


@torch.no_grad()
def _outputs(model: DMDNet, depth_model: ProximityEstimator, image: torch.Tensor):
    return model(image, depth_model(image))


def test_an_untrained_gain_changes_nothing(models):
    with_gain, without_gain, depth_model = models
    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    for a, b in zip(_outputs(with_gain, depth_model, image), _outputs(without_gain, depth_model, image)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_fitted_gain_scales_t_alone(models):
    with_gain, without_gain, depth_model = models
    with torch.no_grad():
        with_gain.global_gain.fc.bias.fill_(math.log(0.7))
    try:
        image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        t, r = _outputs(with_gain, depth_model, image)
        t_plain, r_plain = _outputs(without_gain, depth_model, image)
        torch.testing.assert_close(t, t_plain * 0.7, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r, r_plain, rtol=0, atol=0)
    finally:
        with torch.no_grad():
            with_gain.global_gain.fc.bias.zero_()


def test_the_gain_round_trips_through_the_model_file(tmp_path):
    torch.manual_seed(3)
    model = DMDNet(LITE)
    with torch.no_grad():
        model.global_gain.fc.weight.normal_()
        model.global_gain.fc.bias.fill_(math.log(0.8))
    save_dmdnet_checkpoint(model, tmp_path / "model.pt", tmp_path / "banks.pt", config=LITE.to_dict())
    assert "global_gain.fc.weight" in torch.load(tmp_path / "model.pt", weights_only=True)["network"]
    loaded = DMDNet(LITE)
    load_dmdnet_weights(loaded, tmp_path / "model.pt")
    for name, tensor in model.global_gain.state_dict().items():
        assert torch.equal(tensor, loaded.global_gain.state_dict()[name]), name


def test_large_photos_keep_their_detail_under_the_gain(models):
    """A photo run at a reduced size comes back as gain x full-size input plus the upsampled
    correction, so its fine detail is scaled by the gain like the rest of T."""
    import torch.nn.functional as F

    from dmdnet.pipeline import Pipeline, working_size

    with_gain, _, depth_model = models
    with torch.no_grad():
        with_gain.global_gain.fc.bias.fill_(math.log(0.6))
    try:
        pipe = Pipeline(with_gain, depth_model, max_short_side=64)
        image = torch.rand(1, 3, 96, 130, generator=torch.Generator().manual_seed(4))
        result = pipe.separate(image)
        size = working_size(96, 130, pipe.max_pixels, 64)
        work = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        small = Pipeline(with_gain, depth_model).separate(work).transmission
        gain = 0.6
        expected = gain * image + F.interpolate(small - gain * work, size=(96, 130), mode="bilinear",
                                                align_corners=False)
        torch.testing.assert_close(result.transmission, expected, rtol=1e-5, atol=1e-5)
    finally:
        with torch.no_grad():
            with_gain.global_gain.fc.bias.zero_()
