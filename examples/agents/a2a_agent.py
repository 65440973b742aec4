"""A small Agent2Agent (A2A 1.0) agent over JSON-RPC, built with the official ``a2a-sdk``.

Run it with::

    python -m examples.agents.a2a_agent --port 9999            # streams its task updates
    python -m examples.agents.a2a_agent --port 9999 --no-streaming

and register it with ``taskplane agents add toy-a2a http://127.0.0.1:9999 --protocol a2a``
(its card's skills become the agent's capabilities).

What it does depends on the first word of the message text (or ``data.mode``):

* ``summarize ...``  completes with a text artifact and a data artifact (word counts)
* ``slow <ms>``      works for *ms* milliseconds, then completes; cancellable meanwhile
* ``fail``           ends ``failed``; ``reject`` ends ``rejected``
* ``ask``            stops in ``input-required``; ``login`` in ``auth-required``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import get_data_parts, new_data_part, new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    TaskState,
)
from starlette.applications import Starlette

log = logging.getLogger("a2a_agent")

DEFAULT_PORT = 9999
#: Longest ``slow`` accepted, in milliseconds.
MAX_SLOW_MS = 60_000


def agent_card(url: str, *, streaming: bool) -> AgentCard:
    """The card served at ``/.well-known/agent-card.json``."""
    return AgentCard(
        name="Toy A2A agent",
        description="Summarises text; can also be slow, fail, or ask for input on request.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(protocol_binding="JSONRPC", url=url, protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=streaming),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain", "application/json"],
        skills=[
            AgentSkill(id="summarize", name="Summarize", description="Word counts", tags=["text"]),
            AgentSkill(id="wait", name="Wait", description="Takes its time", tags=["test"]),
        ],
    )


def _command(context: RequestContext) -> tuple[str, list[str]]:
    message = context.message
    data = get_data_parts(list(message.parts)) if message is not None else []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("mode"), str):
            return item["mode"], [str(int(item.get("ms", 1000)))]
    words = context.get_user_input().split()
    return (words[0].lower(), words[1:]) if words else ("summarize", [])


class ToyExecutor(AgentExecutor):
    """Runs one task per message; see the module docstring for the commands."""

    def __init__(self) -> None:
        #: Ids of the tasks a client cancelled (tests read this).
        self.cancelled: list[str] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        if context.current_task is None:
            history = [context.message] if context.message is not None else []
            submitted = TaskState.TASK_STATE_SUBMITTED
            await event_queue.enqueue_event(
                new_task(task_id, context_id, submitted, history=history)
            )
        updater = TaskUpdater(event_queue, task_id, context_id)
        command, args = _command(context)
        await updater.start_work()
        if command == "slow":
            ms = min(int(args[0]) if args and args[0].isdigit() else 1000, MAX_SLOW_MS)
            await asyncio.sleep(ms / 1000.0)
            await updater.add_artifact([new_text_part(f"slept {ms} ms")], name="result")
            await updater.complete()
        elif command == "fail":
            await updater.failed(updater.new_agent_message([new_text_part("it went wrong")]))
        elif command == "reject":
            await updater.reject(updater.new_agent_message([new_text_part("not my job")]))
        elif command == "ask":
            await updater.requires_input(updater.new_agent_message([new_text_part("which one?")]))
        elif command == "login":
            await updater.requires_auth(updater.new_agent_message([new_text_part("sign in")]))
        else:
            text = context.get_user_input()
            summary: dict[str, Any] = {"words": len(text.split()), "chars": len(text)}
            await updater.add_artifact([new_text_part(f"{summary['words']} words")], name="text")
            await updater.add_artifact([new_data_part(summary)], name="counts")
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        task_id = context.task_id or (task.id if task else "")
        self.cancelled.append(task_id)
        log.info("task %s cancelled by the client", task_id)
        updater = TaskUpdater(event_queue, task_id, context.context_id or "")
        await updater.cancel()


def build_app(url: str, *, streaming: bool = True) -> tuple[Starlette, ToyExecutor]:
    """The agent as an ASGI app, and its executor."""
    card = agent_card(url, streaming=streaming)
    executor = ToyExecutor()
    handler = DefaultRequestHandler(
        agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = [*create_agent_card_routes(card), *create_jsonrpc_routes(handler, rpc_url="/")]
    return Starlette(routes=routes), executor


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--no-streaming", action="store_true", help="Card says: no streaming.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    url = f"http://{args.host}:{args.port}"
    app, _ = build_app(url, streaming=not args.no_streaming)
    log.info("A2A agent at %s (streaming: %s)", url, not args.no_streaming)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
