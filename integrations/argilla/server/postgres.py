"""A local PostgreSQL cluster for argilla-server, kept in ``DATA_DIR/postgres`` and run by ``serve``.

PostgreSQL is what holds a team: SQLite takes one writer at a time, and under about twenty annotators
a third of the local server's submits failed with ``database is locked`` (FACTS.md). This module finds
the system's PostgreSQL (Debian puts it in ``/usr/lib/postgresql/<major>/bin``, off PATH), makes a
cluster once, and says how to start it; ``manage.py`` starts and stops it with the other processes.

- ``initdb`` and ``postgres`` refuse to run as root. Under root they run as the ``postgres`` system
  user (Debian's package creates it), switched to by ``subprocess`` itself (setuid/setgid, no extra
  groups) rather than through ``runuser``, so that the recorded pid is the postmaster's own and a stop
  signal reaches it directly. The cluster directory is owned by that user.
- The server listens on 127.0.0.1 only, on a port picked free at each start, with no Unix socket (its
  path would be bound by the 107-byte socket-path limit of a deep data directory, and nothing here
  needs one). Connections authenticate with SCRAM as the superuser ``curator``, whose generated password
  is kept beside the cluster in ``DATA_DIR/postgres-password`` (mode 0600; never in ``server.json``,
  never printed), so other local users cannot reach the team's data.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
from pathlib import Path
from typing import List, Optional

from curator.errors import InputError

from .env import ArgillaServerError

CLUSTER_DIR = "postgres"
PASSWORD_FILE = "postgres-password"
SUPERUSER = "curator"
DATABASE = "argilla"
RUN_AS = "postgres"  # the unprivileged user PostgreSQL runs as when curator runs as root
_INSTALL = "install it: apt-get install postgresql (or sudo apt-get install postgresql)"


@dataclasses.dataclass(frozen=True)
class Binaries:
    """``initdb`` and ``postgres`` of one PostgreSQL major version."""

    initdb: str
    postgres: str
    major: str


@dataclasses.dataclass(frozen=True)
class User:
    """The account the cluster is owned by and runs as (None in ``run_as`` means: this process's own)."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict:
        """``subprocess`` arguments that run the child as this user, with its group and no other groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _major(postgres: str) -> Optional[str]:
    try:
        out = subprocess.run([postgres, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"\)\s*(\d+)", out)  # "postgres (PostgreSQL) 15.14 (Debian ...)"
    return found.group(1) if found else None


def _candidate_dirs() -> List[str]:
    """Folders that may hold initdb and postgres: PATH's, then Debian's per-version folders (newest first),
    then what ``pg_config --bindir`` names."""
    dirs = [os.path.dirname(p) for p in (shutil.which("initdb"), shutil.which("postgres")) if p]
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    dirs += sorted(versioned, key=lambda d: int(re.sub(r"\D", "", d.split("/")[-2]) or 0), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            dirs.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    return list(dict.fromkeys(d for d in dirs if d))


def find_binaries(major: Optional[str] = None) -> Binaries:
    """The first folder holding both programs (of major version ``major`` when given: an existing cluster's)."""
    found = []
    for folder in _candidate_dirs():
        initdb, postgres = os.path.join(folder, "initdb"), os.path.join(folder, "postgres")
        if os.access(initdb, os.X_OK) and os.access(postgres, os.X_OK):
            version = _major(os.path.realpath(postgres))
            if version and (major is None or version == major):
                return Binaries(initdb=os.path.realpath(initdb), postgres=os.path.realpath(postgres), major=version)
            found.append(version)
    if major is not None and found:
        raise ArgillaServerError(
            f"the PostgreSQL cluster was made by PostgreSQL {major}, but only version {', '.join(map(str, found))} "
            f"is installed: install postgresql-{major} (apt-get install postgresql-{major}), or upgrade the cluster with pg_upgrade"
        )
    raise ArgillaServerError(f"PostgreSQL (initdb and postgres) was not found on PATH nor in /usr/lib/postgresql/*/bin; {_INSTALL}")


def run_as() -> Optional[User]:
    """The ``postgres`` user when this process is root (PostgreSQL refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise ArgillaServerError(
            f"PostgreSQL refuses to run as root, and there is no {RUN_AS!r} user to run it as: {_INSTALL} "
            f"(the package creates the user), or create one: useradd --system {RUN_AS}"
        ) from None
    return User(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def check_reachable(data_dir: Path, user: Optional[User]) -> None:
    """Refuse (exit 2) a data directory the cluster's user cannot enter: a folder above it closed to others."""
    if user is None:
        return
    groups = set(os.getgrouplist(user.name, user.gid))
    for folder in [*reversed(data_dir.parents), data_dir]:
        try:
            st = folder.stat()
        except OSError:
            return  # not made yet: mkdir will say
        bit = stat.S_IXUSR if st.st_uid == user.uid else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH
        if not st.st_mode & bit:
            raise InputError(
                f"PostgreSQL runs as the user {user.name} (it refuses to run as root), which cannot enter {folder} "
                f"(mode {stat.S_IMODE(st.st_mode):o}): pass a --data-dir outside it, or let it through with: chmod o+x {folder}"
            )


def cluster_major(data_dir: Path) -> Optional[str]:
    """The PostgreSQL major version of the cluster in ``data_dir``, or None when there is none yet."""
    version = data_dir / CLUSTER_DIR / "PG_VERSION"
    return version.read_text().strip() if version.exists() else None


def _write_secret(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def ensure_cluster(data_dir: Path, binaries: Binaries, user: Optional[User], log: Path) -> str:
    """Make the cluster in ``DATA_DIR/postgres`` unless it exists; return the superuser's password."""
    cluster, secret = data_dir / CLUSTER_DIR, data_dir / PASSWORD_FILE
    if cluster_major(data_dir) is not None:
        if not secret.exists():
            raise ArgillaServerError(
                f"{secret} is missing, and the PostgreSQL cluster in {cluster} needs it: restore the file, "
                "or move the cluster away to start with an empty database"
            )
        return secret.read_text().strip()
    if cluster.exists() and any(cluster.iterdir()):
        raise ArgillaServerError(f"{cluster} is not empty but holds no PostgreSQL cluster: move it away and retry")
    password = secrets.token_urlsafe(24)
    _write_secret(secret, password)
    cluster.mkdir(mode=0o700, exist_ok=True)
    pwfile = data_dir / f".initdb-password.{os.getpid()}"
    _write_secret(pwfile, password + "\n")
    try:
        if user is not None:
            os.chown(cluster, user.uid, user.gid)
            os.chown(pwfile, user.uid, user.gid)
        cmd = [binaries.initdb, "-D", str(cluster), "-U", SUPERUSER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
               "--encoding=UTF8", "--no-locale", "--no-instructions"]  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cluster,
                                 **(user.popen_kwargs() if user else {}))  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if rc != 0:
        raise ArgillaServerError(f"initdb failed to make the PostgreSQL cluster in {cluster} (exit {rc}); see {log}")
    return password


def command(binaries: Binaries, data_dir: Path, port: int) -> List[str]:
    """The postmaster's command line: TCP on 127.0.0.1:``port`` only, no Unix socket, log to stderr."""
    return [binaries.postgres, "-D", str(data_dir / CLUSTER_DIR), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=200"]  # fmt: skip


def ready(data_dir: Path, port: int) -> bool:
    """The postmaster says it accepts connections (``postmaster.pid``'s status line) and the port answers."""
    try:
        lines = (data_dir / CLUSTER_DIR / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    if len(lines) < 8 or lines[7].strip() != "ready":
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def url(port: int, password: str) -> str:
    """The SQLAlchemy URL argilla-server takes (``ARGILLA_DATABASE_URL``); it holds the password."""
    return f"postgresql+asyncpg://{SUPERUSER}:{password}@127.0.0.1:{port}/{DATABASE}"
