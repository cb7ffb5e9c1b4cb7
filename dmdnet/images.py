"""Turning whatever a user hands us into a (1, 3, H, W) float tensor in [0, 1], and back.

Accepts files (EXIF orientation respected), PIL images of any mode, numpy arrays
(uint8, uint16, bool, float) and torch tensors. Alpha is composited over white;
grayscale is repeated to RGB; 16-bit data keeps its precision.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

PNG_COMPRESS_LEVEL = 3
"""zlib level of the PNGs we write: on photos as small as at Pillow's default 6, in under half the time."""

MAX_FILE_PIXELS = 200_000_000
"""Refuse to decode larger images (decompression bombs); the pipeline downsizes big photos anyway."""


class InvalidImageError(ValueError):
    """The input is not an image we can separate; the message says why."""


def image_files(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder` (by suffix), sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def open_image(path: str | Path) -> Image.Image:
    """Opens an image file fully, applying its EXIF orientation."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_FILE_PIXELS:
                raise InvalidImageError(f"{path.name} is {image.width}x{image.height}: "
                                        f"over {MAX_FILE_PIXELS:,} pixels")
            image.load()
            return ImageOps.exif_transpose(image)
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidImageError(f"{path.name} is not a readable image ({error})") from None


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
        if not np.isfinite(array).all():
            raise InvalidImageError("the image array holds NaN or infinite values")
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise InvalidImageError(f"unsupported image array dtype {array.dtype} "
                                "(use uint8, uint16, bool or float in [0, 1])")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InvalidImageError(f"unsupported image array shape {array.shape} "
                                "(use (H, W), (H, W, 1), (H, W, 3) or (H, W, 4))")
    return array


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
            image = open_image(image)
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
    Image.fromarray(to_uint8(tensor)).save(path, compress_level=PNG_COMPRESS_LEVEL)
