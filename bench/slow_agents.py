"""Agents that answer after a fixed delay and hold thousands of calls at once.

Run as its own process (so it shares no GIL with the worker being measured)::

    python -m bench.slow_agents --delay-ms 2000

It prints one JSON line ``{"http": PORT, "grpc": PORT}`` when both servers
listen. The HTTP agent is a small asyncio HTTP/1.1 server (keep-alive,
``POST /analyze``, ``GET /health``, ``GET /stats``); the gRPC agent is a
``grpc.aio`` ``ConfidenceAgent``. ``/stats`` returns ``{"calls", "maxInFlight"}``
over both protocols and ``POST /reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc

from taskplane.proxy import parallax


class Counters:
    """Calls and the highest number in flight at once."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[float] = []

    def enter(self) -> None:
        self.arrivals.append(time.time())
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "inFlight": self.in_flight,
            "maxInFlight": self.max_in_flight,
            "firstArrival": min(self.arrivals, default=0.0),
            "lastArrival": max(self.arrivals, default=0.0),
        }


def _response(status: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + data


async def _serve_http(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counters: Counters,
    delay_s: float,
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if path == "/analyze":
                counters.enter()
                try:
                    await asyncio.sleep(delay_s)
                finally:
                    counters.leave()
                payload = json.loads(body or b"{}")
                reply = {"value": {"echo": payload}, "confidence": 0.9}
                writer.write(_response(200, reply))
            elif path == "/stats":
                writer.write(_response(200, counters.as_dict()))
            elif path == "/reset" and method == "POST":
                counters.__init__()  # type: ignore[misc]
                writer.write(_response(200, {}))
            else:
                writer.write(_response(200, {"status": "ok"}))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class _GrpcAgent(parallax.ConfidenceAgentServicer):
    def __init__(self, counters: Counters, delay_s: float) -> None:
        self.counters = counters
        self.delay_s = delay_s

    async def Analyze(self, request: Any, context: Any) -> Any:
        self.counters.enter()
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.counters.leave()
        return parallax.ConfidenceResult(
            value_json=json.dumps({"task": request.task_id}), confidence=0.9, agent_id="slow"
        )

    async def HealthCheck(self, request: Any, context: Any) -> Any:
        return parallax.Health(status=parallax.Health.HEALTHY)


async def main(delay_ms: float) -> None:
    counters = Counters()
    delay_s = delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: _serve_http(r, w, counters, delay_s), "127.0.0.1", 0, backlog=4096
    )
    http_port = server.sockets[0].getsockname()[1]
    grpc_server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 10000)])
    parallax.add_servicer_to_server(_GrpcAgent(counters, delay_s), grpc_server)
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    print(json.dumps({"http": http_port, "grpc": grpc_port}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay-ms", type=float, default=2000.0)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.delay_ms))
    except KeyboardInterrupt:
        sys.exit(0)
