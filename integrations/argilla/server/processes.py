"""Detached server processes that curator can later stop by pid, and only if they are still its own.

Each process is started in a new session (its pid is its process-group id), with its output in a log
file. Its record keeps the pid, the executable and the kernel start time (the pair identifies one
process for the life of the machine), so that ``terminate`` can tell a live process it started from an
unrelated one that reused the pid. A process may run as another user (PostgreSQL refuses root), and
may name its own stop signal (PostgreSQL's postmaster shuts down fast on SIGINT, and stops its own
children; it is signalled alone, not with its process group).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

# Popen handles of processes started here, so that this process can reap them once they exit.
_CHILDREN: Dict[int, subprocess.Popen] = {}


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields after "pid (comm) "; index 0 is the state


def _exe(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def start(
    cmd: List[str], log: Path, env: dict, cwd: Path, user: Optional[dict] = None, stop_signal: Optional[str] = None
) -> dict:
    """Start ``cmd`` detached, output appended to ``log``; return its record (pid, cmdline, start time).

    ``user``: ``subprocess`` arguments (user, group, extra_groups) to run it as another account.
    ``stop_signal``: a signal name sent to the process alone on ``terminate`` (default: SIGTERM to its group).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            **(user or {}),
        )
    _CHILDREN[proc.pid] = proc
    # Popen returns once the child has exec'd, so exe is the program's own (not this python's)
    fields = _stat_fields(proc.pid)
    record = {
        "pid": proc.pid,
        "cmdline": list(cmd),
        "exe": _exe(proc.pid),
        "start_time": fields[19] if fields else None,
        "log": str(log),
    }
    if stop_signal:
        record["stop_signal"] = stop_signal
    return record


def _reap(pid: int) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _CHILDREN[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(record: dict) -> bool:
    """The record's process still runs (not a zombie) and has the recorded kernel start time."""
    pid = record["pid"]
    _reap(pid)
    fields = _stat_fields(pid)
    if fields is not None and fields[0] in ("Z", "X"):
        _reap(pid)  # it may have exited just after the first try
        return False
    return fields is not None and record.get("start_time") is not None and fields[19] == record["start_time"]


def is_ours(record: dict) -> bool:
    """True when the record's pid is alive and still is the process that was started: same kernel start
    time and same executable. (The command line is not compared: Redis rewrites its process title.)"""
    return _alive(record) and _exe(record["pid"]) == record.get("exe")


def _group_members(pgid: int) -> List[int]:
    """Live processes in the process group ``pgid`` (a group started here holds only its descendants)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
                members.append(int(entry.name))
    return members


def _signal(record: dict, sig: int) -> None:
    pid = record["pid"]
    own = record.get("stop_signal")
    try:
        if own and sig == signal.SIGTERM:  # the process's own way to stop; it ends its children itself
            os.kill(pid, getattr(signal, own))
        elif os.getpgid(pid) == pid:  # started as a session leader: also reach its children (rq work horses)
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _running(record: dict) -> bool:
    return _alive(record) or bool(_group_members(record["pid"]))


def _wait_gone(records: List[dict], timeout: float) -> List[dict]:
    deadline = time.monotonic() + timeout
    alive = [r for r in records if _running(r)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [r for r in alive if _running(r)]
    return alive


def terminate(records: List[dict], timeout: float = 10.0) -> List[int]:
    """SIGTERM the records' processes that are still ours (with their process groups), SIGKILL what is left
    after ``timeout``; return the pids that were signalled."""
    ours = [r for r in records if is_ours(r)]
    for record in ours:
        _signal(record, signal.SIGTERM)
    for record in _wait_gone(ours, timeout):
        for pid in _group_members(record["pid"]) or [record["pid"]]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _wait_gone(ours, 5.0)
    for record in ours:  # reap what this interpreter started, so no zombie keeps the pid
        proc = _CHILDREN.pop(record["pid"], None)
        if proc is not None:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
    return [r["pid"] for r in ours]
