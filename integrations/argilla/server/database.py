"""Which database a local argilla-server uses, remembered per data directory.

Three kinds:

- ``sqlite`` (the default, for one person): ``DATA_DIR/argilla.db``, in WAL mode with a 30 s busy
  timeout, as robust as SQLite gets;
- ``postgresql``: a local PostgreSQL cluster in ``DATA_DIR/postgres``, started and stopped with the
  server (``postgres.py``), for a team;
- ``external``: an existing PostgreSQL given by ``--database-url`` (nothing is started for it).

The choice is written to ``DATA_DIR/database.json`` (the URL without its password), which outlives
``stop``: a later ``serve`` on the directory takes the same kind without being told, and is refused
when told another, since the search index in ``search.db`` belongs to that database's records.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from curator.errors import InputError

CHOICE_FILE = "database.json"
KINDS = ("sqlite", "postgresql")
SQLITE_TIMEOUT_S = 30  # argilla-server's own default is 5 s
_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg2")


@dataclasses.dataclass(frozen=True)
class Database:
    """The resolved choice: ``kind``, and for ``external`` the URL to use (with its secret, never stored)."""

    kind: str
    url: Optional[str] = dataclasses.field(default=None, repr=False)

    @property
    def shown(self) -> str:
        """What ``status`` and messages may show: the kind, and for ``external`` the URL without a password."""
        return f"PostgreSQL at {redact(self.url)}" if self.kind == "external" and self.url else self.kind


def asyncpg_url(url: str) -> str:
    """``url`` with the scheme argilla-server needs (``postgresql+asyncpg``); bad input → InputError."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.hostname or not parts.path.strip("/"):
        raise InputError(
            f"--database-url {redact(url)!r} is not a PostgreSQL URL: use postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def redact(url: str) -> str:
    """``url`` without its password (and in the plain ``postgresql://`` form)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if _port(parts) else "")
    return urlunsplit(("postgresql", netloc, parts.path, "", ""))


def _port(parts) -> Optional[int]:  # type: ignore[no-untyped-def]
    try:
        return parts.port
    except ValueError:
        return None


def _recorded(data_dir: Path) -> Optional[dict]:
    path = data_dir / CHOICE_FILE
    if path.exists():
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{path} is unreadable ({exc}): delete it, then serve with the --database the directory holds") from None
    if (data_dir / "postgres" / "PG_VERSION").exists():  # a cluster whose first start did not finish
        return {"kind": "postgresql"}
    if (data_dir / "argilla.db").exists():  # made before the choice was recorded
        return {"kind": "sqlite"}
    return None


def resolve(data_dir: Path, database: Optional[str], database_url: Optional[str]) -> Database:
    """The database for ``data_dir``: the one asked for, else the one it used, else SQLite.

    Refuses (exit 2) an unknown kind, ``--database sqlite`` with a URL, a malformed URL, and a kind
    or an external database other than the one the directory already holds.
    """
    if database is not None and database not in KINDS:
        raise InputError(f"--database {database!r} is not one of {', '.join(KINDS)}")
    if database_url is not None and database == "sqlite":
        raise InputError("--database-url names a PostgreSQL database: leave out --database sqlite, or the URL")
    wanted = Database("external", asyncpg_url(database_url)) if database_url else (Database(database) if database else None)
    recorded = _recorded(data_dir)
    if recorded is None:
        return wanted or Database("sqlite")
    kind = recorded.get("kind")
    if wanted is None:
        if kind == "external":
            raise InputError(
                f"{data_dir} was served with an existing PostgreSQL ({recorded.get('url')}): pass --database-url again"
            )
        return Database(kind if kind in KINDS else "sqlite")
    if wanted.kind != kind:
        held = f"an existing PostgreSQL ({recorded.get('url')}); pass that --database-url" if kind == "external" else f"a {kind} database; pass --database {kind}"
        raise InputError(f"{data_dir} holds {held}, or use another --data-dir (its search index belongs to that database)")
    if kind == "external" and redact(wanted.url or "") != recorded.get("url"):
        raise InputError(
            f"{data_dir} was served with the PostgreSQL {recorded.get('url')}, not {redact(wanted.url or '')}: "
            "pass that URL, or use another --data-dir (its search index belongs to that database)"
        )
    return wanted


def remember(data_dir: Path, db: Database) -> None:
    """Write the choice (no password) for the next ``serve`` on ``data_dir``."""
    body = {"kind": db.kind, **({"url": redact(db.url)} if db.kind == "external" and db.url else {})}
    path = data_dir / CHOICE_FILE
    tmp = path.with_name(f".{CHOICE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2))
    os.replace(tmp, path)
