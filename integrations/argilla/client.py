"""Connect to an Argilla server (any 2.x) and turn its failures into curator errors.

The API key is never put into a message: errors name the URL only, and any text that came back
from the server or the HTTP stack is scrubbed of the key before it is shown.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, TypeVar

import httpx

from curator.errors import CuratorRuntimeError, InputError

T = TypeVar("T")
DEFAULT_API_URL = "http://localhost:6900"
log = logging.getLogger(__name__)


class ArgillaError(CuratorRuntimeError):
    """The Argilla server could not be reached or refused a request (exit code 1)."""


class ArgillaAuthError(ArgillaError):
    """The server refused the API key, or the user may not act in the workspace."""


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _api_key(client: Any) -> str | None:
    return getattr(client, "api_key", None)


def _api_url(client: Any) -> str:
    return str(getattr(client, "api_url", "") or "the Argilla server")


def auth_error(url: str, action: str = "") -> ArgillaAuthError:
    what = f" while {action}" if action else ""
    return ArgillaAuthError(
        f"Argilla at {url} refused the request{what}: the API key or the workspace permission is wrong "
        "(check --api-key / ARGILLA_API_KEY and that the user belongs to the workspace)"
    )


def unreachable(url: str, exc: BaseException | None = None) -> ArgillaError:
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return ArgillaError(f"cannot reach the Argilla server at {url}{why}: start it (curator argilla serve) or fix --api-url / ARGILLA_API_URL")


def connect(api_url: str | None = None, api_key: str | None = None, timeout: int = 60, retries: int = 2) -> Any:
    """An ``argilla.Argilla`` client for ``api_url``/``api_key`` (default: ``ARGILLA_API_URL``/``ARGILLA_API_KEY``).

    Raises ``ArgillaError`` (exit 1) naming the URL when the server is unreachable, and
    ``ArgillaAuthError`` when it refuses the key.
    """
    import argilla as rg
    from argilla._exceptions import ArgillaAPIError, ArgillaCredentialsError

    url = (api_url or os.environ.get("ARGILLA_API_URL") or DEFAULT_API_URL).rstrip("/")
    key = api_key or os.environ.get("ARGILLA_API_KEY")
    if not key:
        raise InputError(f"no Argilla API key for {url}: pass --api-key or set ARGILLA_API_KEY (`curator argilla serve` prints the local one)")
    try:
        return rg.Argilla(api_url=url, api_key=key, timeout=timeout, retries=retries)
    except ArgillaCredentialsError:
        raise auth_error(url, "logging in") from None
    except ArgillaAPIError as exc:
        if _is_auth(exc):
            raise auth_error(url, "logging in") from None
        raise ArgillaError(f"Argilla at {url} answered with an error while logging in: {_scrub(str(exc), key)[:300]}") from None
    except (httpx.TransportError, OSError) as exc:
        raise unreachable(url, exc) from None


def is_transient(exc: BaseException) -> bool:
    """Connection failures, timeouts and 5xx answers: worth retrying."""
    from argilla._exceptions import ArgillaAPIError

    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return True
    if _is_auth(exc):
        return False
    if isinstance(exc, ArgillaAPIError):
        return getattr(exc, "status_code", 0) >= 500
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def _is_auth(exc: BaseException) -> bool:
    """401/403, by class (the SDK re-raises some ForbiddenErrors with the default status 500) or by status."""
    from argilla._exceptions import ArgillaAPIError, ArgillaCredentialsError, ForbiddenError, UnauthorizedError

    if isinstance(exc, (ForbiddenError, UnauthorizedError, ArgillaCredentialsError)):
        return True
    if isinstance(exc, ArgillaAPIError) and getattr(exc, "status_code", None) in (401, 403):
        return True
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and _is_auth(cause)


def translate(exc: BaseException, client: Any, action: str) -> BaseException:
    """A curator error for an SDK/HTTP failure (auth → ArgillaAuthError, network → ArgillaError)."""
    url, key = _api_url(client), _api_key(client)
    if _is_auth(exc):
        return auth_error(url, action)
    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return unreachable(url, exc)
    return ArgillaError(f"Argilla at {url} failed while {action}: {type(exc).__name__}: {_scrub(str(exc), key)[:500]}")


def with_retry(
    fn: Callable[[], T],
    client: Any = None,
    action: str = "talking to the server",
    attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on a transient failure retry with exponential backoff (base·2^k, capped), then raise.

    Non-transient failures are translated at once (auth → ArgillaAuthError). After the last
    attempt the error says how many were made and that a rerun is safe (pushes are upserts).
    """
    from argilla._exceptions import ArgillaError as SDKError

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (httpx.HTTPError, SDKError, ConnectionError) as exc:
            if not is_transient(exc):
                raise translate(exc, client, action) from None
            if attempt == attempts:
                err = translate(exc, client, action)
                raise type(err)(f"{err} (gave up after {attempts} attempts; rerunning is safe: records already sent are updated, not duplicated)") from None
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            log.info("%s failed (%s), retry %d/%d in %.1fs", action, type(exc).__name__, attempt, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
