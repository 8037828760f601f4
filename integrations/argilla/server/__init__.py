"""A local argilla-server 2.8.0 for development and demos: no Docker, no Elasticsearch.

``serve``/``stop``/``status`` manage it from curator's environment; the server itself runs in its own
virtualenv (``ensure_server_env``) with SQLite (one person) or a local PostgreSQL (a team; ``postgres.py``,
``database.py``), Redis from the system, and curator's SQLite search engine (``search_engine.py``, loaded
only inside the server's environment by ``launcher.py``).
"""

from .env import ArgillaServerError, ensure_server_env, server_env_root
from .manage import DEFAULT_API_KEY, ServerInfo, ServerStatus, serve, status, stop

__all__ = [
    "ArgillaServerError",
    "DEFAULT_API_KEY",
    "ServerInfo",
    "ServerStatus",
    "ensure_server_env",
    "serve",
    "server_env_root",
    "status",
    "stop",
]
