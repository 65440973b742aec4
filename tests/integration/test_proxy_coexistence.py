"""taskplane beside another generated copy of ``parallax.confidence`` in one process.

The other copy stands in for the Parallax SDK's: generated here with
grpcio-tools from its own ``.proto`` (package ``parallax.confidence``, same
field numbers, other file name or the same one, other options, other order)
into protobuf's default pool. Each scenario runs in a fresh interpreter,
because what is under test is the import order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: The SDK's copy: same wire contract, messages in another order, other options.
OTHER_PROTO = """
syntax = "proto3";
package parallax.confidence;
option java_package = "ai.parallax.sdk.confidence";
option go_package = "github.com/example/parallax/confidence";
option optimize_for = SPEED;
import "google/protobuf/timestamp.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/empty.proto";

message Capabilities {
  string agent_id = 1;
  string name = 2;
  repeated string capabilities = 3;
  double expertise_level = 4;
  map<string, double> capability_scores = 5;
}
message Health {
  enum Status { UNKNOWN = 0; HEALTHY = 1; UNHEALTHY = 2; DEGRADED = 3; }
  Status status = 1;
  string message = 2;
  google.protobuf.Timestamp last_check = 3;
  map<string, string> details = 4;
}
message ConfidenceResult {
  string value_json = 1;
  double confidence = 2;
  string agent_id = 3;
  google.protobuf.Timestamp timestamp = 4;
  repeated string uncertainties = 5;
  string reasoning = 6;
  map<string, string> metadata = 7;
}
message AgentRequest {
  string task_id = 1;
  string task_description = 2;
  google.protobuf.Struct data = 3;
  map<string, string> context = 4;
  int32 timeout_ms = 5;
  string pattern_name = 6;
}
service ConfidenceAgent {
  rpc GetCapabilities(google.protobuf.Empty) returns (Capabilities);
  rpc HealthCheck(google.protobuf.Empty) returns (Health);
  rpc Analyze(AgentRequest) returns (ConfidenceResult);
}
"""

#: Runs in the subprocess: argv = [order, module name of the SDK copy].
SCENARIO = textwrap.dedent(
    """
    import importlib, json, sys
    from concurrent import futures

    order, module = sys.argv[1], sys.argv[2]

    def load_sdk():
        pb2 = importlib.import_module(module + "_pb2")
        pb2_grpc = importlib.import_module(module + "_pb2_grpc")
        return pb2, pb2_grpc

    def load_taskplane():
        import taskplane
        from taskplane.contract import CallContext
        from taskplane.models import ExecutionTask
        from taskplane.proxy import GrpcTransport
        from taskplane.proxy.registry import make_agent_info
        return taskplane, CallContext, ExecutionTask, GrpcTransport, make_agent_info

    if order == "sdk-first":
        pb2, pb2_grpc = load_sdk()
        taskplane, CallContext, ExecutionTask, GrpcTransport, make_agent_info = load_taskplane()
    else:
        taskplane, CallContext, ExecutionTask, GrpcTransport, make_agent_info = load_taskplane()
        built_before = "taskplane.proxy.parallax" in sys.modules
        # Build taskplane's copy first: call an agent served by taskplane's own glue.
        from tests.agents import GrpcAgentServer
        own = GrpcAgentServer().start()
        transport = GrpcTransport()
        info = make_agent_info("own", own.endpoint, "grpc")
        call = CallContext(timeout_s=5.0, idempotency_key="k")
        task = ExecutionTask(id="t0", type="agent", target="own", payload={"data": {"n": 1}})
        first = transport.send(info, task, call, timeout_s=5.0)
        transport.close()
        own.stop()
        pb2, pb2_grpc = load_sdk()

    import grpc

    class SdkAgent(pb2_grpc.ConfidenceAgentServicer):
        def Analyze(self, request, context):
            from google.protobuf import json_format
            seen = {
                "task_id": request.task_id,
                "task_description": request.task_description,
                "data": json_format.MessageToDict(request.data),
                "context": dict(request.context),
                "timeout_ms": request.timeout_ms,
                "pattern_name": request.pattern_name,
            }
            reply = pb2.ConfidenceResult(
                value_json=json.dumps(seen), confidence=0.75, agent_id="sdk",
                reasoning="sdk agent", uncertainties=["u1"], metadata={"k": "v"},
            )
            reply.timestamp.GetCurrentTime()
            return reply

        def HealthCheck(self, request, context):
            return pb2.Health(status=pb2.Health.DEGRADED, message="busy", details={"q": "3"})

        def GetCapabilities(self, request, context):
            return pb2.Capabilities(agent_id="sdk", capabilities=["a", "b"])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb2_grpc.add_ConfidenceAgentServicer_to_server(SdkAgent(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        transport = GrpcTransport()
        info = make_agent_info("sdk", f"127.0.0.1:{port}", "grpc")
        call = CallContext(timeout_s=5.0, idempotency_key="k")
        task = ExecutionTask(
            id="t1", type="agent", target="sdk",
            payload={"task": "judge", "data": {"x": [1, "two", None]}, "context": {"u": "me"}},
            metadata={"pattern": "p1"},
        )
        outcome = transport.send(info, task, call, timeout_s=5.0)
        health = transport.check_health(info, timeout_s=5.0)
        caps = transport.capabilities(info, timeout_s=5.0)
        transport.close()
    finally:
        server.stop(0)
    report = {
        "result": outcome.result,
        "confidence": outcome.confidence,
        "metadata": outcome.metadata,
        "health": [health.healthy, health.status, health.message, health.details],
        "capabilities": caps,
        "sdk_file": pb2.DESCRIPTOR.name,
    }
    if order == "taskplane-first":
        report["first"] = first.result["echo"]["data"]
        report["built_before_use"] = built_before
    print("REPORT " + json.dumps(report))
    """
)


def generate_copy(tmp_path: Path, proto_name: str) -> str:
    """Generate the SDK's copy with grpcio-tools; returns its module name."""
    proto = tmp_path / proto_name
    proto.parent.mkdir(parents=True, exist_ok=True)
    proto.write_text(OTHER_PROTO)
    from grpc_tools import protoc

    args = [
        "protoc",
        f"--proto_path={tmp_path}",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        str(proto),
    ]
    include = Path(protoc.__file__).parent / "_proto"
    assert protoc.main([*args, f"--proto_path={include}"]) == 0
    for folder in proto.relative_to(tmp_path).parents:
        if str(folder) != ".":
            (tmp_path / folder / "__init__.py").touch()
    return str(proto.relative_to(tmp_path).with_suffix("")).replace("/", ".")


def run_scenario(tmp_path: Path, order: str, module: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, order, module],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("REPORT ")]
    report: dict[str, Any] = json.loads(line.removeprefix("REPORT "))
    return report


@pytest.mark.parametrize("proto_name", ["confidence.proto", "parallax/confidence.proto"])
@pytest.mark.parametrize("order", ["sdk-first", "taskplane-first"])
def test_taskplane_calls_an_sdk_agent_beside_another_copy(
    tmp_path: Path, order: str, proto_name: str
) -> None:
    module = generate_copy(tmp_path, proto_name)
    report = run_scenario(tmp_path, order, module)
    assert report["sdk_file"] == proto_name
    # The SDK-generated server decoded taskplane's request field by field.
    assert report["result"] == {
        "task_id": "t1",
        "task_description": "judge",
        "data": {"x": [1, "two", None]},
        "context": {"u": "me"},
        "timeout_ms": report["result"]["timeout_ms"],
        "pattern_name": "p1",
    }
    assert 0 < report["result"]["timeout_ms"] <= 5000
    assert report["confidence"] == 0.75
    assert report["metadata"] == {
        "reasoning": "sdk agent",
        "uncertainties": ["u1"],
        "agentMetadata": {"k": "v"},
    }
    assert report["health"] == [False, "degraded", "busy", {"q": "3"}]
    assert report["capabilities"] == ["a", "b"]
    if order == "taskplane-first":
        assert report["built_before_use"] is False
        assert report["first"] == {"n": 1}


def test_importing_taskplane_builds_no_grpc_messages() -> None:
    code = (
        "import sys, taskplane\n"
        "from google.protobuf import descriptor_pool\n"
        "assert 'taskplane.proxy.parallax' not in sys.modules\n"
        "try:\n"
        "    descriptor_pool.Default().FindMessageTypeByName('parallax.confidence.AgentRequest')\n"
        "except KeyError:\n"
        "    print('absent')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "absent"
