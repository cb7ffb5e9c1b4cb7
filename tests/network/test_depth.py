"""MiDaS DPT-NeXt-ViT-L: checkpoint key conversion and parity with the golden depth outputs."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dmdnet.network.depth import STRIDE, MidasDPT, midas_to_ours, ours_to_midas

PARITY_CASES = ["parity_64x64_s3.pt", "parity_72x88_s7.pt"]
OUTPUTS = ["depth", "layer1", "layer2", "layer3"]
TOLERANCE = {torch.float64: 1e-6, torch.float32: 3e-3}


@pytest.fixture(scope="module")
def seeded_midas(seeded, official_midas_shapes) -> dict:
    """The golden weight rule applied to the MiDaS key names."""
    return seeded.seeded_state_dict(official_midas_shapes)


@pytest.fixture(scope="module")
def midas_model(seeded_midas) -> MidasDPT:
    """One eval-mode model with the seeded weights, loaded strictly, shared by the module.

    The seeded weights are float32 values, so moving the model between float32
    and float64 is lossless and the tests may do it in any order.
    """
    model = MidasDPT()
    model.load_state_dict(midas_to_ours(seeded_midas), strict=True)
    return model.eval()


def test_round_trip_on_manifest(official_midas_shapes):
    original = copy.deepcopy(official_midas_shapes)
    ours = midas_to_ours(official_midas_shapes)
    assert len(ours) == len(official_midas_shapes) == 962
    assert ours_to_midas(ours) == official_midas_shapes
    assert official_midas_shapes == original  # inputs untouched


def test_backbone_names_follow_the_verified_mapping(official_midas_shapes):
    ours = midas_to_ours(official_midas_shapes)
    assert ours["backbone.stages.0.blocks.0.mlp.fc1.weight"] == [288, 96, 1, 1]
    assert "backbone.stages.2.blocks.29.mlp.fc2.bias" in ours  # features.36
    assert "backbone.stages.3.blocks.0.mhca.projection.weight" in ours  # features.37
    assert ours["backbone.head.fc.weight"] == [1000, 1024]
    assert "backbone.norm.running_var" in ours


def test_unwraps_model_dict_and_module_prefix(official_midas_shapes):
    wrapped = {"model": {f"module.{k}": v for k, v in official_midas_shapes.items()}}
    assert midas_to_ours(wrapped) == midas_to_ours(official_midas_shapes)


@pytest.mark.parametrize("key", ["pretrained.model.features.40.norm.weight", "decoder.weight"])
def test_unknown_keys_are_rejected(key):
    with pytest.raises(ValueError):
        midas_to_ours({key: 0})


def test_strict_load_covers_every_tensor(midas_model, seeded_midas):
    ours = midas_to_ours(seeded_midas)
    model_sd = midas_model.state_dict()
    assert set(model_sd) == set(ours)
    assert all(model_sd[k].shape == v.shape for k, v in ours.items())


def test_rejects_sizes_not_multiple_of_stride(midas_model):
    with pytest.raises(ValueError):
        midas_model(torch.zeros(1, 3, STRIDE, STRIDE + 8))


@pytest.mark.parametrize("case", PARITY_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_parity_with_golden_depth(midas_model, golden_dir, case, dtype):
    golden = torch.load(golden_dir / case, weights_only=True)
    image = golden["image"]
    pad_h, pad_w = -image.shape[-2] % STRIDE, -image.shape[-1] % STRIDE
    padded = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect")
    model = midas_model.to(dtype)
    with torch.no_grad():
        result = model(padded.to(dtype))
    expected = dict(golden["depth"], depth=golden["depth"]["final_output"])
    for name in OUTPUTS:
        ours, ref = getattr(result, name).double(), expected[name]
        assert ours.shape == ref.shape, name
        error = ((ours - ref).norm() / ref.norm()).item()
        assert error < TOLERANCE[dtype], f"{name}: relative L2 error {error:.2e}"
    assert result.depth.min() >= 0
