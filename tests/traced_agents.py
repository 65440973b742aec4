"""The example A2A agent or MCP server, noting the ``traceparent`` of every request.

Usage (from the tests)::

    python -m tests.traced_agents a2a|mcp PORT HEADERS_FILE

Each request's path and ``traceparent`` header (or null) is appended to
HEADERS_FILE as one JSON line, so a test can tell which span each request
of a call carried.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import uvicorn

Receive = Any
Send = Any


class NoteTraceparent:
    """A pure ASGI middleware: appends each HTTP request's traceparent to a file."""

    def __init__(self, app: Any, path: Path) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            line = json.dumps({"path": scope["path"], "traceparent": headers.get("traceparent")})
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line + "\n")
        await self.app(scope, receive, send)


def main() -> None:
    kind, port, notes = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    if kind == "a2a":
        from examples.agents.a2a_agent import build_app

        app, _ = build_app(f"http://127.0.0.1:{port}")
    else:
        from examples.agents.mcp_server import server

        app = server.streamable_http_app(host="127.0.0.1")
    uvicorn.run(NoteTraceparent(app, notes), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
