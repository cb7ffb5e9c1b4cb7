"""Real reflections as a synthesis source: the layer a real pair carries, laid over natural photos."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from support import REPO_ROOT
from test_real_pairs import PHOTOS, ZHANG, write_pair_folder

from dmdnet.training.real_pairs import real_pairs
from dmdnet.training.real_reflections import reflection_layer, real_reflections
from dmdnet.training.synthesis import (
    GLASS_GAIN_RANGE,
    MODEL_NAMES,
    REAL_REFLECTIONS,
    PairSampler,
    RealReflection,
    SynthesisSettings,
    composite,
    list_images,
)


def smooth_field(generator: torch.Generator, size: int = 128, cells: int = 32) -> torch.Tensor:
    coarse = torch.rand(1, 3, cells, cells, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]


def test_the_reflection_layer_is_what_the_glass_added_beyond_dimming_and_tint():
    """I = gain * T + R with R zero over part of the frame: the layer is R and the gain the glass's."""
    generator = torch.Generator().manual_seed(0)
    transmission = smooth_field(generator).clamp(0, 1)
    reflection = (smooth_field(generator) - 0.4).clamp_min(0) * 0.5  # a third or so of each channel is 0
    gain = torch.tensor([0.9, 0.8, 0.7])[:, None, None]
    layer, fitted_gain = reflection_layer((gain * transmission + reflection)[None], transmission[None])
    assert torch.allclose(fitted_gain[0].flatten(), gain.flatten(), atol=0.06)
    assert (layer[0] - reflection).abs().mean() < 0.01
    assert float(torch.corrcoef(torch.stack([layer.flatten(), reflection.flatten()]))[0, 1]) > 0.97


def test_real_reflections_clamp_the_glass_gain_of_each_pair(tmp_path):
    """A flat transmission gives no gain to fit (0): it is clamped into the range glass has."""
    folder = write_pair_folder(tmp_path / "pairs", {"a": (40, 80, 120), "b": (120, 40, 20)})
    reflections = real_reflections(real_pairs([folder]))
    assert [r.name for r in reflections] == ["pairs/a", "pairs/b"]
    for reflection in reflections:
        assert reflection.layer.dtype == torch.uint8 and reflection.layer.shape == (3, 80, 96)
        assert reflection.glass_gain.shape == (3, 1, 1)
        assert GLASS_GAIN_RANGE[0] <= reflection.glass_gain.min() <= reflection.glass_gain.max() <= GLASS_GAIN_RANGE[1]
        # the blended photo adds a horizontal ramp of 0-60 levels: the layer is that ramp
        ramp = reflection.layer.float().mean((0, 1))
        assert ramp[-1] - ramp[0] > 50 and (ramp.diff() >= -1).all()


def test_a_composite_dims_the_scene_and_keeps_it_as_the_target():
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(1)
    transmission = torch.rand(3, 32, 32, generator=generator) * 0.6
    reflection = torch.rand(3, 32, 32, generator=generator) * 0.3
    gain = torch.tensor([0.9, 0.8, 0.7])[:, None, None]
    settings = SynthesisSettings(real_reflection_strength=(1.0, 1.0), reflection_colour_jitter=0.0,
                                 glass_gain_jitter=0.0)
    blended, t, r = composite(transmission, reflection, gain, rng, settings)
    assert torch.equal(t, transmission)
    assert torch.allclose(blended, gain * transmission + reflection)
    assert torch.allclose(r, reflection, atol=1e-6)
    jittered = SynthesisSettings()
    for seed in range(5):
        blended, t, r = composite(transmission, reflection, gain, np.random.default_rng(seed), jittered)
        assert blended.min() >= 0 and blended.max() <= 1 and r.min() >= 0
        assert not torch.allclose(blended, gain * transmission + reflection)


def test_the_sampler_mixes_real_reflections_in_at_their_share_and_leaves_the_rest_as_it_was():
    files = list_images([PHOTOS])[:6]
    layer = torch.zeros(3, 200, 200, dtype=torch.uint8)
    layer[1] = 255  # a green reflection: only composites add nothing to red and blue
    reflections = [RealReflection("pairs/a", layer, torch.ones(3, 1, 1))]
    settings = SynthesisSettings(real_reflection_share=0.5, real_reflection_strength=(1.0, 1.0))
    sampler = PairSampler(files, 32, 0, settings, reflections)
    def green_only(r: torch.Tensor) -> torch.Tensor:
        return (r[:, [0, 2]].amax((1, 2, 3)) == 0) & (r[:, 1].mean((1, 2)) > 0.05)

    assert 0.35 < float(green_only(sampler.sample(200)[2]).float().mean()) < 0.65
    assert green_only(sampler.sample(4, REAL_REFLECTIONS)[2]).all()

    # with no share (or no reflections) the draws are the five models', crop for crop the same
    without = PairSampler(files, 32, 5, SynthesisSettings()).sample(6)
    with_unused = PairSampler(files, 32, 5, SynthesisSettings(), reflections).sample(6)
    assert all(torch.equal(a, b) for a, b in zip(without, with_unused))
    assert set(MODEL_NAMES).isdisjoint({REAL_REFLECTIONS})


def test_the_data_report_prints_every_source_and_the_real_pairs():
    if not ZHANG.is_dir():
        import pytest
        pytest.skip(f"real training pairs not found at {ZHANG}")
    result = subprocess.run([sys.executable, "scripts/data_report.py", "--count", "8", "--patch", "64",
                             "--data", str(PHOTOS), "--real", str(ZHANG)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [row.split(" | ")[0][2:] for row in rows]
    assert names == [*MODEL_NAMES, REAL_REFLECTIONS, "mix, as the trainer draws it", "real training pairs (72)"]
    for row in rows:
        numbers = [float(x) for cell in row.strip(" |").split(" | ")[1:] for x in cell.split(" / ")]
        assert len(numbers) == 4 and all(np.isfinite(numbers)) and 5 < min(numbers) < max(numbers) < 60
    assert "mix against real crops:" in result.stdout
