"""The ``openai`` backend: any OpenAI-compatible chat-completions server.

vLLM, TGI, llama.cpp's server, Ollama and ``transformers serve`` all answer
``POST {base}/chat/completions``. This client:

- keeps at most ``concurrency`` requests in flight (a daemon thread per slot, one pooled HTTP
  client), so an interrupted run stops at once rather than waiting for the requests in flight;
- sets a connect timeout and a read timeout per request;
- retries connection errors, timeouts, 408 and 5xx answers with exponential backoff and jitter,
  and a 429 after the delay its ``Retry-After`` header asks for (seconds or an HTTP date);
- stops at the first answer that retrying cannot fix (400, 401, 404, ...), quoting the server's
  own detail;
- reads the API key from an environment variable and sends it only in the ``Authorization``
  header: it is never part of an error message, a log line or a file (it is redacted from the
  server's replies too).
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from curator.config import ProgressFn, is_int, is_number, no_progress
from curator.errors import CuratorRuntimeError, InputError
from curator.io.data import Message

log = logging.getLogger("curator")
RETRY_STATUS = {408, 409, 425}  # besides 429 and every 5xx
REQUEST_FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "seed", "n", "stream"}
MAX_RETRY_AFTER = 300.0  # a Retry-After longer than this is cut to it
BACKOFF_BASE = 0.5
BACKOFF_MAX = 20.0


def normalise_url(url: str | None) -> str:
    """``--base-url`` as the API root: http(s), a host, no trailing slash; a bare host gets ``/v1``
    (what vLLM, TGI, Ollama and ``transformers serve`` serve under)."""
    if not url or not isinstance(url, str):
        raise InputError("the openai backend needs --base-url, e.g. http://localhost:8000/v1")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--base-url {url!r} is not an http(s) URL with a host: write it like http://localhost:8000/v1")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise InputError(f"--base-url {url!r} has an invalid port: write it like http://localhost:8000/v1") from None
    if parts.query or parts.fragment:
        raise InputError(f"--base-url {url!r} carries a query or fragment: give the API root only, like http://localhost:8000/v1")
    path = parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        path = path[: -len("/chat/completions")]
    return f"{parts.scheme}://{parts.netloc}{path or '/v1'}"


@dataclass(frozen=True)
class RemoteConfig:
    """How to reach one OpenAI-compatible server (``--base-url``, ``--model``, ``--api-key-env``, ...)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 120.0
    connect_timeout: float = 10.0
    retries: int = 6
    extra_body: tuple[tuple[str, Any], ...] = ()  # fields merged into every request (--extra-body)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", normalise_url(self.base_url))
        if isinstance(self.extra_body, dict):
            object.__setattr__(self, "extra_body", tuple(sorted(self.extra_body.items())))
        clash = sorted({k for k, _ in self.extra_body} & REQUEST_FIELDS)
        if clash:
            raise InputError(f"--extra-body sets {clash[0]!r}, which curator sets itself: use its own option (--model, --temperature, --top-p, --max-new-tokens, --seed) instead")
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError("the openai backend needs --model: the model name the server serves (see its /v1/models)")
        if not is_int(self.concurrency) or self.concurrency < 1:
            raise InputError(f"--concurrency {self.concurrency!r} is invalid: use an integer >= 1 (requests in flight)")
        if not is_number(self.timeout) or self.timeout <= 0:
            raise InputError(f"--timeout {self.timeout!r} is invalid: use a number of seconds > 0")
        if not is_int(self.retries) or self.retries < 0:
            raise InputError(f"--retries {self.retries!r} is invalid: use an integer >= 0")
        if not isinstance(self.api_key_env, str) or not self.api_key_env:
            raise InputError("--api-key-env is empty: name the environment variable that holds the key (default OPENAI_API_KEY)")


@dataclass
class RemoteStats:
    """What one run of requests did: ``sent`` counts every attempt, ``retries`` the repeated ones."""

    sent: int = 0
    completed: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    truncated: int = 0  # finish_reason "length": the answer hit --max-new-tokens
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("sent", "completed", "retries", "rate_limited", "server_errors", "connection_errors", "truncated", "seconds")}


class _Refused(Exception):
    """An answer that retrying cannot fix."""


class _Stopped(Exception):
    """The run is stopping; the request was not completed."""


