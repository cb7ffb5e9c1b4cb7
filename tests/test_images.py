"""Input conversion: files, PIL modes, numpy and tensors, and the bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dmdnet.images import InvalidImageError, save_png, to_tensor, to_uint8


def test_rgb_file_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    tensor = to_tensor(tmp_path / "a.png")
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert np.array_equal(to_uint8(tensor), array)


def test_grayscale_is_repeated(tmp_path):
    Image.fromarray(np.full((4, 6), 51, np.uint8), "L").save(tmp_path / "g.png")
    tensor = to_tensor(str(tmp_path / "g.png"))
    assert tensor.shape == (1, 3, 4, 6)
    assert torch.allclose(tensor, torch.full_like(tensor, 0.2))


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255
    tensor = to_tensor(Image.fromarray(rgba, "RGBA"))
    assert torch.allclose(tensor[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(tensor[0, :, 1, 1], torch.ones(3))


def test_palette_and_la_modes():
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    tensor = to_tensor(palette)
    assert torch.allclose(tensor[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(tensor[0, :, 0, 1], torch.tensor([0.0, 0.0, 1.0]))
    la = Image.fromarray(np.zeros((2, 2, 2), np.uint8), "LA")
    assert torch.allclose(to_tensor(la), torch.ones(1, 3, 2, 2))


def test_sixteen_bit_png_keeps_precision(tmp_path):
    data = np.array([[0, 1000], [40000, 65535]], np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    tensor = to_tensor(tmp_path / "deep.png")
    expected = torch.from_numpy(data.astype(np.float32) / 65535)
    assert torch.allclose(tensor[0, 0], expected)
    assert torch.allclose(to_tensor(data)[0, 2], expected)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((2, 3, 3), np.uint8)
    array[0, 0] = 255
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    tensor = to_tensor(tmp_path / "rotated.jpg")
    assert tensor.shape == (1, 3, 3, 2)


def test_numpy_and_tensor_inputs():
    assert to_tensor(np.ones((3, 4), bool)).shape == (1, 3, 3, 4)
    assert to_tensor(np.full((3, 4, 1), 0.5)).dtype == torch.float32
    assert to_tensor(np.zeros((1, 1, 3), np.uint8)).shape == (1, 3, 1, 1)
    exact = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    assert to_tensor(exact) is exact
    assert to_tensor(torch.rand(3, 4, 4)).shape == (1, 3, 4, 4)
    assert torch.equal(to_tensor(torch.full((2, 2), 255, dtype=torch.uint8)), torch.ones(1, 3, 2, 2))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((2, 2, 5), np.uint8), "shape"),
    (np.zeros((2, 2), np.int32), "dtype"),
    (np.full((2, 2), np.nan), "NaN"),
    (torch.zeros(2, 3, 4, 4), "shape"),
    (torch.zeros(1, 3, 4, 4, dtype=torch.int64), "dtype"),
    (12, "cannot read an image from a int"),
])
def test_bad_arrays_are_refused(bad, message):
    with pytest.raises(InvalidImageError, match=message):
        to_tensor(bad)


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InvalidImageError, match="notes.png is not a readable image"):
        to_tensor(tmp_path / "notes.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:60])
    with pytest.raises(InvalidImageError, match="cut.png is not a readable image"):
        to_tensor(tmp_path / "cut.png")
    with pytest.raises(InvalidImageError, match="not found"):
        to_tensor(tmp_path / "missing.jpg")


def test_save_png_clamps(tmp_path):
    layer = torch.tensor([-0.5, 0.5, 1.5]).reshape(1, 3, 1, 1)
    save_png(layer, tmp_path / "out" / "x.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png"))[0, 0], [0, 128, 255])
