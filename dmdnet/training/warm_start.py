"""Starting a run from the weights of another configuration (a changed architecture)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints import config_from_checkpoint, network_state_from_file, read_checkpoint, read_memory_banks
from ..network.model import official_to_ours


def _copy_matching(target: Mapping[str, torch.Tensor], source: Mapping[str, object]) -> list[str]:
    """Copies every source tensor whose name and shape exist in `target`; returns the rest, both ways."""
    skipped = []
    for name, value in source.items():
        if name in target and isinstance(value, torch.Tensor) and value.shape == target[name].shape:
            target[name].copy_(value)
        else:
            skipped.append(f"{name} (not used)")
    skipped += [f"{name} (not in the file)" for name in target if name not in source]
    return skipped


@torch.no_grad()
def warm_start(model: torch.nn.Module, estimator: torch.nn.Module | None, model_path: str | Path,
               memory_path: str | Path) -> list[str]:
    """Initialises `model` (and a Lite proximity `estimator`) from files of another configuration.

    Used to fine-tune a changed architecture from trained weights: every tensor whose name
    and shape match is copied, the others keep their fresh initialisation. Returns what was
    not copied, so the caller can report it.
    """
    obj = read_checkpoint(model_path, "DMDNet model")
    network = official_to_ours(network_state_from_file(obj, model_path), config_from_checkpoint(obj, model_path))
    skipped = (_copy_matching(model.state_dict(), network)
               + _copy_matching(model.memory.as_dict(), read_memory_banks(memory_path)))
    if estimator is not None:
        skipped += _copy_matching(estimator.state_dict(), dict(obj.get("proximity_estimator") or {}))
    return skipped
