"""Atomic writes: write to a temp file (or folder) beside the target, fsync, then rename over it.

A reader sees the old content or the new one, never a half-written file. Temp names carry the
writer's host and pid (``.NAME.HOST-PID.RANDOM.tmp``), so a temp left behind by a writer that was
killed (SIGKILL, power loss) is recognised as stale and removed the next time the same target is
written; a temp of a live writer is left alone.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _prefix(target: Path) -> str:
    return f".{target.name}.{_HOST}-{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(target: str | Path) -> list[Path]:
    """Remove temps of ``target`` left by dead writers on this host; return what was removed."""
    t = Path(target)
    removed = []
    pattern = re.compile(re.escape(f".{t.name}.{_HOST}-") + r"(\d+)\.[^/]*\.tmp$")
    for p in t.parent.glob(f".{glob.escape(t.name)}.*.tmp"):
        m = pattern.match(p.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _umask() -> int:
    """The process's umask: Linux shows it in /proc/self/status; elsewhere it is read by setting it and
    setting it back (there is no plain getter), which other threads could see for an instant."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Call ``writer`` on a temp file beside ``path``, then atomically replace ``path`` with it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the mode a plain open() would
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)


def write_dir_atomic(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer`` on an empty temp folder beside ``path``, fsync what it wrote, then swap it in.

    An existing folder at ``path`` is moved aside first and deleted after the swap. A folder
    cannot be renamed over a non-empty one, so there is a moment with no ``path``; a crash there
    leaves the old folder as a stale temp and the next write of ``path`` completes the swap anew.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700: give the mode a plain mkdir() would
    old: Path | None = None
    try:
        writer(tmp)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
            fsync_dir(d)
        fsync_dir(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".old.tmp", dir=target.parent))
            os.replace(target, old / "previous")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists() and (old / "previous").exists():
            os.replace(old / "previous", target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
