"""CPU benchmark of the released DMDNet configuration (prints numbers; not a test).

    python scripts/benchmark.py [--sizes 256 512] [--rss-size 1024] [--threads N] [--default-only]

Reports, in float32, for the released configuration (random weights: timing does
not depend on them): seconds per image split into depth / DMDNet / scans (the
selective scans plus DAScan ordering, inside DMDNet), the counted work in GFLOP,
the machine's float32 matmul rate measured in the same run and the resulting
matmul floor, and peak RSS of a separate process at --rss-size. Then the time of
a 512x512 photo with the default weights (`dmdnet.load_pipeline()`, at their trained
scale and at full size), and the
exact scan op against its sequential oracle.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from dmdnet import ops  # noqa: E402
from dmdnet.files import write_text  # noqa: E402
from dmdnet.network import dsmamba  # noqa: E402
from dmdnet.network.depth import MidasDPT  # noqa: E402
from dmdnet.network.model import DMDNet  # noqa: E402
from dmdnet.pipeline import Pipeline  # noqa: E402


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


class ScanTimer:
    """Accumulates wall time spent in the scan kernel and the DAScan orderings."""

    def __init__(self):
        self.seconds = 0.0
        for module, name in ((dsmamba, "selective_scan"), (dsmamba, "regional_order"),
                             (dsmamba, "global_order")):
            setattr(module, name, self._timed(getattr(module, name)))

    def _timed(self, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return wrapper


def build_pipeline() -> Pipeline:
    return Pipeline(DMDNet(), MidasDPT(), "cpu", torch.float32)


def time_size(pipe: Pipeline, timer: ScanTimer, size: int, repeats: int) -> dict:
    image = torch.rand(1, 3, size, size)
    pipe.separate(image)
    depth_s = model_s = scans_s = 0.0
    for _ in range(repeats):
        with torch.inference_mode():
            start = time.perf_counter()
            features = pipe.depth_model(image)
            middle = time.perf_counter()
            timer.seconds = 0.0
            pipe.model(image, features)
            end = time.perf_counter()
        depth_s += middle - start
        model_s += end - middle
        scans_s += timer.seconds
    return {"size": size, "depth_s": depth_s / repeats, "dmdnet_s": model_s / repeats,
            "scans_s": scans_s / repeats, "total_s": (depth_s + model_s) / repeats}


def counted_gflop(pipe: Pipeline, size: int) -> float:
    image = torch.rand(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pipe.model(image, pipe.depth_model(image))
    return counter.get_total_flops() / 1e9


def peak_rss_child(size: int) -> dict:
    """Runs one separation in a fresh process and reports its peak RSS (GiB) and time."""
    code = (
        "import resource, sys, time, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from dmdnet.network.depth import MidasDPT\nfrom dmdnet.network.model import DMDNet\n"
        "from dmdnet.pipeline import Pipeline\n"
        "pipe = Pipeline(DMDNet(), MidasDPT(), 'cpu', torch.float32, max_pixels=10**8)\n"
        f"image = torch.rand(1, 3, {size}, {size})\n"
        "start = time.perf_counter(); pipe.separate(image); seconds = time.perf_counter() - start\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, seconds)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss_gib, seconds = map(float, out.stdout.split())
    return {"size": size, "peak_rss_gib": rss_gib, "seconds": seconds}


def default_weights_512(repeats: int) -> dict:
    """Seconds for one 512x512 photo with `dmdnet.load_pipeline()`'s default weights, at the
    scale their file records (the default) and at full size (`native_scale=True`)."""
    import dmdnet

    image = torch.rand(1, 3, 512, 512)
    report = {}
    for key, native in (("seconds", False), ("native_seconds", True)):
        pipe = dmdnet.load_pipeline(device="cpu", native_scale=native)
        result = pipe.separate(image)
        start = time.perf_counter()
        for _ in range(repeats):
            pipe.separate(image)
        report[key] = (time.perf_counter() - start) / repeats
        report["native_size" if native else "processed_size"] = result.processed_size
    return {"weights": pipe.weights.label, **report}


def app_round_trip_512(repeats: int, startup_timeout_s: float = 300) -> dict:
    """Seconds of the demo's `/separate` round trip (client call to files on the client) for
    the 512x512 example photo, against the pipeline's own seconds inside the same request
    (the summary's `seconds`), after one warm-up request; `python app.py` with the default
    weights runs in a fresh process on a free local port.

    Measured twice: with gradio_client's defaults, which open a new HTTP client for the upload
    and for each of the five files (about 25 ms each here, most of it building a TLS context
    even for http://), and with the files fetched over one kept-alive connection, as a browser
    fetches them."""
    import httpx
    from gradio_client import Client, handle_file

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "TMPDIR": home, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
               "NO_PROXY": "127.0.0.1,localhost"}
        server = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1",
                                   "--port", str(port), "--device", "cpu"], cwd=home, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=5):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("app.py did not start") from None
                    time.sleep(1)
            downloading = Client(url, verbose=False, download_files=str(Path(home) / "downloads"))
            linking = Client(url, verbose=False, download_files=False)
            photo = handle_file(str(REPO_ROOT / "examples" / "windowseat_dog.png"))
            downloading.predict(photo, api_name="/separate")
            times = {"round_trip_s": [], "one_connection_s": [], "pipeline_s": []}
            with httpx.Client() as connection:
                for _ in range(repeats):
                    start = time.perf_counter()
                    *_, summary = downloading.predict(photo, api_name="/separate")
                    times["round_trip_s"].append(time.perf_counter() - start)
                    times["pipeline_s"].append(summary["seconds"])
                    start = time.perf_counter()
                    *files, summary = linking.predict(photo, api_name="/separate")
                    for file in files:
                        connection.get(file["url"]).raise_for_status()
                    times["one_connection_s"].append(time.perf_counter() - start)
                    times["pipeline_s"].append(summary["seconds"])
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {**{key: sum(values) / len(values) for key, values in times.items()},
            "processed_size": [summary["processed"]["height"], summary["processed"]["width"]]}


def scan_vs_oracle(length: int = 4096, channels: int = 96, state: int = 16) -> dict:
    torch.manual_seed(0)
    u, delta = torch.randn(1, channels, length), torch.randn(1, channels, length)
    a = -torch.rand(channels, state) * 4
    b, c = torch.randn(1, 2, state, length), torch.randn(1, 2, state, length)
    d, bias = torch.randn(channels), torch.randn(channels)
    results = {}
    for name, function in (("chunked", ops.selective_scan_chunked),
                           ("reference", ops.selective_scan_reference)):
        start = time.perf_counter()
        y = function(u.double(), delta.double(), a.double(), b.double(), c.double(), d.double(),
                     delta_bias=bias.double())
        results[name] = (y, time.perf_counter() - start)
    error = ((results["chunked"][0] - results["reference"][0]).norm()
             / results["reference"][0].norm()).item()
    return {"length": length, "channels": channels, "chunked_s": results["chunked"][1],
            "reference_s": results["reference"][1], "relative_error_float64": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rss-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--app-repeats", type=int, default=3,
                        help="timed /separate requests to the demo (0 skips the demo)")
    parser.add_argument("--default-only", action="store_true",
                        help="only the default weights' 512x512 time and the demo round trip")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    report = {"threads": args.threads}
    if not args.default_only:
        timer = ScanTimer()
        pipe = build_pipeline()
        rate = matmul_gflops()
        gflop = counted_gflop(pipe, 256)
        floor = gflop / rate
        report.update(matmul_gflops=rate, gflop_256=gflop, floor_256_s=floor,
                      sizes=[time_size(pipe, timer, s, args.repeats) for s in args.sizes],
                      scan_vs_oracle=scan_vs_oracle())
        if args.rss_size:
            report["rss"] = peak_rss_child(args.rss_size)
    report["default_512"] = default_weights_512(args.repeats)
    if args.app_repeats:
        report["app_512"] = app_round_trip_512(args.app_repeats)

    if not args.default_only:
        print(f"threads {args.threads}, float32 matmul {rate:.1f} GFLOP/s")
        print(f"work at 256x256: {gflop:.1f} GFLOP counted -> matmul floor {floor:.2f} s")
        print(f"{'size':>6} {'depth s':>8} {'DMDNet s':>9} {'(scans s)':>10} {'total s':>8} {'x floor':>8}")
        for row in report["sizes"]:
            ratio = row["total_s"] / (floor * (row["size"] / 256) ** 2)
            print(f"{row['size']:>6} {row['depth_s']:>8.2f} {row['dmdnet_s']:>9.2f} "
                  f"{row['scans_s']:>10.2f} {row['total_s']:>8.2f} {ratio:>8.2f}")
    if "rss" in report:
        print(f"{args.rss_size}x{args.rss_size}: peak RSS {report['rss']['peak_rss_gib']:.2f} GiB, "
              f"{report['rss']['seconds']:.1f} s (fresh process, load included in RSS)")
    default = report["default_512"]
    print(f"default weights ({default['weights']}): 512x512 in {default['seconds']:.2f} s "
          f"(runs at {default['processed_size'][0]}x{default['processed_size'][1]}); "
          f"{default['native_seconds']:.2f} s at full size (native_scale=True)")
    if "app_512" in report:
        app = report["app_512"]
        print(f"demo /separate, 512x512 photo (runs at {app['processed_size'][0]}x{app['processed_size'][1]}): "
              f"pipeline {app['pipeline_s']:.2f} s; round trip {app['round_trip_s']:.2f} s with gradio_client "
              f"({app['round_trip_s'] / app['pipeline_s']:.2f}x), {app['one_connection_s']:.2f} s with the "
              f"files over one connection ({app['one_connection_s'] / app['pipeline_s']:.2f}x); "
              "target at most 1.5x")
    if "scan_vs_oracle" in report:
        oracle = report["scan_vs_oracle"]
        print(f"scan op, L={oracle['length']} D={oracle['channels']} float64: chunked {oracle['chunked_s']:.3f} s, "
              f"sequential oracle {oracle['reference_s']:.3f} s, "
              f"relative error {oracle['relative_error_float64']:.1e}")
    if args.json:
        write_text(args.json, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
