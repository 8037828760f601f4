"""A real `transformers serve` for the generate tests, and a fault proxy to put in front of it.

The proxy forwards to the real server, but on the requests it is told to it drops the
connection, answers 500 or 429 with ``Retry-After``, stalls past the client's timeout, answers
only after dropping the server's reply, or blanks the answer. It records every chat request it
saw, so a test can check the retries, and when they came.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(folder: Path, log: Path, port: int | None = None, timeout: float = 180.0, extra: list[str] | tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """``transformers serve`` on 127.0.0.1 with the model folder, offline; returns (process, API root).
    ``extra``: more options, e.g. ``--continuous-batching``."""
    port = port or free_port()
    exe = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("ab") as fh:  # a file, not a pipe: a full pipe would block the server
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), *extra, str(folder)], stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_serve(proc)
    raise RuntimeError(f"transformers serve did not answer /health in {timeout:.0f}s: {log.read_text(errors='replace')[-2000:]}")


def stop_serve(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop the server and its children (it runs in its own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@dataclass
class Seen:
    """One chat request the proxy received: when, its body, and the fault it got (or None)."""

    at: float
    body: dict[str, Any]
    fault: str | None


@dataclass
class FaultProxy:
    """``plan`` maps the 1-based arrival number of a chat request to a fault; ``blank`` blanks the
    answer to requests whose last message has that content."""

    upstream: str
    plan: dict[int, str] = field(default_factory=dict)
    blank: str | None = None
    retry_after: float = 2.0
    stall_seconds: float = 8.0
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def do_GET(self) -> None:  # noqa: N802
                r = httpx.get(proxy.upstream + self.path, timeout=30)
                self._reply(r.status_code, r.content)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                with proxy.lock:
                    n = sum(1 for s in proxy.seen) + 1
                    fault = proxy.plan.get(n)
                    if fault is None and proxy.blank is not None and body["messages"][-1]["content"] == proxy.blank:
                        fault = "blank"
                    proxy.seen.append(Seen(time.monotonic(), body, fault))
                if fault == "drop":
                    return self._drop()
                if fault == "500":
                    return self._reply(500, b'{"error": {"message": "injected server error"}}')
                if fault == "429":
                    return self._reply(429, b'{"error": {"message": "slow down"}}', {"Retry-After": f"{proxy.retry_after:g}"})
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                    return self._drop()
                r = httpx.post(proxy.upstream + self.path, content=raw, headers={"Content-Type": "application/json"}, timeout=120)
                if fault == "drop-after":  # the server did the work; its answer is lost on the way
                    return self._drop()
                content = r.content
                if fault == "blank" and r.status_code == 200:
                    answer = r.json()
                    answer["choices"][0]["message"]["content"] = ""
                    content = json.dumps(answer).encode()
                self._reply(r.status_code, content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        prefix = "/v1" if self.upstream.endswith("/v1") else ""
        self.upstream = self.upstream[: -len(prefix)] if prefix else self.upstream
        return f"http://127.0.0.1:{self.server.server_port}{prefix}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def faults(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.seen:
            if s.fault:
                out[s.fault] = out.get(s.fault, 0) + 1
        return out

    def retries_after(self, fault: str) -> list[float]:
        """For each request that got ``fault``: seconds until the same body came again."""
        gaps = []
        for i, s in enumerate(self.seen):
            if s.fault == fault:
                later = [t.at for t in self.seen[i + 1 :] if t.body == s.body]
                gaps.append(later[0] - s.at if later else float("inf"))
        return gaps


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
