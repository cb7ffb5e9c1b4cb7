"""`python -m dmdnet separate`, `evaluate` and `average` end to end in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import REPO_ROOT

from dmdnet.cli import UsageError, build_parser, main, mix_probabilities, output_names, synthesis_settings


def photo(path: Path, seed: int, size: tuple[int, int] = (18, 26)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), np.uint8)).save(path)
    return path


def test_separate_folder_and_file(tmp_path, lite_checkpoints):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 51, 3), np.uint8)).save(photos / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 24), np.uint8)).save(photos / "b.jpg")
    (photos / "broken.png").write_text("not an image")
    single = tmp_path / "single.png"
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(single)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dmdnet", "separate", str(photos), str(single), "--out", str(out),
               "--model", str(lite_checkpoints["model"]), "--memory", str(lite_checkpoints["memory"]),
               "--device", "cpu"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "skipped" in run.stderr and "broken.png is not a readable image" in run.stderr
    assert "wrote 3 of 4 images" in run.stdout
    for name, size in (("a", (51, 37)), ("b", (24, 20)), ("single", (9, 8))):
        for layer in ("transmission_layer", "reflection_layer"):
            with Image.open(out / layer / f"{name}.png") as image:
                assert image.size == size and image.mode == "RGB"


def test_inputs_sharing_a_name_all_keep_their_results(tmp_path, lite_checkpoints):
    """The issue's target: a/photo.jpg and b/photo.png used to both write photo.png."""
    first, second = photo(tmp_path / "a" / "photo.jpg", 0), photo(tmp_path / "b" / "photo.png", 1)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dmdnet", "separate", str(first.parent), str(second.parent),
               "--out", str(out), "--model", str(lite_checkpoints["model"]),
               "--memory", str(lite_checkpoints["memory"]), "--device", "cpu"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "wrote 2 of 2 images" in run.stdout and "written as a_photo.jpg.png" in run.stdout
    layers = {layer: sorted(p.name for p in (out / layer).iterdir()) for layer in ("transmission_layer", "reflection_layer")}
    assert layers == dict.fromkeys(layers, ["a_photo.jpg.png", "b_photo.png.png"])
    transmissions = [out / "transmission_layer" / name for name in layers["transmission_layer"]]
    assert transmissions[0].read_bytes() != transmissions[1].read_bytes()  # each from its own input


def test_output_names_are_distinct_and_name_their_input(tmp_path):
    assert output_names([tmp_path / "x.jpg", tmp_path / "y.png"]) == ["x", "y"]
    assert output_names([tmp_path / "photo.jpg", tmp_path / "Photo.PNG", tmp_path / "other.png"]) == [
        "photo.jpg", "Photo.PNG", "other"]
    assert output_names([tmp_path / "a" / "photo.jpg", tmp_path / "b" / "photo.jpg",
                         tmp_path / "b" / "deeper" / "photo.png"]) == [
        "a_photo.jpg", "b_photo.jpg", "b_deeper_photo.png"]
    assert output_names([tmp_path / "photo.jpg", tmp_path / "photo.png", tmp_path / "photo.jpg.png"]) == [
        "photo.jpg", "photo.png", "photo.jpg-2"]


