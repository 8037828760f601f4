"""Run one `curator` command in this process and SIGKILL it at a chosen moment (crash-test harness).

Modes (``n`` is the mode's argument):
  timer N          kill after N seconds, wherever the command is (mid-batch, mid-write, ...)
  before-replace N kill at the N-th atomic rename, before it happens: the temp file is complete
                   and fsynced, the target still holds its old content
  after-replace N  kill right after the N-th rename: e.g. a part file is in place but the
                   manifest that would list it is not written yet
  before-fsync N   kill at the N-th fsync: a temp file is written but not synced nor renamed
  count N          no kill: write how many renames the run made to ``count_file`` (to pick N
                   for the other modes)

The kill is a real SIGKILL of the process: no Python cleanup, no finally blocks, no flushes.
Used by tests/test_crash.py, through a forkserver whose server has already imported curator,
torch and transformers (so a trial costs its work, not its imports), and from the command line:
``python -m tests.crash_child MODE N -- curator-args...``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable

import curator.cli.main  # noqa: F401  (imported here so the forkserver preloads it)
import curator.influence.indexing  # noqa: F401
import curator.alignment.align  # noqa: F401


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(fn: Callable[..., Any], n: int, before: bool, counter: list[int]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        if before and counter[0] == n:
            _die()
        out = fn(*args, **kwargs)
        if not before and counter[0] == n:
            _die()
        return out

    return wrapper


def install(mode: str, n: float) -> list[int]:
    """Arm the kill; returns the rename counter (mode ``count`` reads it at exit)."""
    counter = [0]
    if mode == "timer":
        t = threading.Timer(float(n), _die)
        t.daemon = True
        t.start()
    elif mode in ("before-replace", "after-replace", "count"):
        os.replace = _counting(os.replace, int(n) if mode != "count" else -1, mode == "before-replace", counter)  # type: ignore[assignment]
    elif mode == "before-fsync":
        os.fsync = _counting(os.fsync, int(n), True, counter)  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown crash mode {mode!r}")
    return counter


def run(mode: str, n: float, argv: list[str], count_file: str | None = None) -> None:
    """Run ``curator argv`` here with the kill armed; exits with the command's exit code."""
    counter = install(mode, n)
    code = 0
    try:
        curator.cli.main.cli.main(argv, prog_name="curator", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if count_file:
        with open(count_file, "w") as fh:
            fh.write(str(counter[0]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    mode, n, sep, *rest = sys.argv[1:]
    if sep != "--":
        raise SystemExit("usage: python -m tests.crash_child MODE N -- curator-args...")
    run(mode, float(n), rest)
