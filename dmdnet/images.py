"""Turning whatever a user hands us into a (1, 3, H, W) float tensor in [0, 1], and back.

Accepts files (EXIF orientation respected), PIL images of any mode, numpy arrays
(uint8, uint16, bool, float) and torch tensors. Alpha is composited over white;
grayscale is repeated to RGB; 16-bit data keeps its precision (16-bit colour PNGs,
which Pillow reads at 8 bits, are decoded by torchvision). Float data is read on the
scale its maximum implies: [0, 1], 0-255 or 0-65535. Of a file with several frames
(animated GIF, WebP or PNG, multi-page TIFF) the first is used; `frame_count` says.
"""
from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .files import atomic_path

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
"""What a folder scan picks up: the formats Pillow reads that photos come in."""

FLOAT_SCALES = (1.0, 255.0, 65535.0)
FLOAT_SCALE_TOLERANCE = 0.25
"""A float image whose maximum is up to 25 % over a scale's top (resampling overshoot) is
read on that scale; everything below 1.25 on the 0-255 scale would be black anyway."""

PNG_COMPRESS_LEVEL = 3
"""zlib level of the PNGs we write: on photos as small as at Pillow's default 6, in under half the time."""

MAX_FILE_PIXELS = 200_000_000
"""Refuse to decode larger images (decompression bombs); the pipeline downsizes big photos anyway."""


