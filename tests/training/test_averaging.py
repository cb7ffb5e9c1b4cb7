"""The weight average of runs ("model soup"), written as files that load."""
from __future__ import annotations

import pytest
import torch

import dmdnet
from dmdnet.checkpoints import CheckpointError, read_checkpoint
from dmdnet.training.averaging import average_checkpoints


def test_average_checkpoints_writes_the_mean_that_loads(lite_checkpoints, tmp_path):
    model, memory = read_checkpoint(lite_checkpoints["model"], "model"), read_checkpoint(lite_checkpoints["memory"], "banks")
    shifted = {**model, "iterations": 7, "network": {k: v + 0.02 if v.is_floating_point() else v
                                                     for k, v in model["network"].items()}}
    torch.save(shifted, tmp_path / "shifted_model.pt")
    torch.save({k: v * 3 for k, v in memory.items()}, tmp_path / "scaled_banks.pt")
    out_model, out_memory = tmp_path / "avg" / "model_latest.pt", tmp_path / "avg" / "memory_banks_latest.pt"
    average_checkpoints([lite_checkpoints["model"], tmp_path / "shifted_model.pt"],
                        [lite_checkpoints["memory"], tmp_path / "scaled_banks.pt"], out_model, out_memory)
    averaged = read_checkpoint(out_model, "model")
    for name, value in model["network"].items():
        expected = value + 0.01 if value.is_floating_point() else value
        assert torch.allclose(averaged["network"][name], expected, atol=1e-6), name
    assert averaged["iterations"] == 7 and averaged["config"] == model["config"]
    banks = read_checkpoint(out_memory, "banks")
    for name, value in memory.items():
        assert torch.allclose(banks[name], torch.nn.functional.normalize(value, dim=-1), atol=1e-6), name
    pipe = dmdnet.load_pipeline(model=out_model, memory=out_memory, device="cpu")
    assert torch.isfinite(pipe.separate(torch.rand(1, 3, 40, 48)).transmission).all()

    torch.save({k: v for k, v in model.items() if k != "proximity_estimator"}, tmp_path / "no_estimator.pt")
    with pytest.raises(CheckpointError, match="cannot average proximity_estimator"):
        average_checkpoints([lite_checkpoints["model"], tmp_path / "no_estimator.pt"], [lite_checkpoints["memory"]] * 2,
                            out_model, out_memory)
    torch.save(dict(list(memory.items())[1:]), tmp_path / "fewer_banks.pt")
    with pytest.raises(CheckpointError, match="different tensors or shapes"):
        average_checkpoints([lite_checkpoints["model"]] * 2, [lite_checkpoints["memory"], tmp_path / "fewer_banks.pt"],
                            out_model, out_memory)
