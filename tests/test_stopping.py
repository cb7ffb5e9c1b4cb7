"""Nothing half-written: writes that fail midway, and SIGINT/SIGTERM sent to real commands.

A write is made to fail midway by the kernel itself: the subprocess runs under a file-size
limit (RLIMIT_FSIZE, SIGXFSZ ignored), so a file stops growing at the limit with EFBIG.
The signals are real signals sent to `python -m dmdnet ...` while it works.
"""
from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import REPO_ROOT, SHARED

FILE_LIMIT = 64 * 1024
PHOTOS = SHARED / "data" / "natural" / "bsds500" / "val"

WRITERS = """
import json, sys
from pathlib import Path
import torch
import dmdnet
from dmdnet.checkpoints import save_files
from dmdnet.evaluation import write_tables
from dmdnet.images import save_png
from dmdnet.demo.runs import RunStore

out, model, memory = map(Path, sys.argv[1:4])
rows = [{"dataset": "d", "image": str(i), "method": "model", "layer": "T", "psnr": 1.0, "ssim": 1.0,
         "psnr_y": 1.0, "ssim_y": 1.0, "psnr_inv": 1.0} for i in range(5000)]
pipe = dmdnet.load_pipeline(model=model, memory=memory, device="cpu")
writers = {
    "layer.png": lambda: save_png(torch.rand(1, 3, 256, 256), out / "layer.png"),
    "model_latest.pt": lambda: save_files({out / "model_latest.pt": torch.rand(100_000)}),
    "per_image.csv": lambda: write_tables(rows, out),
    "runs": lambda: RunStore(out / "runs").save(pipe.separate(torch.rand(1, 3, 256, 256), diagnostics=True),
                                                "photo.png", 1.0),
}
outcome = {}
for name, write in writers.items():
    try:
        write()
        outcome[name] = "written"
    except OSError as error:
        outcome[name] = type(error).__name__
print(json.dumps(outcome))
"""


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_other(tmp_path, lite_checkpoints):
    """Layers, checkpoints, tables and run folders: each used to be left truncated under its final name."""
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    for name in ("layer.png", "model_latest.pt", "per_image.csv"):
        (out / name).write_bytes(b"the previous, complete file")
    run = subprocess.run([sys.executable, "-c", WRITERS, str(out), str(lite_checkpoints["model"]),
                          str(lite_checkpoints["memory"])], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, preexec_fn=_limit_file_size)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {  # each write stopped at the limit
        "layer.png": "OSError", "model_latest.pt": "WriteError", "per_image.csv": "OSError", "runs": "OSError"}
    for name in ("layer.png", "model_latest.pt", "per_image.csv"):
        assert (out / name).read_bytes() == b"the previous, complete file", name
    assert sorted(path.name for path in out.iterdir()) == ["layer.png", "model_latest.pt", "per_image.csv", "runs"]
    assert list((out / "runs").iterdir()) == []  # no run folder, and no half-written one left behind


def _run_and_stop(arguments: list[str], log: Path, ready, signum: int, timeout: float = 300) -> str:
    """Runs `python -m dmdnet ARGUMENTS`, sends `signum` once `ready()` holds and returns what
    the command printed; it must end with status 128 + signum and no traceback."""
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "dmdnet", *arguments], cwd=REPO_ROOT,
                                   stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, f"the command ended before it could be stopped:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the command made no progress"
            time.sleep(0.02)
        process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert process.returncode == 128 + signum, output
    assert "Traceback" not in output, output
    return output


def _photos(folder: Path, count: int, size: int = 160) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(folder / f"{index:03d}.png")


def _weights(checkpoints: dict) -> list[str]:
    return ["--model", str(checkpoints["model"]), "--memory", str(checkpoints["memory"]), "--device", "cpu"]


def test_separate_stopped_by_sigint_says_how_far_it_got(tmp_path, lite_checkpoints):
    _photos(tmp_path / "in", 40)
    out = tmp_path / "out"
    output = _run_and_stop(["separate", str(tmp_path / "in"), "--out", str(out), *_weights(lite_checkpoints)],
                           tmp_path / "log", lambda: any((out / "reflection_layer").glob("*.png")), signal.SIGINT)
    done = int(re.search(r"stopped after (\d+) of 40 images; every written file is complete\n$", output)[1])
    layers = [sorted(path.name for path in (out / layer).iterdir()) for layer in ("transmission_layer",
                                                                                  "reflection_layer")]
    assert layers[0] == layers[1], "an image kept one layer without the other (or a partial file is left)"
    assert 1 <= len(layers[0]) <= done < 40
    for layer in ("transmission_layer", "reflection_layer"):
        for name in layers[0]:
            with Image.open(out / layer / name) as image:
                image.load()  # complete: a truncated PNG raises here


def test_evaluate_stopped_by_sigterm_says_how_far_it_got(tmp_path, lite_checkpoints):
    for layer in ("blended", "transmission_layer"):
        _photos(tmp_path / "set" / layer, 40)
    log, out = tmp_path / "log", tmp_path / "scores"
    output = _run_and_stop(["evaluate", str(tmp_path / "set"), "--out", str(out), *_weights(lite_checkpoints)],
                           log, lambda: re.search(r"\b[1-9]\d*/40\b", log.read_text()), signal.SIGTERM)
    done = int(re.search(r"stopped after (\d+) of 40 pairs; every written file is complete\n$", output)[1])
    assert 1 <= done < 40 and not out.exists()


def test_train_stopped_by_sigterm_saves_a_loadable_checkpoint_of_its_last_step(tmp_path):
    if not PHOTOS.is_dir():
        pytest.skip(f"natural photos not found at {PHOTOS}")
    import torch

    import dmdnet
    from dmdnet.checkpoints import read_checkpoint

    run = tmp_path / "run"
    output = _run_and_stop(["train", "--out", str(run), "--data", str(PHOTOS), "--validation", "", "--patch", "32",
                            "--batch", "1", "--steps", "100000", "--validate-every", "3", "--threads", "1",
                            "--device", "cpu"], tmp_path / "log", lambda: (run / "training_state.pt").is_file(),
                           signal.SIGTERM)
    step = int(re.search(r"stopped after (\d+) of 100000 steps; every written file is complete\n$", output)[1])
    assert step >= 3
    assert read_checkpoint(run / "model_latest.pt", "model")["iterations"] == step
    pipe = dmdnet.load_pipeline(model=run / "model_latest.pt", memory=run / "memory_banks_latest.pt", device="cpu")
    assert torch.isfinite(pipe.separate(torch.rand(1, 3, 32, 32)).transmission).all()
    assert sorted(path.name for path in run.iterdir()) == [
        ".train.lock", "log.jsonl", "memory_banks_latest.pt", "model_latest.pt", "run_state.json", "training_state.pt"]
