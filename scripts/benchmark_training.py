"""CPU benchmark of a training step of the default recipe (prints numbers; not a test).

    python scripts/benchmark_training.py [--threads 1 2] [--repeats 7] [--perceptual-dtype bfloat16] [--json FILE]

The recipe is the shipped default's (DMDNet-Lite with the frozen ImageNet prior, batch 4 of
128 px crops, half real pairs, matched losses with the VGG term on real pairs; see
`RECIPE`). For each thread count it reports, as medians over `--repeats`:

* the whole optimiser step (sampling, forward, losses, backward, clipping, Adam, memory update)
  in s/step and crops/s;
* the network's forward + backward alone on one fixed batch, and its model FLOPs utilisation
  (MFU): 3 x the forward's FLOPs (torch's flop counter: convolutions and matmuls) over that
  time, against a 2048x2048 float32 matmul timed in the same run on the same threads;
* the part of that pass spent inside the counted ops themselves (convolutions and matmuls,
  forward and backward, from torch's profiler), and the MFU ceiling it sets: the MFU the pass
  would have if everything else in it (elementwise ops, copies, scans, sorting) took no time.

Time it alone: a second job on the other core halves every number here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmark import matmul_gflops  # noqa: E402 - scripts/ is this script's own folder on sys.path

from dmdnet.training.losses import LossWeights, TrainingObserver  # noqa: E402
from dmdnet.training.perceptual import PERCEPTUAL_DTYPES  # noqa: E402
from dmdnet.files import write_text  # noqa: E402
from dmdnet.training.trainer import DEFAULT_DATA, NATURAL_PHOTOS, Trainer, TrainSettings  # noqa: E402

RECIPE = dict(real=[NATURAL_PHOTOS.parent / "real_train" / "zhang_real82"], real_fraction=0.5, imagenet_prior=True,
              loss=LossWeights(matched=True, absolute_l1_t=0.2), lr=1e-3, seed=21)
"""The training options of the shipped default (`weights/dmdnet-lite/MODEL_CARD.md`), as TrainSettings fields."""


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of `function` after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_pass(trainer: Trainer, inputs: torch.Tensor) -> Callable[[], None]:
    """The network's forward and backward on `inputs`, without losses or optimiser."""
    def run() -> None:
        t, r = trainer.network(inputs, TrainingObserver())
        (t.mean() + r.mean()).backward()
    return run


def forward_gflop(trainer: Trainer, inputs: torch.Tensor) -> float:
    """The network's forward work as torch's flop counter counts it (convolutions and matmuls)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        trainer.network(inputs, TrainingObserver())
    return counter.get_total_flops() / 1e9


COUNTED_OPS = frozenset({"aten::convolution", "aten::convolution_backward", "aten::mm", "aten::addmm",
                         "aten::bmm", "aten::baddbmm"})
"""The profiler's names for the ops whose FLOPs the flop counter counts in this network."""


def counted_op_seconds(trainer: Trainer, inputs: torch.Tensor, repeats: int) -> float:
    """Mean time of a forward + backward spent inside COUNTED_OPS (outermost calls, so none twice)."""
    run = network_pass(trainer, inputs)
    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(repeats):
            run()

    def inside_counted_op(event) -> bool:
        parent = event.cpu_parent
        while parent is not None and parent.name not in COUNTED_OPS:
            parent = parent.cpu_parent
        return parent is not None

    microseconds = sum(event.cpu_time_total for event in profile.events()
                       if event.name in COUNTED_OPS and not inside_counted_op(event))
    return microseconds / 1e6 / repeats


def measure(trainer: Trainer, threads: int, repeats: int, gflop: float, inputs: torch.Tensor) -> dict:
    torch.set_num_threads(threads)
    matmul = matmul_gflops()
    pass_s = median_seconds(network_pass(trainer, inputs), repeats)
    step_s = median_seconds(trainer.train_step, repeats)
    counted_s = counted_op_seconds(trainer, inputs, repeats)
    return {"threads": threads, "step_s": step_s, "crops_per_s": trainer.settings.batch / step_s,
            "network_pass_s": pass_s, "matmul_gflops": matmul, "network_gflops": 3 * gflop / pass_s,
            "mfu": 3 * gflop / pass_s / matmul, "counted_ops_s": counted_s,
            "mfu_ceiling": 3 * gflop / counted_s / matmul}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--perceptual-dtype", choices=PERCEPTUAL_DTYPES, default=TrainSettings.perceptual_dtype,
                        help="the VGG term's convolutions (train --perceptual-dtype)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    os.chdir(REPO_ROOT)  # the data paths are relative to the repository, as in the CLI's defaults
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = Trainer(TrainSettings(out=Path(out), data=list(DEFAULT_DATA), validation=None,
                                        perceptual_dtype=args.perceptual_dtype, **RECIPE))
        print(f"trainer built in {time.perf_counter() - start:.1f} s; torch {torch.__version__}")
        inputs = trainer.sample()[0]
        gflop = forward_gflop(trainer, inputs)
        print(f"forward of a batch of {len(inputs)} x {trainer.settings.patch} px: {gflop:.2f} GFLOP")
        results = [measure(trainer, threads, args.repeats, gflop, inputs) for threads in args.threads]
        trainer.close()
    print(f"{'threads':>7} {'s/step':>7} {'crops/s':>7} {'pass s':>7} {'net GFLOP/s':>11} "
          f"{'matmul GFLOP/s':>14} {'MFU':>6} {'counted ops s':>13} {'MFU ceiling':>11}")
    for row in results:
        print(f"{row['threads']:>7} {row['step_s']:>7.3f} {row['crops_per_s']:>7.2f} {row['network_pass_s']:>7.3f} "
              f"{row['network_gflops']:>11.1f} {row['matmul_gflops']:>14.1f} {row['mfu']:>6.1%} "
              f"{row['counted_ops_s']:>13.3f} {row['mfu_ceiling']:>11.1%}")
    if args.json:
        write_text(args.json, json.dumps({"forward_gflop": gflop, "results": results}, indent=2))


if __name__ == "__main__":
    main()
