"""Input conversion: files, PIL modes, numpy and tensors, and the bad inputs."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dmdnet.images import (InvalidImageError, frame_count, image_files, read_image_file, save_png, to_tensor,
                           to_uint8)


def png_16_bit(samples: np.ndarray, orientation: int | None = None) -> bytes:
    """A 16-bit PNG of (H, W, C) uint16 samples, written by hand (Pillow cannot write colour at 16
    bits); `orientation` adds an eXIf chunk."""
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    chunks = [chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        chunks.append(chunk(b"eXIf", exif.tobytes().removeprefix(b"Exif\x00\x00")))
    chunks += [chunk(b"IDAT", zlib.compress(rows)), chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


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


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_sixteen_bit_colour_png_keeps_precision(tmp_path, channels):
    """Pillow reads 16-bit colour PNGs at 8 bits; the file's full samples must come through."""
    samples = np.random.default_rng(channels).integers(0, 65536, (6, 9, channels)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(png_16_bit(samples))
    assert np.array_equal(read_image_file(tmp_path / "deep.png"), samples)
    tensor = to_tensor(tmp_path / "deep.png")
    assert torch.allclose(tensor, to_tensor(samples)) and tensor.shape == (1, 3, 6, 9)
    assert not np.array_equal(to_tensor(samples).numpy(), to_tensor(samples >> 8 << 8).numpy())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_png_orientation_matches_pillow(tmp_path, orientation):
    samples = np.random.default_rng(orientation).integers(0, 65536, (4, 7, 3)).astype(np.uint16)
    path = tmp_path / "turned.png"
    path.write_bytes(png_16_bit(samples, orientation))
    with Image.open(path) as image:
        pillow = np.asarray(ImageOps.exif_transpose(image))  # 8 bits: the high byte of each sample
    assert np.array_equal(read_image_file(path) >> 8, pillow)


@pytest.mark.parametrize("scale", [1.0, 255.0, 65535.0])
def test_float_tiff_is_read_on_its_own_scale(tmp_path, scale):
    values = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    values[0, 0] = 1.0
    Image.fromarray(values * np.float32(scale), "F").save(tmp_path / "float.tif")
    tensor = to_tensor(tmp_path / "float.tif")
    assert torch.allclose(tensor[0, 0], torch.from_numpy(values), atol=1e-6)
    assert torch.allclose(to_tensor(values.astype(np.float64) * scale)[0, 1], torch.from_numpy(values), atol=1e-6)


def test_float_data_on_no_known_scale_is_refused():
    assert torch.allclose(to_tensor(np.full((2, 2), 1.1))[0, 0], torch.ones(2, 2))  # overshoot of [0, 1]
    with pytest.raises(InvalidImageError, match="reaches 90000"):
        to_tensor(np.full((2, 2), 90000.0))
    with pytest.raises(InvalidImageError, match="down to -1"):
        to_tensor(np.array([[-1.0, 1.0]]))


def test_animated_gif_first_frame_and_folder_scan(tmp_path):
    frames = [Image.new("RGB", (5, 4), colour) for colour in ("red", "lime", "blue")]
    frames[0].save(tmp_path / "moving.GIF", save_all=True, append_images=frames[1:])
    Image.new("RGB", (5, 4)).save(tmp_path / "still.gif")
    assert frame_count(tmp_path / "moving.GIF") == 3 and frame_count(tmp_path / "still.gif") == 1
    assert image_files(tmp_path) == [tmp_path / "moving.GIF", tmp_path / "still.gif"]
    assert torch.allclose(to_tensor(tmp_path / "moving.GIF")[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


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
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InvalidImageError, match="folder.png is a folder, not an image file"):
        to_tensor(tmp_path / "folder.png")


def test_a_float_tiff_holding_nan_is_refused_by_its_name(tmp_path):
    """The message used to say "the image array holds NaN", naming no file."""
    data = np.full((6, 5), 0.5, np.float32)
    data[2, 3] = np.nan
    Image.fromarray(data, mode="F").save(tmp_path / "scan.tif")
    with pytest.raises(InvalidImageError, match=r"^scan\.tif: the image array holds NaN or infinite values$"):
        to_tensor(tmp_path / "scan.tif")


def test_save_png_clamps(tmp_path):
    layer = torch.tensor([-0.5, 0.5, 1.5]).reshape(1, 3, 1, 1)
    save_png(layer, tmp_path / "out" / "x.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png"))[0, 0], [0, 128, 255])
