"""Weight averages: the "model soup" of runs fine-tuned from one starting point, and the
exponential moving average of one run's weights along its steps."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
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
    "iterations" is the largest of the runs'. A scale chosen for one of the files
    (`dmdnet.training.inference_scale`) is not kept: the average is new weights.
    """
    models = [read_checkpoint(path, "DMDNet model") for path in model_paths]
    if len(models) < 2 or not all(isinstance(m, Mapping) and "network" in m for m in models):
        raise CheckpointError("averaging needs two or more model files with a 'network' entry")
    for key in ("config", "trained_short_side"):
        if any(m.get(key) != models[0].get(key) for m in models):
            raise CheckpointError(f"cannot average models whose '{key}' differs")
    averaged = {key: value for key, value in models[0].items()
                if key not in ("inference_short_side", "inference_short_side_fit")}
    for key in ("network", "proximity_estimator"):
        if key in averaged:
            averaged[key] = _mean_tensors([m.get(key) or {} for m in models], key)
    averaged["iterations"] = max(int(m.get("iterations", 0)) for m in models)
    banks = _mean_tensors([read_memory_banks(path) for path in memory_paths], "memory banks")
    save_files({out_model: averaged, out_memory: {k: F.normalize(v, dim=-1) for k, v in banks.items()}})


class ExponentialAverage:
    """An exponential moving average of a model's trained weights (Polyak averaging).

    The average of the last few hundred steps' weights scores steadier, and usually better, than the
    weights of any one step when the updates are noisy (a batch of four crops, a high learning rate);
    training itself never reads it. Its decay grows as (1 + k) / (10 + k) over its first updates up to
    `decay`, so that an average started from random weights forgets them quickly.
    """

    def __init__(self, parameters: Mapping[str, torch.Tensor], decay: float,
                 saved: Mapping[str, object] | None = None):
        if not 0 < decay < 1:
            raise ValueError(f"the average's decay must lie in (0, 1), got {decay}")
        self.parameters = dict(parameters)
        self.decay = decay
        self.updates = int(saved["updates"]) if saved else 0
        averages = saved["weights"] if saved else {}
        if saved and set(averages) != set(self.parameters):
            raise CheckpointError("the saved weight average holds other tensors than this model trains")
        self.averages = {name: (averages[name] if saved else parameter.detach()).to(parameter).clone()
                         for name, parameter in self.parameters.items()}

    def update(self) -> None:
        """Moves the average towards the weights as they are now (call after each optimiser step)."""
        weight = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                self.averages[name].lerp_(parameter, weight)
        self.updates += 1

    def state_dict(self) -> dict[str, object]:
        """What `training_state.pt` keeps to resume the average: its weights and update count."""
        return {"updates": self.updates, "weights": {name: value.detach().cpu().clone()
                                                     for name, value in self.averages.items()}}

    @contextlib.contextmanager
    def in_place(self) -> Iterator[None]:
        """Within the block, the model's parameters hold the average; after it, their own values."""
        with torch.no_grad():
            own = {name: parameter.detach().clone() for name, parameter in self.parameters.items()}
            for name, parameter in self.parameters.items():
                parameter.copy_(self.averages[name])
            try:
                yield
            finally:
                for name, parameter in self.parameters.items():
                    parameter.copy_(own[name])
