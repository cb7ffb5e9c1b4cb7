"""Shared fixtures: the golden files, and real checkpoint files with seeded weights
(written by `support`, which tests and scripts/gpu_check.py import directly)."""
from __future__ import annotations

import json
import os

import pytest
from support import GOLDEN, TEST_DEVICE, load_seeded_module, write_lite_checkpoints, write_seeded_checkpoints

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if TEST_DEVICE != "cpu":
    import torch

    # TF32 off, so that float32 means float32 on a GPU too.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def golden_dir():
    if not GOLDEN.is_dir():
        pytest.skip(f"golden files not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def seeded(golden_dir):
    """The authors'-name-keyed weight rule (`seeded_state_dict`, `seeded_memory_bank`, `seeded_image`)."""
    return load_seeded_module(golden_dir)


@pytest.fixture(scope="session")
def official_dmdnet_shapes(golden_dir) -> dict:
    return json.loads((golden_dir / "dmdnet_official_keys.json").read_text())


@pytest.fixture(scope="session")
def official_midas_shapes(golden_dir) -> dict:
    return json.loads((golden_dir / "dpt_next_vit_large_384_keys.json").read_text())


@pytest.fixture(scope="session")
def seeded_checkpoints(tmp_path_factory, golden_dir) -> dict:
    """The golden seeded weights written as real files in the three released formats."""
    return write_seeded_checkpoints(tmp_path_factory.mktemp("seeded_weights"), golden_dir)


@pytest.fixture(scope="session")
def seeded_pipeline_float32(seeded_checkpoints):
    """The released-size pipeline with seeded weights, float32 on TEST_DEVICE (shared by many tests)."""
    import torch

    import dmdnet

    return dmdnet.load_pipeline(**{k: str(v) for k, v in seeded_checkpoints.items()},
                                device=TEST_DEVICE, dtype=torch.float32)


@pytest.fixture(scope="session")
def lite_checkpoints(tmp_path_factory) -> dict:
    """A randomly initialised DMDNet-Lite saved as a self-contained model file plus banks."""
    return write_lite_checkpoints(tmp_path_factory.mktemp("lite_weights"))


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 200 KiB tmpfs mounted at tmp_path/fs (root only; skipped elsewhere): writes there
    fail with ENOSPC, and `mount -o remount,ro` makes it read-only."""
    import gc
    import subprocess

    mount = tmp_path / "fs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount
    gc.collect()  # closes files a refused command left open there
    subprocess.run(["umount", "-l", str(mount)], check=True)
