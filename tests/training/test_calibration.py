"""Fitting DMDNet-Lite's global gain: the ridge fit, and `calibrate` end to end on real files."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import dmdnet
from dmdnet.network.model import STATISTICS, GlobalGain
from dmdnet.training.calibration import GainSamples, calibrate_files, fit_gain_regression
from dmdnet.training.real_pairs import VALIDATION_PAIRS


def _predict(weight: torch.Tensor, bias: torch.Tensor, statistics: np.ndarray) -> np.ndarray:
    return statistics @ weight.double().numpy().T + bias.double().numpy()


def test_a_weak_ridge_recovers_a_linear_law_in_raw_statistics():
    rng = np.random.default_rng(0)
    statistics = rng.uniform(0, 1, (300, STATISTICS))
    log_gains = (0.4 * statistics[:, 2] - 0.3 * statistics[:, 10] - 0.1)[:, None]
    weight, bias = fit_gain_regression(GainSamples(statistics, log_gains), ridge=1e-6)
    assert weight.shape == (1, STATISTICS) and bias.shape == (1,)
    fresh = rng.uniform(0, 1, (50, STATISTICS))
    expected = (0.4 * fresh[:, 2] - 0.3 * fresh[:, 10] - 0.1)[:, None]
    np.testing.assert_allclose(_predict(weight, bias, fresh), expected, atol=1e-4)


def test_a_strong_ridge_shrinks_towards_a_gain_of_one():
    rng = np.random.default_rng(1)
    statistics = rng.uniform(0, 1, (40, STATISTICS))
    log_gains = np.full((40, 1), -0.4)
    weight, bias = fit_gain_regression(GainSamples(statistics, log_gains), ridge=1e6)
    assert np.abs(_predict(weight, bias, statistics)).max() < 1e-3
    weight, bias = fit_gain_regression(GainSamples(statistics, log_gains), ridge=1e-3)
    np.testing.assert_allclose(_predict(weight, bias, statistics), log_gains, atol=1e-3)


def _write_pairs(folder, rng: np.random.Generator, stems: list[str]) -> None:
    """Pairs whose scene is darker than the photo through glass by a factor that the photo's
    brightness tells: bright photos (a strong veil) hide a much darker scene."""
    for sub in ("blended", "transmission_layer"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        level = rng.uniform(0.2, 0.8)
        blended = np.clip(level + 0.15 * rng.standard_normal((40, 56, 3)), 0, 1)
        gain = 1.0 - 0.6 * level
        for sub, image in (("blended", blended), ("transmission_layer", gain * blended)):
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / sub / f"{stem}.png")


def test_calibrate_files_fits_the_gain_and_writes_loadable_files(tmp_path, lite_checkpoints):
    folder = tmp_path / "zhang_real82"
    rng = np.random.default_rng(2)
    held_out = [name.split("/")[1] for name in VALIDATION_PAIRS]
    _write_pairs(folder, rng, [f"t{i:02d}" for i in range(24)] + held_out)
    result = calibrate_files(lite_checkpoints["model"], lite_checkpoints["memory"], [folder], tmp_path / "out",
                             crops_per_pair=1)
    assert result.samples == 2 * 24
    assert result.validation_psnr[result.ridge] > result.validation_before + 3, result

    saved = torch.load(tmp_path / "out" / "model_latest.pt", weights_only=True)
    assert saved["config"]["global_gain"] is True
    assert saved["global_gain_fit"]["ridge"] == result.ridge
    assert sorted(saved["global_gain_fit"]["validation_pairs"]) == sorted(VALIDATION_PAIRS)
    pipe = dmdnet.load_pipeline(tmp_path / "out" / "model_latest.pt", tmp_path / "out" / "memory_banks_latest.pt")
    assert isinstance(pipe.model.global_gain, GlobalGain)
    dark, bright = (torch.full((1, 3, 40, 56), level) for level in (0.25, 0.75))
    gains = [float(pipe.separate(image, diagnostics=True).diagnostics.global_gain) for image in (dark, bright)]
    assert gains[0] > gains[1] + 0.1, gains


def test_calibrate_command_reports_missing_files_in_one_line(tmp_path):
    command = [sys.executable, "-m", "dmdnet", "calibrate", "--model", str(tmp_path / "nope.pt"),
               "--real", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not found" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
