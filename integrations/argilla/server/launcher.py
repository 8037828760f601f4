"""Start argilla-server's app or rq worker with curator's search engine registered.

Run with the server virtualenv's python, never imported by curator::

    python launcher.py app --host 127.0.0.1 --port 6900
    python launcher.py worker
    python launcher.py prepare     # create the database if missing, migrate it, create the default user

argilla-server has no plug-in entry point for search engines, so the engine module must be imported in
the very process that serves requests or runs jobs; this script does that, then hands over to uvicorn
(``argilla_server:app``) or to rq workers on the server's queues (what ``python -m argilla_server
worker`` does, with rq's scheduler for delayed webhook retries).
The configuration comes from the environment (``ARGILLA_*``, ``CURATOR_SEARCH_DB`` and
``CURATOR_DATABASE_SHOWN``, the database in words for messages).

Four changes to the stock server, for a team on one server:

- ``prepare`` puts a SQLite database in WAL mode (persistent in the file: readers no longer block the
  writer).
- An annotator's queue fetch no longer writes. argilla-server 2.8.0 filters the metadata an annotator
  may see by assigning the filtered dict to the ORM record, which the next query autoflushes as an
  ``UPDATE records SET metadata`` (rolled back at the end of the request). On SQLite that takes the
  database's write lock; on PostgreSQL it takes row locks in page order, and 20 annotators fetching
  at once deadlocked (``deadlock detected``, answered 500). The filtered dict is now also set as the
  record's loaded state, so the assignment changes nothing and no UPDATE is sent.
- The app answers a request that failed because its database is down with 503 and a detail naming
  the database, instead of a bare 500, so that clients (curator's push and pull show the server's
  detail) can say what to restart.
- Background jobs (webhook deliveries, record status) run in ``CURATOR_ARGILLA_WORKERS`` worker
  processes (default 2) that do not fork per job. rq's stock worker forks a child for every job, which
  cost about 0.3 s each here, so webhooks reached ``curator argilla listen`` at about 3 a second, fewer
  than 20 annotators submit: its lag grew with the load. Each worker runs every job's coroutine on one
  event loop of its own (rq 1.16 makes a new loop per job and never closes it), so the database
  engine's pooled connections stay on the loop they were made on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, List, Optional


def _register_engine() -> None:
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import search_engine  # noqa: F401  (registers "curator-sqlite" with argilla-server)


def _shown() -> str:
    return os.environ.get("CURATOR_DATABASE_SHOWN") or "the database"


async def _create_database(url: str) -> None:
    """Create the URL's PostgreSQL database when it does not exist yet (a fresh local cluster has none)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    where = dict(host=u.host, port=u.port or 5432, user=u.username, password=u.password)
    try:
        conn = await asyncpg.connect(database=u.database, **where)
    except asyncpg.InvalidCatalogNameError:
        conn = await asyncpg.connect(database="postgres", **where)
        try:
            await conn.execute(f'CREATE DATABASE "{u.database}"')
        finally:
            await conn.close()
    else:
        await conn.close()


def _sqlite_wal(url: str) -> None:
    """WAL mode for argilla.db: kept in the file, so set once; readers then never block the writer."""
    from sqlalchemy.engine import make_url

    with contextlib.closing(sqlite3.connect(str(make_url(url).database), timeout=30)) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise RuntimeError(f"SQLite kept journal mode {mode!r} instead of WAL")


def _prepare() -> None:
    """Create the database if missing, ``database migrate``, ``database users create_default`` (a no-op when
    the user exists), in one process; a failure ends with one ``error:`` line that ``serve`` quotes."""
    url = os.environ.get("ARGILLA_DATABASE_URL", "")
    try:
        if url.startswith("postgresql"):
            asyncio.run(_create_database(url))
        from argilla_server.cli.database.migrate import migrate_db
        from argilla_server.cli.database.users.create_default import create_default
        from argilla_server.constants import DEFAULT_API_KEY, DEFAULT_PASSWORD

        migrate_db(revision="head")
        create_default(api_key=DEFAULT_API_KEY, password=DEFAULT_PASSWORD, quiet=True)
        if url.startswith("sqlite"):
            _sqlite_wal(url)
    except Exception as exc:  # noqa: BLE001 - the traceback is in the log above; serve shows this line
        import traceback

        traceback.print_exc()
        sys.stderr.write(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:240]}\n")
        sys.exit(1)


