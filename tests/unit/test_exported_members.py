"""The package root: ``__all__`` covers the public contract, and importing connects to nothing."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import taskplane

ROOT = Path(__file__).resolve().parents[2]

#: The names users, other services and acceptance checks import from ``taskplane``.
CONTRACT = {
    "ExecutionEngine",
    "ExecutionTask",
    "ParallelExecutionPlan",
    "SequentialExecutionPlan",
    "ExecutionResult",
    "PlanFailedError",
    "Settings",
    "function",
}

#: Everything the package root exports: the contract and the names around it. A name
#: added to or dropped from ``__all__`` is a change to the public API, made here too.
EXPORTED = CONTRACT | {
    # running work, and from asyncio code
    "PlanHandle",
    "AsyncExecutionEngine",
    "AsyncPlanHandle",
    # plans, tasks, results
    "Strategy",
    "TaskStatus",
    "TaskType",
    # named functions for `function` tasks
    "FunctionResult",
    # configuration
    "load_settings",
    # errors
    "BackendError",
    "CircuitOpenError",
    "ConfigurationError",
    "ExecutionError",
    "TaskplaneError",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
}

#: What the contract calls on an engine and on a plan handle.
ENGINE_MEMBERS = {
    "register_agent",
    "execute_task",
    "execute_parallel",
    "execute_sequential",
    "submit",
    "close",
    "on",
    "tracker",
    "cache",
}
HANDLE_MEMBERS = {"wait", "cancel", "status", "as_completed"}
#: The asyncio engine and handle offer the same verbs, awaited.
ASYNC_ENGINE_MEMBERS = {
    "register_agent",
    "execute_task",
    "execute_parallel",
    "execute_sequential",
    "submit",
    "aclose",
    "on",
    "subscribe",
}
RESULT_FIELDS = {
    "task_id",
    "status",
    "result",
    "error",
    "confidence",
    "execution_time",
    "retries",
    "metadata",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(taskplane.__all__) == EXPORTED


def test_every_exported_name_exists() -> None:
    missing = [name for name in taskplane.__all__ if not hasattr(taskplane, name)]
    assert missing == []


def test_all_has_no_duplicates() -> None:
    assert len(taskplane.__all__) == len(set(taskplane.__all__))


def test_star_import_gives_exactly_the_public_api() -> None:
    namespace: dict[str, object] = {}
    exec("from taskplane import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPORTED


def test_exported_classes_say_they_are_taskplane_s() -> None:
    for name in taskplane.__all__:
        member = getattr(taskplane, name)
        module = getattr(member, "__module__", None)
        if module is not None and isinstance(member, type):
            assert module.startswith("taskplane."), name


def test_engine_and_handle_members() -> None:
    assert set(dir(taskplane.ExecutionEngine)) >= ENGINE_MEMBERS
    assert set(dir(taskplane.PlanHandle)) >= HANDLE_MEMBERS


def test_async_engine_and_handle_members_are_coroutines() -> None:
    assert set(dir(taskplane.AsyncExecutionEngine)) >= ASYNC_ENGINE_MEMBERS
    assert set(dir(taskplane.AsyncPlanHandle)) >= HANDLE_MEMBERS
    for name in ASYNC_ENGINE_MEMBERS - {"subscribe"}:
        assert inspect.iscoroutinefunction(getattr(taskplane.AsyncExecutionEngine, name)), name
    for name in HANDLE_MEMBERS - {"as_completed"}:
        assert inspect.iscoroutinefunction(getattr(taskplane.AsyncPlanHandle, name)), name
    assert inspect.isasyncgenfunction(taskplane.AsyncPlanHandle.as_completed)


def test_result_fields() -> None:
    assert set(taskplane.ExecutionResult.model_fields) >= RESULT_FIELDS


def test_plan_failed_error_carries_results() -> None:
    error = taskplane.PlanFailedError("failed", ["r"], "p1")
    assert error.results == ["r"]
    assert isinstance(error, taskplane.TaskplaneError)


_NO_NETWORK = """
import json, socket

attempts = []

def refuse(self, address, *args, **kwargs):
    attempts.append(repr(address))
    raise OSError(f"test forbids connecting to {address!r}")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse

import taskplane

engine = taskplane.ExecutionEngine()
engine.close()
taskplane.AsyncExecutionEngine()
print(json.dumps(attempts))
"""


def test_import_and_engine_construction_open_no_socket(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPLANE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert list(tmp_path.iterdir()) == []  # and it wrote nothing (no SQLite file, no state)
