"""A real HTTP server speaking the OpenAI chat-completions wire format, for tests.

::

    with OpenAICompatServer(api_key="sk-test") as server:
        server.script = ["throttle", "ok"]   # one mode per call, then ``server.mode``
        ... endpoint: server.base_url (".../v1")

Modes:

* ``ok``        text ``"echo: <last user message>"``, with ``usage``
* ``json``      content ``{"answer": <last user message>, "confidence": 0.83}``
* ``logprobs``  like ``ok`` plus ``logprobs.content`` with logprobs ``LOGPROBS``
* ``throttle``  429 with ``x-ratelimit-*`` headers (``reset_tokens``, remaining 0)
* ``fail``      500 with an OpenAI error object
* ``reject``    400 with an OpenAI error object
* ``hang``      answers after ``HANG_S`` (or when the server stops)

A request with ``stream: true`` gets the same reply as server-sent
``chat.completion.chunk`` events (content in three pieces, one logprob per
piece, a final ``usage`` chunk when ``stream_options.include_usage``).

A request without ``Authorization: Bearer <api_key>`` gets 401 (when
``api_key`` is set). ``GET /v1/models`` lists one model. Every request's
body and headers are kept in ``requests`` with arrival ``timestamps``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Token logprobs the ``logprobs`` mode returns.
LOGPROBS = [-0.1, -0.5, -0.02]
#: How long ``hang`` waits at most, in seconds.
HANG_S = 30.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class OpenAICompatServer:
    """An OpenAI-compatible endpoint on 127.0.0.1 and a random port, in a thread."""

    def __init__(self, *, api_key: str | None = None, mode: str = "ok") -> None:
        self.api_key = api_key
        self.mode = mode
        self.script: list[str] = []
        self.reset_tokens = "1s"
        self.requests: list[dict[str, Any]] = []
        self.timestamps: list[float] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if not owner._authorized(self.headers.get("Authorization")):
                    self._send(401, _error("invalid_api_key", "bad key"))
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "test-model"}]})
                else:
                    self._send(404, _error("not_found", self.path))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                mode = owner._arrive(body, dict(self.headers.items()))
                if self.path != "/v1/chat/completions":
                    self._send(404, _error("not_found", self.path))
                elif not owner._authorized(self.headers.get("Authorization")):
                    self._send(401, _error("invalid_api_key", "Incorrect API key provided"))
                else:
                    status, reply, headers = owner._reply(mode, body)
                    if status == 200 and body.get("stream"):
                        self._send_events(_chunks(reply, body))
                    else:
                        self._send(status, reply, headers)

            def _send_events(self, events: list[Any]) -> None:
                data = b"".join(
                    f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode()
                    for e in events
                )
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up
                    pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up
                    pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _authorized(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def _arrive(self, body: Any, headers: dict[str, str]) -> str:
        with self.lock:
            self.requests.append({"body": body, "headers": headers})
            self.timestamps.append(time.time())
            mode = self.script.pop(0) if self.script else self.mode
        if mode == "hang":
            self.stopping.wait(HANG_S)
        return mode

    def _reply(self, mode: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if mode == "throttle":
            headers = {
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "59",
                "x-ratelimit-reset-requests": "20ms",
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": self.reset_tokens,
            }
            return 429, _error("rate_limit_exceeded", "Rate limit reached for tokens"), headers
        if mode == "fail":
            return 500, _error("server_error", "The server had an error"), {}
        if mode == "reject":
            return 400, _error("invalid_request_error", "bad request"), {}
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        last = users[-1]["content"] if users else ""
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if mode == "json":
            content = json.dumps({"answer": last, "confidence": 0.83})
        else:
            content = f"echo: {last}"
        if mode == "logprobs":
            choice["logprobs"] = {
                "content": [
                    {"token": f"t{i}", "logprob": lp, "bytes": None, "top_logprobs": []}
                    for i, lp in enumerate(LOGPROBS)
                ]
            }
        choice["message"] = {"role": "assistant", "content": content}
        reply = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
        return 200, reply, {}

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.requests)

    def start(self) -> OpenAICompatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OpenAICompatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _chunks(reply: dict[str, Any], body: dict[str, Any]) -> list[Any]:
    """*reply* as streamed ``chat.completion.chunk`` events (content in three pieces)."""
    choice = reply["choices"][0]
    content = choice["message"]["content"]
    third = max(len(content) // 3, 1)
    pieces = [content[:third], content[third : 2 * third], content[2 * third :]]
    tokens = (choice.get("logprobs") or {}).get("content") or []
    base = {"id": reply["id"], "object": "chat.completion.chunk", "model": reply["model"]}
    events: list[Any] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for n, piece in enumerate(pieces):
        delta: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
        if tokens:
            delta["logprobs"] = {"content": tokens[n : n + 1]}
        events.append({**base, "choices": [delta]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**base, "choices": [], "usage": reply["usage"]})
    events.append("[DONE]")
    return events


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}
