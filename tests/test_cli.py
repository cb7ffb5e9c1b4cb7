"""`python -m dmdnet separate` end to end in a subprocess."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO_ROOT


def test_separate_folder_and_file(tmp_path, lite_checkpoints):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 51, 3), np.uint8)).save(photos / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 24), np.uint8)).save(photos / "b.jpg")
    (photos / "broken.png").write_text("not an image")
    single = tmp_path / "single.png"
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(single)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dmdnet", "separate", str(photos), str(single), "--out", str(out),
               "--model", str(lite_checkpoints["model"]), "--memory", str(lite_checkpoints["memory"]),
               "--device", "cpu"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "skipped" in run.stderr and "broken.png is not a readable image" in run.stderr
    assert "wrote 3 of 4 images" in run.stdout
    for name, size in (("a", (51, 37)), ("b", (24, 20)), ("single", (9, 8))):
        for layer in ("transmission_layer", "reflection_layer"):
            with Image.open(out / layer / f"{name}.png") as image:
                assert image.size == size and image.mode == "RGB"


def test_missing_weights_message(tmp_path):
    run = subprocess.run([sys.executable, "-m", "dmdnet", "separate", str(tmp_path), "--out",
                          str(tmp_path / "o"), "--model", str(tmp_path / "none.pt")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "no images found" in run.stderr
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    run = subprocess.run([sys.executable, "-m", "dmdnet", "separate", str(tmp_path / "x.png"), "--out",
                          str(tmp_path / "o"), "--model", str(tmp_path / "none.pt")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "DMDNet model file not found" in run.stderr and "Traceback" not in run.stderr


def test_average_command_writes_run_files_or_explains(tmp_path, lite_checkpoints):
    run_folder = lite_checkpoints["model"].parent
    command = [sys.executable, "-m", "dmdnet", "average", str(run_folder), str(run_folder), "--out", str(tmp_path / "soup")]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "soup" / "model_latest.pt").is_file() and (tmp_path / "soup" / "memory_banks_latest.pt").is_file()
    run = subprocess.run(command[:4] + [str(run_folder), str(tmp_path / "empty"), "--out", str(tmp_path / "x")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "DMDNet model file not found" in run.stderr and "Traceback" not in run.stderr
