"""``taskplane demo``: the whole data plane on this machine, from nothing.

Finds or starts Redis, starts two workers and the example HTTP and gRPC
agents, runs a parallel and a sequential plan, shows a cache hit, a circuit
breaker opening on a dead agent, confidence statistics and the event stream,
then stops everything it started. Run it from a checkout (it uses
``examples/``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from taskplane.config import Settings
from taskplane.devtools import redis_server
from taskplane.devtools.cluster import start_worker, wait_ready
from taskplane.engine import ExecutionEngine
from taskplane.errors import ConfigurationError, PlanFailedError
from taskplane.models import ExecutionResult

#: Redis database the demo keeps its queue and state in.
DEMO_DB = 9
STATE_DIR = Path(".run") / "demo"


def _table(title: str, results: list[ExecutionResult]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("task", "target", "status", "confidence", "ms", "worker"):
        table.add_column(column, no_wrap=True)
    table.add_column("result", no_wrap=True, overflow="ellipsis", max_width=48)
    for r in results:
        shown = r.error or str(r.result)
        status = r.status.value + (" (cached)" if r.metadata.get("cached") else "")
        conf = "" if r.confidence is None else f"{r.confidence:.2f}"
        table.add_row(
            r.task_id,
            str(r.metadata.get("target", "")),
            status,
            conf,
            f"{r.execution_time:.0f}",
            str(r.metadata.get("worker", "")).split("@")[0],
            shown,
        )
    return table


def _start_agent(module: str, port: int, root: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{module.rsplit('.', 1)[-1]}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port)],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_demo(console: Console) -> None:
    """Run the demo, printing as it goes."""
    root = Path.cwd()
    if not (root / "examples" / "agents").is_dir():
        raise ConfigurationError("run `taskplane demo` from a taskplane checkout (needs examples/)")
    with ExitStack() as stack:
        wanted = os.environ.get("TASKPLANE_REDIS_URL", "redis://127.0.0.1:6379/0")
        base = redis_server.ensure(STATE_DIR, wanted)
        if base != wanted:
            stack.callback(redis_server.stop, STATE_DIR)
            console.print(f"[dim]no Redis at {wanted}; started one at {base}[/dim]")
        url = redis_server.with_db(base, DEMO_DB)
        env = {
            "TASKPLANE_REDIS_URL": url,
            "TASKPLANE_FUNCTION_MODULES": "examples.functions",
            "TASKPLANE_DATABASE_URL": f"sqlite:///{(STATE_DIR / 'tracking.db').resolve()}",
            "TASKPLANE_RETRY_CONFIG__INITIAL_DELAY": "200",
            "TASKPLANE_PATTERNS_DIR": str(root / "examples" / "patterns"),
        }
        settings = Settings(
            redis_url=url,
            database_url=env["TASKPLANE_DATABASE_URL"],
            retry_config={"initial_delay": 200},
            patterns_dir=env["TASKPLANE_PATTERNS_DIR"],
        )
        console.rule("[bold]taskplane demo")
        console.print(f"Redis: {url}")

        http_port, grpc_port, dead_port, a2a_port, mcp_port = (
            redis_server.free_port() for _ in range(5)
        )
        for module, port in (
            ("examples.agents.http_agent", http_port),
            ("examples.agents.grpc_agent", grpc_port),
            ("examples.agents.a2a_agent", a2a_port),
            ("examples.agents.mcp_server", mcp_port),
        ):
            proc = _start_agent(module, port, root, STATE_DIR / "logs")
            stack.callback(_stop, proc)
        workers = [
            start_worker(
                env, concurrency=16, name=f"demo{i}", log_dir=STATE_DIR / "logs", root=root
            )
            for i in range(2)
        ]
        for w in workers:
            stack.callback(w.stop)
        engine = stack.enter_context(ExecutionEngine(settings))
        wait_ready(workers, engine.app.control.ping)
        console.print(f"workers: {', '.join(w.name for w in workers)} (gevent, 16 slots each)")

        seen: Counter[str] = Counter()
        circuit: list[dict[str, Any]] = []
        lock = threading.Lock()

        def on_event(event: dict[str, Any]) -> None:
            with lock:
                seen[event["type"]] += 1
                if event["type"].startswith("circuit:"):
                    circuit.append(event)

        engine.on("*", on_event)
        engine.cache.clear()

        for agent_id, endpoint, protocol, policy in (
            ("architect", f"http://127.0.0.1:{http_port}", "http", None),
            ("engineer", f"127.0.0.1:{grpc_port}", "grpc", None),
            ("reviewer", f"http://127.0.0.1:{http_port}", "http", None),
            ("helper", f"http://127.0.0.1:{a2a_port}", "a2a", None),
            ("words", f"http://127.0.0.1:{mcp_port}/mcp", "mcp", {"tool": "count_words"}),
        ):
            deadline = time.monotonic() + 15
            while True:
                info = engine.register_agent(
                    agent_id, endpoint, protocol, ["code_review"], policy=policy
                )
                if info.healthy or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            console.print(f"agent {agent_id}: {protocol} {endpoint} healthy={info.healthy}")
        broken_id = f"broken-{int(time.time())}"  # a fresh breaker on every run
        engine.register_agent(
            broken_id, f"http://127.0.0.1:{dead_port}", "http", check_health=False
        )

        code = {"code": "def add(a, b):\n    return a + b", "requirements": "add two numbers"}
        parallel = {
            "id": f"demo-parallel-{int(time.time())}",
            "strategy": "all",
            "maxConcurrency": 4,
            "tasks": [
                {"id": "architect", "type": "agent", "target": "architect", "payload": code},
                {
                    "id": "engineer",
                    "type": "agent",
                    "target": "engineer",
                    "payload": {"task": "implement", "data": code},
                },
                {"id": "sum", "type": "function", "target": "add", "payload": {"a": 2, "b": 40}},
                {"id": "health", "type": "http", "target": f"http://127.0.0.1:{http_port}/health"},
            ],
        }
        console.rule("parallel plan (strategy all)")
        console.print(_table("results", engine.execute_parallel(parallel)))

        sequential = {
            "id": f"demo-sequential-{int(time.time())}",
            "tasks": [
                {"id": "design", "type": "agent", "target": "architect", "payload": code},
                {
                    "id": "build",
                    "type": "agent",
                    "target": "engineer",
                    "payload": {"task": "implement", "data": code},
                },
                {
                    "id": "review",
                    "type": "agent",
                    "target": "reviewer",
                    "payload": {"task": "review", "confidenceHint": 0.93},
                },
            ],
        }
        console.rule("sequential plan (each task sees the previous result)")
        results = engine.execute_sequential(sequential)
        console.print(_table("results", results))
        console.print(f"review saw previous = {results[-1].result.get('fields')}")

        console.rule("nested pattern: code-review (architect → engineer → reviewer)")
        review = engine.execute_parallel(
            {
                "id": f"demo-pattern-{int(time.time())}",
                "tasks": [
                    {
                        "id": "code-review",
                        "type": "pattern",
                        "target": "code-review",
                        "payload": {**code, "code": code["code"] + "  # v2"},
                        "metadata": {"cache": False},
                    },
                    {
                        "id": "consensus",
                        "type": "pattern",
                        "target": "consensus",
                        "payload": {"question": "is add() correct?"},
                        "metadata": {"cache": False},
                    },
                ],
            }
        )
        console.print(_table("results", review))
        console.print(f"each pattern ran as a child plan: {review[0].metadata.get('childPlanId')}")

        console.rule("agents the field runs: an A2A agent and an MCP tool")
        text = "taskplane calls agents over A2A and tools over MCP"
        field = engine.execute_parallel(
            {
                "id": f"demo-protocols-{int(time.time())}",
                "strategy": "allSettled",
                "tasks": [
                    {"id": "a2a", "type": "agent", "target": "helper", "payload": {"prompt": text}},
                    {"id": "mcp", "type": "agent", "target": "words", "payload": {"text": text}},
                    {
                        "id": "mcp-refused",
                        "type": "agent",
                        "target": "words",
                        "payload": {"text": 42},
                    },
                ],
            }
        )
        console.print(_table("results", field))

        console.rule("cache: the same confident task again")
        # a fresh question (the sequential plan's review also carried `previous`, another key)
        confident = {
            "id": "review-once",
            "type": "agent",
            "target": "reviewer",
            "payload": {"task": "review", "confidenceHint": 0.93, "asked": time.time()},
        }
        first = engine.execute_task(confident)
        again = engine.execute_task({**confident, "id": "review-again"})
        console.print(_table("results (the second is answered from the cache)", [first, again]))
        console.print(f"cache stats: {engine.cache.stats()}")

        console.rule("circuit breaker: an agent that is down")
        broken = [
            {
                "id": f"b{i}",
                "type": "agent",
                "target": broken_id,
                "payload": {"i": i},
                "metadata": {"retries": 0, "cache": False},
            }
            for i in range(7)
        ]
        try:
            outcome = engine.execute_parallel(
                {
                    "id": f"demo-breaker-{int(time.time())}",
                    "strategy": "allSettled",
                    "maxConcurrency": 1,
                    "tasks": broken,
                }
            )
        except PlanFailedError as exc:
            outcome = list(exc.results)
        console.print(_table("results", outcome))
        time.sleep(0.3)
        for event in circuit:
            console.print(f"event {event['type']}: {event['data']}")

        console.rule("confidence statistics")
        time.sleep(1.5)  # workers write tracking points in batches, about once a second
        stats = Table("agent", "executions", "avg confidence", "success rate", "avg ms")
        for agent_id in ("architect", "engineer", "reviewer"):
            s = engine.tracker.get_agent_stats(agent_id)
            stats.add_row(
                agent_id,
                str(s["totalExecutions"]),
                f"{s['avgConfidence']:.2f}",
                f"{s['successRate']:.2f}",
                f"{s['avgExecutionTime']:.1f}",
            )
        console.print(stats)

        console.rule("events seen by this process")
        with lock:
            console.print(dict(sorted(seen.items())))
        console.print(
            "\nFlower shows every task: [bold]make flower[/bold] "
            "(or `celery -A taskplane.celery_app flower`), then open http://127.0.0.1:5555"
        )
        console.rule("[bold]done — stopping what the demo started")
