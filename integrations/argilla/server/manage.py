"""Serve, stop and inspect a local argilla-server 2.8.0 whose data lives in one directory.

``serve`` starts detached processes: Redis (from the system), with ``--database postgresql`` a local
PostgreSQL (``postgres.py``), then the app and the rq worker (both through ``launcher.py`` in the
server's own virtualenv, so that curator's SQLite search engine is registered). It records them in
``DATA_DIR/server.json``; ``stop`` ends exactly those processes, after checking that each pid still is
the process it started. Everything persistent (the database, the search index ``search.db``) stays in
the data directory, so ``stop`` then ``serve`` keeps the data. ``database.py`` says which database a
directory uses (SQLite by default, a local PostgreSQL, or an existing one given by URL).

Layout of a data directory::

    server.json        pids, command lines, ports, url (no secrets)
    database.json      the database kind it uses (kept across stops; a URL without its password)
    argilla.db         the server's SQLite database (WAL mode), with --database sqlite
    postgres/          the PostgreSQL cluster, with --database postgresql (owned by user postgres under root)
    postgres-password  its superuser's password (mode 0600)
    search.db          curator-sqlite's search index
    logs/              redis.log, postgres.log, prepare.log, app.log, worker.log
    redis/             Redis' working directory (nothing is persisted there)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from curator.errors import InputError

from . import postgres, processes
from .database import SQLITE_TIMEOUT_S, Database, redact, remember, resolve
from .env import ArgillaServerError, Progress, child_env, ensure_server_env, file_lock

DEFAULT_API_KEY = "argilla.apikey"  # what argilla-server's `database users create_default` sets
DEFAULT_USERNAME = "argilla"
DEFAULT_PASSWORD = "1234"
ENGINE_NAME = "curator-sqlite"
STATE_FILE = "server.json"
STATE_FORMAT = 1
_ROLES = ("app", "worker", "redis")
_SERVICES = ("redis", "postgres")  # stopped after the app and the worker that use them
LocalPostgres = Tuple[postgres.Binaries, Optional[postgres.User]]
_LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
_PREPARE_TIMEOUT = 600.0  # migrating a large database can take a while


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """A running local server: where to reach it, and the processes curator started for it."""

    url: str
    api_key: str = dataclasses.field(repr=False)
    data_dir: Path
    pids: Dict[str, int]
    port: int
    redis_port: int
    username: str = DEFAULT_USERNAME
    password: str = dataclasses.field(default=DEFAULT_PASSWORD, repr=False)
    database: str = "sqlite"  # sqlite, postgresql (a local cluster) or external (--database-url)
    database_shown: str = "sqlite"  # the database in words, without secrets
    postgres_port: Optional[int] = None

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    """What ``status`` found: per process whether it is still the one started, and whether the API answers."""

    data_dir: Path
    running: bool
    answering: bool
    processes: Dict[str, bool]
    info: Optional[ServerInfo] = None


# ------------------------------------------------------------------------------------ helpers
WORKERS_ENV = "CURATOR_ARGILLA_WORKERS"  # the server's background worker processes (launcher.py reads it)


def workers_env() -> Optional[int]:
    """``CURATOR_ARGILLA_WORKERS`` checked before anything starts (None when unset)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise InputError(f"{WORKERS_ENV}={raw!r} is invalid: set an integer from 1 to 64 (the server's background worker processes), or unset it for 2")
    return int(raw)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _check_port(port: int, what: str, option: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Redis do: TIME_WAIT is no conflict
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ArgillaServerError(
                f"port {port} for {what} is already in use; pass another {option} or leave it out"
            ) from None
    return port


def _write_state(data_dir: Path, state: dict) -> None:
    path = data_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _read_state(data_dir: Path) -> Optional[dict]:
    path = data_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArgillaServerError(f"{path} is unreadable ({exc}); stop the processes by hand and delete it") from None
    if state.get("format") != STATE_FORMAT:
        raise ArgillaServerError(
            f"{path} has format {state.get('format')!r}, expected {STATE_FORMAT}; delete it and retry"
        )
    return state


def _info(data_dir: Path, state: dict) -> ServerInfo:
    return ServerInfo(
        url=state["url"],
        api_key=DEFAULT_API_KEY,
        data_dir=data_dir,
        pids={role: rec["pid"] for role, rec in state["processes"].items()},
        port=state["port"],
        redis_port=state["redis_port"],
        database=state.get("database", {}).get("kind", "sqlite"),
        database_shown=state.get("database", {}).get("shown", "sqlite"),
        postgres_port=state.get("postgres_port"),
    )


def _roles(state: dict) -> set:
    return set(_ROLES) | ({"postgres"} if state.get("database", {}).get("kind") == "postgresql" else set())


def _terminate_all(records: Dict[str, dict], timeout: float = 10.0) -> List[int]:
    """The app and the worker together, then the services they use (PostgreSQL gets time to checkpoint)."""
    signalled = processes.terminate([records[r] for r in ("app", "worker") if r in records], timeout)
    return signalled + processes.terminate([records[r] for r in _SERVICES if r in records], max(timeout, 30.0))


def _answers(url: str, timeout: float = 2.0) -> bool:
    request = urllib.request.Request(f"{url}/api/v1/status", headers={"X-Argilla-Api-Key": DEFAULT_API_KEY})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait(check, records: Dict[str, dict], what: str, log: str, timeout: float) -> None:
    """Poll ``check`` until it passes; fail early when a started process dies, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        for role, record in records.items():
            if not processes.is_ours(record):
                raise ArgillaServerError(f"the {role} process exited while waiting for {what}; see {record['log']}")
        if time.monotonic() > deadline:
            raise ArgillaServerError(f"{what} did not answer within {timeout:g} s; see {log}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------- API
def serve(
    data_dir: Path,
    port: Optional[int] = None,
    redis_port: Optional[int] = None,
    host: str = "127.0.0.1",
    progress: Progress = None,
    timeout: float = 120.0,
    database: Optional[str] = None,
    database_url: Optional[str] = None,
) -> ServerInfo:
    """Start (or find already running) a local argilla-server keeping its data in ``data_dir``.

    Ports are picked free when not given. If a server started by curator already runs for this
    directory, its info is returned (a different ``port`` is refused). The server's default user is
    ``argilla``/``1234`` with API key ``argilla.apikey``. ``database``: ``sqlite`` (one person) or
    ``postgresql`` (a local PostgreSQL for a team); ``database_url``: an existing PostgreSQL instead.
    Left out, the directory's own database is used (SQLite for a new one).
    """
    workers_env()
    redis = shutil.which("redis-server")
    if redis is None:
        raise ArgillaServerError("redis-server was not found on PATH; install it: apt-get install redis-server")
    data_dir = Path(data_dir).expanduser().resolve()
    db = resolve(data_dir, database, database_url)
    local_pg = _local_postgres(data_dir) if db.kind == "postgresql" else None
    data_dir.mkdir(parents=True, exist_ok=True)
    python = ensure_server_env(progress)
    say = progress or (lambda _msg: None)
    with file_lock(data_dir / ".server.lock"):
        state = _read_state(data_dir)
        if state is not None:
            records = state["processes"]
            if all(processes.is_ours(r) for r in records.values()) and _answers(state["url"]):
                if port is not None and port != state["port"]:
                    raise ArgillaServerError(
                        f"a server for {data_dir} already runs on port {state['port']}; stop it first to use port {port}"
                    )
                say(f"argilla-server already running for {data_dir} at {state['url']}")
                return _info(data_dir, state)
            _terminate_all(records)  # a partial leftover (PostgreSQL or Redis gone, say): start afresh
            (data_dir / STATE_FILE).unlink(missing_ok=True)
        info = _start(data_dir, python, redis, port, redis_port, host, say, timeout, db, local_pg)
        remember(data_dir, db)
        return info


def _local_postgres(data_dir: Path) -> LocalPostgres:
    """PostgreSQL's programs (the existing cluster's version) and the user it runs as; checked before anything starts."""
    binaries = postgres.find_binaries(postgres.cluster_major(data_dir))
    user = postgres.run_as()
    postgres.check_reachable(data_dir, user)
    return binaries, user


def _start_postgres(
    data_dir: Path, local_pg: LocalPostgres, records: Dict[str, dict], state: dict, say: Callable[[str], None]
) -> str:
    """Make the cluster if needed, start the postmaster, wait for it; return the URL for argilla-server."""
    binaries, user = local_pg
    log = data_dir / "logs" / "postgres.log"
    password = postgres.ensure_cluster(data_dir, binaries, user, log)
    pg_port = _free_port()
    say(f"starting PostgreSQL {binaries.major} on 127.0.0.1:{pg_port} (data in {data_dir / postgres.CLUSTER_DIR})")
    cmd = postgres.command(binaries, data_dir, pg_port)
    env = child_env({"LC_ALL": "C", "ARGILLA_HOME_PATH": str(data_dir)})
    records["postgres"] = processes.start(cmd, log, env, data_dir / postgres.CLUSTER_DIR,
                                          user=user.popen_kwargs() if user else None, stop_signal="SIGINT")  # fmt: skip
    state["postgres_port"] = pg_port
    _write_state(data_dir, state)
    _wait(lambda: postgres.ready(data_dir, pg_port), records, "PostgreSQL", str(log), 60)
    return postgres.url(pg_port, password)


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _start(data_dir: Path, python: Path, redis: str, port, redis_port, host: str, say, timeout: float,
           db: Database, local_pg: Optional[LocalPostgres]) -> ServerInfo:  # fmt: skip
    port = _check_port(port, "the Argilla server", "--port") if port else _free_port()
    redis_port = _check_port(redis_port, "Redis", "redis port") if redis_port else _free_port()
    logs = data_dir / "logs"
    (data_dir / "redis").mkdir(exist_ok=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    shown = {"sqlite": f"SQLite at {data_dir / 'argilla.db'}", "postgresql": f"PostgreSQL, data in {data_dir / postgres.CLUSTER_DIR}"}
    database = {"kind": db.kind, "shown": shown.get(db.kind, db.shown), **({"url": redact(db.url)} if db.url else {})}
    state = {"format": STATE_FORMAT, "argilla_server": "2.8.0", "url": url, "host": host, "port": port,
             "redis_port": redis_port, "database": database, "processes": {}}  # fmt: skip
    records = state["processes"]
    try:
        say(f"starting Redis on port {redis_port}")
        redis_cmd = [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--daemonize", "no", "--dir", str(data_dir / "redis")]  # fmt: skip
        records["redis"] = processes.start(redis_cmd, logs / "redis.log", child_env({"ARGILLA_HOME_PATH": str(data_dir)}), data_dir)
        _write_state(data_dir, state)
        _wait(lambda: _redis_answers(redis_port), records, "Redis", str(logs / "redis.log"), 30)

        database_url = f"sqlite+aiosqlite:///{data_dir / 'argilla.db'}" if db.kind == "sqlite" else db.url
        if local_pg is not None:
            database_url = _start_postgres(data_dir, local_pg, records, state, say)
            database["shown"] = f"PostgreSQL at 127.0.0.1:{state['postgres_port']}, data in {data_dir / postgres.CLUSTER_DIR}"
        env = child_env(
            {
                "ARGILLA_HOME_PATH": str(data_dir),
                "ARGILLA_DATABASE_URL": str(database_url),
                "ARGILLA_DATABASE_SQLITE_TIMEOUT": str(SQLITE_TIMEOUT_S),
                "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "ARGILLA_SEARCH_ENGINE": ENGINE_NAME,
                "CURATOR_SEARCH_DB": str(data_dir / "search.db"),
                "CURATOR_DATABASE_SHOWN": database["shown"],
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "ARGILLA_SHOW_HUGGINGFACE_SPACE_PERSISTENT_STORAGE_WARNING": "false",
            }
        )
        say("migrating the database and creating the default user")
        prepare_cmd = [str(python), str(_LAUNCHER), "prepare"]
        with open(logs / "prepare.log", "ab") as out:
            try:
                done = subprocess.run(
                    prepare_cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, cwd=data_dir, timeout=_PREPARE_TIMEOUT,
                )  # fmt: skip
                rc = done.returncode
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            why = _last_line(logs / "prepare.log").removeprefix("error: ")
            raise ArgillaServerError(
                f"migrating the Argilla database ({database['shown']}) failed{': ' + why if why else ''}; see {logs / 'prepare.log'}"
            )

        say(f"starting argilla-server on {url}")
        app_cmd = [str(python), str(_LAUNCHER), "app", "--host", host, "--port", str(port)]
        records["app"] = processes.start(app_cmd, logs / "app.log", env, data_dir)
        records["worker"] = processes.start([str(python), str(_LAUNCHER), "worker"], logs / "worker.log", env, data_dir)
        _write_state(data_dir, state)
        _wait(lambda: _answers(url), records, f"argilla-server at {url}", str(logs / "app.log"), timeout)
    except BaseException:
        _terminate_all(records)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    say(f"argilla-server is up at {url}")
    return _info(data_dir, state)


def stop(data_dir: Path, timeout: float = 10.0) -> Dict[str, int]:
    """Stop the processes ``serve`` started for ``data_dir`` (only those still alive and still theirs).

    Returns the pids that were signalled, by role; an empty dict when nothing was running.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if not (data_dir / STATE_FILE).exists():
        return {}
    with file_lock(data_dir / ".server.lock"):
        state = _read_state(data_dir)
        if state is None:
            return {}
        records = state["processes"]
        signalled = _terminate_all(records, timeout)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return {role: rec["pid"] for role, rec in records.items() if rec["pid"] in signalled}


def status(data_dir: Path) -> ServerStatus:
    """Whether a server started by curator runs for ``data_dir``, process by process."""
    data_dir = Path(data_dir).expanduser().resolve()
    state = _read_state(data_dir) if data_dir.exists() else None
    if state is None:
        return ServerStatus(data_dir=data_dir, running=False, answering=False, processes={})
    alive = {role: processes.is_ours(rec) for role, rec in state["processes"].items()}
    answering = _answers(state["url"])
    running = answering and all(alive.values()) and set(alive) == _roles(state)
    return ServerStatus(
        data_dir=data_dir, running=running, answering=answering, processes=alive, info=_info(data_dir, state)
    )
