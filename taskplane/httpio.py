"""HTTP I/O shared by every module that reads an HTTP reply.

``http`` tasks (:mod:`taskplane.http_task`) and the HTTP-based agent
transports (:mod:`taskplane.proxy.http`, :mod:`taskplane.proxy.openai`, and the
status codes of :mod:`taskplane.proxy.a2a` / :mod:`taskplane.proxy.mcp`) read
replies, parse ``Retry-After`` and translate failures the same way, through
this module:

* :data:`MAX_RESPONSE_BYTES` and :func:`read_capped`: a streamed body is read
  up to a byte cap and within the call's deadline;
* :func:`retry_after_s`: ``Retry-After`` in seconds or as an HTTP date, against
  an injected clock;
* :data:`HTTPX_ERRORS` and :func:`httpx_errors`: an httpx exception becomes one
  of ours, chained with ``from`` (one table, first match wins):

  ==========================================  ==========================================
  httpx raised                                Raised here
  ==========================================  ==========================================
  ``TimeoutException`` (connect, read, pool)  :class:`~taskplane.errors.TaskTimeoutError`
  ``DecodingError`` (bad content encoding)    :class:`~taskplane.errors.InvalidReplyError`
  any other ``HTTPError`` (refused, reset)    :class:`~taskplane.errors.TransportError`
  ==========================================  ==========================================

* :func:`reply_error`: what an agent's non-2xx status stands for (the rule is
  :func:`taskplane.errors.http_status_error`: 429 throttled, 5xx upstream,
  other 4xx client errors; anything else is an invalid reply).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime

import httpx

from taskplane.aliases import Clock
from taskplane.config import Settings
from taskplane.errors import (
    ExecutionError,
    InvalidReplyError,
    TaskTimeoutError,
    TransportError,
    http_status_error,
)

#: Largest reply body read, in bytes: the default of ``Settings.http_max_response_bytes``.
MAX_RESPONSE_BYTES: int = Settings.model_fields["http_max_response_bytes"].default
#: How much of an error body goes into the error message, in characters.
ERROR_SNIPPET_CHARS = 200

#: httpx exception -> (our error, its message); first match wins, so subclasses come first.
#: Messages name the target (``where``), the call's timeout (``timeout_s``) and the cause (``exc``).
HTTPX_ERRORS: tuple[tuple[type[httpx.HTTPError], type[ExecutionError], str], ...] = (
    (httpx.TimeoutException, TaskTimeoutError, "{where} did not answer in {timeout_s:g} s"),
    (httpx.DecodingError, InvalidReplyError, "{where} sent an undecodable body: {exc}"),
    (httpx.HTTPError, TransportError, "cannot reach {where}: {exc!r}"),
)


def _unchanged(text: str) -> str:
    return text


def translate(
    exc: httpx.HTTPError,
    *,
    where: str,
    timeout_s: float,
    redact: Callable[[str], str] = _unchanged,
) -> ExecutionError:
    """The error of the tree that *exc* stands for (see :data:`HTTPX_ERRORS`).

    Args:
        exc: What httpx raised.
        where: Names the target in the message (``"agent a1 at http://…"``, a URL).
        timeout_s: The call's timeout, for the timeout message.
        redact: Applied to the message (removes a secret the cause may echo).
    """
    for foreign, ours, message in HTTPX_ERRORS:
        if isinstance(exc, foreign):
            return ours(redact(message.format(where=where, timeout_s=timeout_s, exc=exc)))
    return TransportError(redact(f"cannot reach {where}: {exc!r}"))  # not reached: HTTPError last


@contextmanager
def httpx_errors(
    *, where: str, timeout_s: float, redact: Callable[[str], str] = _unchanged
) -> Iterator[None]:
    """Translate httpx exceptions raised in the block (see :func:`translate`), chained."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise translate(exc, where=where, timeout_s=timeout_s, redact=redact) from exc


def read_capped(
    response: httpx.Response,
    limit: int = MAX_RESPONSE_BYTES,
    *,
    what: str = "reply",
    deadline: float | None = None,
    clock: Clock = time.monotonic,
) -> bytes:
    """Read a streamed body, refusing one larger than *limit* bytes.

    Args:
        response: A streamed response.
        limit: Largest body accepted, in bytes (a larger ``Content-Length`` fails at once).
        what: Names the body in errors.
        deadline: *clock* time past which reading fails with ``TaskTimeoutError``.
        clock: Monotonic seconds.

    Raises:
        InvalidReplyError: The body is larger than *limit*.
        TaskTimeoutError: Reading went past *deadline*.
    """
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidReplyError(f"{what} is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise InvalidReplyError(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)
        if deadline is not None and clock() > deadline:
            raise TaskTimeoutError(f"{what} took longer than the call's timeout")
    return b"".join(chunks)


def snippet(body: bytes) -> str:
    """The start of an error body, as text for a message."""
    return body[:ERROR_SNIPPET_CHARS].decode("utf-8", "replace")


def retry_after_s(value: str | None, *, clock: Clock = time.time) -> float | None:
    """Parse a ``Retry-After`` header into seconds from now, or None when it gives no hint.

    Args:
        value: The header: delay seconds (``"120"``, ``"1.5"``) or an HTTP date.
        clock: Wall clock in epoch seconds, for a date (a past date is 0).
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:  # "nan", "inf" and negative numbers are no hint; huge ones are capped by the runner
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(when - clock(), 0.0)


def reply_error(status: int, message: str, retry_after: float | None = None) -> ExecutionError:
    """The error a non-2xx answer from an agent stands for: a 1xx/3xx is an invalid reply.

    Args:
        status: The reply's status code.
        message: The error's message.
        retry_after: The target's wait hint in seconds (see :func:`retry_after_s`).
    """
    error = http_status_error(status, message, retry_after)
    return error if error is not None else InvalidReplyError(message)
