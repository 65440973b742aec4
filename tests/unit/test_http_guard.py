"""HTTP tasks offline: the URL guard (injected resolver), status mapping, payload checks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from taskplane.contract import CallContext, Outcome
from taskplane.errors import (
    ClientError,
    ForbiddenTargetError,
    InvalidPayloadError,
    TransportError,
    UpstreamError,
)
from taskplane.http_task import (
    HttpTaskHandler,
    UrlGuard,
    _request_args,
    address_refusal,
    host_allowed,
)
from taskplane.models import ExecutionTask, TaskType

PUBLIC = "93.184.216.34"
CALL = CallContext(timeout_s=2.0, idempotency_key="plan:h1")


class FakeResolver:
    """Answers from a table and remembers what it was asked."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise TransportError(f"cannot resolve {host}")
        return self.table[host]


def guard(
    table: dict[str, list[str]] | None = None, *, allowed: tuple[str, ...] = (), block: bool = False
) -> UrlGuard:
    return UrlGuard(allowed_hosts=allowed, block_private=block, resolver=FakeResolver(table))


def refused(g: UrlGuard, url: str) -> str:
    with pytest.raises(ForbiddenTargetError) as info:
        g.check(url)
    return str(info.value)


# --- schemes and hosts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "example.com/no-scheme",
        "redis://127.0.0.1:6379/0",
    ],
)
def test_only_http_and_https(url: str) -> None:
    assert "only http and https" in refused(guard({"example.com": [PUBLIC]}), url)


@pytest.mark.parametrize("url", ["http://example.com/x", "https://example.com:8443/y?q=1"])
def test_public_http_and_https_pass(url: str) -> None:
    resolver = FakeResolver({"example.com": [PUBLIC]})
    UrlGuard(resolver=resolver).check(url)
    assert resolver.asked == ["example.com"]


def test_scheme_case_does_not_matter() -> None:
    guard({"example.com": [PUBLIC]}).check("HTTPS://example.com/")


def test_url_without_host() -> None:
    assert "no host" in refused(guard(), "http:///path")


def test_literal_address_is_not_resolved() -> None:
    resolver = FakeResolver()
    UrlGuard(resolver=resolver).check(f"http://{PUBLIC}/")
    UrlGuard(resolver=resolver).check("http://[2606:2800:220:1::1]/")
    assert resolver.asked == []


def test_resolver_failure_propagates_as_transport_error() -> None:
    with pytest.raises(TransportError, match="cannot resolve"):
        guard().check("http://unknown.invalid/")


# --- allow-list ----------------------------------------------------------------------------


def test_empty_allow_list_allows_any_host() -> None:
    assert host_allowed("anything.example.org", [])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", True),
        ("API.Example.COM", True),
        ("a.b.example.com", True),
        ("exact.org", True),
        ("sub.exact.org", False),
        ("example.com", False),  # "*." means subdomains only
        ("evilexample.com", False),
        ("example.com.evil.org", False),
        ("other.org", False),
    ],
)
def test_allow_list_patterns(host: str, expected: bool) -> None:
    assert host_allowed(host, ["*.example.com", "Exact.org"]) is expected


def test_host_outside_allow_list_is_refused_before_resolving() -> None:
    resolver = FakeResolver({"other.org": [PUBLIC]})
    g = UrlGuard(allowed_hosts=["*.example.com"], resolver=resolver)
    assert "not in http_allowed_hosts" in refused(g, "https://other.org/")
    assert resolver.asked == []


def test_allowed_host_still_checked_for_metadata_addresses() -> None:
    g = guard({"api.example.com": ["169.254.169.254"]}, allowed=("*.example.com",))
    assert "link-local or metadata" in refused(g, "http://api.example.com/")


def test_allowed_host_passes() -> None:
    guard({"api.example.com": [PUBLIC]}, allowed=("*.example.com",)).check(
        "http://api.example.com/v1"
    )


# --- always-refused addresses --------------------------------------------------------------

METADATA = [
    "169.254.169.254",
    "169.254.0.1",
    "169.254.255.255",
    "fe80::1",
    "fe80::1%eth0",
    "febf::1",
    "fd00:ec2::254",
    "::ffff:169.254.169.254",
    "::ffff:a9fe:a9fe",
]


@pytest.mark.parametrize("address", METADATA)
@pytest.mark.parametrize("block", [False, True])
def test_metadata_addresses_always_refused(address: str, block: bool) -> None:
    assert address_refusal(address, block_private=block) is not None
    g = guard({"sneaky.example.com": [PUBLIC, address]}, block=block)
    assert "link-local or metadata" in refused(g, "http://sneaky.example.com/")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
    ],
)
def test_metadata_literals_in_urls(url: str) -> None:
    assert "link-local or metadata" in refused(guard(), url)


def test_neighbours_of_metadata_addresses_pass() -> None:
    assert address_refusal("169.253.255.255", block_private=False) is None
    assert address_refusal("169.255.0.1", block_private=False) is None
    assert address_refusal("fd00:ec2::253", block_private=False) is None


# --- private and loopback ------------------------------------------------------------------

