"""The weight average ("model soup") of runs fine-tuned from one starting point."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import CheckpointError, read_checkpoint, read_memory_banks, save_files


def _mean_tensors(states: list[Mapping[str, object]], what: str) -> dict[str, torch.Tensor]:
    """Element-wise mean of dicts of tensors with the same names and shapes (others refused)."""
    first = states[0]
    for state in states:
        if set(state) != set(first) or not all(
                isinstance(state[k], torch.Tensor) and isinstance(v, torch.Tensor) and state[k].shape == v.shape
                for k, v in first.items()):
            raise CheckpointError(f"cannot average {what}: the files hold different tensors or shapes")
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
            if v.is_floating_point() else v for k, v in first.items()}


def average_checkpoints(model_paths: list[str | Path], memory_paths: list[str | Path],
                        out_model: str | Path, out_memory: str | Path) -> None:
    """Writes the weight average ("model soup") of runs fine-tuned from one starting point.

    Network and proximity-estimator tensors are averaged; memory slots are averaged and
    renormalised to unit length, as the banks' evolution keeps them. The other entries
    (config, trained scale) come from the first file and must agree across files;
    "iterations" is the largest of the runs'.
    """
    models = [read_checkpoint(path, "DMDNet model") for path in model_paths]
    if len(models) < 2 or not all(isinstance(m, Mapping) and "network" in m for m in models):
        raise CheckpointError("averaging needs two or more model files with a 'network' entry")
    for key in ("config", "trained_short_side"):
        if any(m.get(key) != models[0].get(key) for m in models):
            raise CheckpointError(f"cannot average models whose '{key}' differs")
    averaged = dict(models[0])
    for key in ("network", "proximity_estimator"):
        if key in averaged:
            averaged[key] = _mean_tensors([m.get(key) or {} for m in models], key)
    averaged["iterations"] = max(int(m.get("iterations", 0)) for m in models)
    banks = _mean_tensors([read_memory_banks(path) for path in memory_paths], "memory banks")
    save_files({out_model: averaged, out_memory: {k: F.normalize(v, dim=-1) for k, v in banks.items()}})