def _queue_fetch_without_writes() -> None:
    """Make the metadata filter of annotators' record fetches leave the session clean (see the module doc)."""
    from argilla_server.api.handlers.v1.datasets import records as handlers
    from sqlalchemy.orm.attributes import set_committed_value

    upstream = handlers._filter_record_metadata_for_user

    async def filtered_without_update(record: Any, user: Any) -> Any:
        metadata = await upstream(record, user)
        set_committed_value(record, "metadata_", metadata)  # the handler's assignment of it is then no change
        return metadata

    handlers._filter_record_metadata_for_user = filtered_without_update


def _database_down_answers(api: Any) -> None:
    """Answer 503 naming the database when a request failed and the database does not answer a probe;
    every other failure keeps argilla-server's own answer."""
    from argilla_server.database import async_engine
    from argilla_server.errors.error_handler import APIErrorHandler
    from fastapi.responses import JSONResponse
    from sqlalchemy import text

    async def probe() -> Optional[BaseException]:
        try:
            async with async_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure to reach it is the answer
            return exc
        return None

    async def handler(request: Any, exc: Exception) -> Any:
        try:
            down = await asyncio.wait_for(probe(), timeout=5.0)
        except asyncio.TimeoutError as timeout:
            down = timeout
        if down is None:
            return await APIErrorHandler.common_exception_handler(request, exc)
        why = " ".join(f"{type(down).__name__}: {down}".split())[:200]
        detail = f"its database ({_shown()}) is not answering ({why}): restart it (curator argilla serve), then retry"
        return JSONResponse(status_code=503, content={"detail": detail})

    api.add_exception_handler(Exception, handler)


WORKERS_ENV = "CURATOR_ARGILLA_WORKERS"
DEFAULT_WORKERS = 2


def _loop_job_class() -> Any:
    """rq's Job, with every coroutine job of this process run on one event loop, kept for the process."""
    from rq.job import Job

    class LoopJob(Job):
        loop: Optional[asyncio.AbstractEventLoop] = None

        def _execute(self) -> Any:
            result = self.func(*self.args, **self.kwargs)
            if not asyncio.iscoroutine(result):
                return result
            if LoopJob.loop is None:
                LoopJob.loop = asyncio.new_event_loop()
            return LoopJob.loop.run_until_complete(result)

    return LoopJob


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    app = roles.add_parser("app", help="serve the API and the web UI")
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, required=True)
    roles.add_parser("worker", help="run background jobs (webhook delivery, record status)")
    roles.add_parser("prepare", help="migrate the database and create the default user")
    args = parser.parse_args(argv)

    if args.role == "prepare":
        _prepare()
        return
    _register_engine()
    if args.role == "app":
        import uvicorn
        from argilla_server import app as server_app
        from argilla_server.api.routes import api_v1

        _queue_fetch_without_writes()
        _database_down_answers(api_v1)
        uvicorn.run(server_app, host=args.host, port=args.port)
    else:
        from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
        from rq import SimpleWorker

        workers = int(os.environ.get(WORKERS_ENV) or DEFAULT_WORKERS)
        job_class = _loop_job_class()
        if workers <= 1:
            SimpleWorker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION, job_class=job_class).work(with_scheduler=True)
        else:
            from rq.worker_pool import WorkerPool

            WorkerPool([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION, num_workers=workers, worker_class=SimpleWorker, job_class=job_class).start()


if __name__ == "__main__":
    main()
