"""What tests and scripts/gpu_check.py share: where the repository and ../shared are, and the
writers of real checkpoint files with seeded weights (the golden files' rule).

DMDNET_SHARED points at another copy of ../shared (a GPU machine that gets only the
repository); DMDNET_TEST_DEVICE=cuda runs the parity tests on a GPU."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DMDNET_SHARED", REPO_ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
TEST_DEVICE = os.environ.get("DMDNET_TEST_DEVICE", "cpu")


def load_seeded_module(golden: Path = GOLDEN) -> ModuleType:
    """The golden files' `seeded.py`: `seeded_state_dict`, `seeded_memory_bank`, `seeded_image`."""
    spec = importlib.util.spec_from_file_location("golden_seeded", golden / "seeded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_seeded_checkpoints(folder: Path, golden: Path = GOLDEN) -> dict[str, Path]:
    """The golden seeded weights of the released configuration written into `folder` as real
    files in the three released formats."""
    import torch

    from dmdnet.network.config import DMDNetConfig
    from dmdnet.network.model import memory_bank_names
    from dmdnet.weights import MEMORY_NAME, MIDAS_NAME, MODEL_NAME

    seeded = load_seeded_module(golden)
    paths = {"model": folder / MODEL_NAME, "memory": folder / MEMORY_NAME, "depth": folder / MIDAS_NAME}
    network = seeded.seeded_state_dict(json.loads((golden / "dmdnet_official_keys.json").read_text()))
    torch.save({"epoch": 60, "iterations": 0, "network": network}, paths["model"])
    banks = {name: seeded.seeded_memory_bank(name, 4, channels)
             for name, channels in memory_bank_names(DMDNetConfig.released()).items()}
    torch.save(banks, paths["memory"])
    midas = json.loads((golden / "dpt_next_vit_large_384_keys.json").read_text())
    torch.save(seeded.seeded_state_dict(midas), paths["depth"])
    return paths


def write_lite_checkpoints(folder: Path) -> dict[str, Path]:
    """A DMDNet-Lite initialised from seed 0, saved as a self-contained model file plus banks."""
    import torch

    from dmdnet.checkpoints import save_dmdnet_checkpoint
    from dmdnet.network.config import DMDNetConfig
    from dmdnet.network.model import DMDNet
    from dmdnet.network.proximity import ProximityEstimator
    from dmdnet.weights import MEMORY_NAME, MODEL_NAME

    torch.manual_seed(0)
    config = DMDNetConfig.lite()
    paths = {"model": folder / MODEL_NAME, "memory": folder / MEMORY_NAME}
    save_dmdnet_checkpoint(DMDNet(config), paths["model"], paths["memory"], config=config.to_dict(),
                           proximity_estimator=ProximityEstimator(config.depth_feature_channels).state_dict())
    return paths
