"""What the page and the API take as an image: every refusal and its message."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from dmdnet.demo.uploads import uploaded_file

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_uploaded_file_refusals(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # Gradio's upload folder
    photo, text, huge = tmp_path / "rgb.png", tmp_path / "text.png", tmp_path / "huge.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(photo)
    text.write_text("this is not an image\n")
    Image.new("L", (10_000, 5_200)).save(huge)
    with pytest.raises(gr.Error, match="No image"):
        uploaded_file(None)
    with pytest.raises(gr.Error, match="not an image .*TIFF, BMP or GIF file"):
        uploaded_file({"path": str(text), "orig_name": "notes.png"})
    with pytest.raises(gr.Error, match="has to be uploaded"):
        uploaded_file({"path": str(REPO_ROOT / "examples" / "real45_19.png")})
    with pytest.raises(gr.Error, match="has to be uploaded"):
        uploaded_file({"path": str(tmp_path / ".." / "elsewhere.png")})
    with pytest.raises(gr.Error, match="50 MP"):
        uploaded_file({"path": str(huge), "orig_name": "huge.png"})
    with pytest.raises(gr.Error, match="gone.png is no longer on the server .* please upload it again"):
        uploaded_file({"path": str(tmp_path / "evicted.png"), "orig_name": "gone.png"})
    assert uploaded_file({"path": str(photo), "orig_name": "a b.png"})[1] == "a b.png"
