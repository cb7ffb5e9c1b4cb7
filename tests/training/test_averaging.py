"""The weight average of runs ("model soup"), written as files that load."""
from __future__ import annotations

import pytest
import torch

import dmdnet
from dmdnet.checkpoints import CheckpointError, read_checkpoint
from dmdnet.training.averaging import ExponentialAverage, average_checkpoints


def test_an_average_drops_the_scale_chosen_for_one_of_its_files(lite_checkpoints, tmp_path):
    model = read_checkpoint(lite_checkpoints["model"], "model")
    torch.save({**model, "trained_short_side": 256, "inference_short_side": 112,
                "inference_short_side_fit": {"validation_inv_gain": {112: 0.6}}}, tmp_path / "chosen.pt")
    torch.save({**model, "trained_short_side": 256}, tmp_path / "plain.pt")
    out_model = tmp_path / "avg" / "model_latest.pt"
    average_checkpoints([tmp_path / "chosen.pt", tmp_path / "plain.pt"], [lite_checkpoints["memory"]] * 2,
                        out_model, tmp_path / "avg" / "memory_banks_latest.pt")
    averaged = read_checkpoint(out_model, "model")
    assert averaged["trained_short_side"] == 256
    assert "inference_short_side" not in averaged and "inference_short_side_fit" not in averaged


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


def test_exponential_average_follows_its_warm_up_then_its_decay_and_resumes():
    weight = torch.nn.Parameter(torch.zeros(3))
    average = ExponentialAverage({"w": weight}, decay=0.5)
    expected = torch.zeros(3)
    for update, value in enumerate([1.0, 3.0, -2.0, 5.0, 4.0]):
        with torch.no_grad():
            weight.fill_(value)
        average.update()
        kept = min(0.5, (1 + update) / (10 + update))  # 0.1, 0.18, 0.25, 0.31, 0.36: still warming up
        expected = kept * expected + (1 - kept) * value
        assert torch.allclose(average.averages["w"], expected), update
    for _ in range(20):  # past the warm-up the decay is 0.5
        average.update()
    assert torch.allclose(average.averages["w"], torch.full((3,), 4.0), atol=1e-4)

    resumed = ExponentialAverage({"w": weight}, decay=0.5, saved=average.state_dict())
    assert resumed.updates == average.updates == 25
    assert torch.equal(resumed.averages["w"], average.averages["w"])
    with pytest.raises(CheckpointError, match="other tensors"):
        ExponentialAverage({"v": weight}, decay=0.5, saved=average.state_dict())
    with pytest.raises(ValueError, match="decay"):
        ExponentialAverage({"w": weight}, decay=1.0)


def test_the_average_is_in_place_only_within_its_block_even_when_the_block_fails():
    weight = torch.nn.Parameter(torch.tensor([2.0]))
    average = ExponentialAverage({"w": weight}, decay=0.9)
    with torch.no_grad():
        weight.fill_(10.0)
    average.update()  # first update keeps 0.1 of the start: 0.1 * 2 + 0.9 * 10
    with average.in_place():
        assert weight.item() == pytest.approx(9.2)
    assert weight.item() == 10.0
    with pytest.raises(RuntimeError, match="inside"), average.in_place():
        raise RuntimeError("inside")
    assert weight.item() == 10.0
