"""Controllable test agents: HTTP and gRPC servers on a random port, in a thread.

Both listen on 127.0.0.1; the HTTP one on another address when given one.

::

    with HttpAgentServer(mode="ok") as agent:
        proxy.register("a1", agent.endpoint)
        ...
        agent.mode = "fail"          # switch behaviour at any time
        assert agent.calls == 3

Modes (both servers):

* ``ok``           echo: value ``{"echo": <what arrived>}``, confidence ``agent.confidence``
* ``slow``         like ``ok`` after ``delay_ms``
* ``hang``         never answers (until the server stops)
* ``fail``         HTTP 500 / gRPC INTERNAL
* ``unavailable``  HTTP 503 / gRPC UNAVAILABLE
* ``throttle``     HTTP 429 with ``Retry-After: agent.retry_after`` / gRPC RESOURCE_EXHAUSTED
* ``reject``       HTTP ``agent.status`` (default 400) / gRPC INVALID_ARGUMENT
* ``bad_json``     a reply that is not JSON (gRPC: ``value_json`` that is not JSON)
* ``no_confidence`` a reply without a confidence (gRPC: confidence 7.5)
* ``huge``         HTTP only: a valid reply padded to ``huge_bytes``

``first_mode``/``first_calls`` (HTTP): each task's first ``first_calls`` calls
(by ``X-Taskplane-Task-Id``) answer in ``first_mode``, later ones in ``mode``.

Both count ``calls`` (analyze only), keep arrival ``timestamps`` (epoch s),
the ``requests`` received (HTTP: with the caller's address, ``peer``) and the
``max_in_flight`` concurrency seen.
``healthy`` drives the health endpoint.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf import json_format

from taskplane.proxy import parallax

#: How long ``hang`` waits at most (the server stopping ends it sooner), in seconds.
HANG_LIMIT_S = 30.0


class _Recorder:
    """Mode, counters and timestamps shared by both servers."""

    def __init__(self, mode: str, delay_ms: float, confidence: float) -> None:
        self.mode = mode
        self.delay_ms = delay_ms
        self.confidence = confidence
        self.status = 400
        self.retry_after = "1"
        self.huge_bytes = 11 * 1024 * 1024
        self.healthy = True
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.timestamps: list[float] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.first_mode: str | None = None
        self.first_calls = 0
        self.per_task: dict[str, int] = {}
        self.usage: dict[str, int] | None = None  # reported with every good reply when set

    def enter(self, request: dict[str, Any], task_id: str = "") -> str:
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.timestamps.append(time.time())
            self.requests.append(request)
            seen = self.per_task[task_id] = self.per_task.get(task_id, 0) + 1
            mode = self.mode
            if self.first_mode is not None and seen <= self.first_calls:
                mode = self.first_mode
        if mode == "slow":
            self.stopping.wait(self.delay_ms / 1000.0)
        elif mode == "hang":
            self.stopping.wait(HANG_LIMIT_S)
        return mode

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def reset(self) -> None:
        """Forget every call seen so far."""
        with self.lock:
            self.calls, self.max_in_flight = 0, 0
            self.timestamps, self.requests, self.per_task = [], [], {}


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, recorder: _Recorder, host: str) -> None:
        super().__init__((host, 0), _HttpHandler)
        self.recorder = recorder

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        ok = self.server.recorder.healthy and self.path == "/health"
        self._send(200 if ok else 503, b'{"status": "%s"}' % (b"ok" if ok else b"down"))

    def do_POST(self) -> None:
        rec = self.server.recorder
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"null")
        request = {
            "path": self.path,
            "headers": dict(self.headers),
            "body": body,
            "peer": self.client_address[0],
        }
        mode = rec.enter(request, self.headers.get("X-Taskplane-Task-Id", ""))
        try:
            self._reply(rec, mode, body)
        except OSError:  # the client gave up (timeouts in tests)
            pass
        finally:
            rec.leave()

    def _reply(self, rec: _Recorder, mode: str, body: Any) -> None:
        ok: dict[str, Any] = {"value": {"echo": body}, "confidence": rec.confidence}
        ok["reasoning"] = "echoed"
        if rec.usage is not None:
            ok["usage"] = rec.usage
        if mode in ("ok", "slow", "hang"):
            self._send(200, json.dumps(ok).encode())
        elif mode == "fail":
            self._send(500, b'{"error": "boom"}')
        elif mode == "unavailable":
            self._send(503, b'{"error": "down"}')
        elif mode == "throttle":
            self._send(429, b'{"error": "slow down"}', {"Retry-After": rec.retry_after})
        elif mode == "reject":
            self._send(rec.status, b'{"error": "bad request"}')
        elif mode == "bad_json":
            self._send(200, b"<html>not json</html>")
        elif mode == "no_confidence":
            self._send(200, b'{"value": 1}')
        elif mode == "huge":
            pad = "x" * rec.huge_bytes
            self._send(200, json.dumps({**ok, "pad": pad}).encode())
        else:
            raise AssertionError(f"unknown mode {mode}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpAgentServer(_Recorder):
    """A test HTTP agent; see the module docstring for its modes.

    *host* is the address it listens on (127.0.0.1 unless told otherwise).
    """

    def __init__(
        self,
        mode: str = "ok",
        *,
        delay_ms: float = 0,
        confidence: float = 0.9,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(mode, delay_ms, confidence)
        self._server = _HttpServer(self, host)
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> HttpAgentServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpAgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Servicer(parallax.ConfidenceAgentServicer):
    def __init__(self, rec: _Recorder) -> None:
        self.rec = rec

    def Analyze(self, request: Any, context: grpc.ServicerContext) -> Any:
        arrived = {
            "task_id": request.task_id,
            "task_description": request.task_description,
            "data": json_format.MessageToDict(request.data),
            "context": dict(request.context),
            "timeout_ms": request.timeout_ms,
            "pattern_name": request.pattern_name,
            "metadata": dict(context.invocation_metadata()),
        }
        mode = self.rec.enter(arrived)
        try:
            return self._reply(mode, arrived, context)
        finally:
            self.rec.leave()

    def _reply(self, mode: str, arrived: dict[str, Any], context: grpc.ServicerContext) -> Any:
        aborts = {
            "fail": grpc.StatusCode.INTERNAL,
            "unavailable": grpc.StatusCode.UNAVAILABLE,
            "throttle": grpc.StatusCode.RESOURCE_EXHAUSTED,
            "reject": grpc.StatusCode.INVALID_ARGUMENT,
        }
        if mode in aborts:
            context.abort(aborts[mode], f"test agent in mode {mode}")
        value_json = "not json" if mode == "bad_json" else json.dumps({"echo": arrived})
        confidence = 7.5 if mode == "no_confidence" else self.rec.confidence
        return parallax.ConfidenceResult(
            value_json=value_json,
            confidence=confidence,
            agent_id="test-agent",
            reasoning="echoed",
            uncertainties=["none really"],
            metadata={"server": "tests", **{k: str(v) for k, v in (self.rec.usage or {}).items()}},
        )

    def HealthCheck(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = parallax.Health.HEALTHY if self.rec.healthy else parallax.Health.DEGRADED
        return parallax.Health(status=status, message="test agent")

    def GetCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        return parallax.Capabilities(agent_id="test-agent", capabilities=["echo"])


class GrpcAgentServer(_Recorder):
    """A test gRPC agent; see the module docstring for its modes."""

    def __init__(self, mode: str = "ok", *, delay_ms: float = 0, confidence: float = 0.9) -> None:
        super().__init__(mode, delay_ms, confidence)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        parallax.add_servicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"

    def start(self) -> GrpcAgentServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.stop(grace=0).wait()

    def __enter__(self) -> GrpcAgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
