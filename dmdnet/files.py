"""Writing files so that no reader ever sees half of one, and stopping on a signal cleanly.

Every file the project writes goes through `atomic_path`: it is written under a hidden
temporary name in its own folder and renamed into place (`os.replace`, atomic within one
filesystem) only once complete. An interrupted, failed or killed write leaves the previous
file, or none, never a truncated one under the final name.

`stop_on_signals` turns SIGINT and SIGTERM into `Stopped` for the commands, and
`uninterrupted` holds it back while files that belong together are put in place (the two
layers of one image, the model, memory-bank and state files of one checkpoint).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
"""Ends the temporary names: hidden (a leading dot) and with no image suffix, so folder scans skip them."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to (name the format explicitly: its suffix is
    `.partial`); renamed to `path` when the block ends normally, removed when it raises."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Writes a text file whole (through `atomic_path`)."""
    with atomic_path(path) as partial:
        partial.write_text(text)


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
