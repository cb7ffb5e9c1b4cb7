"""Pipeline behaviour on awkward inputs: tiny, odd, large (downscale policy), any format."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dmdnet
from dmdnet.pipeline import Pipeline, pad_to_multiple, working_size


@pytest.fixture(scope="module")
def lite_pipeline(lite_checkpoints):
    return dmdnet.load_pipeline(**{k: str(v) for k, v in lite_checkpoints.items()}, device="cpu")


def test_padding_reflects_like_the_release_and_replicates_tiny_images():
    image = torch.rand(1, 3, 40, 70)
    assert torch.equal(pad_to_multiple(image, 32), F.pad(image, (0, 26, 0, 24), mode="reflect"))
    tiny = torch.rand(1, 3, 1, 5)
    padded = pad_to_multiple(tiny, 32)
    assert padded.shape == (1, 3, 32, 32)
    assert torch.equal(padded[..., :, :5], tiny.expand(1, 3, 32, 5))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (33, 47), (64, 32)])
def test_any_size_comes_back_at_its_size(seeded_pipeline_float32, size):
    result = seeded_pipeline_float32.separate(torch.rand(1, 3, *size))
    for layer in (result.transmission, result.reflection):
        assert layer.shape == (1, 3, *size)
        assert torch.isfinite(layer).all()
    assert result.depth.shape == (1, 1, *size)
    assert result.processed_size == size


def test_image_formats(lite_pipeline, tmp_path):
    gray = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30), np.uint8), "L")
    rgba = Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 30, 4), np.uint8), "RGBA")
    deep = np.random.default_rng(2).integers(0, 65535, (20, 30, 3), dtype=np.uint16)
    Image.fromarray(deep[..., 0]).save(tmp_path / "deep.png")
    for image in (gray, rgba, deep, tmp_path / "deep.png", str(tmp_path / "deep.png")):
        assert lite_pipeline.separate(image).transmission.shape == (1, 3, 20, 30)


def test_bad_input_is_a_clear_error(lite_pipeline, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\x89PNG garbage")
    with pytest.raises(dmdnet.InvalidImageError, match="x.jpg is not a readable image"):
        lite_pipeline.separate(tmp_path / "x.jpg")


def test_large_photos_run_downscaled_and_return_full_resolution(lite_pipeline):
    small_budget = Pipeline(lite_pipeline.model, lite_pipeline.depth_model, max_pixels=40 * 60)
    image = torch.rand(1, 3, 90, 130)
    result = small_budget.separate(image)
    size = working_size(90, 130, 40 * 60)
    assert result.processed_size == size and size[0] * size[1] <= 40 * 60
    assert result.transmission.shape == result.reflection.shape == (1, 3, 90, 130)

    work = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    native = lite_pipeline.separate(work)
    def up(x):
        return F.interpolate(x, size=(90, 130), mode="bilinear", align_corners=False)
    assert torch.allclose(result.transmission, image - up(work - native.transmission), atol=1e-5)
    assert torch.allclose(result.reflection, up(native.reflection), atol=1e-5)


def test_working_size_keeps_the_short_side_the_weights_were_trained_at():
    assert working_size(400, 600, 10**7, 256) == (256, 384)
    assert working_size(1000, 300, 10**7, 256) == (853, 256)
    assert working_size(200, 3000, 10**7, 256) == (200, 3000)
    assert working_size(2000, 3000, 60_000, 256) == working_size(2000, 3000, 60_000)
    assert working_size(400, 600, 10**7, None) == (400, 600)


def test_trained_short_side_in_the_model_file_sets_the_scale(lite_checkpoints, tmp_path):
    checkpoint = torch.load(lite_checkpoints["model"], weights_only=True)
    torch.save({**checkpoint, "trained_short_side": 64}, tmp_path / "model.pt")
    pipe = dmdnet.load_pipeline(tmp_path / "model.pt", lite_checkpoints["memory"], device="cpu")
    result = pipe.separate(torch.rand(1, 3, 96, 160))
    assert result.processed_size == (64, 106)
    assert result.transmission.shape == (1, 3, 96, 160)
    native = dmdnet.load_pipeline(tmp_path / "model.pt", lite_checkpoints["memory"], device="cpu",
                                  native_scale=True)
    assert native.max_short_side is None
    assert native.separate(torch.rand(1, 3, 96, 160)).processed_size == (96, 160)
    torch.save({**checkpoint, "trained_short_side": 64, "inference_short_side": 48}, tmp_path / "chosen.pt")
    chosen = dmdnet.load_pipeline(tmp_path / "chosen.pt", lite_checkpoints["memory"], device="cpu")
    assert chosen.separate(torch.rand(1, 3, 96, 160)).processed_size == (48, 80)


def test_weights_label(lite_pipeline):
    assert "DMDNet-Lite" in lite_pipeline.weights.label
    assert lite_pipeline.device == torch.device("cpu")
    assert lite_pipeline.dtype == torch.float32
