"""The Gradio app: its command line in-process, then every endpoint of a real server over HTTP
(the callbacks' and upload checks' own tests are in tests/demo/).

The server is `python app.py` on 127.0.0.1 with the seeded released-size weights, started
once per test session (`start_app`, shared with test_browser.py) and stopped at the end.
Images stay tiny (<= 64 px): the released model takes seconds per image on a CPU.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

import app
from dmdnet.demo import callbacks
from dmdnet.demo.runs import RunStore

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 300
SERVER_QUEUE = 4
"""The test server's --max-queue: small enough to fill, larger than any other test's burst."""
_SERVER: dict = {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def launch_app(checkpoints: dict, home: Path, config, *options: str) -> SimpleNamespace:
    """Starts `python app.py OPTIONS` with its temp folder in `home` (stopped at the end of the
    session); returns its url, home, run store and process."""
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(home), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("GRADIO_EXAMPLES_CACHE", None)
    env.pop("GRADIO_TEMP_DIR", None)
    log = open(home / "server.log", "w")
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
               *(f"--{role}={path}" for role, path in checkpoints.items()), "--device", "cpu", *options]
    process = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()

    config.add_cleanup(stop)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"app.py did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    return SimpleNamespace(url=url, home=home, runs=home / "dmdnet_runs", process=process)


def start_app(checkpoints: dict, tmp_path_factory, config) -> SimpleNamespace:
    """Starts the session's shared `python app.py` once; returns its url and private temp folder."""
    if not _SERVER:
        _SERVER["app"] = launch_app(checkpoints, tmp_path_factory.mktemp("app_server"), config,
                                    "--max-queue", str(SERVER_QUEUE))
    return _SERVER["app"]


