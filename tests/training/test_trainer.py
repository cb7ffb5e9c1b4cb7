"""A few DMDNet-Lite training steps: the loss falls and the checkpoints load and resume."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from support import SHARED

import dmdnet
from dmdnet.training.synthesis import SynthesisSettings, synthesize
from dmdnet.training.trainer import Trainer, TrainSettings
from dmdnet.weights import MEMORY_NAME, MODEL_NAME

PHOTOS = SHARED / "data" / "natural" / "bsds500" / "val"


def test_training_steps_reduce_loss_and_write_loadable_checkpoints(tmp_path):
    if not PHOTOS.is_dir():
        pytest.skip(f"natural photos not found at {PHOTOS}")
    settings = TrainSettings(out=tmp_path / "run", data=[PHOTOS], patch=64, batch=2,
                             steps=40, lr=1e-3, warmup=1, threads=2)
    trainer = Trainer(settings)
    banks_before = {k: v.clone() for k, v in trainer.model.memory.as_dict().items()}
    batch = trainer.sampler.sample(2)
    losses = [trainer.train_step(batch)["loss"] for _ in range(12)]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    changed = [k for k, v in trainer.model.memory.as_dict().items() if not torch.equal(v, banks_before[k])]
    assert changed, "memory banks should evolve during training"
    trainer.save()
    trainer.close()

    pipe = dmdnet.load_pipeline(model=settings.out / MODEL_NAME, memory=settings.out / MEMORY_NAME,
                                device="cpu")
    assert "DMDNet-Lite" in pipe.weights.label and "trained 12 steps" in pipe.weights.label
    assert pipe.max_short_side == 2 * settings.patch
    result = pipe.separate(batch[0][0])
    assert result.transmission.shape == (1, 3, 64, 64)
    assert torch.isfinite(result.transmission).all()

    resumed = Trainer(settings)
    assert resumed.step == 12
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    resumed.close()

    fine_tune = dataclasses.replace(settings, out=tmp_path / "fine_tune", init=settings.out / MODEL_NAME)
    tuner = Trainer(fine_tune)
    for _ in range(3):
        tuner.train_step(batch)
    tuner.save()
    tuner.close()
    label = dmdnet.load_pipeline(model=fine_tune.out / MODEL_NAME, device="cpu").weights.label
    assert "trained 15 steps, the last 3 a fine-tune" in label, label
    assert Trainer(fine_tune).steps_before == 12, "a resumed fine-tune keeps the steps of its start"


def test_warm_start_copies_matching_tensors_and_reports_the_rest(lite_checkpoints, tmp_path):
    """`--init`: a Lite with an extra level-1 DM block starts from Lite weights."""
    from dmdnet.checkpoints import read_checkpoint
    from dmdnet.network.model import DMDNet
    from dmdnet.network.proximity import ProximityEstimator
    from dmdnet.training.warm_start import warm_start

    source = dmdnet.load_pipeline(**{k: str(v) for k, v in lite_checkpoints.items()}, device="cpu")
    config = dataclasses.replace(source.model.config, dm_blocks=(1, 1, 1, 1, 1))
    model, estimator = DMDNet(config), ProximityEstimator(config.depth_feature_channels)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    skipped = warm_start(model, estimator, lite_checkpoints["model"], lite_checkpoints["memory"])

    source_state = source.model.state_dict()
    for name, value in model.state_dict().items():
        if name.startswith("dm_stacks.0."):
            assert torch.equal(value, fresh[name]), name
            assert f"{name} (not in the file)" in skipped
        else:
            assert torch.equal(value, source_state[name]), name
    for name in ("memory_level1_T", "memory_level1_R"):
        assert f"{name} (not in the file)" in skipped
    assert torch.equal(model.memory.get("memory_level2_T"), source.model.memory.get("memory_level2_T"))
    saved = read_checkpoint(lite_checkpoints["model"], "model")["proximity_estimator"]
    assert all(torch.equal(v, saved[k]) for k, v in estimator.state_dict().items())
    assert len(skipped) == sum(k.startswith("dm_stacks.0.") for k in fresh) + 2


def test_synthesis_ranges_reach_the_sampler(tmp_path):
    if not PHOTOS.is_dir():
        pytest.skip(f"natural photos not found at {PHOTOS}")
    trainer = Trainer(TrainSettings(out=tmp_path / "run", data=[PHOTOS], patch=32,
                                    synthesis=SynthesisSettings(strength=(0.1, 0.3), transmission_gain=(0.5, 0.9),
                                                                blur_sigma=(0.5, 1.0))))
    assert trainer.sampler.settings.strength == (0.1, 0.3)
    assert trainer.sampler.settings.transmission_gain == (0.5, 0.9)
    assert trainer.sampler.settings.blur_sigma == (0.5, 1.0)


def test_reflection_blur_range_sets_the_reflections_sharpness():
    generator = torch.Generator().manual_seed(0)
    transmission, reflection = torch.rand(3, 48, 48, generator=generator) * 0.5, torch.rand(3, 48, 48, generator=generator)
    def detail(sigma: float) -> float:
        settings = SynthesisSettings(strength=(0.5, 0.5), blur_sigma=(sigma, sigma), model_probabilities=(0, 1, 0, 0, 0))
        _, _, target = synthesize(transmission, reflection, np.random.default_rng(0), settings)
        return float(target.diff(dim=-1).abs().mean())
    assert detail(0.3) > 4 * detail(4.0)


def test_highlight_reflections_light_part_of_the_frame_and_add_up():
    generator = torch.Generator().manual_seed(1)
    transmission, reflection = torch.rand(3, 64, 64, generator=generator) * 0.5, torch.rand(3, 64, 64, generator=generator)
    settings = SynthesisSettings(strength=(0.8, 0.8), model_probabilities=(0, 0, 0, 1, 0))
    veil = SynthesisSettings(strength=(0.8, 0.8), model_probabilities=(0, 1, 0, 0, 0))
    dark_shares, veil_means, highlight_means = [], [], []
    for seed in range(8):
        blended, t, r = synthesize(transmission, reflection, np.random.default_rng(seed), settings)
        assert torch.equal(t, transmission)
        assert torch.allclose(t + r, blended) and r.min() >= 0 and blended.max() <= 1
        dark_shares.append(float((r.amax(0) < 1e-3).float().mean()))
        highlight_means.append(float(r.mean()))
        veil_means.append(float(synthesize(transmission, reflection, np.random.default_rng(seed), veil)[2].mean()))
    assert max(dark_shares) > 0.2, dark_shares
    assert np.mean(highlight_means) < 0.5 * np.mean(veil_means)


def _only(kind: str, **settings) -> SynthesisSettings:
    from dmdnet.training.synthesis import MODEL_NAMES

    return SynthesisSettings(model_probabilities=tuple(float(name == kind) for name in MODEL_NAMES), **settings)


def test_sharp_reflections_keep_their_detail_and_add_up():
    """A sharp reflection keeps most of the reflected scene's fine detail, a blurred veil of the
    same strength does not, and the input is T plus the R target."""
    generator = torch.Generator().manual_seed(2)
    transmission = torch.rand(3, 64, 64, generator=generator) * 0.5
    # detail at a scale of 2 pixels, as a photo's edges (pixel noise would not survive sigma 1)
    reflection = torch.nn.functional.interpolate(torch.rand(1, 3, 32, 32, generator=generator), size=(64, 64),
                                                 mode="bilinear", align_corners=False)[0]
    def detail(settings: SynthesisSettings, seed: int) -> float:
        blended, t, r = synthesize(transmission, reflection, np.random.default_rng(seed), settings)
        assert torch.equal(t, transmission) and torch.allclose(t + r, blended)
        return float(r.diff(dim=-1).abs().mean() / r.mean())
    sharp = [detail(_only("sharp", sharp_strength=(0.4, 0.4)), seed) for seed in range(4)]
    veil = [detail(_only("additive", strength=(0.4, 0.4)), seed) for seed in range(4)]
    assert min(sharp) > max(veil) and np.mean(sharp) > 3 * np.mean(veil), (sharp, veil)


def test_ghosted_reflection_is_the_reflection_plus_a_shifted_copy():
    from dmdnet.training.synthesis import ghosted

    reflection = torch.zeros(3, 32, 32)
    reflection[:, 16, 16] = 1
    ghost = ghosted(reflection, (6, 6), np.random.default_rng(0))
    bright = ghost[0].flatten().topk(2)
    positions = [(int(i) // 32, int(i) % 32) for i in bright.indices]
    assert positions[0] == (16, 16) and 0.5 <= float(bright.values[0]) <= 0.8
    assert float(bright.values[0] + bright.values[1]) == pytest.approx(1.0)
    assert 5 <= np.hypot(positions[1][0] - 16, positions[1][1] - 16) <= 7
