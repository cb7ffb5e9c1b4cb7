"""Two processes with gloo on the CPU: training, `separate` and `evaluate` under torchrun give
what one process gives."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from support import REPO_ROOT

from dmdnet.training.distributed import LaunchError, Ranks, process_device, process_group
from dmdnet.training.losses import LossWeights
from dmdnet.training.trainer import Trainer, TrainSettings
from dmdnet.weights import MEMORY_NAME, MODEL_NAME

WORLD = 2
PER_RANK_BATCH = 2
PER_SAMPLE_LOSSES = LossWeights(balance_t=0, balance_r=0, align_t=0, align_r=0, triplet_t=0, triplet_r=0)
"""L1 and gradient terms only: means over the samples, so that the average of two ranks'
gradients is the gradient of their concatenated batch. The balance term (cv^2 of the batch's
expert totals) and the alignment and triplet terms (means over the samples that chose an
expert) are statistics of each rank's own batch, and would differ by design."""
GRADIENT_TOLERANCE = 1e-4
"""Relative L2 distance, over all gradients, from the one-process step: float32 convolutions
of a batch of 2 and of 4 round differently (observed: 5e-6 to 8e-6; a rank's own gradient,
not averaged, is at about 0.08)."""


def save_photos(folder: Path, count: int, size=(40, 52)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo{index}.png"
        rng = np.random.default_rng(index)
        Image.fromarray(rng.integers(0, 255, (size[0] + index, size[1], 3), np.uint8)).save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_settings(folder: Path, out: str, init: Path) -> TrainSettings:
    return TrainSettings(out=folder / out, data=[folder / "photos"], init=init, patch=32, batch=PER_RANK_BATCH,
                         loss=PER_SAMPLE_LOSSES, steps=10, warmup=1, lr=1e-3, threads=1, device="cpu")


def gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in trainer.network.named_parameters() if p.grad is not None}


def train_one_step_on_rank(rank: int, port: int, folder: Path, init: Path) -> None:
    """One process of the two: one step on its half of the saved batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD), NUMBA_NUM_THREADS="1")
    with process_group("cpu") as ranks:
        trainer = Trainer(train_settings(folder, "ddp", init), ranks)
        batch = torch.load(folder / "batch.pt", weights_only=True)
        trainer.train_step(tuple(x[rank * PER_RANK_BATCH:(rank + 1) * PER_RANK_BATCH] for x in batch))
        torch.save({"gradients": {k.removeprefix("module."): v for k, v in gradients(trainer).items()},
                    "banks": trainer.model.memory.as_dict(), "step": trainer.step},
                   folder / f"rank{rank}.pt")
        if ranks.is_main:
            trainer.save()


def relative_distance(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert ours.keys() == reference.keys()
    difference = sum(float((ours[k].double() - reference[k].double()).pow(2).sum()) for k in reference)
    return (difference / sum(float(reference[k].double().pow(2).sum()) for k in reference)) ** 0.5


def test_two_process_step_equals_one_process_step_on_the_concatenated_batch(tmp_path, lite_checkpoints):
    save_photos(tmp_path / "photos", 4)
    single = Trainer(train_settings(tmp_path, "single", lite_checkpoints["model"]))
    batch = single.sampler.sample(WORLD * PER_RANK_BATCH)
    torch.save(batch, tmp_path / "batch.pt")
    single.train_step(batch)
    expected = gradients(single)

    mp.spawn(train_one_step_on_rank, args=(free_port(), tmp_path, lite_checkpoints["model"]), nprocs=WORLD)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for result in results:
        assert result["step"] == 1
        assert relative_distance(result["gradients"], expected) < GRADIENT_TOLERANCE
    for name, bank in single.model.memory.as_dict().items():
        assert torch.equal(results[0]["banks"][name], results[1]["banks"][name]), name
        assert torch.allclose(results[0]["banks"][name], bank, atol=1e-5), name
    before = torch.load(lite_checkpoints["memory"], weights_only=True)
    assert any(not torch.equal(bank, before[name]) for name, bank in results[0]["banks"].items())

    resumed = Trainer(train_settings(tmp_path, "ddp", lite_checkpoints["model"]))
    assert resumed.step == 1
    resumed.train_step()
    assert resumed.step == 2


def run_python(*arguments: str) -> subprocess.CompletedProcess:
    """`python ARGUMENTS` in the repository, one thread per process."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *arguments], cwd=REPO_ROOT, env=environment, capture_output=True,
                          text=True, timeout=900)


