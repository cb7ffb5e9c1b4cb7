"""A training run's folder survives anything (issue 31): real `train` processes killed by real
signals at the moment a file is being written or put in place, then the same command again.

The moment is chosen with the writer's test hook (`dmdnet.files.pause_point`): with
DMDNET_TEST_PAUSE set, the process stops halfway through the chosen file, or before the chosen
rename, prints `paused: ...`, and waits for the signal the test then sends.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import REPO_ROOT

from dmdnet.training.run_folder import RUN_STATE_NAME, RunFolderError, commit, recover
from dmdnet.weights import MEMORY_NAME, MODEL_NAME, TRAINING_STATE_NAME

STEPS, EVERY = 6, 2


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Six photos to synthesise from and four real pairs, two of them held out (027, 037)."""
    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)).save(root / "photos" / f"{index}.png")
    real = root / "zhang_real82"
    for stem in ("001", "002", "027", "037"):
        transmission = rng.uniform(0, 0.7, (64, 80, 3))
        blended = np.clip(transmission + rng.uniform(0, 0.3, (64, 80, 3)), 0, 1)
        for layer, image in (("transmission_layer", transmission), ("blended", blended)):
            (real / layer).mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255).astype(np.uint8)).save(real / layer / f"{stem}.png")
    return root


def train_arguments(out: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--data", str(data / "photos"), "--validation", "",
            "--real", str(data / "zhang_real82"), "--patch", "64", "--batch", "2", "--steps", str(STEPS),
            "--validate-every", str(EVERY), "--threads", "1", "--device", "cpu", "--perceptual", "0",
            "--real-perceptual", "0", *extra]


def run_dmdnet(arguments: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmdnet", *arguments], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def start_paused(arguments: list[str], pause: str, log: Path) -> subprocess.Popen:
    """Starts `python -m dmdnet ARGUMENTS` and returns once it has paused at `pause`."""
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "dmdnet", *arguments], cwd=REPO_ROOT, stdout=handle,
                                   stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "DMDNET_TEST_PAUSE": pause})
    deadline = time.monotonic() + 300
    while "paused: " not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the command never paused at {pause}:\n{log.read_text()}")
        time.sleep(0.05)
    return process


def signal_and_wait(process: subprocess.Popen, signum: int) -> int:
    process.send_signal(signum)
    try:
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()


def leftovers(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.rglob("*")
                  if path.name.endswith(".partial") or path.name.startswith(".staged-"))


def files_of_step(out: Path) -> int:
    """The one step that the model, the optimiser state, the run record and its hashes agree on,
    with `best/` the step the best record names."""
    record = json.loads((out / RUN_STATE_NAME).read_text())
    for name, expected in record["files"].items():
        data = (out / name).read_bytes()
        assert {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} == expected, name
    model = torch.load(out / MODEL_NAME, weights_only=True)
    state = torch.load(out / TRAINING_STATE_NAME, weights_only=True)
    optimiser_step = max(int(entry["step"]) for entry in state["optimizer"]["state"].values())
    assert model["iterations"] == state["step"] == optimiser_step == record["step"]
    best = torch.load(out / "best" / MODEL_NAME, weights_only=True)
    assert best["iterations"] == state["best"]["step"]
    assert {"best/" + MODEL_NAME, "best/" + MEMORY_NAME} <= set(record["files"])
    return record["step"]


def validation_steps(out: Path) -> list[int]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [record["step"] for record in records if "event" not in record]


def assert_finished_and_consistent(out: Path) -> None:
    assert files_of_step(out) == STEPS
    assert validation_steps(out) == list(range(EVERY, STEPS + 1, EVERY))  # each once, none lost
    assert leftovers(out) == []


