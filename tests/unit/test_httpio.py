"""The shared HTTP I/O: capped reads, Retry-After, and httpx errors and statuses translated."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from taskplane.errors import (
    ClientError,
    InvalidReplyError,
    TaskTimeoutError,
    ThrottledError,
    TransportError,
    UpstreamError,
)
from taskplane.httpio import (
    ERROR_SNIPPET_CHARS,
    HTTPX_ERRORS,
    httpx_errors,
    read_capped,
    reply_error,
    retry_after_s,
    snippet,
    translate,
)

#: 2015-10-21 07:28:00 UTC, the epoch seconds of the date below.
NOW = 1445412480.0


class Ticks:
    """A monotonic clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def streamed(chunks: Iterator[bytes], **headers: str) -> httpx.Response:
    return httpx.Response(200, content=chunks, headers=headers)


# --- Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    assert retry_after_s(header, clock=lambda: NOW) == expected


def test_retry_after_as_an_http_date_counts_from_the_clock() -> None:
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", clock=lambda: NOW) == 10.0


def test_retry_after_as_a_past_date_asks_for_no_wait() -> None:
    assert retry_after_s("Wed, 21 Oct 2015 07:27:00 GMT", clock=lambda: NOW) == 0.0


# --- capped reads -------------------------------------------------------------------------


def test_a_body_within_the_cap_is_read_whole() -> None:
    assert read_capped(streamed(iter([b"ab", b"cd"])), 4) == b"abcd"


def test_a_declared_length_over_the_cap_fails_before_reading() -> None:
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        produced.append(1)
        yield b"x"

    response = streamed(chunks(), **{"Content-Length": "5000"})
    with pytest.raises(InvalidReplyError, match="reply from a1 is larger than 2048 bytes"):
        read_capped(response, 2048, what="reply from a1")
    assert produced == []


def test_a_stream_stops_being_read_at_the_cap() -> None:
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(100):
            produced.append(index)
            yield b"x" * 1024

    with pytest.raises(InvalidReplyError, match="larger than 4096 bytes"):
        read_capped(streamed(chunks()), 4096)
    assert len(produced) == 5


def test_a_read_past_the_deadline_times_out() -> None:
    clock = Ticks()
    chunks = iter([b"a", b"b", b"c", b"d"])
    with pytest.raises(TaskTimeoutError, match="took longer than the call's timeout"):
        read_capped(streamed(chunks), 100, deadline=2.5, clock=clock)
    assert clock.now == 3.0  # the third chunk's read found the deadline passed


def test_an_error_snippet_is_the_start_of_the_body() -> None:
    assert snippet(b"y" * 1000) == "y" * ERROR_SNIPPET_CHARS
    assert snippet(b"\xff ok") == "\ufffd ok"


# --- httpx exceptions -----------------------------------------------------------------------


REQUEST = httpx.Request("POST", "http://agent.test/analyze")


@pytest.mark.parametrize(
    ("exc", "error", "message"),
    [
        (httpx.ReadTimeout("slow", request=REQUEST), TaskTimeoutError, "a1 did not answer in 2 s"),
        (httpx.ConnectTimeout("slow"), TaskTimeoutError, "a1 did not answer in 2 s"),
        (httpx.PoolTimeout("busy"), TaskTimeoutError, "a1 did not answer in 2 s"),
        (
            httpx.DecodingError("bad gzip"),
            InvalidReplyError,
            "a1 sent an undecodable body: bad gzip",
        ),
        (httpx.ConnectError("refused"), TransportError, "cannot reach a1: ConnectError('refused')"),
        (httpx.RemoteProtocolError("reset"), TransportError, "cannot reach a1: "),
        (httpx.TooManyRedirects("loop"), TransportError, "cannot reach a1: "),
    ],
)
def test_httpx_exceptions_map_to_the_tree(
    exc: httpx.HTTPError, error: type[Exception], message: str
) -> None:
    translated = translate(exc, where="a1", timeout_s=2.0)
    assert type(translated) is error
    assert str(translated).startswith(message)


def test_the_table_lists_subclasses_before_their_bases() -> None:
    for index, (foreign, _, _) in enumerate(HTTPX_ERRORS):
        for later, _, _ in HTTPX_ERRORS[index + 1 :]:
            assert not issubclass(later, foreign), f"{later} is shadowed by {foreign}"
    assert HTTPX_ERRORS[-1][0] is httpx.HTTPError  # every httpx error is covered


def test_the_block_raises_ours_chained_and_redacted() -> None:
    def redact(text: str) -> str:
        return text.replace("sk-1", "***")

    with (
        pytest.raises(TransportError) as caught,
        httpx_errors(where="a1", timeout_s=1, redact=redact),
    ):
        raise httpx.ConnectError("refused, key sk-1")
    assert "sk-1" not in str(caught.value) and "***" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_other_exceptions_pass_through_the_block() -> None:
    with pytest.raises(KeyError), httpx_errors(where="a1", timeout_s=1.0):
        raise KeyError("x")


# --- statuses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ThrottledError),
        (500, UpstreamError),
        (503, UpstreamError),
        (400, ClientError),
        (404, ClientError),
        (302, InvalidReplyError),
        (101, InvalidReplyError),
    ],
)
def test_an_agents_non_2xx_status_is_an_error(status: int, error: type[Exception]) -> None:
    assert type(reply_error(status, f"HTTP {status}", 3.0)) is error


def test_retryable_statuses_keep_the_wait_hint() -> None:
    throttled = reply_error(429, "HTTP 429", 3.0)
    assert isinstance(throttled, UpstreamError)
    assert (throttled.status, throttled.retry_after_s) == (429, 3.0)
