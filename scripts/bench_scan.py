"""Time the CPU selective scans: `selective_scan_chunked` against the sequential oracle.

Shapes are those of one DMDNet scan site: batch 1, D=96 channels, N=16 states, G=2 B/C groups.
The reference runs only at L=4096 (it is slow) and is extrapolated linearly to longer sequences; the
chunked scan also runs a million-pixel sequence (L=1,048,576, float32) in a child process, so that its
peak RSS is its own. Usage: python scripts/bench_scan.py [--threads N] [--repeats R]
(about 20 s with one thread).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmdnet.ops import (  # noqa: E402
    SCAN_MEMORY_BUDGET_BYTES,
    selective_scan_chunked,
    selective_scan_reference,
)

CHANNELS, STATES, GROUPS = 96, 16, 2
REFERENCE_LENGTH = 4096
LENGTHS = (4096, 65536)
MILLION_PIXELS = 1 << 20
MIB = 2**20


def make_inputs(length: int, dtype: torch.dtype = torch.float32) -> dict:
    """Mamba-like random inputs (A < 0, dt around softplus(-2)), allocated without large temporaries."""
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(1, CHANNELS, length, generator=generator, dtype=dtype).sub_(2)
    return {
        "u": torch.randn(1, CHANNELS, length, generator=generator, dtype=dtype),
        "delta": delta,
        "A": -torch.arange(1, STATES + 1, dtype=dtype).repeat(CHANNELS, 1),
        "B": torch.randn(1, GROUPS, STATES, length, generator=generator, dtype=dtype),
        "C": torch.randn(1, GROUPS, STATES, length, generator=generator, dtype=dtype),
        "D": torch.ones(CHANNELS, dtype=dtype),
        "delta_bias": torch.full((CHANNELS,), 0.5, dtype=dtype),
    }


def best_time(function, inputs: dict, repeats: int) -> tuple[float, torch.Tensor]:
    """Fastest of `repeats` runs (the machine is shared, so the minimum is the fairest figure)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        y = function(**inputs)
        seconds.append(time.perf_counter() - start)
    return min(seconds), y


def rss_child() -> None:
    """Run the million-pixel scan once and print its time and memory as JSON (child process)."""
    inputs = make_inputs(MILLION_PIXELS)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        seconds, y = best_time(selective_scan_chunked, inputs, repeats=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "before": before, "peak": peak,
                      "output": y.numel() * y.element_size()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads can thrash)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing; the fastest is reported")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child()
        return

    print(f"selective scan, batch 1, D={CHANNELS}, N={STATES}, G={GROUPS}, float32, "
          f"{args.threads} torch thread(s), best of {args.repeats}")
    with torch.inference_mode():
        reference_inputs = make_inputs(REFERENCE_LENGTH)
        reference_s, reference_y = best_time(selective_scan_reference, reference_inputs, args.repeats)
        exact_y = selective_scan_reference(**{k: v.double() for k, v in reference_inputs.items()})
        chunked_y = selective_scan_chunked(**reference_inputs)
    error = ((chunked_y.double() - exact_y).abs().max() / exact_y.abs().max()).item()

    print(f"{'L':>9}  {'chunked s':>10}  {'reference s':>14}  {'speed-up':>8}  note")
    for length in LENGTHS:
        with torch.inference_mode():
            chunked_s, _ = best_time(selective_scan_chunked, make_inputs(length), args.repeats)
        scaled_reference_s = reference_s * length / REFERENCE_LENGTH
        reference_cell = f"{scaled_reference_s:.3f}" + ("" if length == REFERENCE_LENGTH else " (ext)")
        note = f"rel. err vs float64 oracle {error:.1e}" if length == REFERENCE_LENGTH else ""
        print(f"{length:>9}  {chunked_s:>10.3f}  {reference_cell:>14}  {scaled_reference_s / chunked_s:>7.0f}x  {note}")

    child = subprocess.run([sys.executable, __file__, "--rss-child", "--threads", str(args.threads)],
                           check=True, capture_output=True, text=True)
    million = json.loads(child.stdout)
    extra = million["peak"] - million["before"]
    print(f"{MILLION_PIXELS:>9}  {million['seconds']:>10.3f}  {'-':>14}  {'-':>8}  "
          f"peak RSS {million['peak'] / MIB:.0f} MiB: inputs {million['before'] / MIB:.0f} MiB, "
          f"+{extra / MIB:.0f} MiB during the call, of which output {million['output'] / MIB:.0f} MiB "
          f"(temporaries budget {SCAN_MEMORY_BUDGET_BYTES / MIB:.0f} MiB)")


if __name__ == "__main__":
    main()
