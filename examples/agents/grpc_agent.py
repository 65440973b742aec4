"""A small gRPC agent implementing ``parallax.confidence.ConfidenceAgent``.

Run it with::

    python -m examples.agents.grpc_agent --port 50051

and register it with ``taskplane agents add toy-grpc 127.0.0.1:50051 --protocol grpc``.
"""

from __future__ import annotations

import argparse
import json
import logging
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import json_format

from examples.agents.analysis import analyze
from taskplane.proxy import parallax

log = logging.getLogger("grpc_agent")

DEFAULT_PORT = 50051
AGENT_ID = "example-grpc-agent"
CAPABILITIES = ["summarize", "count-words"]
#: Threads serving calls at once.
MAX_WORKERS = 32


class ToyAgent(parallax.ConfidenceAgentServicer):
    """Answers with the toy analysis of ``data``."""

    def Analyze(self, request: Any, context: grpc.ServicerContext) -> Any:
        data = json_format.MessageToDict(request.data)
        value, confidence, reasoning = analyze(data, task=request.task_description)
        reply = parallax.ConfidenceResult(
            value_json=json.dumps(value),
            confidence=confidence,
            agent_id=AGENT_ID,
            reasoning=reasoning,
            uncertainties=[] if confidence >= 0.8 else ["input is ambiguous"],
        )
        reply.timestamp.GetCurrentTime()
        return reply

    def HealthCheck(self, request: Any, context: grpc.ServicerContext) -> Any:
        health = parallax.Health(status=parallax.Health.HEALTHY, message="ok")
        health.last_check.GetCurrentTime()
        return health

    def GetCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        return parallax.Capabilities(
            agent_id=AGENT_ID,
            name="Toy gRPC agent",
            capabilities=CAPABILITIES,
            expertise_level=0.5,
            capability_scores={name: 0.5 for name in CAPABILITIES},
        )


def serve(host: str, port: int) -> tuple[grpc.Server, int]:
    """Start the agent on *host*:*port* (0 picks a free port); returns the server and port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS))
    parallax.add_servicer_to_server(ToyAgent(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server, port = serve(args.host, args.port)
    log.info("gRPC agent listening on %s:%d", args.host, port)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(grace=1.0)


if __name__ == "__main__":
    main()