@pytest.fixture(scope="module")
def server(seeded_checkpoints, tmp_path_factory, request) -> SimpleNamespace:
    return start_app(seeded_checkpoints, tmp_path_factory, request.config)


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False, download_files=str(server.home / "downloads"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Small valid and invalid inputs, written once."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    paths = {name: folder / f"{name}.png" for name in
             ("rgb", "tiny", "sixteen_bit", "rgba", "gray", "text", "truncated", "empty")}
    paths["animated"] = folder / "animated.gif"
    frames = [Image.fromarray(rgb[:24, :30] // (index + 1)) for index in range(3)]
    frames[0].save(paths["animated"], save_all=True, append_images=frames[1:])
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(rgb[:1, :1]).save(paths["tiny"])
    Image.fromarray((rng.random((36, 44)) * 65535).astype(np.uint16)).save(paths["sixteen_bit"])
    Image.fromarray(np.dstack([rgb[:32, :48], np.full((32, 48), 128, np.uint8)])).save(paths["rgba"])
    Image.fromarray(rgb[:, :48].mean(axis=2).astype(np.uint8)).save(paths["gray"])
    paths["text"].write_text("this is not an image\n")
    paths["truncated"].write_bytes(paths["rgb"].read_bytes()[:300])
    paths["empty"].write_bytes(b"")
    paths["huge"] = folder / "huge.png"
    Image.new("L", (10_000, 5_200)).save(paths["huge"])
    return paths


# ----------------------------------------------------------------------------------------
# In-process helpers (no server)


def test_parser_defaults_leave_host_and_port_to_gradio_environment():
    args = app.build_parser().parse_args([])
    assert args.host is None and args.port is None and not args.share  # GRADIO_SERVER_NAME/PORT apply
    assert not args.native_scale and args.max_queue == app.QUEUE_SIZE
    args = app.build_parser().parse_args(["--host", "0.0.0.0", "--port", "7870", "--share", "--device", "cpu",
                                          "--model", "m.pt", "--max-pixels", "1000", "--native-scale",
                                          "--max-queue", "3"])
    assert (args.host, args.port, args.share, args.device, args.model, args.max_pixels, args.native_scale,
            args.max_queue) == ("0.0.0.0", 7870, True, "cpu", "m.pt", 1000, True, 3)
    for bad in (["--max-queue", "0"], ["--max-pixels", "-5"]):
        with pytest.raises(SystemExit):
            app.build_parser().parse_args(bad)


def test_main_reports_missing_weights_without_traceback(tmp_path, capsys):
    assert app.main(["--model", str(tmp_path / "missing.pt"), "--device", "cpu"]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_main_refuses_a_device_it_cannot_use(capsys):
    assert app.main(["--device", "no-such-device"]) == 2
    assert "--device no-such-device cannot be used" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# A real server over HTTP


def test_api_has_one_public_endpoint_with_one_required_input(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(endpoints) == ["/separate"]
    parameters = endpoints["/separate"]["parameters"]
    assert [p["parameter_has_default"] for p in parameters] == [False]
    assert len(endpoints["/separate"]["returns"]) == 6


def test_separate_returns_full_size_layers_and_figures(client, images, server):
    transmission, reflection, depth, scan_order, gates, summary = client.predict(
        handle_file(str(images["rgb"])), api_name="/separate")
    for path in (transmission, reflection):
        with Image.open(path) as layer:
            assert (layer.format, layer.size, layer.mode) == ("PNG", (56, 40), "RGB")
    for path in (depth, scan_order, gates):
        with Image.open(path) as figure:
            assert figure.format == "PNG" and min(figure.size) > 40
    assert summary["input"] == summary["processed"] == {"width": 56, "height": 40}
    assert summary["source"] == "rgb.png" and summary["device"] == "cpu" and summary["seconds"] > 0
    assert summary["frames"] == 1
    assert "transmission_gain" not in summary  # the test weights have no global gain
    assert len(summary["mecm_gates"]) == 22
    assert all(len(c) == 4 and sum(v > 0 for v in c) == 2 for c in summary["mecm_gates"].values())
    assert (server.runs / summary["run"] / "diagnostics.npz").is_file()


@pytest.mark.parametrize("name, size", [("tiny", (1, 1)), ("sixteen_bit", (44, 36)),
                                        ("rgba", (48, 32)), ("gray", (48, 40))])
def test_odd_but_valid_images_are_separated(client, images, name, size):
    transmission, reflection, *_ = client.predict(handle_file(str(images[name])), api_name="/separate")
    for path in (transmission, reflection):
        with Image.open(path) as layer:
            assert layer.size == size and layer.mode == "RGB"


@pytest.mark.parametrize("name, message", [
    ("text", "not an image this demo can read"),
    ("empty", "not an image this demo can read"),
    ("truncated", "not a readable image"),
    ("huge", "accepts up to 50 MP"),
])
def test_invalid_images_are_refused_with_a_message(client, images, server, name, message):
    with pytest.raises(AppError, match=message) as refused:
        client.predict(handle_file(str(images[name])), api_name="/separate")
    assert "Traceback" not in str(refused.value) and str(server.home) not in str(refused.value)
    assert _answers(server.url)


def test_animated_gif_says_its_first_frame_was_used(client, images, server, monkeypatch):
    transmission, *_, summary = client.predict(handle_file(str(images["animated"])), api_name="/separate")
    assert summary["frames"] == 3 and summary["source"] == "animated.gif"
    with Image.open(transmission) as layer:
        assert layer.size == (30, 24)
    monkeypatch.setattr(callbacks, "RUNS", RunStore(server.runs))  # the summary line the page shows
    assert callbacks.show_layers(summary["run"], 0.0)[3].endswith("It has 3 frames: the first was separated.")


def _raw_call(url: str, value: object) -> tuple[str, dict]:
    """POST /gradio_api/call/separate with a hand-made payload; the final event and its data."""
    request = urllib.request.Request(f"{url}gradio_api/call/separate", json.dumps({"data": [value]}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/separate/{event_id}", timeout=300) as response:
        lines = response.read().decode().splitlines()
    event = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")][-1]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")][-1]
    return event, json.loads(data)


def test_a_path_on_the_server_is_refused_with_a_message(server, images):
    """A bare {"path": ...} once made the server separate any image file it could read."""
    server_side = str(images["rgb"])  # outside the server's upload folder
    event, data = _raw_call(server.url, {"path": server_side})
    assert event == "error" and "has to be uploaded" in data["error"]
    event, data = _raw_call(server.url, {"path": server_side, "meta": {"_type": "gradio.FileData"}})
    assert event == "error" and "not uploaded by a user" in data["error"]
    assert _answers(server.url)


@pytest.mark.parametrize("value, shown", [("photo.jpg", "'photo.jpg'"), (3, "3")])
def test_a_plain_value_in_place_of_a_file_gets_the_apps_message(server, value, shown):
    """It used to get pydantic's text ("1 validation error for ImageData ... errors.pydantic.dev")."""
    event, data = _raw_call(server.url, value)
    assert event == "error" and data["title"] == "Not a file", data
    assert data["error"] == (f"The image has to be an uploaded file, not the value {shown}: with gradio_client, "
                             "pass handle_file(\"photo.jpg\").")


def test_a_full_queue_answers_queue_error_and_the_rest_complete(client, images, server):
    """README: beyond --max-queue waiting requests, clients get QueueError and should retry."""
    jobs = [client.submit(handle_file(str(images["tiny"])), api_name="/separate") for _ in range(SERVER_QUEUE + 4)]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=600)[5]["input"])
        except QueueError as error:
            outcomes.append(str(error))
    assert "Queue is full! Please try again." in outcomes
    assert outcomes.count({"width": 1, "height": 1}) >= 1
    assert set(map(str, outcomes)) <= {"Queue is full! Please try again.", str({"width": 1, "height": 1})}
    assert _answers(server.url)


def test_missing_image_is_refused(client):
    with pytest.raises(AppError, match="No image yet"):
        client.predict(None, api_name="/separate")


def test_concurrent_requests_all_complete(client, images, server):
    jobs = [client.submit(handle_file(str(images[name])), api_name="/separate")
            for name in ("rgb", "gray", "tiny")]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda job: job.result(timeout=600), jobs))
    assert [r[5]["source"] for r in results] == ["rgb.png", "gray.png", "tiny.png"]
    assert len({r[5]["run"] for r in results}) == 3
    assert _answers(server.url)


def test_the_space_runs_in_bfloat16_on_a_gpu_unless_told_otherwise():
    import torch

    assert app.build_parser().parse_args([]).dtype is None
    assert app.inference_dtype(None, torch.device("cuda")) == "bfloat16"
    assert app.inference_dtype(None, torch.device("cpu")) == "float32"
    assert app.inference_dtype("float32", torch.device("cuda")) == "float32"