class InvalidImageError(ValueError):
    """The input is not an image we can separate; the message says why."""


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder` (by suffix), sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _check_regular_file(path: Path) -> None:
    """Raises InvalidImageError unless `path` is a regular file (links followed), judged from
    its metadata alone: opening a FIFO would wait for a writer forever."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise InvalidImageError(f"image file not found: {path}") from None
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise InvalidImageError(f"{path.name} is {kind}, not an image file (not opened)")


@contextlib.contextmanager
def _checked_open(path: Path) -> Iterator[Image.Image]:
    """Image.open with the checks every file gets (a regular file, at most MAX_FILE_PIXELS);
    any failure to read it, inside the `with` block too, becomes an InvalidImageError."""
    _check_regular_file(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_FILE_PIXELS:
                raise InvalidImageError(f"{path.name} is {image.width}x{image.height}: "
                                        f"over {MAX_FILE_PIXELS:,} pixels")
            yield image
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidImageError(f"{path.name} is not a readable image ({error})") from None


def open_image(path: str | Path) -> Image.Image:
    """Opens an image file fully (its first frame), applying its EXIF orientation."""
    with _checked_open(Path(path)) as image:
        image.load()
        return ImageOps.exif_transpose(image)


def frame_count(path: str | Path) -> int:
    """How many frames (animation frames, TIFF pages) an image file holds; the first is separated."""
    with _checked_open(Path(path)) as image:
        return getattr(image, "n_frames", 1)


def _is_16_bit_colour_png(path: Path) -> bool:
    """From the PNG header: 16 bits per sample and colour or alpha (Pillow reads those at 8 bits)."""
    try:
        with path.open("rb") as file:
            header = file.read(26)
    except OSError:
        return False  # open_image reports it
    return (header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
            and header[24] == 16 and header[25] in (2, 4, 6))


_EXIF_TURNS = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1),
}
"""EXIF orientation -> the array operation `ImageOps.exif_transpose` applies to an image."""


def _read_16_bit_colour_png(path: Path) -> np.ndarray:
    """(H, W, C) uint16 through torchvision's libpng decoder, EXIF orientation applied."""
    from torchvision.io import ImageReadMode, decode_png, read_file

    with _checked_open(path) as image:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    try:
        decoded = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)
    except RuntimeError as error:
        raise InvalidImageError(f"{path.name} is not a readable image ({error})") from None
    array = decoded.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(_EXIF_TURNS.get(orientation, lambda a: a)(array))


def read_image_file(path: str | Path) -> np.ndarray:
    """An image file -> a numpy image that keeps its bit depth (first frame, EXIF orientation applied)."""
    path = Path(path)
    _check_regular_file(path)
    if _is_16_bit_colour_png(path):
        return _read_16_bit_colour_png(path)
    return _pil_to_array(open_image(path))


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> a numpy image that `_array_to_unit` understands (8/16-bit or float)."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":
        data = np.asarray(image, dtype=np.int64)
        if data.max(initial=0) > 255:
            return np.clip(data, 0, 65535).astype(np.uint16)
        return np.clip(data, 0, 255).astype(np.uint8)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(image)


def _array_to_unit(array: np.ndarray) -> np.ndarray:
    """numpy image of a supported dtype -> float32 in [0, 1], (H, W, C)."""
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    elif array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        array = _float_to_unit(array)
    else:
        raise InvalidImageError(f"unsupported image array dtype {array.dtype} "
                                "(use uint8, uint16, bool or float)")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InvalidImageError(f"unsupported image array shape {array.shape} "
                                "(use (H, W), (H, W, 1), (H, W, 3) or (H, W, 4))")
    return array


def _float_to_unit(array: np.ndarray) -> np.ndarray:
    """Float image -> float32 in [0, 1], on the scale (FLOAT_SCALES) its maximum implies;
    data on none of them (or well below 0) is refused rather than clipped into a wrong picture."""
    if not np.isfinite(array).all():
        raise InvalidImageError("the image array holds NaN or infinite values")
    peak, low = float(array.max(initial=0.0)), float(array.min(initial=0.0))
    scale = next((s for s in FLOAT_SCALES if peak <= s * (1 + FLOAT_SCALE_TOLERANCE)), None)
    if scale is None:
        raise InvalidImageError(f"the float image reaches {peak:g}: expected values in [0, 1], "
                                "0-255 or 0-65535")
    if low < -FLOAT_SCALE_TOLERANCE * scale:
        raise InvalidImageError(f"the float image holds values down to {low:g}: expected values in "
                                f"[0, {scale:g}]")
    return np.clip(array.astype(np.float32) / np.float32(scale), 0.0, 1.0)


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W, 1|2|3|4) in [0, 1] -> (H, W, 3): gray repeated, alpha composited over white."""
    channels = array.shape[2]
    if channels in (2, 4):
        color, alpha = array[..., :-1], array[..., -1:]
        array = color * alpha + (1.0 - alpha)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array


def _tensor_to_batch(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[0] != 1 or tensor.shape[1] not in (1, 3):
        raise InvalidImageError(f"expected an image tensor (1, 3, H, W), (3, H, W) or (H, W), "
                                f"got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif not tensor.is_floating_point():
        raise InvalidImageError(f"unsupported image tensor dtype {tensor.dtype}")
    elif not torch.isfinite(tensor).all():
        raise InvalidImageError("the image tensor holds NaN or infinite values")
    return tensor.expand(1, 3, *tensor.shape[-2:]) if tensor.shape[1] == 1 else tensor


def to_tensor(image: ImageInput) -> torch.Tensor:
    """Any supported input -> (1, 3, H, W) tensor in [0, 1].

    Float tensors keep their dtype and device and are not clamped (parity inputs
    pass through untouched); everything else becomes float32 on the CPU.
    """
    if isinstance(image, torch.Tensor):
        tensor = _tensor_to_batch(image)
    else:
        if isinstance(image, (str, Path)):
            array = read_image_file(image)
            try:
                return to_tensor(array)
            except InvalidImageError as error:  # the data's fault: say which file holds it
                raise InvalidImageError(f"{Path(image).name}: {error}") from None
        if isinstance(image, Image.Image):
            image = _pil_to_array(image)
        if not isinstance(image, np.ndarray):
            raise InvalidImageError(f"cannot read an image from a {type(image).__name__}")
        array = _array_to_unit(image)
        tensor = torch.from_numpy(np.ascontiguousarray(_to_rgb(array).transpose(2, 0, 1)))[None]
    if tensor.shape[-1] < 1 or tensor.shape[-2] < 1:
        raise InvalidImageError(f"the image is empty ({tensor.shape[-2]}x{tensor.shape[-1]})")
    return tensor


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (1, 1, H, W) tensor -> (H, W, 3) or (H, W) uint8, clamped to [0, 1]."""
    array = tensor.detach()[0].float().clamp(0, 1).mul(255).round().byte().cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def save_png(tensor: torch.Tensor, path: str | Path) -> None:
    """Writes a layer as an 8-bit PNG (clamped to [0, 1], like the reference's test.py)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        Image.fromarray(to_uint8(tensor)).save(partial, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
