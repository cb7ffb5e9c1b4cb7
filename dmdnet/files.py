"""Writing files so that no reader ever sees half of one, and stopping on a signal cleanly.

Every file the project writes goes through `atomic_path`: it is written under a hidden
temporary name in its own folder and renamed into place (`os.replace`, atomic within one
filesystem) only once complete. An interrupted, failed or killed write leaves the previous
file, or none, never a truncated one under the final name.

A temporary name records its writer (a tag of the machine and the process id), so that
`remove_leftovers` can clear what a killed writer left without touching a live writer's file.
`write_bytes` turns a failed write into `WriteError`, one line naming the file and the
system's reason ("no space left on device", "read-only file system").

`stop_on_signals` turns SIGINT and SIGTERM into `Stopped` for the commands, and
`uninterrupted` holds it back while files that belong together are put in place (the two
layers of one image, the model, memory-bank and state files of one checkpoint).

`pause_point` is a test hook: with DMDNET_TEST_PAUSE set, a writer stops at a chosen moment
(halfway through a file, before a rename) so that a test can signal it exactly then.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
"""Ends the temporary names: hidden (a leading dot) and with no image suffix, so folder scans skip them."""
MACHINE_TAG = format(zlib.crc32(socket.gethostname().encode()), "08x")
"""This machine in temporary names (a process id means something only on its own machine)."""
_PARTIAL_NAME = re.compile(r"\..+\.(?:(?P<machine>[0-9a-f]{8})-(?P<pid>\d+)-)?[0-9a-f]{8,12}"
                           + re.escape(PARTIAL_SUFFIX))
"""`.NAME.MACHINE-PID-HEX.partial`; without MACHINE-PID, a name written before writers were recorded."""
PAUSE_VARIABLE = "DMDNET_TEST_PAUSE"

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to (name the format explicitly: its suffix is
    `.partial`); renamed to `path` when the block ends normally, removed when it raises."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{MACHINE_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Writes a text file whole (through `atomic_path`)."""
    with atomic_path(path) as partial:
        partial.write_text(text)


class WriteError(OSError):
    """A file could not be written; the message names the file (not its temporary name) and
    the system's reason, on one line."""

    def __str__(self) -> str:
        return f"cannot write {self.filename} ({(self.strerror or 'failed').lower()})"


def write_bytes(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` whole (through `atomic_path`, creating its folder); any failure
    raises `WriteError`. Halfway through, `pause_point("writing PATH")`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial, open(partial, "wb") as handle:
            handle.write(data[:len(data) // 2])
            handle.flush()
            pause_point(f"writing {path}")
            handle.write(data[len(data) // 2:])
    except OSError as error:
        raise WriteError(error.errno, error.strerror or str(error), str(path)) from None


def _writer_gone(machine: str | None, pid: str | None) -> bool:
    """Whether the process that named a temporary file has ended (unknown for another machine's)."""
    if machine is None:
        return True
    if machine != MACHINE_TAG:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Removes the temporary files in `folder` whose writers have ended (a killed command's
    half-written files); returns them. A live writer's files, and another machine's, stay."""
    folder = Path(folder)
    removed = []
    for path in sorted(folder.glob(f".*{PARTIAL_SUFFIX}")) if folder.is_dir() else []:
        match = _PARTIAL_NAME.fullmatch(path.name)
        if match and _writer_gone(match["machine"], match["pid"]):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


_pauses_seen = 0


def pause_point(where: str) -> None:
    """Test hook, a no-op unless DMDNET_TEST_PAUSE is `PATTERN` or `PATTERN#N`: at the Nth call
    (default the first) whose `where` matches the glob PATTERN, prints `paused: WHERE` to
    stderr and waits up to a minute, ending early once a SIGINT/SIGTERM is held back, so that
    a test can send a real signal at exactly that moment (a SIGKILL ends the wait at once)."""
    global _pauses_seen
    pattern, _, nth = os.environ.get(PAUSE_VARIABLE, "").partition("#")
    if not pattern or not fnmatch.fnmatchcase(where, pattern):
        return
    _pauses_seen += 1
    if _pauses_seen != int(nth or 1):
        return
    print(f"paused: {where}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _pending:
        time.sleep(0.01)


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived while a command ran (a BaseException, so that no
    `except Exception` swallows it); `exit_code` is the shell's 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_held = 0
_pending: list[int] = []


def _raise_stopped(signum: int, frame: object) -> None:
    if _held:
        _pending.append(signum)
    else:
        raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise `Stopped` in the main thread (elsewhere
    nothing changes: Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _pending.clear()


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Holds a `Stopped` back until the block (the outermost, when nested) has ended, so that
    files written together are all in place, or none of them."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending:
            signum = _pending[0]
            _pending.clear()
            raise Stopped(signum)
