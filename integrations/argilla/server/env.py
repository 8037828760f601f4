"""The argilla-server virtualenv: made once under curator's cache, apart from the project's environment.

argilla-server 2.8.0 pins pydantic ~2.9, fastapi ~0.115 and typer <0.10, and its CLI breaks with
click >= 8.2, so it cannot share curator's environment. ``ensure_server_env`` builds
``$CURATOR_CACHE/argilla-server-2.8.0/venv`` under a file lock, marks it ready only when the install
finished and imports, and rebuilds a half-made one. The ready stamp lists the requirements: an
environment made for a subset of them (an older curator's) gets the missing ones installed in place,
so that a server still running from it keeps its files.

The PostgreSQL drivers are always installed: argilla-server talks to PostgreSQL through ``asyncpg``,
and its migrations (alembic) and import-time sync engine through ``psycopg2`` (the binary wheel, the
server's ``postgresql`` extra asks for the source build, which needs libpq headers and a compiler).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from curator.errors import CuratorRuntimeError

SERVER_VERSION = "2.8.0"
REQUIREMENTS = (f"argilla-server=={SERVER_VERSION}", "click<8.2", "asyncpg~=0.30.0", "psycopg2-binary~=2.9.0")
_IMPORTS = "import argilla_server, uvicorn, rq, numpy, asyncpg, psycopg2"
_READY = ".curator-ready"

Progress = Optional[Callable[[str], None]]


class ArgillaServerError(CuratorRuntimeError):
    """The local argilla-server, its environment or Redis could not be set up, started or stopped."""


def server_env_root() -> Path:
    """``$CURATOR_CACHE/argilla-server-2.8.0`` (the cache defaults to ``~/.cache/curator``)."""
    from curator.model.models import cache_dir  # imported here: curator.model.models loads torch

    return cache_dir() / f"argilla-server-{SERVER_VERSION}"


def child_env(extra: Optional[dict] = None) -> dict:
    """The environment for server processes: the caller's, minus anything pointing at curator's python."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"PYTHONUNBUFFERED": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.update(extra or {})
    return env


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block (blocks until the other holder is done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ready_stamp() -> str:
    return json.dumps({"requirements": list(REQUIREMENTS), "python": sys.version.split()[0]}, sort_keys=True)


def _is_ready(venv: Path) -> bool:
    marker, python = venv / _READY, venv / "bin" / "python"
    return python.exists() and marker.exists() and marker.read_text() == _ready_stamp()


def _missing_requirements(venv: Path) -> Optional[List[str]]:
    """The requirements a finished environment of an older stamp lacks, when it only lacks some
    (same python, every old requirement still wanted); None when it must be rebuilt."""
    marker = venv / _READY
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not (venv / "bin" / "python").exists() or old.get("python") != sys.version.split()[0]:
        return None
    had = set(old.get("requirements") or ())
    if not had <= set(REQUIREMENTS):
        return None
    return [r for r in REQUIREMENTS if r not in had]


def _run_steps(steps: List[List[str]], log: Path, venv: Path) -> None:
    with open(log, "w") as out:
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())
            if rc != 0:
                raise ArgillaServerError(
                    f"installing argilla-server {SERVER_VERSION} into {venv} failed (exit {rc}); see {log}, "
                    "check that pip can reach the package index, then retry"
                )


def ensure_server_env(progress: Progress = None) -> Path:
    """Create the server virtualenv if needed (about a minute, once) and return its python."""
    root = server_env_root()
    venv = root / "venv"
    python = venv / "bin" / "python"
    if _is_ready(venv):
        return python
    with file_lock(root / ".lock"):
        if _is_ready(venv):  # another process finished it while we waited
            return python
        log = root / "install.log"
        missing = _missing_requirements(venv)
        if missing is not None:  # add what a newer curator needs, without pulling the floor from under a running server
            if progress:
                progress(f"adding {', '.join(missing)} to the argilla-server environment in {venv}")
            _run_steps([[str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], [str(python), "-c", _IMPORTS]], log, venv)
        else:
            if venv.exists():
                shutil.rmtree(venv)
            if progress:
                progress(f"creating the argilla-server {SERVER_VERSION} environment in {venv} (once, about a minute)")
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS],
                [str(python), "-c", _IMPORTS],
            ]
            _run_steps(steps, log, venv)
        (venv / _READY).write_text(_ready_stamp())
    return python
