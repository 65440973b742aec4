"""A small MCP tool server (streamable HTTP), built with the official ``mcp`` SDK.

Run it with::

    python -m examples.agents.mcp_server --port 8765

and register one of its tools with
``taskplane agents add words http://127.0.0.1:8765/mcp --protocol mcp --tool count_words``.

Tools:

* ``count_words(text, top=3)``  structured content ``{words, distinct, top}``
* ``shout(text)``               text content (the text in capitals)
* ``fail(reason)``              a tool error (``isError``)
* ``sleep(ms)``                 answers ``"slept"`` after *ms* milliseconds
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections import Counter

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

log = logging.getLogger("mcp_server")

DEFAULT_PORT = 8765
#: Longest ``sleep`` accepted, in milliseconds.
MAX_SLEEP_MS = 60_000

server = MCPServer(name="taskplane-example-tools", version="1.0")


class WordCount(BaseModel):
    """What ``count_words`` returns."""

    words: int
    distinct: int
    top: list[str]


@server.tool()
def count_words(
    text: str = Field(min_length=1, description="The text to count."),
    top: int = Field(default=3, ge=1, le=50, description="How many frequent words."),
) -> WordCount:
    """Count the words of a text and name the most frequent ones."""
    words = text.lower().split()
    common = [word for word, _ in Counter(words).most_common(top)]
    return WordCount(words=len(words), distinct=len(set(words)), top=common)


@server.tool()
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


@server.tool()
def fail(reason: str = "asked to") -> str:
    """Always fails, with *reason* (shows how a tool error looks)."""
    raise ToolError(f"failed: {reason}")


@server.tool()
async def sleep(ms: int = Field(ge=0, le=MAX_SLEEP_MS)) -> str:
    """Answer after *ms* milliseconds."""
    await asyncio.sleep(ms / 1000.0)
    return "slept"


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    app = server.streamable_http_app(host=args.host)
    log.info("MCP tools at http://%s:%d/mcp", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
