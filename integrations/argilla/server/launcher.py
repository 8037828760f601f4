"""Start argilla-server's app or rq worker with curator's search engine registered.

Run with the server virtualenv's python, never imported by curator::

    python launcher.py app --host 127.0.0.1 --port 6900
    python launcher.py worker
    python launcher.py prepare     # database migrate + users create_default, in one interpreter

argilla-server has no plug-in entry point for search engines, so the engine module must be imported in
the very process that serves requests or runs jobs; this script does that, then hands over to uvicorn
(``argilla_server:app``) or to an rq worker on the server's queues (what ``python -m argilla_server
worker`` does, with one worker instead of a pool, and with rq's scheduler for delayed webhook retries).
The configuration comes from the environment (``ARGILLA_*`` and ``CURATOR_SEARCH_DB``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def _register_engine() -> None:
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import search_engine  # noqa: F401  (registers "curator-sqlite" with argilla-server)


def _prepare() -> None:
    """``database migrate`` then ``database users create_default`` (a no-op when the user exists), in one process."""
    from argilla_server.cli.database.migrate import migrate_db
    from argilla_server.cli.database.users.create_default import create_default
    from argilla_server.constants import DEFAULT_API_KEY, DEFAULT_PASSWORD

    migrate_db(revision="head")
    create_default(api_key=DEFAULT_API_KEY, password=DEFAULT_PASSWORD, quiet=True)


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

        uvicorn.run("argilla_server:app", host=args.host, port=args.port)
    else:
        from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
        from rq import Worker

        Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION).work(with_scheduler=True)


if __name__ == "__main__":
    main()
