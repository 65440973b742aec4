"""A small HTTP server for http-task tests: echoes, fails on cue, hangs, redirects.

Routes (all on 127.0.0.1, random port, TCP_NODELAY):

* ``/echo``           JSON of method, path, query, headers, body
* ``/flaky/<key>/<n>`` 500 for the first *n* calls per key, then 200 ``{"ok": true}``
* ``/status/<code>``  that status, with ``Retry-After: 0`` for 429
* ``/hang``           sleeps 30 s before answering
* ``/sleep/<ms>``     answers after *ms* milliseconds
* ``/redirect?to=URL`` 302 to URL
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def get_request(self):  # type: ignore[no-untyped-def]
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        segments = [s for s in parts.path.split("/") if s]
        with self.server.lock:
            self.server.calls[parts.path] += 1
            count = self.server.calls[parts.path]
        if not segments or segments[0] == "echo":
            self._send(
                200,
                {
                    "method": self.command,
                    "path": parts.path,
                    "query": {k: v[0] for k, v in parse_qs(parts.query).items()},
                    "headers": dict(self.headers),
                    "body": json.loads(body) if body.startswith(("{", "[")) else body,
                },
            )
        elif segments[0] == "flaky":
            failures = int(segments[2])
            if count <= failures:
                self._send(500, {"error": f"failure {count}"})
            else:
                self._send(200, {"ok": True, "calls": count})
        elif segments[0] == "status":
            code = int(segments[1])
            self._send(code, {"status": code}, {"Retry-After": "0"} if code == 429 else None)
        elif segments[0] == "sleep":
            time.sleep(int(segments[1]) / 1000.0)
            self._send(200, {"slept": int(segments[1])})
        elif segments[0] == "hang":
            time.sleep(30)
            self._send(200, {"late": True})
        elif segments[0] == "redirect":
            target = parse_qs(parts.query)["to"][0]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, {"error": "no such route"})

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class HttpTestServer:
    """Runs the server in a thread; use as a context manager."""

    def __init__(self) -> None:
        self.server = _Server()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def calls(self, path: str) -> int:
        return self.server.calls[path]

    def __enter__(self) -> HttpTestServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
