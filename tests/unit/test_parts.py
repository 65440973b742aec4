"""The composition root: parts built once for a role, closed together, no connection made.

Redis is a port nothing listens on: building, reading the parts' wiring and
closing them must never need it.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskplane.config import CacheConfig, Settings
from taskplane.devtools.redis_server import free_port
from taskplane.events import EventHooks
from taskplane.models import TaskType
from taskplane.parts import Parts
from taskplane.tasks.app import create_app, settings_of
from taskplane.tasks.base import TaskplaneTask, WorkerParts
from taskplane.tracking.recorder import TrackingHooks


def nowhere(**options: Any) -> Settings:
    return Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url="sqlite:///:memory:",
        worker_concurrency=4,
        **options,
    )


class NoDispatch:
    """Building parts sends nothing."""

    def enqueue(self, *_: Any) -> None:
        raise AssertionError("nothing is sent while parts are built")

    deliver = submit = enqueue  # type: ignore[assignment]


def test_client_parts_are_built_without_connecting_and_run_no_task() -> None:
    parts = Parts.for_client(nowhere(), dispatch=NoDispatch())
    try:
        assert parts.runner.handlers == {}
        assert parts.members is None
        assert parts.plans.hooks is parts.hooks
        assert parts.cache is not None and parts.cache.cache is parts.results
        assert parts.tracker is None  # opened when first asked for
        assert parts.tracking() is parts.tracking() is parts.tracker
        assert [type(h) for h in parts.hooks.hooks] == [EventHooks]
    finally:
        parts.close()


def test_a_disabled_cache_is_no_cache_for_the_runner() -> None:
    parts = Parts.for_client(nowhere(cache=CacheConfig(enabled=False)), dispatch=NoDispatch())
    try:
        assert parts.cache is None and parts.runner.cache is None
        assert parts.results.config.enabled is False  # stats and clear still work on it
    finally:
        parts.close()


def test_worker_parts_wire_every_handler_and_the_outcome_listeners() -> None:
    parts = Parts.for_worker(
        nowhere(tracking_enabled=True),
        dispatch=NoDispatch(),
        worker="w1",
    )
    try:
        assert set(parts.runner.handlers) >= {TaskType.AGENT, TaskType.FUNCTION, TaskType.HTTP}
        assert parts.member_runner.runner is parts.runner
        assert parts.plans.hooks is parts.hooks
        kinds = [type(h) for h in parts.hooks.hooks]
        assert kinds[0] is EventHooks and kinds[-1] is TrackingHooks
        assert parts.recorder is not None and parts.tracker is not None
    finally:
        parts.close()


def test_closing_runs_every_closer_even_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    parts = Parts.for_client(nowhere(), dispatch=NoDispatch())
    closed: list[str] = []

    class Broken:
        def close(self) -> None:
            raise RuntimeError("would not close")

    from taskplane.parts import _closing

    _closing(parts._stack, Broken())
    parts._stack.callback(lambda: closed.append("first built"))
    parts.close()
    assert closed == ["first built"]
    assert "would not close" in caplog.text


def test_an_apps_tasks_share_one_worker_parts_and_its_settings() -> None:
    settings = nowhere()
    app = create_app(settings)
    names = ("run_task", "execute_plan", "check_anomalies", "prune_tracking")
    tasks = [app.tasks[f"taskplane.{name}"] for name in names]
    assert all(isinstance(task, TaskplaneTask) for task in tasks)
    assert len({id(task.resources) for task in tasks}) == 1
    assert settings_of(app) is settings
    assert not hasattr(app, "taskplane_settings")


def test_worker_parts_are_built_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []

    class Built:
        def __init__(self, worker: str) -> None:
            self.worker = worker

        def close(self) -> None:
            built.append(f"closed {self.worker}")

    def for_worker(settings: Settings, *, worker: str = "", **_: Any) -> Built:
        built.append(worker)
        return Built(worker)

    monkeypatch.setattr(Parts, "for_worker", for_worker)
    resources = WorkerParts(create_app(nowhere()), nowhere())
    first = resources.get("w1")
    assert resources.get("w2") is first  # one per process, whichever task asks
    monkeypatch.setattr("os.getpid", lambda: -1)  # a forked child: the parent's are not its own
    assert resources.get("w3") is not first
    resources.close()
    assert built == ["w1", "w3", "closed w3"]
