"""What the page's events call, in-process: the ZeroGPU time asked for, run ids, and the views
of a DMDNet-Lite run (test_app.py and test_browser.py drive them through a real server)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from PIL import Image

import dmdnet
from dmdnet.demo import callbacks
from dmdnet.demo.runs import RunStore


def test_gpu_seconds_grow_with_image_size(tmp_path, monkeypatch):
    monkeypatch.setattr(callbacks, "PIPELINE", SimpleNamespace(max_pixels=1024 * 1024, max_short_side=None))
    sizes = [(32, 32), (512, 512), (1024, 1024), (3000, 2000)]
    seconds = []
    for width, height in sizes:
        path = tmp_path / f"{width}.png"
        Image.new("L", (width, height)).save(path)
        seconds.append(callbacks.gpu_seconds(str(path)))
    assert seconds[0] < seconds[1] < seconds[2] == seconds[3]  # capped: big photos run downscaled
    monkeypatch.setattr(callbacks, "PIPELINE", SimpleNamespace(max_pixels=1024 * 1024, max_short_side=256))
    assert seconds[0] < callbacks.gpu_seconds(str(tmp_path / "3000.png")) < seconds[1]  # runs at 384x256


def test_load_run_accepts_only_run_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(callbacks, "RUNS", RunStore(tmp_path / "runs"))
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "info.json").write_text("{}")
    for bad in ("../secret", "run-../../secret", "run-" + "0" * 32, "", None, 3):
        with pytest.raises(gr.Error, match="no longer kept"):
            callbacks.load_run(bad)


def test_views_of_a_lite_run_skip_the_level_without_dsmamba(lite_checkpoints, tmp_path, monkeypatch):
    """DMDNet-Lite has no DSMamba at level 1: asking for it shows level 2, never an error."""
    pipe = dmdnet.load_pipeline(**{k: str(v) for k, v in lite_checkpoints.items()}, device="cpu")
    monkeypatch.setattr(callbacks, "RUNS", RunStore(tmp_path / "runs"))
    torch.manual_seed(0)
    run = callbacks.RUNS.save(pipe.separate(torch.rand(1, 3, 40, 56), diagnostics=True), "rgb.png", 0.1)
    assert {view.level for view in run.scans} == {2, 3, 4, 5}
    level, site, figure, animation = callbacks.show_scan(run.id, 1, "T", "main:0")
    assert level["value"] == 2 and site["value"] == "main:0"
    assert figure.size[0] > 0 and Path(animation).is_file()
    call, _ = callbacks.show_experts(run.id, None)
    chosen = run.experts[call["value"]]
    assert (chosen.level, chosen.branch, chosen.stream) == (2, "main", "T")
