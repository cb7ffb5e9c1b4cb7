"""What the page and the `/separate` API take as an image: an uploaded, readable file of at most
`MAX_UPLOAD_PIXELS`, refused otherwise with the app's own message (never a traceback or
pydantic's text)."""
from __future__ import annotations

import reprlib
import warnings
from pathlib import Path

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image
from pydantic import ConfigDict

MAX_UPLOAD_PIXELS = 50_000_000


def refuse(message: str, title: str) -> gr.Error:
    """A user-facing error: shown in the UI (AppError for API clients), not logged as a crash."""
    return gr.Error(message, title=title, print_exception=False)


class UploadedImage(ImageData):
    """The image payload of `/separate` (Gradio's own, same schema), whose refusal of a plain
    string or number is a message of the app rather than pydantic's text."""

    model_config = ConfigDict(title="ImageData")

    @classmethod
    def model_validate(cls, obj: object, **kwargs: object) -> UploadedImage:
        if not isinstance(obj, dict):
            raise refuse(f"The image has to be an uploaded file, not the value {reprlib.repr(obj)}: with "
                         "gradio_client, pass handle_file(\"photo.jpg\").", "Not a file")
        return super().model_validate(obj, **kwargs)


def uploaded_file(image: dict | None) -> tuple[Path, str]:
    """The uploaded file and its original name; refuses missing, unreadable and huge images, and
    paths outside Gradio's upload folder (with `preprocess=False` Gradio does not check a bare
    {"path": ...} from an API client, which would let it name any file on the server)."""
    path = (image or {}).get("path")
    if not path:
        raise refuse("No image yet: upload a photo, paste one, take one with the webcam "
                     "or click an example.", "No image")
    if not Path(path).resolve().is_relative_to(Path(gr.utils.get_upload_folder()).resolve()):
        raise refuse("The image has to be uploaded: this demo does not read files named by a path on "
                     "the server (with gradio_client, pass handle_file(\"photo.jpg\")).", "Not an upload")
    name = Path(image.get("orig_name") or path).name
    if not Path(path).is_file():
        raise refuse(f"{name} is no longer on the server (the oldest files make room for new ones): "
                     "please upload it again.", "Upload expired")
    limit = f"{MAX_UPLOAD_PIXELS // 1_000_000} MP"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as probe:
                width, height = probe.size
    except Image.DecompressionBombError:
        raise refuse(f"{name} is far larger than the {limit} this demo accepts.", "Image too large") from None
    except (OSError, ValueError, SyntaxError):
        raise refuse(f"{name} is not an image this demo can read: use a PNG, JPEG, WebP, TIFF, "
                     "BMP or GIF file.", "Not an image") from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise refuse(f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP); this demo accepts "
                     f"up to {limit}. Please downscale it.", "Image too large")
    return Path(path), name
