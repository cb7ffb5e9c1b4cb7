"""Run folders: saved separations that the demo's views are redrawn from."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import dmdnet
from dmdnet.demo.runs import PREVIEW_SIDE, RunNotFound, RunStore


def test_save_then_load_a_run(lite_checkpoints, tmp_path):
    pipe = dmdnet.load_pipeline(**{k: str(v) for k, v in lite_checkpoints.items()}, device="cpu")
    image = torch.rand(1, 3, 40, 52)
    result = pipe.separate(image, diagnostics=True)
    store = RunStore(tmp_path)
    run = store.save(result, "my photo.jpg", 1.234, weights="test weights")

    assert run.summary["source"] == "my photo.jpg" and run.summary["seconds"] == 1.23
    assert run.summary["weights"] == "test weights" and run.summary["run"] == run.id
    assert "transmission_gain" not in run.summary  # these weights have no global gain
    result.diagnostics.add_global_gain(torch.full((1, 1, 1, 1), 0.8125))
    assert store.save(result, "my photo.jpg", 1.0).summary["transmission_gain"] == 0.8125
    assert run.processed_size == (40, 52)
    with Image.open(run.file("transmission")) as saved:
        assert saved.size == (52, 40)
        expected = (result.transmission[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.abs(np.asarray(saved.convert("RGB")).astype(int) - expected).max() <= 1
    assert json.loads((run.folder / "info.json").read_text())["files"]["diagnostics"] == "diagnostics.npz"
    assert len(run.scans) == len(result.diagnostics.scans)
    assert len(run.experts) == len(result.diagnostics.experts)
    animation = run.scan_animation(run.scans[0])
    assert animation.is_file() and run.scan_animation(run.scans[0]) == animation

    assert store.load(run.id).info == run.info
    for bad in ("../x", "run-" + "0" * 32, None, 3):
        with pytest.raises(RunNotFound):
            store.load(bad)


def test_layers_are_their_own_previews_unless_larger_than_a_preview(lite_checkpoints, tmp_path):
    pipe = dmdnet.load_pipeline(**{k: str(v) for k, v in lite_checkpoints.items()}, device="cpu")
    store = RunStore(tmp_path)
    small = store.save(pipe.separate(torch.rand(1, 3, 40, 52), diagnostics=True), "small.png", 0.1)
    assert small.file("transmission_preview") == small.file("transmission")
    assert small.file("reflection_preview") == small.file("reflection")
    wide = store.save(pipe.separate(torch.rand(1, 3, 32, PREVIEW_SIDE + 64), diagnostics=True), "wide.png", 0.1)
    for key in ("input", "transmission", "reflection"):
        with Image.open(wide.file(f"{key}_preview")) as preview:
            assert preview.size == (PREVIEW_SIDE, 30)
    with Image.open(wide.file("transmission")) as layer:
        assert layer.size == (PREVIEW_SIDE + 64, 32)
    assert all(layer.shape == (30, PREVIEW_SIDE, 3) for layer in wide.layers)


def test_prune_removes_only_old_runs(tmp_path):
    old, new, other = tmp_path / ("run-" + "a" * 32), tmp_path / ("run-" + "b" * 32), tmp_path / "examples-x"
    for folder in (old, new, other):
        folder.mkdir()
        (folder / "f.png").write_bytes(b"x")
    os.utime(old, (0, 0))
    os.utime(other, (0, 0))
    RunStore(tmp_path).prune()
    assert not old.exists() and new.exists() and other.exists()
