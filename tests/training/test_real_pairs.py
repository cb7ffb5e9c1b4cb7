"""Real pairs in training: crops cut alike, the validation split never trains, the loss falls."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from support import REPO_ROOT, SHARED

from dmdnet.training.real_pairs import (
    VALIDATION_PAIRS,
    RealPairSampler,
    real_pairs,
    reflection_estimate,
    split_validation,
)
from dmdnet.training.trainer import Trainer, TrainSettings

ZHANG = SHARED / "data" / "real_train" / "zhang_real82"
PHOTOS = SHARED / "data" / "natural" / "bsds500" / "val"


def write_pair_folder(folder, colours: dict[str, tuple[int, int, int]], size=(96, 80)):
    """Pairs whose transmission is one flat colour and whose blended adds a gradient."""
    for sub in ("blended", "transmission_layer"):
        (folder / sub).mkdir(parents=True)
    ramp = np.linspace(0, 60, size[0], dtype=np.float64)[None, :, None]
    for stem, colour in colours.items():
        t = np.broadcast_to(np.array(colour, dtype=np.float64), (size[1], size[0], 3))
        Image.fromarray(t.astype(np.uint8)).save(folder / "transmission_layer" / f"{stem}.png")
        Image.fromarray(np.clip(t + ramp, 0, 255).astype(np.uint8)).save(folder / "blended" / f"{stem}.png")
    return folder


def test_validation_pairs_never_reach_the_training_sampler(tmp_path):
    """Held-out pairs are a colour no training pair has: no sampled crop may show it."""
    held_out_colour = (250, 10, 10)
    colours = {f"{i:03d}": (10, 10 + 20 * i, 200) for i in range(6)}
    colours.update({"100": held_out_colour, "101": held_out_colour})
    folder = write_pair_folder(tmp_path / "pairs", colours)
    train, validation = split_validation(real_pairs([folder]), ["pairs/100", "pairs/101"])
    assert [p.name for p in validation] == ["pairs/100", "pairs/101"]
    assert len(train) == 6
    sampler = RealPairSampler(train, patch=32, seed=3)
    for _ in range(40):
        _, transmission, _ = sampler.sample(4)
        red = (transmission[:, 0] > 0.9) & (transmission[:, 2] < 0.2)
        assert not red.any(), "a held-out pair was sampled for training"


def test_trainer_holds_out_the_fixed_split_of_the_real_training_pairs(tmp_path):
    if not ZHANG.is_dir() or not PHOTOS.is_dir():
        pytest.skip(f"real training pairs not found at {ZHANG}")
    trainer = Trainer(TrainSettings(out=tmp_path / "run", data=[PHOTOS], real=[ZHANG], validation=None,
                                    patch=64, batch=2, threads=2))
    validated = {name for name, *_ in trainer.real_validation}
    assert validated == set(VALIDATION_PAIRS)
    assert not validated & set(trainer.real_sampler.names)
    assert len(trainer.real_sampler.names) == 82 - len(VALIDATION_PAIRS)
    # the default synthesis lays the training pairs' reflections over natural photos, never the held-out ones'
    assert [reflection.name for reflection in trainer.sampler.reflections] == trainer.real_sampler.names


def test_real_crops_cut_blended_and_transmission_alike(tmp_path):
    folder = write_pair_folder(tmp_path / "pairs", {"a": (40, 80, 120), "b": (120, 40, 20)})
    blended, transmission, reflection = RealPairSampler(real_pairs([folder]), patch=32, seed=0).sample(8)
    assert blended.shape == transmission.shape == reflection.shape == (8, 3, 32, 32)
    # the blended photo is the flat transmission plus a horizontal ramp: after any flip or
    # rotation the difference still varies along one axis only, and R is that difference
    assert torch.allclose(reflection, reflection_estimate(blended, transmission))
    assert (reflection.amax((1, 2, 3)) > 0.05).all()
    assert torch.allclose(transmission.amin((2, 3)), transmission.amax((2, 3)), atol=1e-5), "T must stay flat"


def test_a_few_steps_with_real_pairs_lower_their_loss(tmp_path):
    if not ZHANG.is_dir() or not PHOTOS.is_dir():
        pytest.skip(f"real training pairs not found at {ZHANG}")
    trainer = Trainer(TrainSettings(out=tmp_path / "run", data=[PHOTOS], real=[ZHANG], validation=None,
                                    patch=64, batch=4, real_fraction=0.5, lr=1e-3, warmup=1, threads=2))
    batch = trainer.sample()
    assert batch[3].tolist() == [False, False, True, True]
    first = trainer.train_step(batch)
    for _ in range(10):
        last = trainer.train_step(batch)
    assert last["real_l1_t"] < 0.9 * first["real_l1_t"], (first, last)
    assert last["loss"] < first["loss"]


def test_matched_real_loss_ignores_a_per_channel_gain_and_offset():
    """A real pair's T that is its ground truth under any per-channel gain and offset costs
    nothing (L1, gradient and perceptual); a synthetic pair's still does unless it is matched too
    (then only its absolute L1 sees the tint), the unmatched loss still does, and structure
    errors still count."""
    from dmdnet.training.losses import LossWeights, TrainingObserver, separation_loss
    from dmdnet.training.perceptual import VGGFeatures
    from dmdnet.weights import VGG_FILE

    class NoMemory(TrainingObserver):
        def balance_loss(self, stream):
            return torch.zeros(())

        def memory_losses(self, stream):
            return torch.zeros(()), torch.zeros(())

    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 32, 32, generator=generator)
    tinted = target * torch.tensor([0.6, 0.8, 1.1])[:, None, None] + torch.tensor([0.05, -0.02, 0.1])[:, None, None]
    zeros = torch.zeros_like(target)
    real = torch.tensor([False, True])
    vgg = VGGFeatures(SHARED / VGG_FILE.relative_to("../shared"))
    _, plain = separation_loss(tinted, zeros, target, zeros, NoMemory(), LossWeights(real_matched=False), real, vgg)
    _, matched = separation_loss(tinted, zeros, target, zeros, NoMemory(), LossWeights(), real, vgg)
    assert plain["real_l1_t"] > 0.05 and plain["real_perceptual"] > 0.05
    for name in ("real_l1_t", "real_gradient", "real_perceptual"):
        assert matched[name] < 1e-4, (name, matched[name])
    assert matched["synthetic_l1_t"] == pytest.approx(plain["synthetic_l1_t"])
    _, both = separation_loss(tinted, zeros, target, zeros, NoMemory(),
                              LossWeights(matched=True, absolute_l1_t=0.2), real, vgg)
    assert both["synthetic_l1_t"] < 1e-4 and both["synthetic_gradient"] < 1e-4
    assert both["synthetic_absolute_l1_t"] == pytest.approx(plain["synthetic_l1_t"])
    shuffled = tinted[:, :, torch.randperm(32, generator=generator)]
    _, wrong = separation_loss(shuffled, zeros, target, zeros, NoMemory(), LossWeights(), real, vgg)
    assert wrong["real_l1_t"] > 0.05 and wrong["real_perceptual"] > 0.05


def test_bfloat16_perceptual_term_stays_near_float32():
    """`--perceptual-dtype bfloat16` changes the VGG's arithmetic, not the term: loss and the
    gradient it sends back to T within a few percent of float32's, the result in T's dtype."""
    from dmdnet.training.perceptual import VGGFeatures, perceptual_loss
    from dmdnet.weights import VGG_FILE

    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 64, 64, generator=generator)
    prediction = (target + 0.1 * torch.randn(2, 3, 64, 64, generator=generator)).clamp(0, 1)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        vgg = VGGFeatures(SHARED / VGG_FILE.relative_to("../shared"), compute_dtype=dtype)
        leaf = prediction.clone().requires_grad_()
        loss = perceptual_loss(vgg, leaf, target)
        loss.sum().backward()
        results[dtype] = (loss.detach(), leaf.grad)
    assert results[torch.bfloat16][0].dtype == torch.float32
    (loss32, grad32), (loss16, grad16) = results[torch.float32], results[torch.bfloat16]
    assert torch.allclose(loss16, loss32, rtol=0.02), (loss16, loss32)
    assert (grad16 - grad32).norm() < 0.1 * grad32.norm()
    assert not torch.equal(grad16, grad32)


def test_fit_gap_splits_evaluate_scores_into_training_and_held_out_pairs(tmp_path):
    """scripts/fit_gap.py puts exactly the VALIDATION_PAIRS on the held-out side."""
    spec = importlib.util.spec_from_file_location("fit_gap", REPO_ROOT / "scripts" / "fit_gap.py")
    fit_gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_gap)
    held_out = VALIDATION_PAIRS[0].split("/")[1]
    rows = ["dataset,image,method,layer,psnr,ssim,psnr_y,ssim_y,psnr_inv",
            f"zhang_real82,{held_out},model,T,30,0,0,0,0", f"zhang_real82,{held_out},identity,T,20,0,0,0,0",
            "zhang_real82,001,model,T,21,0,0,0,0", "zhang_real82,001,identity,T,19,0,0,0,0",
            "zhang_real82,002,model,T,23,0,0,0,0", "zhang_real82,002,identity,T,19,0,0,0,0",
            "zhang_real82,002,model,R,5,0,0,0,0"]
    csv_path = tmp_path / "per_image.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    groups = fit_gap.split_summary(csv_path)
    assert {key: (group["psnr"], group["images"]) for key, group in groups.items()} == {
        ("held out", "model"): (30.0, 1), ("held out", "identity"): (20.0, 1),
        ("train", "model"): (22.0, 2), ("train", "identity"): (19.0, 2)}