def test_one_folder_with_clashing_names_and_an_animation(tmp_path, lite_checkpoints, capsys):
    folder = tmp_path / "photos"
    photo(folder / "photo.jpg", 0)
    photo(folder / "photo.png", 1)
    frames = [Image.new("RGB", (12, 10), colour) for colour in ("red", "blue")]
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:])
    code = main(["separate", str(folder), str(folder / "photo.png"), "--out", str(tmp_path / "out"),
                 "--model", str(lite_checkpoints["model"]), "--memory", str(lite_checkpoints["memory"]),
                 "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and "wrote 3 of 3 images" in printed  # photo.png named twice is one input
    assert "moving.gif: has 2 frames; the first was separated" in printed
    assert sorted(p.name for p in (tmp_path / "out" / "transmission_layer").iterdir()) == [
        "moving.png", "photo.jpg.png", "photo.png.png"]


@pytest.mark.parametrize("arguments, message", [
    (["{tmp}/nope.jpg", "{tmp}", "{tmp}/gone", "--out", "{tmp}/o"], "not found: {tmp}/nope.jpg, {tmp}/gone"),
    (["{tmp}", "--out", "{tmp}/x.png"], "--out {tmp}/x.png is a file, not a folder"),
    (["{tmp}", "--out", "{tmp}/x.png/sub"], "cannot create {tmp}/x.png/sub/transmission_layer"),
    (["{tmp}", "--out", "{tmp}/o", "--device", "no-such-device"], "--device no-such-device cannot be used"),
])
def test_bad_arguments_are_one_line_before_any_weights_load(tmp_path, capsys, arguments, message):
    """--model names a missing file too: both problems are in the one line, and no weights load."""
    photo(tmp_path / "x.png", 0)
    arguments = [a.format(tmp=tmp_path) for a in arguments] + ["--model", str(tmp_path / "missing.pt")]
    assert main(["separate", *arguments]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith("error: ") and message.format(tmp=tmp_path) in printed.err
    assert f"DMDNet model file not found: {tmp_path / 'missing.pt'}" in printed.err
    assert printed.err.count("\n") == 1 and not printed.out


def test_a_missing_input_and_a_bad_device_are_reported_together(tmp_path, capsys):
    """Both used to take a run each to find: the device was reported alone."""
    assert main(["separate", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o"),
                 "--device", "no-such-device"]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith(f"error: not found: {tmp_path / 'nope.jpg'}; --device no-such-device cannot be used")
    assert printed.count("\n") == 1 and not (tmp_path / "o").exists()  # nothing made for a command that never ran


def test_argparse_errors_are_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "dmdnet", "separate", str(tmp_path), "--out", str(tmp_path / "o"),
                          "--max-pixels", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["dmdnet separate: error: argument --max-pixels: expected a whole "
                                       "number of at least 1, got '0' (see dmdnet separate --help)"]


def test_native_scale_and_a_short_side_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["separate", str(tmp_path), "--out", str(tmp_path / "o"), "--native-scale", "--short-side", "128"])
    assert stopped.value.code == 2
    assert "--short-side: not allowed with argument --native-scale" in capsys.readouterr().err


def test_missing_weights_message(tmp_path):
    run = subprocess.run([sys.executable, "-m", "dmdnet", "separate", str(tmp_path), "--out",
                          str(tmp_path / "o"), "--model", str(tmp_path / "none.pt")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "no images found" in run.stderr
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "x.png")
    run = subprocess.run([sys.executable, "-m", "dmdnet", "separate", str(tmp_path / "x.png"), "--out",
                          str(tmp_path / "o"), "--model", str(tmp_path / "none.pt")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "DMDNet model file not found" in run.stderr and "Traceback" not in run.stderr
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    run = subprocess.run([sys.executable, "-m", "dmdnet", "separate", str(tmp_path / "x.png"), "--out",
                          str(tmp_path / "o"), "--model", str(tmp_path / "random.pt")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "random.pt is not a PyTorch checkpoint; no memory bank file found" in run.stderr


def test_average_command_writes_run_files_or_explains(tmp_path, lite_checkpoints):
    run_folder = lite_checkpoints["model"].parent
    command = [sys.executable, "-m", "dmdnet", "average", str(run_folder), str(run_folder), "--out", str(tmp_path / "soup")]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "soup" / "model_latest.pt").is_file() and (tmp_path / "soup" / "memory_banks_latest.pt").is_file()
    run = subprocess.run(command[:4] + [str(run_folder), str(tmp_path / "empty"), "--out", str(tmp_path / "x")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "DMDNet model file not found" in run.stderr and "Traceback" not in run.stderr


def _write_pairs(root, stems, suffix, layers):
    rng = np.random.default_rng(len(stems))
    for layer in ("blended", *layers):
        (root / layer).mkdir(parents=True)
    for stem in stems:
        for layer in ("blended", *layers):
            image = rng.integers(0, 255, (40, 54, 3), np.uint8)
            Image.fromarray(image).save(root / layer / f"{stem}{suffix}")


def test_evaluate_reads_every_benchmark_layout(tmp_path, lite_checkpoints):
    """SIR^2 (jpg triplets), Location-aware SIRR (png, T only, two blended without T) and CEILNet
    (png triplets) in one command; each set's rows count only the images with ground truth."""
    _write_pairs(tmp_path / "sir2_like", ["1_focus_1", "2"], ".jpg", ["transmission_layer", "reflection_layer"])
    _write_pairs(tmp_path / "locationaware_like", ["000001", "000002"], ".png", ["transmission_layer"])
    _write_pairs(tmp_path / "no_truth", ["000004", "000005"], ".png", [])
    for stem in ("000004", "000005"):
        (tmp_path / "no_truth" / "blended" / f"{stem}.png").rename(
            tmp_path / "locationaware_like" / "blended" / f"{stem}.png")
    _write_pairs(tmp_path / "ceilnet_like", ["2007_1", "2007_2", "2007_3"], ".png",
                 ["transmission_layer", "reflection_layer"])
    out = tmp_path / "scores"
    command = [sys.executable, "-m", "dmdnet", "evaluate", *(str(tmp_path / name) for name in (
        "sir2_like", "locationaware_like", "ceilnet_like")), "--out", str(out),
        "--model", str(lite_checkpoints["model"]), "--memory", str(lite_checkpoints["memory"]), "--device", "cpu"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr  # blended images without ground truth are named, not errors
    assert "not scored (no transmission_layer/ image): locationaware_like/000004, locationaware_like/000005" \
        in run.stderr
    assert "torch.float32; photos at full size up to 2.1 MP)" in run.stdout  # the file records no scale
    import csv
    with open(out / "summary.csv") as handle:
        counts = {(row["dataset"], row["method"], row["layer"]): int(row["images"]) for row in csv.DictReader(handle)}
    assert counts == {
        ("sir2_like", "model", "T"): 2, ("sir2_like", "identity", "T"): 2, ("sir2_like", "model", "R"): 2,
        ("locationaware_like", "model", "T"): 2, ("locationaware_like", "identity", "T"): 2,
        ("ceilnet_like", "model", "T"): 3, ("ceilnet_like", "identity", "T"): 3, ("ceilnet_like", "model", "R"): 3}

    run = subprocess.run(command[:4] + [str(tmp_path / "no_such_set")] + command[7:], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "no_such_set" in run.stderr and "Traceback" not in run.stderr


def test_evaluate_defaults_to_the_benchmark_sets():
    from support import SHARED

    from dmdnet.cli import build_parser
    from dmdnet.datasets import BENCHMARK_SETS, dataset_pairs

    args = build_parser().parse_args(["evaluate"])
    assert [Path(name).name for name in args.datasets] == [
        "sir2_solid", "sir2_wild", "locationaware_sirr", "ceilnet_table2"]
    expected = {"sir2_solid": 200, "sir2_wild": 101, "locationaware_sirr": 8, "ceilnet_table2": 100}
    for name in BENCHMARK_SETS:
        folder = SHARED / Path(name).relative_to("../shared")
        if folder.is_dir():
            scored = [p for p in dataset_pairs(folder) if p.transmission is not None]
            assert len(scored) == expected[folder.name], folder


def test_a_fifo_among_the_inputs_is_reported_and_never_opened(tmp_path, lite_checkpoints):
    """Opening the FIFO would wait for a writer forever (the command used to hang here)."""
    photo(tmp_path / "in" / "a.png", 0)
    os.mkfifo(tmp_path / "in" / "x.png")
    command = [sys.executable, "-m", "dmdnet", "separate", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
               "--model", str(lite_checkpoints["model"]), "--memory", str(lite_checkpoints["memory"]),
               "--device", "cpu"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert f"skipped {tmp_path / 'in' / 'x.png'}: x.png is a FIFO, not an image file (not opened)" in run.stderr
    assert "wrote 1 of 2 images" in run.stdout and "Traceback" not in run.stderr


def test_evaluate_scores_every_readable_pair_and_names_the_others(tmp_path, lite_checkpoints):
    """One bad pair used to cost the whole run: an IndexError, an InvalidImageError or a ValueError
    traceback and no tables, or a pair left out without a word."""
    mixed = tmp_path / "mixed"
    _write_pairs(mixed, ["a", "b", "c", "d", "e"], ".png", ["transmission_layer"])
    (mixed / "blended" / "b.png").write_bytes((mixed / "blended" / "b.png").read_bytes()[:200])
    (mixed / "transmission_layer" / "c.png").unlink()
    Image.new("RGB", (20, 10)).save(mixed / "transmission_layer" / "d.png")
    (mixed / "transmission_layer" / "e.png").unlink()
    os.mkfifo(mixed / "transmission_layer" / "e.png")
    _write_pairs(tmp_path / "only_blended", ["x"], ".png", [])
    out = tmp_path / "scores"
    command = [sys.executable, "-m", "dmdnet", "evaluate", str(mixed), str(tmp_path / "only_blended"),
               "--out", str(out), "--model", str(lite_checkpoints["model"]),
               "--memory", str(lite_checkpoints["memory"]), "--device", "cpu"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    reasons = {"mixed/b": "b.png is not a readable image", "mixed/d": "transmission_layer/d.png is 20x10, "
               "blended/d.png 54x40", "mixed/e": "e.png is a FIFO, not an image file (not opened)"}
    for pair, reason in reasons.items():
        assert f"skipped {pair}: {reason}" in run.stderr
    assert "not scored (no transmission_layer/ image): mixed/c, only_blended/x" in run.stderr
    assert f"{tmp_path / 'only_blended'}: no pair could be scored" in run.stderr
    assert "error: 4 problems, listed above" in run.stderr
    import csv
    with open(out / "summary.csv") as handle:
        counts = {(row["dataset"], row["method"], row["layer"]): int(row["images"]) for row in csv.DictReader(handle)}
    assert counts == {("mixed", "model", "T"): 1, ("mixed", "identity", "T"): 1}
    with open(out / "skipped.csv") as handle:
        assert {f"{row['dataset']}/{row['image']}" for row in csv.DictReader(handle)} == {
            *reasons, "mixed/c", "only_blended/x"}


def test_mix_weights_are_normalised_and_checked():
    assert mix_probabilities([2, 1, 1, 0]) == (0.5, 0.25, 0.25, 0.0)
    with pytest.raises(UsageError, match="--mix"):
        mix_probabilities([1, -1, 0, 0])


def test_synthesis_options_change_one_part_of_the_named_synthesis():
    from dataclasses import replace

    from dmdnet.training.synthesis import SYNTHESIS_PRESETS

    def settings(*options: str):
        return synthesis_settings(build_parser().parse_args(["train", "--out", "x", *options]))

    assert settings() == SYNTHESIS_PRESETS["structured"] and settings().real_reflection_share == 0.5
    assert settings("--synthesis", "veiled", "--real-reflections", "0.25", "--strength", "0.1", "0.2") == replace(
        SYNTHESIS_PRESETS["veiled"], real_reflection_share=0.25, strength=(0.1, 0.2))
    assert settings("--mix", "1", "1", "0", "0", "2").model_probabilities == (0.25, 0.25, 0, 0, 0.5)
    with pytest.raises(UsageError, match=r"--real-reflections must lie in \[0, 1\]"):
        settings("--real-reflections", "1.5")
    assert settings("--no-reflection", "0.1").no_reflection_share == 0.1 and settings().no_reflection_share == 0
    with pytest.raises(UsageError, match=r"--no-reflection must lie in \[0, 1\]"):
        settings("--no-reflection", "-0.1")
    assert settings("--scene-lights", "0.2").scene_light_share == 0.2 and settings().scene_light_share == 0
    with pytest.raises(UsageError, match=r"--scene-lights must lie in \[0, 1\]"):
        settings("--scene-lights", "2")


def test_fine_semantic_without_the_imagenet_prior_is_one_line_and_creates_nothing(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--fine-semantic", "--steps", "1"]) == 2
    printed = capsys.readouterr()
    assert printed.err == ("error: --fine-semantic feeds the ImageNet prior's features to levels 1 and 2: "
                           "add --imagenet-prior\n")
    assert not (tmp_path / "run").exists()


def test_an_ema_decay_outside_zero_to_one_is_one_line_and_creates_nothing(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--ema-decay", "1", "--steps", "1"]) == 2
    assert capsys.readouterr().err == "error: --ema-decay must lie in [0, 1) (0: no average)\n"
    assert not (tmp_path / "run").exists()


def test_separate_finds_the_memory_banks_beside_the_model(tmp_path, lite_checkpoints, monkeypatch, capsys):
    """Issue 31 item 11: `--model RUN/model_latest.pt` alone said "no memory bank file found"."""
    monkeypatch.delenv("DMDNET_MEMORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["separate", str(photo(tmp_path / "x.png", 0)), "--out", str(tmp_path / "out"),
                 "--model", str(lite_checkpoints["model"]), "--device", "cpu"]) == 0
    assert "wrote 1 of 1 images" in capsys.readouterr().out


def test_separate_removes_only_what_ended_writers_left(tmp_path, lite_checkpoints):
    """Issue 31 item 10: a killed writer's hidden `.NAME.<hex>.partial` files stayed for ever."""
    from dmdnet.files import MACHINE_TAG

    ended = subprocess.Popen(["true"])
    ended.wait()
    layer = tmp_path / "out" / "transmission_layer"
    layer.mkdir(parents=True)
    names = {"ended": f".a.png.{MACHINE_TAG}-{ended.pid}-0123abcd.partial",
             "before_writers_were_named": ".b.png.0123456789ab.partial",
             "alive": f".c.png.{MACHINE_TAG}-{os.getpid()}-0123abcd.partial",
             "another_machine": f".d.png.{int(MACHINE_TAG, 16) ^ 1:08x}-{ended.pid}-0123abcd.partial"}
    for name in names.values():
        (layer / name).write_bytes(b"half a png")
    assert main(["separate", str(photo(tmp_path / "x.png", 0)), "--out", str(tmp_path / "out"),
                 "--model", str(lite_checkpoints["model"]), "--device", "cpu"]) == 0
    assert sorted(path.name for path in layer.iterdir()) == sorted([names["alive"], names["another_machine"], "x.png"])


@pytest.fixture
def run_folder(tmp_path, lite_checkpoints) -> Path:
    """A training run's folder: weights and the training state of a committed run."""
    import shutil

    folder = tmp_path / "run"
    folder.mkdir()
    for path in lite_checkpoints.values():
        shutil.copy(path, folder / path.name)
    shutil.copy(REPO_ROOT / "weights" / "runs" / "structured-matched-lr1e-3" / "training_state.pt", folder)
    return folder


def test_average_calibrate_and_choose_scale_refuse_a_run_folder_as_out(run_folder, lite_checkpoints, capsys):
    """Issue 31 item 8: `average A B --out B` overwrote B's weights, and B resumed with them."""
    before = (run_folder / "model_latest.pt").read_bytes()
    expected = (f"error: --out {run_folder} is a training run's folder (it holds training_state.pt); writing "
                "weights there would leave the run to resume with them: give another --out\n")
    assert main(["average", str(lite_checkpoints["model"].parent), str(run_folder), "--out", str(run_folder)]) == 2
    assert capsys.readouterr().err == expected
    for command in ("calibrate", "choose-scale"):
        assert main([command, "--model", str(lite_checkpoints["model"]), "--real", str(run_folder),
                     "--out", str(run_folder)]) == 2
        assert capsys.readouterr().err == expected
    assert (run_folder / "model_latest.pt").read_bytes() == before


def test_calibrate_refuses_a_training_state_as_memory_banks(run_folder, lite_checkpoints, tmp_path, capsys):
    """Issue 31 item 7: the banks started fresh and were written out as training_state.pt."""
    assert main(["calibrate", "--model", str(lite_checkpoints["model"]), "--memory",
                 str(run_folder / "training_state.pt"), "--real", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith(f"error: memory bank file {run_folder / 'training_state.pt'} does not fit the model: "
                              "entries that are not tensors: best, optimizer, settings, step; missing keys: ")
    assert printed.count("\n") == 1 and not (tmp_path / "out").exists()


def test_calibrate_without_pairs_names_the_folders_as_text(tmp_path, lite_checkpoints, capsys):
    """Issue 31 item 12: the message printed `[PosixPath('...')]`. The one pair is no held-out pair."""
    for layer in ("blended", "transmission_layer"):
        photo(tmp_path / "pairs" / layer / "001.png", 0)
    assert main(["calibrate", "--model", str(lite_checkpoints["model"]), "--real", str(tmp_path / "pairs"),
                 "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("error: calibration needs real training pairs and the held-out validation "
                                       f"pairs under {tmp_path / 'pairs'}\n")


def test_average_onto_a_full_disk_is_one_line_naming_the_file(small_filesystem, lite_checkpoints, capsys):
    """Issue 31 item 4: torch's `RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos`."""
    folder = str(lite_checkpoints["model"].parent)
    assert main(["average", folder, folder, "--out", str(small_filesystem / "soup")]) == 2
    assert capsys.readouterr().err == (f"error: cannot write {small_filesystem / 'soup' / 'model_latest.pt'} "
                                       "(no space left on device)\n")
    assert list((small_filesystem / "soup").iterdir()) == []  # no half-written file either
