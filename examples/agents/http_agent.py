"""A small HTTP agent speaking taskplane's HTTP agent protocol.

``POST /analyze`` takes the task payload as JSON and answers
``{value, confidence, reasoning}``; ``GET /health`` answers 200. Run it with::

    python -m examples.agents.http_agent --port 8080

and register it with ``taskplane agents add toy http://127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from examples.agents.analysis import analyze

log = logging.getLogger("http_agent")

DEFAULT_PORT = 8080
#: Largest request body accepted, in bytes.
MAX_REQUEST_BYTES = 1024 * 1024


class AgentServer(ThreadingHTTPServer):
    """A threading server with a deep accept queue and TCP_NODELAY on every connection."""

    daemon_threads = True
    request_queue_size = 128

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


class AgentHandler(BaseHTTPRequestHandler):
    """Answers /analyze and /health with keep-alive connections."""

    protocol_version = "HTTP/1.1"
    server_version = "taskplane-example-agent/1"

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send_json(200, {"status": "healthy"})
        else:
            self._send_json(404, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True
            self._send_json(413, {"error": "request too large"})
            return
        raw = self.rfile.read(length)
        if self.path != "/analyze":
            self._send_json(404, {"error": f"no such path {self.path}"})
            return
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"error": "body is not JSON"})
            return
        if not isinstance(payload, dict):
            self._send_json(400, {"error": "body must be a JSON object"})
            return
        task = str(payload.get("task") or payload.get("description") or "analyze")
        value, confidence, reasoning = analyze(payload, task=task)
        self._send_json(200, {"value": value, "confidence": confidence, "reasoning": reasoning})

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def serve(host: str, port: int) -> AgentServer:
    """Bind the agent to *host*:*port* (0 picks a free port); call ``serve_forever()``."""
    return AgentServer((host, port), AgentHandler)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = serve(args.host, args.port)
    log.info("HTTP agent listening on http://%s:%d", args.host, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
