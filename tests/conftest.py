"""Shared fixtures: paths to ../shared and the seeded-weight rule of the golden files.

DMDNET_SHARED points at another copy of ../shared (a GPU machine that gets only the
repository); DMDNET_TEST_DEVICE=cuda runs the parity tests on a GPU, with TF32 off so that
float32 means float32 there too."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DMDNET_SHARED", REPO_ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
TEST_DEVICE = os.environ.get("DMDNET_TEST_DEVICE", "cpu")

if TEST_DEVICE != "cpu":
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _load_seeded_module(golden: Path = GOLDEN):
    spec = importlib.util.spec_from_file_location("golden_seeded", golden / "seeded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden files not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def seeded(golden_dir):
    """The authors'-name-keyed weight rule (`seeded_state_dict`, `seeded_memory_bank`, `seeded_image`)."""
    return _load_seeded_module()


@pytest.fixture(scope="session")
def official_dmdnet_shapes(golden_dir) -> dict:
    return json.loads((golden_dir / "dmdnet_official_keys.json").read_text())


@pytest.fixture(scope="session")
def official_midas_shapes(golden_dir) -> dict:
    return json.loads((golden_dir / "dpt_next_vit_large_384_keys.json").read_text())


def write_seeded_checkpoints(folder: Path, golden: Path = GOLDEN) -> dict[str, Path]:
    """The golden seeded weights of the released configuration written into `folder` as real
    files in the three released formats (also used by scripts/gpu_check.py)."""
    import torch

    from dmdnet.config import DMDNetConfig
    from dmdnet.model import memory_bank_names

    seeded = _load_seeded_module(golden)
    paths = {
        "model": folder / "model_latest.pt",
        "memory": folder / "memory_banks_latest.pt",
        "depth": folder / "dpt_next_vit_large_384.pt",
    }
    network = seeded.seeded_state_dict(json.loads((golden / "dmdnet_official_keys.json").read_text()))
    torch.save({"epoch": 60, "iterations": 0, "network": network}, paths["model"])
    banks = {name: seeded.seeded_memory_bank(name, 4, channels)
             for name, channels in memory_bank_names(DMDNetConfig.released()).items()}
    torch.save(banks, paths["memory"])
    midas = json.loads((golden / "dpt_next_vit_large_384_keys.json").read_text())
    torch.save(seeded.seeded_state_dict(midas), paths["depth"])
    return paths


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
    import torch

    from dmdnet.checkpoints import save_dmdnet_checkpoint
    from dmdnet.config import DMDNetConfig
    from dmdnet.model import DMDNet
    from dmdnet.proximity import ProximityEstimator

    torch.manual_seed(0)
    config = DMDNetConfig.lite()
    folder = tmp_path_factory.mktemp("lite_weights")
    paths = {"model": folder / "model_latest.pt", "memory": folder / "memory_banks_latest.pt"}
    save_dmdnet_checkpoint(DMDNet(config), paths["model"], paths["memory"], config=config.to_dict(),
                           proximity_estimator=ProximityEstimator(config.depth_feature_channels).state_dict())
    return paths