PRIVATE = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "0.0.0.0",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "224.0.0.1",
]


@pytest.mark.parametrize("address", PRIVATE)
def test_private_allowed_unless_blocked(address: str) -> None:
    assert address_refusal(address, block_private=False) is None
    assert address_refusal(address, block_private=True) is not None


def test_private_host_refused_only_when_blocking() -> None:
    table = {"db.internal": ["10.1.2.3"], "localhost": ["127.0.0.1", "::1"]}
    for url in ("http://db.internal/", "http://localhost:8080/"):
        guard(table).check(url)
        assert "private, loopback or reserved" in refused(guard(table, block=True), url)


def test_loopback_literal_refused_when_blocking() -> None:
    assert "private" in refused(guard(block=True), "http://127.0.0.1:6379/")
    assert "private" in refused(guard(block=True), "http://[::1]/")


def test_public_address_passes_when_blocking() -> None:
    assert address_refusal(PUBLIC, block_private=True) is None
    assert address_refusal("2606:2800:220:1::1", block_private=True) is None


# --- status classification (through the handler, on a mock transport) ---------------------


def fetch(status: int, body: bytes = b"oops", **headers: str) -> Outcome:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers)

    client = httpx.Client(transport=httpx.MockTransport(reply))
    handler = HttpTaskHandler(client, guard=UrlGuard(resolver=FakeResolver({"api.test": [PUBLIC]})))
    try:
        return handler(ExecutionTask(id="h1", type=TaskType.HTTP, target="https://api.test/"), CALL)
    finally:
        client.close()


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_is_upstream_error(status: int) -> None:
    with pytest.raises(UpstreamError) as caught:
        fetch(status)
    assert (caught.value.status, caught.value.retry_after_s) == (status, None)
    assert str(caught.value) == f"HTTP {status}: oops"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), (" 12 ", 12.0), ("0", 0.0), ("1.5", 1.5), ("", None), ("soon", None)],
)
def test_429_reads_retry_after(header: str, expected: float | None) -> None:
    with pytest.raises(UpstreamError) as caught:
        fetch(429, **{"Retry-After": header})
    assert (caught.value.status, caught.value.retry_after_s) == (429, expected)


def test_retry_after_as_a_past_http_date_asks_for_no_wait() -> None:
    with pytest.raises(UpstreamError) as caught:
        fetch(503, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert caught.value.retry_after_s == 0.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 499])
def test_4xx_is_client_error(status: int) -> None:
    with pytest.raises(ClientError) as caught:
        fetch(status, **{"Retry-After": "5"})
    assert caught.value.status == status


@pytest.mark.parametrize("status", [200, 201, 204, 299, 304])
def test_success_is_no_error(status: int) -> None:
    assert fetch(status, b"fine").result["status"] == status


def test_error_text_is_truncated() -> None:
    with pytest.raises(UpstreamError) as caught:
        fetch(500, b"x" * 1000)
    assert str(caught.value) == "HTTP 500: " + "x" * 200


def test_transport_failures_are_translated() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    handler = HttpTaskHandler(client, guard=UrlGuard(resolver=FakeResolver({"api.test": [PUBLIC]})))
    with pytest.raises(TransportError, match=r"cannot reach https://api\.test/") as caught:
        handler(ExecutionTask(id="h1", type=TaskType.HTTP, target="https://api.test/"), CALL)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


# --- payload -------------------------------------------------------------------------------


def http_task(**payload: Any) -> ExecutionTask:
    return ExecutionTask(
        id="h1", type=TaskType.HTTP, target="https://api.example.com/", payload=payload
    )


def test_request_defaults() -> None:
    assert _request_args(http_task()) == {"method": "GET", "headers": {}, "params": {}}


def test_request_with_json_body() -> None:
    args = _request_args(
        http_task(method="post", headers={"X-A": "1"}, params={"q": "x"}, json={"k": [1]})
    )
    assert args == {
        "method": "POST",
        "headers": {"X-A": "1"},
        "params": {"q": "x"},
        "json": {"k": [1]},
    }


def test_request_with_text_body() -> None:
    assert _request_args(http_task(method="PUT", data="héllo"))["content"] == "héllo".encode()


def test_json_wins_over_data() -> None:
    args = _request_args(http_task(json=None, data="ignored"))
    assert "json" in args
    assert "content" not in args


def test_previous_result_of_a_sequential_plan_is_ignored() -> None:
    args = _request_args(http_task(previous={"taskId": "t0", "status": "success"}))
    assert args == {"method": "GET", "headers": {}, "params": {}}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"url": "http://elsewhere"}, "unknown payload fields \\['url'\\]"),
        ({"method": "TRACE"}, "method 'TRACE'"),
        ({"method": "CONNECT"}, "method 'CONNECT'"),
        ({"headers": {"X-A": 1}}, "headers must map names to strings"),
        ({"headers": ["X-A"]}, "headers must map names to strings"),
        ({"params": "q=1"}, "params must be an object"),
        ({"data": {"a": 1}}, "data must be a string"),
    ],
)
def test_bad_payloads(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPayloadError, match=message):
        _request_args(http_task(**payload))
