"""Half-precision inference: which parts stay float32, and how close bfloat16 comes to float32."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from support import REPO_ROOT

import dmdnet
from dmdnet.cli import main
from dmdnet.network.imagenet_prior import ImageNetProximity
from dmdnet.network.precision import cast_module, parse_dtype

BFLOAT16_MIN_PSNR = 40.0
"""PSNR (dB) of the bfloat16 T and R against the float32 ones, default weights on a small copy
of an example photo (observed with the default weights of 2026-12-06: T 60 dB, R 68 dB; with
those before them, T 50 dB, R 47 dB). At the photos' working size (256 px short side): 60-63 dB
(README, 'Half precision')."""
DEPTH_TOLERANCE = 0.02
"""Relative L2 distance of the bfloat16 depth from the float32 one (observed 2.6e-3 with the
frozen ImageNet encoder kept in float32; 2.3e-2 with it in bfloat16)."""


@pytest.fixture(scope="module")
def image() -> Image.Image:
    with Image.open(REPO_ROOT / "examples" / "windowseat_dog.png") as photo:
        return photo.convert("RGB").resize((96, 64), Image.Resampling.LANCZOS)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def test_dtype_names():
    assert parse_dtype("bfloat16") is parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("float16") is parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="use one of float32, float64, bfloat16, float16"):
        parse_dtype("int8")


def test_half_types_keep_the_precision_critical_tensors_in_float32(lite_checkpoints):
    pipe = dmdnet.load_pipeline(**{k: str(v) for k, v in lite_checkpoints.items()}, device="cpu", dtype="bfloat16")
    dtypes = {name: p.dtype for name, p in pipe.model.named_parameters()}
    block = "dm_stacks.1.0."
    for name in ("mamba.a_log_transmission", "mamba.skip_reflection", "mamba.dt_proj_bias",
                 "mamba.proximity_fuse.weight", "mecm.gate.score_fc.weight", "mecm.gate.noise_fc.bias"):
        assert dtypes[block + name] == torch.float32, name
    for name in ("mamba.in_proj.weight", "ffn.expand.weight", "mecm.experts.0.fusion.weight", "norm1.weight"):
        assert dtypes[block + name] == torch.bfloat16, name
    assert all(bank.dtype == torch.float32 for bank in pipe.model.memory.buffers())
    assert sum(d == torch.bfloat16 for d in dtypes.values()) > 0.8 * len(dtypes)
    assert all(p.dtype == torch.bfloat16 for p in pipe.depth_model.parameters())


def test_bfloat16_on_cpu_is_close_to_float32(image):
    reference = dmdnet.load_pipeline(device="cpu").separate(image)
    half = dmdnet.load_pipeline(device="cpu", dtype=torch.bfloat16).separate(image, diagnostics=True)
    for layer in ("transmission", "reflection", "depth"):
        ours, theirs = getattr(half, layer), getattr(reference, layer)
        assert ours.dtype == torch.float32 and ours.shape == theirs.shape, layer
    for layer in ("transmission", "reflection"):
        squared_error = float((getattr(half, layer).double() - getattr(reference, layer).double()).pow(2).mean())
        assert -10 * np.log10(squared_error) > BFLOAT16_MIN_PSNR, layer
    assert relative_error(half.depth, reference.depth) < DEPTH_TOLERANCE
    assert all(scan.proximity.dtype == torch.float32 for scan in half.diagnostics.scans)
    for record in half.diagnostics.experts:
        assert record.coefficients.dtype == torch.float32
        assert abs(float(record.coefficients.sum()) - 1) < 1e-6
        assert all(c.dtype == torch.float32 for c in record.contributions.values())


def test_separate_command_runs_in_bfloat16(tmp_path, lite_checkpoints, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (33, 41, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["separate", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--dtype", "bfloat16",
                 "--model", str(lite_checkpoints["model"]), "--memory", str(lite_checkpoints["memory"]),
                 "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 1 of 1 images" in printed and "cpu, torch.bfloat16" in printed
    with Image.open(tmp_path / "out" / "transmission_layer" / "a.png") as result:
        assert result.size == (41, 33)


def test_the_frozen_imagenet_encoder_runs_in_float32_inside_a_half_model():
    estimator = cast_module(ImageNetProximity(None), torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in itertools.chain(estimator.encoder.parameters(),
                                                                  estimator.encoder.buffers())
               if t.is_floating_point())
    assert all(p.dtype == torch.bfloat16 for p in estimator.lateral.parameters())
    features = estimator(torch.rand(1, 3, 32, 48, dtype=torch.bfloat16))
    assert all(f.dtype == torch.bfloat16 for f in features)
    assert [tuple(f.shape[-2:]) for f in features[1:]] == [(8, 12), (4, 6), (2, 3)]
