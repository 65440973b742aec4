"""``http`` tasks: one HTTP request to a URL, guarded against reaching where it must not.

Payload: ``{"method": "GET", "headers": {}, "params": {}, "json": ...}``.
Result: ``{"status", "headers", "body"}``, the body parsed when it is JSON.

Guard rails, checked on the first URL and again on every redirect hop:

* only ``http``/``https``;
* ``Settings.http_allowed_hosts`` (empty = any host; ``*.example.com`` matches subdomains);
* link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
  fd00:ec2::254 and their IPv4-mapped forms) are always refused;
* private, loopback and reserved ranges are refused when ``http_block_private`` is set.

The host name is resolved for the check; a host that resolves to any
forbidden address is refused. (httpx resolves again when it connects, so a
DNS server that answers differently twice can still steer the connection;
use ``http_allowed_hosts`` where that matters.)
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from taskplane.contract import CallContext, Outcome
from taskplane.errors import (
    ForbiddenTargetError,
    InvalidPayloadError,
    TransportError,
    http_status_error,
)
from taskplane.httpio import MAX_RESPONSE_BYTES, httpx_errors, read_capped, retry_after_s, snippet
from taskplane.models import ExecutionTask

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_REDIRECTS = 5

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]

_ALWAYS_BLOCKED = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)


def resolve(host: str) -> list[str]:
    """All addresses *host* resolves to."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve {host}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def _unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address inside IPv4-mapped, IPv4-compatible and NAT64 IPv6 forms."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    packed = int(address)
    if address in _NAT64 or (packed >> 32 == 0 and packed > 1):
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return address


def address_refusal(address: str, *, block_private: bool) -> str | None:
    """Why *address* may not be called, or None when it may."""
    ip = _unmapped(ipaddress.ip_address(address.split("%", 1)[0]))
    if any(ip in net for net in _ALWAYS_BLOCKED if net.version == ip.version):
        return f"{address} is a link-local or metadata address"
    if block_private and (
        ip.is_private
        or ip.is_loopback
        or ip.is_reserved
        or ip.is_unspecified
        or ip.is_multicast
        or (ip.version == 4 and ip in _SHARED)
    ):
        return f"{address} is a private, loopback or reserved address"
    return None


def host_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    """True when *host* is on the allow-list (an empty list allows every host)."""
    patterns = [p.lower() for p in allowed_hosts]
    if not patterns:
        return True
    host = host.lower()
    for pattern in patterns:
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


class UrlGuard:
    """Decides whether a URL may be requested.

    Args:
        allowed_hosts: Host allow-list; empty allows any host.
        block_private: Also refuse private, loopback and reserved addresses.
        resolver: Name resolution (injected for tests).
    """

    def __init__(
        self,
        *,
        allowed_hosts: Iterable[str] = (),
        block_private: bool = False,
        resolver: Resolver = resolve,
    ) -> None:
        self.allowed_hosts = list(allowed_hosts)
        self.block_private = block_private
        self.resolver = resolver

    def check(self, url: str) -> None:
        """Raise :class:`ForbiddenTargetError` unless *url* may be requested."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ForbiddenTargetError(f"{url}: only http and https URLs are allowed")
        host = parts.hostname
        if not host:
            raise ForbiddenTargetError(f"{url}: no host")
        if not host_allowed(host, self.allowed_hosts):
            raise ForbiddenTargetError(f"{url}: host {host} is not in http_allowed_hosts")
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = self.resolver(host)
        for address in addresses:
            reason = address_refusal(address, block_private=self.block_private)
            if reason:
                raise ForbiddenTargetError(f"{url}: {reason}")


def _request_args(task: ExecutionTask) -> dict[str, Any]:
    payload = task.payload
    # ``previous`` is what a sequential plan adds for the task before; a request ignores it.
    unknown = set(payload) - {"method", "headers", "params", "json", "data", "previous"}
    if unknown:
        raise InvalidPayloadError(f"http task: unknown payload fields {sorted(unknown)}")
    method = str(payload.get("method", "GET")).upper()
    if method not in METHODS:
        raise InvalidPayloadError(f"http task: method {method!r} is not one of {sorted(METHODS)}")
    headers = payload.get("headers") or {}
    params = payload.get("params") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise InvalidPayloadError("http task: headers must map names to strings")
    if not isinstance(params, dict):
        raise InvalidPayloadError("http task: params must be an object")
    args: dict[str, Any] = {"method": method, "headers": headers, "params": params}
    if "json" in payload:
        args["json"] = payload["json"]
    elif "data" in payload:
        if not isinstance(payload["data"], str):
            raise InvalidPayloadError("http task: data must be a string (use json for objects)")
        args["content"] = payload["data"].encode()
    return args


def decode_body(response: httpx.Response, body: bytes) -> Any:
    """JSON when the reply says so, else text."""
    if "json" in response.headers.get("content-type", ""):
        try:
            return json.loads(body)
        except ValueError:
            pass
    return body.decode(response.encoding or "utf-8", errors="replace")


class HttpTaskHandler:
    """Handler for ``http`` tasks.

    Args:
        client: A pooled httpx client (redirects are followed here, hop by hop).
        guard: Decides which URLs may be requested.
        max_response_bytes: Larger replies fail the task.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        guard: UrlGuard,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.client = client
        self.guard = guard
        self.max_response_bytes = max_response_bytes

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        args = _request_args(task)
        url = task.target
        for _hop in range(MAX_REDIRECTS + 1):
            self.guard.check(url)
            with (
                httpx_errors(where=url, timeout_s=call.timeout_s),
                self.client.stream(
                    url=url, timeout=call.timeout_s, follow_redirects=False, **args
                ) as response,
            ):
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    if response.status_code in (301, 302, 303) and args["method"] != "HEAD":
                        args = {**args, "method": "GET"}
                        args.pop("json", None)
                        args.pop("content", None)
                    continue
                body = read_capped(response, self.max_response_bytes)
            status = response.status_code
            error = http_status_error(
                status,
                f"HTTP {status}: {snippet(body)}",
                retry_after_s(response.headers.get("retry-after")),
            )
            if error is not None:
                raise error
            return Outcome(
                result={
                    "status": response.status_code,
                    "headers": dict(response.headers),
                    "body": decode_body(response, body),
                },
                metadata={"url": url},
            )
        raise TransportError(f"{task.target}: more than {MAX_REDIRECTS} redirects")