def torchrun(*arguments: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m dmdnet ARGUMENTS`."""
    return run_python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
                      "-m", "dmdnet", *arguments)


def run_dmdnet(*arguments: str) -> subprocess.CompletedProcess:
    """`python -m dmdnet ARGUMENTS`: one process, no torchrun."""
    return run_python("-m", "dmdnet", *arguments)


def weight_options(checkpoints: dict) -> list[str]:
    return ["--model", str(checkpoints["model"]), "--memory", str(checkpoints["memory"]), "--device", "cpu"]


def test_shares_cover_every_item_once_in_order():
    items = list(range(11))
    for world in (1, 2, 3, 4, 11, 12):
        shares = [Ranks(rank, world).share(items) for rank in range(world)]
        assert sum(shares, []) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_each_process_takes_its_own_gpu_or_is_told_why_not():
    assert process_device("cpu", 1, 2) == torch.device("cpu")
    with pytest.raises(LaunchError, match="pass --device cuda"):
        process_device("cuda:1", 0, 2)
    if torch.cuda.device_count() < 2:
        with pytest.raises(LaunchError, match="2 processes on this machine"):
            process_device("cuda", 0, 2)
    else:
        assert process_device(None, 1, 2) == torch.device("cuda", 1)


def test_torchrun_separate_writes_each_image_once(tmp_path, lite_checkpoints):
    photos = save_photos(tmp_path / "photos", 5)
    run = torchrun("separate", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), *weight_options(lite_checkpoints))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("wrote 5 of 5 images") == 1, run.stdout
    assert "2 processes on cpu" in run.stdout
    single = run_dmdnet("separate", *map(str, photos), "--out", str(tmp_path / "single"), *weight_options(lite_checkpoints))
    assert single.returncode == 0, single.stderr
    for layer in ("transmission_layer", "reflection_layer"):
        assert sorted(p.name for p in (tmp_path / "out" / layer).iterdir()) == [p.name for p in photos]
        for photo in photos:
            with Image.open(tmp_path / "out" / layer / photo.name) as ours, \
                    Image.open(tmp_path / "single" / layer / photo.name) as alone:
                assert np.array_equal(np.asarray(ours), np.asarray(alone)), photo.name


def test_torchrun_evaluate_tables_equal_one_process_tables(tmp_path, lite_checkpoints):
    dataset = tmp_path / "pairs"
    blended = save_photos(dataset / "blended", 5)
    for folder, offset in (("transmission_layer", 10), ("reflection_layer", 20)):
        for index, path in enumerate(blended[:4] if folder == "reflection_layer" else blended):
            with Image.open(path) as image:
                size = image.size
            rng = np.random.default_rng(offset + index)
            (dataset / folder).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(dataset / folder / path.name)
    run = torchrun("evaluate", str(dataset), "--out", str(tmp_path / "ddp"), *weight_options(lite_checkpoints))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("per-image scores and summary written") == 1
    single = run_dmdnet("evaluate", str(dataset), "--out", str(tmp_path / "single"), *weight_options(lite_checkpoints))
    assert single.returncode == 0, single.stderr
    for table in ("per_image.csv", "summary.csv", "summary.md"):
        assert (tmp_path / "ddp" / table).read_text() == (tmp_path / "single" / table).read_text(), table
    with open(tmp_path / "ddp" / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 2 + 4


def test_torchrun_train_logs_once_and_resumes_with_another_world_size(tmp_path, lite_checkpoints):
    save_photos(tmp_path / "photos", 3)
    out = tmp_path / "run"
    common = ["train", "--out", str(out), "--data", str(tmp_path / "photos"), "--validation", str(tmp_path / "photos"),
              "--patch", "32", "--batch", "1", "--validate-every", "1", "--device", "cpu", "--threads", "1",
              "--init", str(lite_checkpoints["model"])]
    run = torchrun(*common, "--steps", "2")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("checkpoints in") == 1
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("event"), r["world_size"]) for r in records] == [(0, "start", 2), (1, None, 2), (2, None, 2)]
    assert all("validation" in r and "loss" in r["train"] for r in records[1:])

    resumed = run_dmdnet(*common, "--steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("event"), r["world_size"]) for r in records[3:]] == [(2, "start", 1), (3, None, 1)]
    assert torch.load(out / MODEL_NAME, weights_only=True)["iterations"] == 3
    assert (out / MEMORY_NAME).is_file()
