"""The demo's disk bound: real folders, and a real server under a burst of large uploads."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from test_app import launch_app

import dmdnet
from dmdnet.demo.runs import RunStore
from dmdnet.demo.storage import MB, StorageFull, StorageQuota

SIZE = 100 * 1024
"""A whole number of disk blocks, so that a file takes exactly its size."""


def _file(path: Path, size: int, age_s: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    then = time.time() - age_s
    os.utime(path, (then, then))
    os.utime(path.parent, (then, then))
    return path


def _bytes(*folders: Path) -> int:
    """Total size of the files under `folders`, measured independently of the quota's code."""
    total = 0
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    pass  # deleted while counted
    return total


def test_room_is_made_by_deleting_the_oldest_entries_first(tmp_path):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    _file(cache / "example" / "photo.jpg", SIZE, age_s=1000)
    quota = StorageQuota(750_000, [runs, cache])
    quota.protect_existing()  # what Gradio put in its cache at start-up
    quota.protect(runs / "examples-x")
    _file(runs / "examples-x" / "log.csv", SIZE, age_s=1000)
    _file(runs / ".run-c.partial" / "t.png", SIZE, age_s=1000)  # being written
    _file(runs / ("run-" + "a" * 32) / "t.png", SIZE, age_s=400)
    _file(cache / "hash1" / "upload.png", SIZE, age_s=300)
    _file(runs / ("run-" + "b" * 32) / "t.png", SIZE, age_s=200)
    _file(cache / "hash2" / "upload.png", SIZE, age_s=100)

    with quota.reserve(2 * SIZE):  # seven entries on disk: the two oldest go
        assert sorted(p.name for p in runs.iterdir()) == [".run-c.partial", "examples-x", "run-" + "b" * 32]
        assert sorted(p.name for p in cache.iterdir()) == ["example", "hash2"]
        with pytest.raises(StorageFull, match="more do not fit in the demo's 1 MB of storage"):
            quota.claim(400_000)  # the reservation counts: only 200 kB more could be freed
        assert quota.usage() == 5 * SIZE  # and nothing was deleted for a claim that cannot succeed
    token = quota.claim(150_000)  # the reservation is gone: room without deleting
    assert quota.usage() == 5 * SIZE
    quota.release(token)


def test_run_folders_stay_within_the_bound(lite_checkpoints, tmp_path):
    pipe = dmdnet.load_pipeline(**{k: str(v) for k, v in lite_checkpoints.items()}, device="cpu")
    result = pipe.separate(torch.rand(1, 3, 64, 80), diagnostics=True)
    quota = StorageQuota(4 * MB, [tmp_path / "runs"])
    store = RunStore(tmp_path / "runs", quota=quota)
    saved = [store.save(result, f"photo{index}.png", 0.1) for index in range(12)]
    assert _bytes(tmp_path / "runs") <= 4 * MB
    kept = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert 1 < len(kept) < 12 and kept == sorted(run.id for run in saved[-len(kept):])  # the newest stay
    with pytest.raises(StorageFull):
        RunStore(tmp_path / "small", quota=StorageQuota(100_000, [tmp_path / "small"])).save(result, "x.png", 0.1)
    assert list((tmp_path / "small").iterdir()) == []  # no half-written run left


BOUND_MB = 6


@pytest.fixture(scope="module")
def bounded_server(lite_checkpoints, tmp_path_factory, request):
    home = tmp_path_factory.mktemp("bounded_app")
    return launch_app(lite_checkpoints, home, request.config, "--max-disk-mb", str(BOUND_MB))


def _noise_png(path: Path, seed: int) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (500, 600, 3), np.uint8)).save(path)
    return path  # about 0.9 MB: PNG cannot compress noise


def test_a_burst_of_large_uploads_stays_within_the_bound(bounded_server, tmp_path):
    folders = (bounded_server.home / "gradio", bounded_server.runs)
    photos = [_noise_png(tmp_path / f"{index}.png", index) for index in range(16)]
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _bytes(*folders))
            time.sleep(0.005)

    def upload(path: Path) -> httpx.Response:
        with open(path, "rb") as file:
            return httpx.post(f"{bounded_server.url}gradio_api/upload",
                              files={"files": (path.name, file, "image/png")}, timeout=120)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(upload, photos[:8]))
        later = [upload(path) for path in photos[8:]]  # one at a time: each makes room for itself
        client = Client(bounded_server.url, verbose=False, download_files=str(tmp_path / "downloads"))
        small = tmp_path / "small.png"
        Image.fromarray(np.random.default_rng(99).integers(0, 255, (48, 64, 3), np.uint8)).save(small)
        summary = client.predict(handle_file(str(small)), api_name="/separate")[5]
    finally:
        done.set()
        watcher.join()
    assert peak[0] <= BOUND_MB * MB, f"{peak[0] / MB:.2f} MB on disk"
    statuses = [response.status_code for response in burst]
    assert statuses.count(200) >= 2 and set(statuses) <= {200, 507}, statuses
    refused = next(response for response in burst if response.status_code == 507) if 507 in statuses else None
    assert refused is None or "of storage; please try again" in refused.json()["error"]
    assert [response.status_code for response in later] == [200] * 8  # the oldest make room
    kept = {Path(path).name for response in burst + later if response.status_code == 200
            for path in response.json() if Path(path).is_file()}
    assert "15.png" in kept and "0.png" not in kept
    assert (bounded_server.runs / summary["run"] / "info.json").is_file()
    too_big = tmp_path / "big.bin"
    too_big.write_bytes(os.urandom((BOUND_MB + 1) * MB))
    response = upload(too_big)
    assert response.status_code == 413 and "too large for the demo's 6 MB of storage" in response.json()["error"]
