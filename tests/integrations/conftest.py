"""A real local argilla-server for the integration tests: one per test session, stopped by pid at the end.

Tests here are marked ``argilla``; deselect them with ``-m "not argilla"``. They need ``redis-server``
on PATH (``make``/``.ci/run`` install it) and build the server's virtualenv on first use (about a
minute, cached under ``$CURATOR_CACHE``).
"""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from curator.integrations.argilla.server import ServerInfo, serve, stop


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """Redis, argilla-server and its worker on free ports, with data in a temporary directory."""
    data_dir = tmp_path_factory.mktemp("argilla-data")
    info = serve(data_dir)
    try:
        yield info
    finally:
        stop(data_dir)  # whatever runs for the directory now, also after a test restarted it


@pytest.fixture
def argilla_client(argilla_server: ServerInfo):
    """The SDK client, logged in as the default owner (fresh per test: a restart drops connections)."""
    import argilla as rg

    return rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)


@pytest.fixture
def argilla_http(argilla_server: ServerInfo):
    """Raw HTTP clients on the server's API, as the UI talks to it: ``argilla_http(api_key=None)``
    (the owner's key by default)."""
    clients = []

    def make(api_key: str | None = None) -> httpx.Client:
        client = httpx.Client(
            base_url=argilla_server.url, headers={"X-Argilla-Api-Key": api_key or argilla_server.api_key}, timeout=30
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