def request_seed(seed: int, key: str) -> int:
    """The ``seed`` sent with one request: fixed by the run seed and the request, 31 bits (every server takes it)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little") & 0x7FFF_FFFF


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)


class RemoteBackend:
    """Chat completions from one OpenAI-compatible server, with bounded concurrency and retries."""

    backend = "openai"

    def __init__(self, config: RemoteConfig) -> None:
        import httpx

        self.config = config
        self.model = config.model
        self._key = os.environ.get(config.api_key_env) or None
        headers = {"Accept": "application/json", "User-Agent": "curator-generate"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        timeout = httpx.Timeout(config.timeout, connect=config.connect_timeout)
        self._client = httpx.Client(headers=headers, timeout=timeout, limits=limits)

    def close(self) -> None:
        self._client.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _detail(self, response: Any) -> str:
        try:
            body = response.json()
            detail = body.get("error", body) if isinstance(body, dict) else body
            if isinstance(detail, dict):
                detail = detail.get("message") or detail.get("detail") or detail
            text = str(detail)
        except ValueError:
            text = response.text
        return self._redact(" ".join(text.split()))[:300] or "(no detail)"

    def check(self) -> None:
        """Reach the server once (``GET /models``) before any row is generated: a wrong URL, a server
        that is not running, or a refused key is one line and exit 2, with nothing written."""
        import httpx

        url = f"{self.config.base_url}/models"
        problem = ""
        for attempt in range(3):
            try:
                r = self._client.get(url, timeout=min(self.config.timeout, 30.0))
            except httpx.TransportError as exc:
                problem = type(exc).__name__
                time.sleep(0.5 * (attempt + 1))
                continue
            if r.status_code in (401, 403):
                raise InputError(f"{self.config.base_url}: the server refused the API key (HTTP {r.status_code}: {self._detail(r)}): set ${self.config.api_key_env} to a valid key, or name another variable with --api-key-env")
            if r.status_code >= 500:
                problem = f"HTTP {r.status_code}"
                time.sleep(0.5 * (attempt + 1))
                continue
            return  # 200, or a server without /models (404): the first request will tell
        raise InputError(f"{self.config.base_url}: cannot reach an OpenAI-compatible server there ({problem}): start the server, or fix --base-url")

    def _post(self, body: dict[str, Any], stats: RemoteStats, stop: threading.Event) -> tuple[str, str | None]:
        import httpx

        url = f"{self.config.base_url}/chat/completions"
        attempt = 0
        while True:
            if stop.is_set():
                raise _Stopped()
            delay: float | None = None
            stats.add(sent=1)
            try:
                r = self._client.post(url, json=body)
            except httpx.TransportError as exc:
                stats.add(connection_errors=1)
                problem = f"{type(exc).__name__}"
            else:
                if r.status_code == 200:
                    return self._parse(r)
                problem = f"HTTP {r.status_code}: {self._detail(r)}"
                if r.status_code == 429:
                    stats.add(rate_limited=1)
                    delay = retry_after(r.headers.get("retry-after"))
                elif r.status_code >= 500:
                    stats.add(server_errors=1)
                elif r.status_code not in RETRY_STATUS:
                    raise _Refused(problem)
            attempt += 1
            if attempt > self.config.retries:
                raise CuratorRuntimeError(f"{self.config.base_url}: a request failed {attempt} times (last: {problem}): check the server, then rerun the same command to continue (finished rows are kept); --retries sets the number of retries")
            stats.add(retries=1)
            if delay is None:
                delay = min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_MAX) * (0.5 + random.random() / 2)
            if stop.wait(delay):
                raise _Stopped()

    def _parse(self, r: Any) -> tuple[str, str | None]:
        try:
            choice = r.json()["choices"][0]
            content = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _Refused(f"HTTP 200 without choices[0].message: {self._detail(r)}") from None
        return str(content), choice.get("finish_reason")

    def run(
        self,
        requests: dict[str, list[Message]],
        sampling: dict[str, Any],
        seed: int,
        on_result: Callable[[str, str, str | None], None],
        progress: ProgressFn = no_progress,
        stage: str = "requests",
    ) -> RemoteStats:
        """Send every request; ``on_result(key, text, finish_reason)`` runs on this thread as each
        answer arrives (so the caller writes rows without locks). Raises on the first request that
        fails for good, after the requests already in flight have finished and been handed over."""
        stats = RemoteStats()
        start = time.perf_counter()
        stop = threading.Event()
        keys = list(requests)
        total = len(keys)
        progress(stage, 0, total)
        window = 2 * self.config.concurrency  # futures queued ahead: memory stays bounded
        error: BaseException | None = None
        done = 0
        todo: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        answers: queue.Queue[tuple[str, tuple[str, str | None] | None, BaseException | None]] = queue.Queue()

        def worker() -> None:
            while (item := todo.get()) is not None:
                key, body = item
                try:
                    answers.put((key, self._post(body, stats, stop), None))
                except BaseException as exc:  # noqa: BLE001 (handed to the main thread)
                    answers.put((key, None, exc))

        # daemon threads: an interrupted run exits at once instead of waiting up to --timeout for
        # the requests in flight (their rows were never written, so a rerun makes them)
        workers = [threading.Thread(target=worker, name=f"curator-http-{i}", daemon=True) for i in range(self.config.concurrency)]
        for t in workers:
            t.start()
        in_flight = 0
        it = iter(keys)
        try:
            while True:
                while error is None and in_flight < window:
                    key = next(it, None)
                    if key is None:
                        break
                    body = {"model": self.config.model, "messages": requests[key], "temperature": sampling["temperature"], "top_p": sampling["top_p"], "max_tokens": sampling["max_new_tokens"], "seed": request_seed(seed, key), "n": 1, "stream": False, **dict(self.config.extra_body)}
                    todo.put((key, body))
                    in_flight += 1
                if not in_flight:
                    break
                key, answer, exc = answers.get()
                in_flight -= 1
                if isinstance(exc, _Stopped):
                    continue
                if isinstance(exc, _Refused):
                    if str(exc).startswith(("HTTP 401", "HTTP 403")):
                        refused = InputError(f"{self.config.base_url}: the server refused the API key ({exc}): set ${self.config.api_key_env} to a valid key, or name another variable with --api-key-env")
                    else:
                        refused = InputError(f"{self.config.base_url}: the server refused a request for model {self.config.model!r} ({exc}): fix --model or the request settings, then rerun")
                    error = error or refused
                    stop.set()
                    continue
                if exc is not None:
                    error = error or exc
                    stop.set()
                    continue
                text, finish = answer  # type: ignore[misc]
                stats.add(completed=1, truncated=int(finish == "length"))
                on_result(key, text, finish)
                done += 1
                progress(stage, done, total)
        except BaseException:
            stop.set()
            raise
        finally:
            for _ in workers:
                todo.put(None)
        stats.seconds = time.perf_counter() - start
        if error is not None:
            raise error
        return stats
