"""Connect to an Argilla server (any 2.x) and turn its failures into curator errors.

The API key is never put into a message: errors name the URL only, and any text that came back
from the server or the HTTP stack is scrubbed of the key before it is shown.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import httpx

from curator.errors import CuratorRuntimeError, InputError

T = TypeVar("T")
DEFAULT_API_URL = "http://localhost:6900"
RERUN_HINT = "rerunning is safe: rerun the same command once the server is back"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How a request that failed transiently (no connection, timeout, 5xx) is retried.

    ``attempts`` tries in all, waiting ``base_delay`` · 2^k seconds (capped at ``max_delay``)
    between them. Auth refusals and 4xx answers are never retried. Each attempt also includes the
    HTTP transport's own quick reconnects (``connect(retries=...)``).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise InputError(f"--retries {self.attempts} is invalid: use an integer >= 1 (attempts per request)")
        if not self.base_delay >= 0:
            raise InputError(f"--retry-delay {self.base_delay} is invalid: use a number of seconds >= 0")
        if not self.max_delay >= self.base_delay:
            raise InputError(f"max_delay={self.max_delay} is invalid: use a number >= the retry delay ({self.base_delay})")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1))


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


def auth_error(url: str, action: str = "", status: int | None = None) -> ArgillaAuthError:
    """The refusal message: 401 means the key is unknown, 403 that its user may not do this here."""
    what = f" while {action}" if action else ""
    why = {
        401: " (401: the server does not know this API key; check --api-key / ARGILLA_API_KEY)",
        403: " (403: the key's user may not do this; an annotator cannot create datasets, and a user outside "
        "the workspace cannot use it: ask an owner to add the user to the workspace or to grant a role)",
    }.get(status or 0, " (check --api-key / ARGILLA_API_KEY and that the user belongs to the workspace)")
    return ArgillaAuthError(f"Argilla at {url} refused the request{what}: the API key or the workspace permission is wrong{why}")


def unreachable(url: str, exc: BaseException | None = None, action: str = "") -> ArgillaError:
    what = f" while {action}" if action else ""
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return ArgillaError(f"cannot reach the Argilla server at {url}{what}{why}: start it (curator argilla serve) or fix --api-url / ARGILLA_API_URL")


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
        raise auth_error(url, "logging in", 401) from None
    except ArgillaAPIError as exc:
        if _is_auth(exc):
            raise auth_error(url, "logging in", _auth_status(exc)) from None
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
    if isinstance(exc, httpx.HTTPStatusError):  # raw API calls (raise_for_status): a 5xx is as transient as the SDK's
        return exc.response.status_code >= 500
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


def _auth_status(exc: BaseException | None) -> int | None:
    """401 or 403 for an auth refusal, by class first (the SDK may re-raise a ForbiddenError as 500)."""
    from argilla._exceptions import ArgillaAPIError, ArgillaCredentialsError, ForbiddenError, UnauthorizedError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ForbiddenError):
            return 403
        if isinstance(exc, (UnauthorizedError, ArgillaCredentialsError)):
            return 401
        code = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else getattr(exc, "status_code", None) if isinstance(exc, ArgillaAPIError) else None
        if code in (401, 403):
            return int(code)
        exc, seen = exc.__cause__, seen + 1
    return None


def server_detail(exc: BaseException | None) -> str | None:
    """The server's own answer behind an SDK error ("HTTP 422: <its detail>"), found along the
    exception's cause chain; None when no HTTP answer is there. The SDK's messages hide it: a
    settings error reads only "Argilla SDK error: SettingsError: Failed to create property ..."."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, httpx.HTTPStatusError):
            try:
                body = exc.response.json()
                detail = body.get("detail", body) if isinstance(body, dict) else body
            except ValueError:
                detail = exc.response.text
            if isinstance(detail, dict):
                detail = detail.get("message") or detail.get("error") or detail
            if isinstance(detail, list):  # FastAPI validation errors: [{loc, msg, ...}]
                detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}" if isinstance(d, dict) else str(d) for d in detail)
            return f"HTTP {exc.response.status_code}: {' '.join(str(detail).split())}"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def translate(exc: BaseException, client: Any, action: str) -> BaseException:
    """A curator error for an SDK/HTTP failure (auth → ArgillaAuthError, network → ArgillaError),
    with the server's own detail when it answered (its 422 message, say)."""
    url, key = _api_url(client), _api_key(client)
    if _is_auth(exc):
        return auth_error(url, action, _auth_status(exc))
    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return unreachable(url, exc, action)
    detail = server_detail(exc)
    text = " ".join(str(exc).split())
    body = detail.split(": ", 1)[-1] if detail else ""  # the detail without its "HTTP 503: " prefix
    said = ""
    if detail:  # the server's status always; its detail unless the SDK's text already holds it
        said = f"; the server said {_scrub(detail, key)[:400]}" if body[:80] not in text else f"; the server said {detail.split(':', 1)[0]}"
    return ArgillaError(f"Argilla at {url} failed while {action}: {type(exc).__name__}: {_scrub(str(exc), key)[:500]}{said}")


def with_retry(
    fn: Callable[[], T],
    client: Any = None,
    action: str = "talking to the server",
    attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
    *,
    policy: RetryPolicy | None = None,
    hint: str = RERUN_HINT,
) -> T:
    """Call ``fn``; on a transient failure retry with exponential backoff (base·2^k, capped), then raise.

    ``policy``, when given, replaces ``attempts``/``base_delay``/``max_delay``. Non-transient
    failures are translated at once (auth → ArgillaAuthError). After the last attempt the error
    names the URL and what was being done, says how many attempts were made, and ends with
    ``hint`` (what a rerun does).
    """
    from argilla._exceptions import ArgillaError as SDKError

    policy = policy or RetryPolicy(attempts, base_delay, max_delay)
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except (httpx.HTTPError, SDKError, ConnectionError) as exc:
            if not is_transient(exc):
                raise translate(exc, client, action) from None
            if attempt == policy.attempts:
                err = translate(exc, client, action)
                raise type(err)(f"{err} (gave up after {policy.attempts} attempts; {hint})") from None
            delay = policy.delay(attempt)
            log.info("%s failed (%s), retry %d/%d in %.1fs", action, type(exc).__name__, attempt, policy.attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def whoami(client: Any, policy: RetryPolicy | None = None) -> tuple[str, str]:
    """(username, role) of the client's API key."""
    me = with_retry(lambda: client.api.users.get_me(), client, "asking who the API key belongs to", policy=policy)
    return str(me.username), str(getattr(me.role, "value", me.role))


def not_a_member(client: Any, workspace: str, action: str, policy: RetryPolicy | None = None) -> ArgillaAuthError | None:
    """The refusal for a workspace the key's user cannot see, when that is a permission matter.

    A non-owner sees only the workspaces it is a member of, so a missing workspace may exist and
    be closed to it (the SDK just answers None). An owner sees every workspace: None then.
    """
    user, role = whoami(client, policy)
    if role == "owner":
        return None
    return ArgillaAuthError(
        f"Argilla at {_api_url(client)} refused the request while {action}: the API key or the workspace permission is wrong "
        f"(user {user!r}, role {role}, is not a member of a workspace {workspace!r}, and only an owner can create one: "
        "ask an owner to add the user to it, or pass the right --workspace)"
    )
