"""The evaluator's numbers against values worked out by hand and against scikit-image."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import uniform_filter
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dmdnet.datasets import dataset_pairs
from dmdnet.evaluation import evaluate_dataset, image_scores, luma, psnr, ssim, summarize, write_tables


def test_psnr_of_a_constant_offset():
    truth = np.full((8, 8, 3), 100.0)
    assert psnr(truth + 5, truth) == pytest.approx(20 * math.log10(255 / 5))
    assert psnr(truth, truth) == math.inf
    half = truth.copy()
    half[:4] += 10
    assert psnr(half, truth) == pytest.approx(10 * math.log10(255**2 / 50))


def test_ssim_of_flat_images():
    c1 = (0.01 * 255) ** 2
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 150.0)
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)
    assert ssim(a, b) == pytest.approx(expected)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_of_a_contrast_change():
    c2 = (0.03 * 255) ** 2
    rng = np.random.default_rng(0)
    x = rng.choice([90.0, 110.0], size=(64, 64))
    y = 100 + 2 * (x - 100)
    score = ssim(y, x)
    assert 0.5 < score < (2 * 2 * 100 + c2) / (4 * 100 + 100 + c2) + 0.05


def test_luma_matches_bt601():
    assert luma(np.array([[[255.0, 255.0, 255.0]]]))[0, 0] == pytest.approx(235.0)
    assert luma(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16.0)
    assert luma(np.array([[[255.0, 0.0, 0.0]]]))[0, 0] == pytest.approx(16 + 65.481)


def _hand_made_pair() -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour gradient with a bright square as the truth; the estimate darkened,
    blurred on one side and noisy, all on a 0-255 scale."""
    y, x = np.mgrid[:48, :64] / 64.0
    truth = np.stack([200 * x + 20, 150 * y + 40, 100 * (x + y) / 2 + 60], axis=-1)
    truth[10:20, 30:45] = 240.0
    estimate = 0.9 * truth + 8 * np.random.default_rng(3).standard_normal(truth.shape)
    estimate[:, :20] = uniform_filter(estimate[:, :20], size=(1, 5, 1))
    return np.clip(estimate, 0, 255), truth


def _uniform_ssim(x: np.ndarray, y: np.ndarray, window: int = 7) -> float:
    """SSIM written out: uniform window, sample covariance, K = (0.01, 0.03), L = 255,
    averaged over the pixels whose window lies inside the image."""
    correction = window**2 / (window**2 - 1)
    mean_x, mean_y = uniform_filter(x, window), uniform_filter(y, window)
    var_x = correction * (uniform_filter(x * x, window) - mean_x**2)
    var_y = correction * (uniform_filter(y * y, window) - mean_y**2)
    cov = correction * (uniform_filter(x * y, window) - mean_x * mean_y)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)
             / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)))
    pad = window // 2
    return float(index[pad:-pad, pad:-pad].mean())


def test_scores_agree_with_scikit_image_and_the_stated_settings():
    estimate, truth = _hand_made_pair()
    scores = image_scores(estimate, truth)
    assert scores["psnr"] == pytest.approx(peak_signal_noise_ratio(truth, estimate, data_range=255), abs=1e-12)
    assert scores["ssim"] == pytest.approx(
        structural_similarity(truth, estimate, data_range=255, channel_axis=-1), abs=1e-12)
    truth_y = rgb2ycbcr(truth.astype(np.uint8))[..., 0]
    estimate_y = rgb2ycbcr(estimate.astype(np.uint8))[..., 0]
    assert scores["psnr_y"] == pytest.approx(peak_signal_noise_ratio(truth_y, estimate_y, data_range=255), abs=1e-12)
    assert scores["ssim_y"] == pytest.approx(structural_similarity(truth_y, estimate_y, data_range=255), abs=1e-12)
    # the same numbers from the formulas: MSE over all RGB values, per-channel 7x7 uniform SSIM
    mse = np.mean((estimate - truth) ** 2)
    assert scores["psnr"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    per_channel = [_uniform_ssim(estimate[..., c], truth[..., c]) for c in range(3)]
    assert scores["ssim"] == pytest.approx(np.mean(per_channel), abs=1e-9)
    assert scores["ssim_y"] == pytest.approx(_uniform_ssim(estimate_y, truth_y), abs=1e-9)
    gaussian = structural_similarity(truth, estimate, data_range=255, channel_axis=-1, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)
    assert abs(scores["ssim"] - gaussian) > 1e-3, "the hand-made pair tells the two windows apart"


def test_image_scores_of_identical_images():
    image = np.random.default_rng(1).uniform(0, 255, (20, 20, 3))
    scores = image_scores(image, image)
    assert scores["psnr"] == math.inf and scores["psnr_y"] == math.inf
    assert scores["ssim"] == pytest.approx(1.0) and scores["ssim_y"] == pytest.approx(1.0)


def _write_dataset(root, with_reflection=True):
    for sub in ("blended", "transmission_layer", "reflection_layer"):
        (root / sub).mkdir(parents=True)
    t = np.full((16, 16, 3), 100, np.uint8)
    r = np.full((16, 16, 3), 20, np.uint8)
    Image.fromarray(t + r).save(root / "blended" / "a.png")
    Image.fromarray(t).save(root / "transmission_layer" / "a.png")
    if with_reflection:
        Image.fromarray(r).save(root / "reflection_layer" / "a.png")
    Image.fromarray(t).save(root / "blended" / "b.png")
    return t, r


def test_dataset_evaluation_and_tables(tmp_path):
    t, r = _write_dataset(tmp_path / "set")
    pairs = dataset_pairs(tmp_path / "set")
    assert [(p.name, p.transmission is not None, p.reflection is not None) for p in pairs] == [
        ("a", True, True), ("b", False, False)]
    perfect = {"a": (t.astype(float), r.astype(float))}
    scores = evaluate_dataset(tmp_path / "set", lambda path: perfect.get(path.stem, (t * 1.0, r * 1.0)))
    assert scores.without_truth == [{"dataset": "set", "image": "b", "reason": "no transmission_layer/ image"}]
    assert scores.skipped == []
    rows = scores.rows
    by_key = {(row["method"], row["layer"]): row for row in rows}
    assert set(by_key) == {("model", "T"), ("model", "R"), ("identity", "T")}
    assert by_key[("model", "T")]["psnr"] == math.inf
    assert by_key[("identity", "T")]["psnr"] == pytest.approx(20 * math.log10(255 / 20))
    summary = summarize(rows)
    assert {s["images"] for s in summary} == {1}
    markdown = write_tables(rows, tmp_path / "out")
    assert "| set | identity | T | 1 | 22.11 |" in markdown
    assert (tmp_path / "out" / "per_image.csv").read_text().count("\n") == 4
