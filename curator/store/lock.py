"""One writer per store: an advisory lock file that names its holder.

``STORE/writer.lock`` holds a JSON line with the holder's pid, host, command and start time,
and the holder keeps an exclusive ``flock`` on it for as long as it writes. The kernel drops a
``flock`` when its process dies, however it dies, so a lock left by a killed writer is free:
the next writer takes it over and rewrites the holder line. A live holder is named in the error
a second writer gets. Readers never take the lock; they read the manifest, which is replaced
atomically, so they see the rows of the last committed batch.

On a file system without ``flock`` (some network mounts), the lock falls back to the holder
line alone: it is taken over when it names this host and a pid that is no longer running.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from curator.io.atomic import pid_alive
from curator.errors import CuratorRuntimeError

LOCK_FILE = "writer.lock"


class StoreLockedError(CuratorRuntimeError):
    """Another live process is writing the same store."""


def read_holder(path: str | Path) -> dict[str, Any] | None:
    """The holder line of a lock file, or None when it is missing or unreadable."""
    try:
        holder = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (its lock file names no holder)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (`{holder.get('command', '?')}`, since {since})"


class StoreLock:
    """``with StoreLock(store_dir):`` holds the store's writer lock, or raises StoreLockedError.

    ``lock_file`` and ``what`` let another single-writer artefact in ``store`` use the same lock
    (``curator generate`` locks ``<out>.lock`` beside its output file)."""

    def __init__(self, store: str | Path, lock_file: str = LOCK_FILE, what: str = "store") -> None:
        self.store = Path(store)
        self.path = self.store / lock_file
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        self.store.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(f"{self._target()}: the {self.what} is being written by {describe(read_holder(self.path))}: wait for it to finish, or stop it, then rerun") from None
            if exc.errno != errno.ENOLCK:
                raise
            return self._acquire_without_flock()
        self._fd = fd
        self._write_holder(fd)
        return self

    def _acquire_without_flock(self) -> "StoreLock":
        holder = read_holder(self.path)
        if holder and (holder.get("host") != socket.gethostname() or pid_alive(holder["pid"])) and holder.get("pid") != os.getpid():
            raise StoreLockedError(f"{self._target()}: the {self.what} is being written by {describe(holder)}: wait for it to finish, or stop it, then rerun")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fd = fd
        self._write_holder(fd)
        return self

    def _target(self) -> Path:
        return self.store if self.path.name == LOCK_FILE else self.store / self.path.name.removesuffix(".lock")

    def _write_holder(self, fd: int) -> None:
        line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200], "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (line + "\n").encode("utf-8"), 0)
        os.fsync(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # no holder: a reader of the file sees it is free
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
