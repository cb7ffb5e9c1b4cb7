"""The prepared GPU check: one call on a machine with one CUDA GPU, under 10 minutes (not a test).

    python scripts/gpu_check.py [--device cuda] [--golden DIR] [--sizes 512 1024] [--json FILE]
    python scripts/gpu_check.py --device cpu --quick      # the same steps, small, to check the script

Installs nothing: it uses what imports. In order, it prints
1. the machine: torch, CUDA, the GPU, TF32 settings, which scan path runs in float32 and
   bfloat16 (mamba-ssm's kernel when `selective_scan_cuda` imports);
2. the parity tests run on the device (tests/test_parity.py with DMDNET_TEST_DEVICE, which adds
   the bfloat16/float16 cases there; on CUDA also tests/test_scan.py, whose kernel test needs
   mamba-ssm): pytest's summary line;
3. mamba-ssm's kernel against the project's chunked scan at the shape of a level-2 scan of a
   512x512 photo (float64 chunked scan as the oracle), float32 and bfloat16;
4. one table: seconds per image (best of --repeats after a warm-up run) and peak device memory
   at each size, for the released configuration (the golden seeded weights, MiDaS included)
   and DMDNet-Lite (the default weights, at full size), in float32 and bfloat16, and the
   bfloat16 outputs' relative distance from float32 on an example photo.

The golden files are read from --golden (default: $DMDNET_SHARED/golden, else
../shared/golden beside the repository); a GPU machine that receives only the repository
needs a copy of them (see README, "GPU check").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support import write_seeded_checkpoints  # noqa: E402

import dmdnet  # noqa: E402
from dmdnet import ops  # noqa: E402
from dmdnet.files import write_text  # noqa: E402
from dmdnet.network.precision import parse_dtype  # noqa: E402
from dmdnet.ops import scan  # noqa: E402

EXAMPLE = REPO / "examples" / "windowseat_museum.jpg"
KERNEL_SHAPE = {"channels": 96, "states": 16, "length": 256 * 256}
"""A level-2 scan of the released model on a 512x512 photo: 96 channels, 16 states, 256x256 tokens."""


def default_golden() -> Path:
    shared = os.environ.get("DMDNET_SHARED")
    return Path(shared) / "golden" if shared else REPO.parent / "shared" / "golden"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(function, device: torch.device, repeats: int):
    """(fastest of `repeats` timed calls after one warm-up call, the warm-up's result)."""
    result = function()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return min(seconds), result


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    info["scan_float32"] = scan.scan_backend(device, torch.float32)
    info["scan_bfloat16"] = scan.scan_backend(device, torch.bfloat16)
    return info


def parity_tests(device: torch.device, golden: Path, quick: bool) -> dict:
    """Runs the parity tests in a child pytest on `device`; returns its summary line and time."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_parity.py"]
    if device.type == "cuda":
        command.append("tests/test_scan.py")
    if quick:
        command += ["-k", "float32_within and 64x64"]
    environment = {**os.environ, "DMDNET_TEST_DEVICE": str(device), "DMDNET_SHARED": str(golden.parent)}
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    summary = lines[-1] if lines else run.stderr.strip()[-300:]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {"command": " ".join(command[2:]), "returncode": run.returncode, "summary": summary,
            "failures": failures, "seconds": time.perf_counter() - start}


def scan_inputs(channels: int, states: int, length: int) -> dict:
    """Mamba-like inputs (A < 0, dt around softplus(-2)) of one DMDNet scan call (B/C in one group)."""
    generator = torch.Generator().manual_seed(0)
    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)
    return {"u": normal(1, channels, length), "delta": normal(1, channels, length) - 2,
            "A": -torch.arange(1, states + 1, dtype=torch.float64).repeat(channels, 1),
            "B": normal(1, 1, states, length), "C": normal(1, 1, states, length),
            "D": torch.ones(channels, dtype=torch.float64), "delta_bias": torch.full((channels,), 0.5, dtype=torch.float64)}


def kernel_comparison(device: torch.device, repeats: int, shape: dict) -> list[dict]:
    """The dispatched scan (mamba-ssm's kernel where it runs) and the chunked scan, float32 and
    bfloat16 (A, D and the bias in float32, as DSMamba passes them), against the float64
    chunked scan and against each other on the same inputs."""
    inputs = {k: v.to(device) for k, v in scan_inputs(**shape).items()}
    oracle = ops.selective_scan_chunked(**inputs)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        cast = {k: v.to(dtype) if k in ("u", "delta", "B", "C") else v.float() for k, v in inputs.items()}
        paths = {"torch-chunked": ops.selective_scan_chunked, scan.scan_backend(device, dtype): scan.selective_scan}
        for name, function in paths.items():
            with torch.inference_mode():
                seconds, y = best_seconds(lambda: function(**cast), device, repeats)
            if name == "torch-chunked":
                chunked = y
            rows.append({"path": name, "dtype": str(dtype).removeprefix("torch."), "seconds": seconds,
                         "relative_error": relative_error(y, oracle), "vs_chunked": relative_error(y, chunked)})
    return rows


def load(config: str, checkpoints: dict, device: torch.device, dtype: torch.dtype) -> dmdnet.Pipeline:
    files = {k: str(v) for k, v in checkpoints.items()} if config == "released" else {}
    return dmdnet.load_pipeline(**files, device=device, dtype=dtype, max_pixels=4096 * 4096, native_scale=True)


def timings(device: torch.device, checkpoints: dict, sizes: list[int], configs: list[str],
            dtypes: list[torch.dtype], repeats: int) -> list[dict]:
    """One row per (configuration, dtype, size): seconds, peak memory, distance from float32."""
    with Image.open(EXAMPLE) as photo:
        photos = {size: photo.convert("RGB").resize((size, size), Image.Resampling.LANCZOS) for size in sizes}
    rows = []
    for config in configs:
        float32_outputs = {}
        for dtype in dtypes:
            pipe = load(config, checkpoints, device, dtype)
            for size in sizes:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, result = best_seconds(lambda: pipe.separate(photos[size]), device, repeats)
                row = {"config": config, "dtype": str(dtype).removeprefix("torch."), "size": size,
                       "seconds": seconds, "scan": scan.scan_backend(device, dtype),
                       "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
                if dtype == torch.float32:
                    float32_outputs[size] = (result.transmission.cpu(), result.reflection.cpu())
                elif size in float32_outputs:
                    reference = float32_outputs[size]
                    row["t_error"] = relative_error(result.transmission.cpu(), reference[0])
                    row["r_error"] = relative_error(result.reflection.cpu(), reference[1])
                rows.append(row)
                print(f"  {config} {row['dtype']} {size}: {seconds:.3f} s", flush=True)
            pipe = None  # release the weights before the next dtype loads its own
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    def cell(value, form):
        return "-" if value is None else format(value, form)
    lines = ["| configuration | dtype | size | s / image | peak GiB | T vs float32 | R vs float32 | scan |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['config']} | {r['dtype']} | {r['size']}x{r['size']} | {r['seconds']:.3f} | "
              f"{cell(r['peak_gib'], '.2f')} | {cell(r.get('t_error'), '.1e')} | {cell(r.get('r_error'), '.1e')} | "
              f"{r['scan']} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="64x64, one run each, one parity case: checks the script, measures nothing")
    parser.add_argument("--golden", type=Path, default=default_golden())
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--configs", nargs="+", choices=["released", "lite"], default=["released", "lite"])
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16"],
                        default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--skip-tests", action="store_true", help="leave out step 2")
    parser.add_argument("--json", type=Path, help="also write everything measured to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --device cpu --quick to check the script", file=sys.stderr)
        return 2
    if not (args.golden / "seeded.py").is_file():
        print(f"error: no golden files at {args.golden} (pass --golden DIR or set DMDNET_SHARED)", file=sys.stderr)
        return 2
    sizes = args.sizes or ([64] if args.quick else [512, 1024])
    repeats = args.repeats or (1 if args.quick else 2)
    report = {"machine": machine(device), "quick": args.quick}
    print("machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()), flush=True)

    if not args.skip_tests:
        report["parity"] = parity_tests(device, args.golden, args.quick)
        print(f"parity tests on {device} ({report['parity']['command']}): {report['parity']['summary']} "
              f"in {report['parity']['seconds']:.0f} s" + "".join(f"\n  {f}" for f in report["parity"]["failures"]),
              flush=True)

    shape = {"channels": 32, "states": 16, "length": 4096} if args.quick else KERNEL_SHAPE
    kernel_reason = scan.kernel_unavailable_reason(device, torch.float32)
    report["kernel"] = {"shape": shape, "unavailable": kernel_reason,
                        "rows": kernel_comparison(device, repeats, shape)}
    print(f"selective scan, D={shape['channels']} N={shape['states']} L={shape['length']}, "
          f"relative error against the float64 chunked scan on the unrounded inputs"
          + (f" (mamba-ssm's kernel does not run: {kernel_reason})" if kernel_reason else ""))
    for row in report["kernel"]["rows"]:
        print(f"  {row['path']:>16} {row['dtype']:>8}: {1000 * row['seconds']:9.2f} ms, "
              f"error {row['relative_error']:.1e}, from the chunked scan on the same inputs "
              f"{row['vs_chunked']:.1e}", flush=True)

    dtypes = [parse_dtype(name) for name in args.dtypes]
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = write_seeded_checkpoints(Path(folder), args.golden) if "released" in args.configs else {}
        report["timings"] = timings(device, checkpoints, sizes, args.configs, dtypes, repeats)
    print(("quick run (checks the script; the numbers mean nothing)\n" if args.quick else "")
          + f"seconds per image on {report['machine'].get('gpu', device)}, best of {repeats} after a warm-up; "
          f"released = golden seeded weights with MiDaS, lite = default weights at full size; "
          f"T/R vs float32 = relative L2 distance from the float32 outputs on {EXAMPLE.name}\n" + table(report["timings"]))
    if args.json:
        write_text(args.json, json.dumps(report, indent=2, default=str))
    failed = not args.skip_tests and report["parity"]["returncode"] != 0
    errors = [row[key] for row in report["timings"] + report["kernel"]["rows"]
              for key in ("t_error", "r_error", "relative_error") if key in row]
    if not all(map(math.isfinite, errors)):
        print("error: some outputs are not finite (NaN or inf in the table)", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
