"""The weights shipped in weights/dmdnet-lite: `load_pipeline()` finds them and they separate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from support import REPO_ROOT, SHARED

import dmdnet
from dmdnet.datasets import dataset_pairs
from dmdnet.evaluation import invariant_psnr, psnr, to_255
from dmdnet.images import to_tensor
from dmdnet.weights import DEPTH_FILE, HUB_REPO_ENV, MEMORY_FILE, MODEL_FILE

CEILNET = SHARED / "data" / "synthetic" / "ceilnet_table2"


@pytest.fixture(scope="module")
def default_pipeline(tmp_path_factory) -> dmdnet.Pipeline:
    with pytest.MonkeyPatch.context() as patch:
        for name in (MODEL_FILE.env_var, MEMORY_FILE.env_var, DEPTH_FILE.env_var, HUB_REPO_ENV):
            patch.delenv(name, raising=False)
        patch.chdir(tmp_path_factory.mktemp("no_authors_files"))
        return dmdnet.load_pipeline(device="cpu")


def test_default_weights_load_with_their_chosen_scale(default_pipeline):
    """Trained on photos up to 256 px, run at the 112 px `choose-scale` chose (MODEL_CARD.md)."""
    assert "project's own default weights" in default_pipeline.weights.label
    checkpoint = torch.load(REPO_ROOT / "weights" / "dmdnet-lite" / "model_latest.pt", weights_only=True)
    assert (checkpoint["trained_short_side"], checkpoint["inference_short_side"]) == (256, 112)
    assert default_pipeline.max_short_side == 112
    photo = REPO_ROOT / "examples" / "windowseat_dog.png"
    result = default_pipeline.separate(photo)
    height, width = to_tensor(photo).shape[-2:]
    assert result.transmission.shape == result.reflection.shape == (1, 3, height, width)
    assert min(result.processed_size) == min(112, height, width)
    assert torch.isfinite(result.transmission).all() and torch.isfinite(result.reflection).all()


def test_default_weights_remove_synthetic_reflections(default_pipeline):
    """T beats the input on the first 20 CEILNet pairs in PSNR and in PSNR-inv: the second takes out
    any per-channel gain and offset, so it counts reflection structure removed, not colour."""
    if not CEILNET.is_dir():
        pytest.skip(f"evaluation pairs not found at {CEILNET}")
    gains, invariant_gains = [], []  # 20 pairs: on 6 the mean swung by a dB with one hard pair
    for pair in dataset_pairs(CEILNET)[:20]:
        blended, truth = to_255(to_tensor(pair.blended)), to_255(to_tensor(pair.transmission))
        estimate = to_255(default_pipeline.separate(pair.blended).transmission)
        gains.append(psnr(estimate, truth) - psnr(blended, truth))
        invariant_gains.append(invariant_psnr(estimate, truth) - invariant_psnr(blended, truth))
    assert np.mean(gains) > 1.0, gains
    assert np.mean(invariant_gains) > 0.1, invariant_gains
