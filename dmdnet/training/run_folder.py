"""A training run's folder (`train --out`): one consistent step at every instant, one writer.

The folder keeps the released names: `model_latest.pt`, `memory_banks_latest.pt`,
`training_state.pt` and `best/`, all of one step, and `run_state.json`, the record of that
step: its number and the size and SHA-256 of each of those files. A save (`commit`) of step N

1. writes the step's files, each complete, into a hidden staging folder `.staged-TOKEN/`;
2. writes `run_state.json` naming step N, its files and the staging folder (written whole
   and renamed over the old record: this rename is the instant the run moves to step N);
3. moves each staged file over its released name (`os.replace`) and removes the staging folder.

A process killed before the rename of step 2 leaves step N-1's files untouched, plus a staging
folder that no record names: the next run removes it. Killed after it, the next run finishes
step 3 from the staging folder the record names. Either way `recover` leaves the files of the
recorded step, checks each against the record, and clears the half-written temporary files of
any killed writer. Nothing is kept aside: at most one step's files are staged at a time.
(A killed process is covered; a machine that loses power may lose what it had not flushed.)

One writer: `lock_run_folder` holds an `flock` on `.train.lock` for as long as the training
process lives (the kernel drops it when the process ends, however it ends), with the
holder's PID written inside so that a second `train` on the folder can say who holds it.

A folder written before `run_state.json` existed has no record: it resumes as before, from
its files (`recover` returns no step).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..files import WriteError, pause_point, remove_leftovers, uninterrupted, write_bytes, write_text

RUN_STATE_NAME = "run_state.json"
LOCK_NAME = ".train.lock"
STAGING_PREFIX = ".staged-"


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked: a one-line message naming the path and why."""


@dataclass
class Recovery:
    """What `recover` found: the recorded step (None without a record) and what it did."""

    step: int | None = None
    notes: list[str] = field(default_factory=list)


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


def lock_run_folder(out: Path) -> IO:
    """Creates `out` and takes its lock (the returned open file holds it until closed or the
    process ends). Raises RunFolderError when `out` cannot be written or another process holds it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_NAME, "a+")
    except OSError as error:
        raise RunFolderError(f"--out {out}: cannot write there ({_reason(error)})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not said which"
        handle.close()
        raise RunFolderError(f"--out {out} is in use by another train process ({holder}); "
                             "wait for it to end, or give another --out") from None
    try:
        handle.truncate(0)
        handle.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
    except OSError as error:
        handle.close()
        raise RunFolderError(f"--out {out}: cannot write {out / LOCK_NAME} ({_reason(error)})") from None
    return handle


def check_free_space(out: Path, needed: int) -> None:
    """Raises RunFolderError when the file system of `out` has less than `needed` bytes free."""
    free = shutil.disk_usage(out).free
    if free < needed:
        raise RunFolderError(f"--out {out}: no space left on device for a save ({free / 2**20:.1f} MiB free, "
                             f"a save needs about {needed / 2**20:.1f} MiB)")


def read_run_state(out: Path) -> dict | None:
    """The record of the run's step (`run_state.json`), or None where there is none."""
    path = out / RUN_STATE_NAME
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        problem = None if (isinstance(state, dict) and isinstance(state.get("step"), int)
                           and isinstance(state.get("files"), dict) and isinstance(state.get("staging"), str)
                           ) else "a step, files and staging entry are expected"
    except (OSError, ValueError) as error:
        problem = str(error)
    if problem:
        raise RunFolderError(f"{path} is not a readable run record ({problem}); restore it, or start a new --out")
    return state


def _digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _put_in_place(out: Path, state: dict) -> bool:
    """Moves the staged files the record names over their released names (step 3); whether
    there was anything to move."""
    staging = out / state["staging"]
    if not staging.is_dir():
        return False
    for name in state["files"]:
        staged, final = staging / name, out / name
        if staged.is_file():
            pause_point(f"replacing {final}")
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
            except OSError as error:
                raise RunFolderError(f"cannot put {final} in place ({_reason(error)})") from None
    shutil.rmtree(staging, ignore_errors=True)
    return True


def commit(out: Path, step: int, files: Mapping[str, bytes]) -> None:
    """Makes `files` (names relative to `out` -> contents) the run's files of `step`, together
    with the recorded files they do not replace (steps 1-3 of the module docstring). Raises
    RunFolderError naming the file that could not be written; the run's step is then unchanged."""
    with uninterrupted():
        previous = read_run_state(out)
        staging = out / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        state = {"step": step, "staging": staging.name,
                 "files": {**(previous["files"] if previous else {}),
                           **{name: _digest(data) for name, data in files.items()}}}
        try:
            for name, data in files.items():
                try:
                    write_bytes(staging / name, data)
                except WriteError as error:
                    raise RunFolderError(f"cannot write {out / name} ({_reason(error)})") from None
            try:
                write_bytes(out / RUN_STATE_NAME, json.dumps(state, indent=1).encode())
            except WriteError as error:
                raise RunFolderError(str(error)) from None
        except RunFolderError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _put_in_place(out, state)


def _check_recorded_files(out: Path, state: dict) -> None:
    """Raises RunFolderError unless each recorded file is there with its recorded size and hash."""
    for name, expected in state["files"].items():
        path = out / name
        problem = "is missing" if not path.is_file() else (
            None if _digest(path.read_bytes()) == expected else "has changed since it was saved")
        if problem:
            raise RunFolderError(f"{path} {problem}: {out / RUN_STATE_NAME} records it as a file of step "
                                 f"{state['step']}; restore it, or start a new --out")


def recover(out: Path) -> Recovery:
    """Brings `out` (locked by this process) to its recorded step: finishes an interrupted
    save whose record was written, removes staging folders no record names and the temporary
    files of killed writers, and checks every recorded file (RunFolderError when one is
    missing or changed)."""
    state = read_run_state(out)
    recovery = Recovery(None if state is None else int(state["step"]))
    if state is not None and _put_in_place(out, state):
        recovery.notes.append(f"finished putting step {state['step']} in place (its save had been cut short)")
    leftovers = [path for path in out.glob(f"{STAGING_PREFIX}*") if path.is_dir()]
    for path in leftovers:
        shutil.rmtree(path)
    for folder in [out, *(path for path in out.iterdir() if path.is_dir())]:
        leftovers += remove_leftovers(folder)
    if leftovers:
        recovery.notes.append(f"removed {len(leftovers)} leftovers of a save that was cut short: "
                              + ", ".join(str(path.relative_to(out)) for path in leftovers))
    if state is not None:
        _check_recorded_files(out, state)
    return recovery


def _records(log: Path) -> list[tuple[str, dict | None]]:
    """Each line of a log.jsonl with its record (None for a line that is not one: cut short)."""
    lines = log.read_text().splitlines(keepends=True) if log.is_file() else []
    records = []
    for line in lines:
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except ValueError:
            record = None
        records.append((line, record if isinstance(record, dict) else None))
    return records


def trim_log(log: Path, step: int) -> int:
    """Drops from `log` (log.jsonl) the records of steps after `step`, which a resume from
    `step` redoes, and any line cut short; returns how many lines went."""
    records = _records(log)
    kept = [line for line, record in records if record is not None and int(record.get("step", 0)) <= step]
    if len(kept) < len(records):
        write_text(log, "".join(kept))
    return len(records) - len(kept)


def logged_validation(log: Path, step: int) -> bool:
    """Whether `log` has the validation record of `step`."""
    return any(record is not None and record.get("step") == step and "event" not in record
               for _, record in _records(log))
