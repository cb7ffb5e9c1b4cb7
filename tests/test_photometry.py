"""The photometry-invariant PSNR and the gain/offset fit behind it, on hand-made images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmdnet.evaluation import image_scores, invariant_psnr, psnr
from dmdnet.photometry import fit_gain_offset, match_photometry


def _image(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).uniform(20, 230, (size, size, 3))


def test_fit_recovers_a_known_gain_and_offset_per_channel():
    source = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    gain = torch.tensor([[0.5, 1.0, 2.0], [1.5, 0.7, 0.9]])[..., None, None]
    offset = torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.3, -0.1]])[..., None, None]
    fitted_gain, fitted_offset = fit_gain_offset(source, gain * source + offset)
    torch.testing.assert_close(fitted_gain, gain, atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted_offset, offset, atol=1e-4, rtol=0)


def test_a_flat_source_is_mapped_to_the_target_mean():
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    matched = match_photometry(torch.full_like(target, 0.3), target)
    torch.testing.assert_close(matched, target.mean((2, 3), keepdim=True).expand_as(target))


def test_invariant_psnr_ignores_tint_and_counts_structure():
    truth = _image(0)
    tinted = truth * np.array([0.6, 0.9, 1.1]) + np.array([10.0, -5.0, 3.0])
    assert psnr(tinted, truth) < 25
    assert invariant_psnr(tinted, truth) > 100  # exact up to float rounding
    veiled = 0.7 * truth + 0.3 * _image(1)  # a reflection: structure of another image
    expected = psnr(match_photometry(*(torch.from_numpy(x / 255).permute(2, 0, 1)[None] for x in (veiled, truth)))
                    [0].permute(1, 2, 0).numpy() * 255, truth)
    assert invariant_psnr(veiled, truth) == pytest.approx(expected)
    assert 10 < invariant_psnr(veiled, truth) < 30
    assert invariant_psnr(veiled, truth) == pytest.approx(invariant_psnr(2 * veiled - 40, truth))


def test_invariant_psnr_is_at_least_psnr_by_hand():
    """Least squares over gain and offset includes gain 1, offset 0: never below plain PSNR.
    By hand for one channel pattern: estimate = truth + a constant ramp error."""
    truth = _image(2)
    ramp = np.linspace(-20, 20, truth.shape[1])[None, :, None]
    estimate = truth + ramp
    assert invariant_psnr(estimate, truth) >= psnr(estimate, truth)
    # the ramp is uncorrelated with nothing the gain can use fully: residual is ramp minus its fit
    scores = image_scores(estimate, truth)
    assert scores["psnr_inv"] == pytest.approx(invariant_psnr(estimate, truth))
    assert math.isfinite(scores["psnr_inv"])
