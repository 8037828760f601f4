"""One writer per store: a live holder is named and refused, a dead one's lock is taken over."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curator.store import lock as lockmod
from curator.store.lock import LOCK_FILE, StoreLock, StoreLockedError, read_holder
from tests.helpers import dead_pid

HOLD = """
import sys, time
from curator.store.lock import StoreLock
StoreLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def holder_process(store: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_and_told_who_holds_it(tmp_path: Path) -> None:
    p = holder_process(tmp_path)
    try:
        with pytest.raises(StoreLockedError) as exc:
            StoreLock(tmp_path).acquire()
        msg = str(exc.value)
        assert f"the store is being written by pid {p.pid} on host {socket.gethostname()}" in msg
        assert "wait for it to finish, or stop it, then rerun" in msg and "\n" not in msg
        assert exc.value.exit_code == 1
    finally:
        p.kill()
        p.wait()


def test_a_killed_writers_lock_is_taken_over(tmp_path: Path) -> None:
    p = holder_process(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert read_holder(tmp_path / LOCK_FILE)["pid"] == p.pid  # the line is still there, the flock is gone
    with StoreLock(tmp_path):
        assert read_holder(tmp_path / LOCK_FILE)["pid"] == os.getpid()
    assert read_holder(tmp_path / LOCK_FILE) is None  # released: no holder named


def test_a_stale_lock_line_from_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "command": "curator index", "started": time.time()}))
    with StoreLock(tmp_path) as held:
        assert read_holder(held.path)["pid"] == os.getpid()


def test_without_flock_the_holder_line_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lockmod.fcntl, "flock", no_flock)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "command": "curator index x", "started": time.time()}))
        with pytest.raises(StoreLockedError, match=f"pid {sleeper.pid} on host"):
            StoreLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "command": "curator index x", "started": time.time()}))
    with StoreLock(tmp_path) as held:
        assert read_holder(held.path)["pid"] == os.getpid()
    assert fcntl is not None


def test_a_garbled_lock_file_names_no_holder_and_is_taken_over(tmp_path: Path) -> None:
    for junk in ("[1, 2]", '{"pid": "x"}', "not json", ""):
        (tmp_path / LOCK_FILE).write_text(junk)
        assert read_holder(tmp_path / LOCK_FILE) is None
        with StoreLock(tmp_path) as held:
            assert read_holder(held.path)["pid"] == os.getpid()