def test_kill_while_the_first_training_state_is_written_then_a_second_writer_then_the_rerun(tmp_path, tiny_data):
    """Issue items 1, 3 and 10: the folder used to keep the model of step 10 without any
    training state (the command then failed for ever); two processes both trained."""
    out = tmp_path / "run"
    first = start_paused(train_arguments(out, tiny_data), "writing */training_state.pt", tmp_path / "first.log")
    second = run_dmdnet(train_arguments(out, tiny_data))
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith(f"error: --out {out} is in use by another train process (PID {first.pid} on ")
    assert signal_and_wait(first, signal.SIGKILL) == -signal.SIGKILL
    assert not (out / MODEL_NAME).exists() and not (out / RUN_STATE_NAME).exists()  # no step was made current
    assert any(name.endswith(".partial") for name in leftovers(out)), leftovers(out)  # killed mid-file

    rerun = run_dmdnet(train_arguments(out, tiny_data))  # the lock of the dead process is free
    assert rerun.returncode == 0, rerun.stderr
    assert "leftovers of a save that was cut short" in rerun.stdout
    assert_finished_and_consistent(out)


def test_kill_while_a_later_training_state_is_written_resumes_from_the_step_before(tmp_path, tiny_data):
    """Issue item 2: the model was at step 20, the optimiser at step 10 and the best record stale."""
    out = tmp_path / "run"
    process = start_paused(train_arguments(out, tiny_data), "writing */training_state.pt#2", tmp_path / "log")
    assert signal_and_wait(process, signal.SIGKILL) == -signal.SIGKILL
    assert files_of_step(out) == EVERY  # the files of the first save, untouched by the second
    assert leftovers(out)

    rerun = run_dmdnet(train_arguments(out, tiny_data))
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {out} at step {EVERY} of {STEPS} (the step run_state.json records)" in rerun.stdout
    assert_finished_and_consistent(out)


def test_kill_between_the_renames_of_a_save_finishes_that_save(tmp_path, tiny_data):
    """Killed after the record of step 4 but before its optimiser state is in place: the folder
    holds the model of step 4 and the optimiser state of step 2 until the rerun finishes the save,
    and redoes the validation whose log record the kill prevented."""
    out = tmp_path / "run"
    process = start_paused(train_arguments(out, tiny_data), f"replacing {out}/training_state.pt#2", tmp_path / "log")
    assert signal_and_wait(process, signal.SIGKILL) == -signal.SIGKILL
    assert torch.load(out / MODEL_NAME, weights_only=True)["iterations"] == 2 * EVERY
    assert torch.load(out / TRAINING_STATE_NAME, weights_only=True)["step"] == EVERY

    rerun = run_dmdnet(train_arguments(out, tiny_data))
    assert rerun.returncode == 0, rerun.stderr
    assert f"finished putting step {2 * EVERY} in place" in rerun.stdout
    assert_finished_and_consistent(out)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("revalidated_on_resume")] == [2 * EVERY]


def test_sigterm_while_best_is_written_keeps_that_steps_validation_record(tmp_path, tiny_data):
    """Issue item 9: the step's record was lost from log.jsonl and never redone."""
    out = tmp_path / "run"
    process = start_paused(train_arguments(out, tiny_data), "writing */best/model_latest.pt", tmp_path / "log")
    assert signal_and_wait(process, signal.SIGTERM) == 128 + signal.SIGTERM
    assert "Traceback" not in (tmp_path / "log").read_text()
    assert files_of_step(out) == EVERY
    rerun = run_dmdnet(train_arguments(out, tiny_data))
    assert rerun.returncode == 0, rerun.stderr
    assert_finished_and_consistent(out)


