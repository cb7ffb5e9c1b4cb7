"""Choosing the short side photos run at (`choose-scale`): the candidates, the rule, the files."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image
from support import REPO_ROOT

import dmdnet
from dmdnet.training.inference_scale import candidate_short_sides, choose_scale_files
from dmdnet.training.real_pairs import VALIDATION_PAIRS
from dmdnet.training.validation import invariant_gain

SHIPPED = REPO_ROOT / "weights" / "dmdnet-lite"


def test_candidates_run_from_three_quarters_of_the_crop_to_the_trained_short_side():
    assert candidate_short_sides(256) == [96, 112, 128, 144, 160, 192, 256]
    assert candidate_short_sides(64) == [24, 28, 32, 36, 40, 48, 64]


def _write_validation_pairs(folder, rng: np.random.Generator) -> None:
    """The held-out pairs only: a photo and a dimmer, sharper scene behind a blurred veil."""
    for sub in ("blended", "transmission_layer"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in VALIDATION_PAIRS:
        scene = rng.uniform(0, 1, (48, 72, 3))
        veil = rng.uniform(0, 1, (6, 9, 3)).repeat(8, 0).repeat(8, 1)
        for sub, image in (("blended", np.clip(0.8 * scene + 0.3 * veil, 0, 1)), ("transmission_layer", scene)):
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / sub / f"{name.split('/')[1]}.png")


def test_choose_scale_files_keeps_the_best_side_and_the_pipeline_runs_there(tmp_path):
    """On the shipped weights (a randomly initialised network returns its input at every scale)."""
    folder = tmp_path / "zhang_real82"
    _write_validation_pairs(folder, np.random.default_rng(3))
    choice = choose_scale_files(SHIPPED / "model_latest.pt", SHIPPED / "memory_banks_latest.pt", [folder],
                                tmp_path / "out", short_sides=[48, 24, 32])
    assert list(choice.scores) == [24, 32, 48]
    assert sorted(choice.validation_pairs) == sorted(VALIDATION_PAIRS)

    def rank(side: int) -> tuple[float, float]:
        return round(invariant_gain(choice.scores[side]), 2), choice.scores[side]["psnr_t"]
    assert all(rank(choice.short_side) >= rank(side) for side in choice.scores)
    assert len({rank(side) for side in choice.scores}) == 3  # the sides ran at different scales

    saved = torch.load(tmp_path / "out" / "model_latest.pt", weights_only=True)
    original = torch.load(SHIPPED / "model_latest.pt", weights_only=True)
    assert saved["inference_short_side"] == choice.short_side
    assert set(saved["inference_short_side_fit"]["validation_inv_gain"]) == {24, 32, 48}
    for name, value in original["network"].items():
        assert torch.equal(saved["network"][name], value), name
    out = tmp_path / "out"
    pipe = dmdnet.load_pipeline(out / "model_latest.pt", out / "memory_banks_latest.pt", device="cpu")
    assert pipe.max_short_side == choice.short_side
    assert pipe.separate(torch.rand(1, 3, 96, 144)).processed_size == (choice.short_side, choice.short_side * 3 // 2)
    given = dmdnet.load_pipeline(out / "model_latest.pt", out / "memory_banks_latest.pt", device="cpu", short_side=40)
    assert given.max_short_side == 40


def test_choose_scale_without_a_trained_scale_or_sides_says_so(tmp_path, lite_checkpoints, capsys):
    from dmdnet.cli import main

    folder = tmp_path / "zhang_real82"
    _write_validation_pairs(folder, np.random.default_rng(4))
    assert main(["choose-scale", "--model", str(lite_checkpoints["model"]), "--real", str(folder),
                 "--out", str(tmp_path / "out")]) == 2
    assert "records no trained scale: give the short sides to try" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model_latest.pt").exists()


def test_choose_scale_command_prints_the_table_and_reports_missing_files(tmp_path, lite_checkpoints):
    folder = tmp_path / "zhang_real82"
    _write_validation_pairs(folder, np.random.default_rng(5))
    command = [sys.executable, "-m", "dmdnet", "choose-scale", "--model", str(lite_checkpoints["model"]),
               "--real", str(folder), "--short-sides", "24", "40", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("validation (10 pairs)")
    assert [line.split()[2] for line in lines[1:3]] == ["24", "40"]
    assert sum("<- kept" in line for line in lines) == 1
    missing = subprocess.run([*command[:5], str(tmp_path / "nope.pt"), *command[6:]], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
