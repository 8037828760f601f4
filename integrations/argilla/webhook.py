"""The listener's web side: the webhook endpoint that counts events, and the re-ranker thread beside it."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from curator.integrations.argilla.client import with_retry
from curator.integrations.argilla.listen import EVENTS, Listener


def rerank_loop(listener: Listener, stop: threading.Event) -> None:
    """Flush the listener's queue whenever something is queued, until ``stop``; a flush whose
    writes failed (logged, kept queued) is tried again after the retry policy's back-off."""
    failures = 0
    while True:
        listener.wake.wait(timeout=1.0)
        if stop.is_set() and listener.pending() == 0:
            return
        listener.wake.clear()
        try:
            listener.flush()
            failures = 0
        except Exception:  # noqa: BLE001  (logged by flush; the writes stay queued)
            failures += 1
            if stop.wait(max(0.5, min(listener.retry.max_delay, listener.retry.base_delay * 2 ** failures))):
                return
            listener.wake.set()


def build_app(listener: Listener, public_url: str, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> Any:
    """A FastAPI app with the webhook registered on the server for ``public_url``, and the re-ranker
    (``rerank_loop``) running on a thread for the app's lifetime.

    The endpoint counts the event (``Listener.accept``) and answers 500 only when that failed (after
    the listener's retries), so the server's redelivery is the fallback; ``on_event(type, data)`` is
    called after each counted event.
    """
    import contextlib
    import warnings

    import argilla as rg
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    url = public_url.rstrip("/")
    os.environ["WEBHOOK_SERVER_URL"] = url

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        stop = threading.Event()
        worker = threading.Thread(target=rerank_loop, args=(listener, stop), name="curator-rerank", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            listener.wake.set()
            await run_in_threadpool(worker.join, 30.0)

    app = FastAPI(lifespan=lifespan)

    async def curator_listen(event: Any) -> Any:
        kind = str(getattr(event.type, "value", event.type))
        try:
            await run_in_threadpool(listener.accept, event.data, kind, event.timestamp)
        except Exception as exc:  # logged for the operator; the 500 makes the server redeliver later
            listener.log_failure(kind, event.data, exc)
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"[:500]}, status_code=500)
        if on_event is not None:
            on_event(kind, event.data)
        return None

    def register() -> None:
        for hook in list(listener.client.webhooks):  # this URL's webhook from an older listener (other events): it would fail our signature check
            if hook.url == f"{url}/{curator_listen.__name__}" and [str(getattr(e, "value", e)) for e in hook.events] != EVENTS:
                hook.delete()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Found existing webhook": reusing it is intended
            rg.webhook_listener(events=EVENTS, client=listener.client, server=app, raw_event=True)(curator_listen)

    with_retry(register, listener.client, "registering the webhook (this needs an owner's API key)", policy=listener.retry)
    return app


def serve_listener(listener: Listener, host: str = "127.0.0.1", port: int = 8000, public_url: str | None = None) -> None:
    """Run the listener in the foreground until interrupted; the server posts events to ``public_url``."""
    import uvicorn

    url = public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    uvicorn.run(build_app(listener, url), host=host, port=port, log_level="warning")