def test_commit_and_recover_keep_one_step_and_name_a_changed_file(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    commit(out, 1, {"a.pt": b"a1", "best/b.pt": b"b1"})
    commit(out, 2, {"a.pt": b"a2"})
    assert recover(out).step == 2
    assert (out / "a.pt").read_bytes() == b"a2" and (out / "best" / "b.pt").read_bytes() == b"b1"
    (out / "best" / "b.pt").write_bytes(b"b9")
    with pytest.raises(RunFolderError, match=f"{out / 'best' / 'b.pt'} has changed since it was saved: "
                                             f".*records it as a file of step 2"):
        recover(out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    done = run_dmdnet(train_arguments(out, tiny_data))
    assert done.returncode == 0, done.stderr
    return out


def test_a_full_or_read_only_out_is_one_line_before_training(small_filesystem, tiny_data, capsys):
    """Issue item 4: an OSError traceback (read-only), torch's `unexpected pos` at the first save (full)."""
    from dmdnet.cli import main

    assert main(train_arguments(small_filesystem / "run", tiny_data)) == 2
    printed = capsys.readouterr().err
    assert printed.startswith(f"error: --out {small_filesystem / 'run'}: no space left on device for a save ")
    assert printed.count("\n") == 1
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    assert main(train_arguments(small_filesystem / "other", tiny_data)) == 2
    assert capsys.readouterr().err == (f"error: --out {small_filesystem / 'other'}: cannot write there "
                                       "(read-only file system)\n")


def test_resume_refuses_model_changes_and_keeps_the_recipe(finished_run, tiny_data, tmp_path, capsys):
    """Issue item 6: `--patch 96 --batch 1 --lr 1` on a finished run were taken silently."""
    import shutil

    from dmdnet.cli import main

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    assert main(train_arguments(out, tiny_data, "--patch", "96", "--batch", "1", "--lr", "1")) == 2
    assert capsys.readouterr().err == (
        f"error: --patch 96 differs from the run in {out}, which has 64 (the scale the weights are trained at "
        f"cannot change on resume); resume with the run's values, or start a new --out (--init "
        f"{out / MODEL_NAME} starts from its weights)\n")
    assert main(train_arguments(out, tiny_data, "--batch", "1", "--lr", "1", "--steps", str(STEPS + 1))) == 0
    assert (f"resuming {out} at step {STEPS} of {STEPS + 1} (the step run_state.json records); kept from the run, "
            "not as given: batch 2 (given 1), lr 0.0004 (given 1.0)\n") in capsys.readouterr().out
    settings = torch.load(out / TRAINING_STATE_NAME, weights_only=True)["settings"]
    assert (settings["batch"], settings["lr"], settings["steps"]) == (2, 4e-4, STEPS + 1)


def test_a_training_state_of_another_configuration_is_named(finished_run, tiny_data, tmp_path, capsys):
    """Issue item 5: `ValueError: loaded state dict contains a parameter group that doesn't match`,
    naming no file. The foreign state is a committed run's, made with --imagenet-prior."""
    import shutil

    from dmdnet.cli import main

    foreign = REPO_ROOT / "weights" / "runs" / "structured-matched-lr1e-3" / TRAINING_STATE_NAME
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    shutil.copy(foreign, out / TRAINING_STATE_NAME)
    assert main(train_arguments(out, tiny_data)) == 2
    assert capsys.readouterr().err == (f"error: {out / TRAINING_STATE_NAME} has changed since it was saved: "
                                       f"{out / RUN_STATE_NAME} records it as a file of step {STEPS}; restore it, "
                                       "or start a new --out\n")
    (out / RUN_STATE_NAME).unlink()  # a folder from before run_state.json: the settings tell
    assert main(train_arguments(out, tiny_data)) == 2
    printed = capsys.readouterr().err
    assert printed.startswith(f"error: --imagenet-prior off differs from the run in {out}, which has on (the model "
                              "cannot change on resume); --patch 64 differs") and printed.count("\n") == 1
    state = torch.load(foreign, weights_only=True)
    state["settings"] = torch.load(finished_run / TRAINING_STATE_NAME, weights_only=True)["settings"]
    torch.save(state, out / TRAINING_STATE_NAME)  # its settings match; its optimiser state does not
    assert main(train_arguments(out, tiny_data)) == 2
    printed = capsys.readouterr().err
    assert printed.startswith(f"error: training state file {out / TRAINING_STATE_NAME} does not fit this run's "
                              "optimiser (") and printed.count("\n") == 1


def test_a_committed_run_from_before_run_state_resumes(tmp_path, capsys):
    """The runs in weights/runs/ were saved without run_state.json: they resume as before."""
    import shutil

    from support import SHARED

    from dmdnet.cli import main

    if not (SHARED / "data" / "real_train" / "zhang_real82").is_dir():
        pytest.skip("the run's real pairs (../shared/data/real_train) are not here")
    out = tmp_path / "veiled-matched-lr4e-4"
    shutil.copytree(REPO_ROOT / "weights" / "runs" / "veiled-matched-lr4e-4", out)
    assert main(["train", "--out", str(out), "--imagenet-prior", "--steps", "5196", "--threads", "1",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert (f"resuming {out} at step 5196 of 5196 (model_latest.pt's step; the folder is from before "
            "run_state.json, so its files were not hashed); kept from the run, not as given: ") in printed
    assert "seed 21 (given 0)" in printed


def test_a_setting_the_saved_run_lacks_is_taken_as_given(tmp_path):
    """A setting the code gained since a run was saved (`warmup`) keeps the given value, a synthesis
    option gained since takes its class default (the synthesis the run had); the run's recipe is
    kept, and the MiDaS file may move."""
    import dataclasses

    from dmdnet.training.resumed_settings import resumed_settings, saved_form
    from dmdnet.training.synthesis import SynthesisSettings
    from dmdnet.training.trainer import TrainSettings

    saved = saved_form(TrainSettings(out=tmp_path / "old", preset="released", depth=Path("b/dpt.pt"),
                                     synthesis=SynthesisSettings(strength=(0.15, 0.8))))
    del saved["synthesis"]["real_reflection_share"], saved["warmup"]
    given = TrainSettings(out=tmp_path, preset="released", depth=Path("a/dpt.pt"), warmup=7,
                          synthesis=SynthesisSettings(real_reflection_share=0.5, strength=(0.2, 0.3)))
    resumed, kept = resumed_settings(given, saved, tmp_path)
    assert resumed == dataclasses.replace(given, synthesis=SynthesisSettings(strength=(0.15, 0.8)))
    assert resumed.synthesis.real_reflection_share == 0.0
    assert kept == ["synthesis.strength [0.15, 0.8] (given [0.2, 0.3])"]
    with pytest.raises(RunFolderError, match=r"^--depth dpt_large.pt differs from the run in .*, which has b/dpt.pt"):
        resumed_settings(dataclasses.replace(given, depth=Path("dpt_large.pt")), saved, tmp_path)


def test_the_weight_average_is_what_validation_scores_and_best_keeps_and_training_never_reads(tmp_path, tiny_data):
    """`--ema-decay`: the weights of every step are those of the same run without the average; the
    log holds both scores (the step's own equal to the run without it); `best/` and
    `training_state.pt` hold the average, and a resume takes it up."""
    from dmdnet.checkpoints import load_dmdnet_weights
    from dmdnet.training.losses import LossWeights
    from dmdnet.training.trainer import REFLECTION_FREE, STEP_WEIGHTS, WEIGHT_AVERAGE, Trainer, TrainSettings
    from dmdnet.training.validation import PSNR_CAP

    def run(out: Path, ema_decay: float) -> list[dict]:
        settings = TrainSettings(out=out, data=[tiny_data / "photos"], real=[tiny_data / "zhang_real82"],
                                 patch=64, batch=2, steps=STEPS, validate_every=STEPS, save_every=STEPS,
                                 loss=LossWeights(perceptual=0, real_perceptual=0), threads=1, device="cpu",
                                 ema_decay=ema_decay, validation=tiny_data / "photos", validation_size=64,
                                 validation_count=2)
        trainer = Trainer(settings)
        trainer.run()
        trainer.close()
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
                if "event" not in json.loads(line)]

    plain, averaged = run(tmp_path / "plain", 0.0), run(tmp_path / "averaged", 0.5)
    network = {out: torch.load(tmp_path / out / MODEL_NAME, weights_only=True)["network"] for out in ("plain", "averaged")}
    assert all(torch.equal(value, network["averaged"][name]) for name, value in network["plain"].items())
    assert [record["step"] for record in averaged] == [STEPS]
    assert averaged[0][STEP_WEIGHTS]["real_validation"] == plain[0]["real_validation"]
    assert averaged[0]["real_validation"]["psnr_t"] != plain[0]["real_validation"]["psnr_t"]
    assert averaged[0][STEP_WEIGHTS][REFLECTION_FREE] == plain[0][REFLECTION_FREE]  # scored like the others
    assert 10 < plain[0][REFLECTION_FREE]["psnr_t"] <= plain[0][REFLECTION_FREE]["psnr_inv_t"] <= PSNR_CAP

    state = torch.load(tmp_path / "averaged" / TRAINING_STATE_NAME, weights_only=True)
    assert state["best"]["step"] == STEPS and state[WEIGHT_AVERAGE]["updates"] == STEPS
    resumed = Trainer(TrainSettings(out=tmp_path / "averaged", data=[tiny_data / "photos"],
                                    real=[tiny_data / "zhang_real82"], patch=64, batch=2, steps=STEPS + 2,
                                    threads=1, device="cpu", ema_decay=0.5))
    assert resumed.average.updates == STEPS
    assert all(torch.equal(resumed.average.averages[name], value)
               for name, value in state[WEIGHT_AVERAGE]["weights"].items())
    live = {name: value.detach().clone() for name, value in resumed.trained_parameters().items()}
    extra = load_dmdnet_weights(resumed.model, tmp_path / "averaged" / "best" / MODEL_NAME)
    resumed.depth_model.load_state_dict(extra["proximity_estimator"])  # DMDNet-Lite trains its depth too
    best = resumed.trained_parameters()
    assert all(torch.equal(best[name], value) for name, value in state[WEIGHT_AVERAGE]["weights"].items())
    assert any(not torch.equal(best[name], value) for name, value in live.items())
    resumed.close()


def test_validation_at_a_chosen_short_side_scores_the_files_as_they_will_run(tmp_path, tiny_data):
    """`--validation-short-side`: the real pairs are scored at that scale, and the saved files run
    there (`inference_short_side`), so `best/`'s logged score is what its files score."""
    import dmdnet
    from dmdnet.training.losses import LossWeights
    from dmdnet.training.real_pairs import real_pairs, split_validation, validation_images
    from dmdnet.training.trainer import Trainer, TrainSettings
    from dmdnet.training.validation import pipeline_scores

    settings = TrainSettings(out=tmp_path / "run", data=[tiny_data / "photos"], real=[tiny_data / "zhang_real82"],
                             patch=64, batch=2, steps=STEPS, validate_every=STEPS, save_every=STEPS,
                             loss=LossWeights(perceptual=0, real_perceptual=0), threads=1, device="cpu",
                             validation_short_side=32)
    trainer = Trainer(settings)
    trainer.run()
    trainer.close()
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if "event" not in json.loads(line)][-1]["real_validation"]
    best = tmp_path / "run" / "best"
    saved = torch.load(best / MODEL_NAME, weights_only=True)
    assert (saved["trained_short_side"], saved["inference_short_side"]) == (128, 32)
    pipe = dmdnet.load_pipeline(best / MODEL_NAME, best / MEMORY_NAME, device="cpu")
    assert pipe.max_short_side == 32
    pairs = validation_images(split_validation(real_pairs([tiny_data / "zhang_real82"]))[1])
    assert pipeline_scores(pipe, pairs)["psnr_t"] == pytest.approx(logged["psnr_t"], abs=1e-4)
    pipe.max_short_side = 128
    assert pipeline_scores(pipe, pairs)["psnr_t"] != pytest.approx(logged["psnr_t"], abs=1e-4)
