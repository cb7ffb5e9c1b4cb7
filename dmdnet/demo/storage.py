"""A disk bound for the demo: its run folders and Gradio's cache together stay under `max_bytes`.

Whatever makes them grow asks for room first (`StorageQuota.claim`):
every POST to the server before its body is read (`QuotaMiddleware`: uploads and API
payloads, by their Content-Length), every run before it is written (`dmdnet.demo.runs.RunStore`),
and the app's views before Gradio copies what they return into its cache. Making room deletes
whole entries, least recently changed first: run folders (a run's folder is touched whenever
it is viewed) and Gradio's per-file cache folders. Protected entries (what Gradio put in its
cache at start-up, the examples' cache) and folders still being written (hidden names) are
never deleted, but count towards the total.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MB = 1024 * 1024


class StorageFull(Exception):
    """No room can be made: the request is larger than the bound, or protected entries fill it."""


@dataclass
class _Entry:
    path: Path
    size: int
    mtime: float
    evictable: bool


def _tree_size(path: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes on disk of the files under `path` (or of `path` itself), each file (inode) counted once."""
    total = 0
    for folder, _, names in os.walk(path) if path.is_dir() else [(path.parent, [], [path.name])]:
        for name in names:
            try:
                info = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue  # deleted meanwhile
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += max(info.st_size, getattr(info, "st_blocks", 0) * 512)
    return total


class StorageQuota:
    """Keeps the total size of `folders` under `max_bytes` by deleting their oldest entries
    (the folders directly inside them) first."""

    def __init__(self, max_bytes: int, folders: Sequence[Path]):
        self.max_bytes = max_bytes
        self.folders = [Path(folder) for folder in folders]
        self._protected: set[Path] = set()
        self._reservations: dict[int, tuple[int, float]] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    def protect(self, *paths: Path) -> None:
        """Never deletes these entries (they may not exist yet)."""
        self._protected.update(Path(path).resolve() for path in paths)

    def protect_existing(self) -> None:
        """Never deletes what the folders hold now (the example photos Gradio copied at start-up)."""
        self.protect(*(path for folder in self.folders if folder.is_dir() for path in folder.iterdir()))

    def _entries(self) -> list[_Entry]:
        seen: set[tuple[int, int]] = set()
        entries = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    mtime = path.lstat().st_mtime
                except OSError:
                    continue
                evictable = (path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
                             and path.resolve() not in self._protected
                             and not any(path.resolve() in (folder.resolve(), *folder.resolve().parents)
                                         for folder in self.folders))
                entries.append(_Entry(path, _tree_size(path, seen), mtime, evictable))
        return entries

    def usage(self) -> int:
        """Bytes on disk under the folders now (reservations not included)."""
        return sum(entry.size for entry in self._entries())

    def _reserved(self) -> int:
        now = time.monotonic()
        self._reservations = {token: (size, until) for token, (size, until) in self._reservations.items()
                              if until > now}
        return sum(size for size, _ in self._reservations.values())

    def _make_room(self, incoming: int) -> None:
        """Deletes the oldest evictable entries until `incoming` more bytes fit (lock held)."""
        entries = self._entries()
        needed = sum(entry.size for entry in entries) + self._reserved() + incoming - self.max_bytes
        if needed <= 0:
            return
        evictable = sorted((entry for entry in entries if entry.evictable), key=lambda entry: entry.mtime)
        if needed > sum(entry.size for entry in evictable):
            raise StorageFull(f"{incoming / MB:.1f} MB more do not fit in the demo's {self.max_bytes / MB:.0f} MB "
                              "of storage")
        for entry in evictable:
            shutil.rmtree(entry.path, ignore_errors=True)
            needed -= entry.size
            if needed <= 0:
                return

    def claim(self, size: int, seconds: float = float("inf")) -> int:
        """Makes room for `size` bytes and reserves it for `seconds` or until `release`; returns
        the reservation's token. Raises StorageFull when no room can be made."""
        with self._lock:
            self._make_room(size)
            token = next(self._tokens)
            self._reservations[token] = (size, time.monotonic() + seconds)
            return token

    def release(self, token: int) -> None:
        with self._lock:
            self._reservations.pop(token, None)

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Room for `size` bytes, reserved while the block writes them. Raises StorageFull."""
        token = self.claim(size)
        try:
            yield
        finally:
            self.release(token)


def output_bytes(value: object) -> int:
    """What Gradio may write to its cache for a function's return value, at most: the size of
    every file path in it and the raw size of every image or array (tuples, lists and update
    dicts are looked into)."""
    if isinstance(value, (tuple, list)):
        return sum(map(output_bytes, value))
    if isinstance(value, dict):
        return output_bytes(value.get("value"))
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (str, Path)) and os.path.isfile(value):
        return os.path.getsize(value)
    return 0


COPY_HOLD_S = 60
"""How long room is kept for Gradio's copies of a function's outputs (it makes them as soon
as the function returns)."""


def holds_outputs(quota: StorageQuota, refuse: Callable[[str], Exception]) -> Callable:
    """Decorator: room for what the function returns is made before Gradio copies it; when
    none can be made, `refuse(message)` is raised instead."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)  # keeps the signature Gradio reads (gr.Progress parameters)
        def wrapper(*args, **kwargs):
            value = function(*args, **kwargs)
            try:
                quota.claim(output_bytes(value), COPY_HOLD_S)
            except StorageFull as error:
                raise refuse(f"{error}; please try again in a few minutes.") from None
            return value
        return wrapper
    return decorate


UPLOAD_COPIES = 2
"""Room a POST reserves, in multiples of its length: Gradio receives an upload into a temporary
file and then copies it into its cache, so for a moment it is on disk twice (a reservation of
one length let a burst overshoot a 6 MB bound by 0.74 MB)."""


class QuotaMiddleware:
    """ASGI middleware: a POST reserves `UPLOAD_COPIES` times its Content-Length (room made by
    deleting the oldest entries) while it is received and handled; one without a length, or whose body cannot
    fit, is answered before its body is read (411, 413 or 507, with a one-line JSON error)."""

    def __init__(self, app: Callable, quota: StorageQuota):
        self.app = app
        self.quota = quota

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        import anyio

        length = dict(scope["headers"]).get(b"content-length", b"")
        if not length.isdigit():
            return await _answer(send, 411, "a POST needs a Content-Length header")
        if UPLOAD_COPIES * int(length) > self.quota.max_bytes:
            return await _answer(send, 413, f"the request is too large for the demo's "
                                            f"{self.quota.max_bytes / MB:.0f} MB of storage (an upload "
                                            f"takes {UPLOAD_COPIES}x its size while it is stored)")
        try:
            token = await anyio.to_thread.run_sync(self.quota.claim, UPLOAD_COPIES * int(length))
        except StorageFull as error:
            return await _answer(send, 507, f"{error}; please try again in a few minutes")
        try:
            await self.app(scope, receive, send)
        finally:
            self.quota.release(token)


async def _answer(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
