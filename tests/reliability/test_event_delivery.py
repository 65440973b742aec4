"""Events you can count on: every recorded outcome's event reaches a subscriber in another process.

A subscriber process (``tests/reliability/subscriber.py``, through
``engine.on``) listens before the plan starts; a window plan of 2,000 tasks
(one in ten fails on purpose) runs on two workers. Afterwards the subscriber
must hold exactly one ``task:completed`` (success) or ``task:failed``
(anything else) per recorded outcome, none missing, none twice, in stream
order.

The second scenario does the same while the subscriber's connection is cut
under it (``CLIENT KILL`` of its listener connection, three times) and then
the subscriber itself is SIGKILLed and a new one started with
``since=`` the last id the first one wrote: together they must still hold
each outcome's event exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskplane import ExecutionResult, TaskStatus
from taskplane.events.bus import event_id_key
from taskplane.events.redis_bus import LISTENER_CLIENT_NAME
from tests.reliability.conftest import SHORT, fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import LOG_DIR, ROOT, Cluster, record_figures, running_cluster
from tests.support import wait_until

TASKS = 2000
RECONNECT_TASKS = 1000 if SHORT else 2000
#: Tasks in flight at once (a window: each finishing task enqueues the next).
WINDOW = 50
#: Events the stream keeps; more than a whole plan's (started + outcome per task).
STREAM_MAXLEN = 10_000
#: Connection cuts while the reconnect scenario runs, at these shares of its outcomes.
CUTS = (0.2, 0.4, 0.6)
#: Where the first subscriber of the reconnect scenario is SIGKILLed.
REPLACE_AT = 0.75


@pytest.fixture(scope="module")
def events_cluster() -> Iterator[Cluster]:
    server = PrivateRedis(fresh_dir("redis-events"))
    with (
        server,
        running_cluster(
            server,
            workers=2,
            name="events",
            TASKPLANE_EVENTS_STREAM_MAXLEN=str(STREAM_MAXLEN),
        ) as cluster,
    ):
        yield cluster


class Subscriber:
    """A subscriber process writing every task:completed / task:failed it gets to a file."""

    def __init__(self, cluster: Cluster, out: Path, since: str | None = None) -> None:
        self.out = out
        args = [sys.executable, "-m", "tests.reliability.subscriber", str(out)]
        env = {**os.environ, **cluster.env}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = open(LOG_DIR / f"{out.stem}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*args, since] if since else args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=ROOT,
            env=env,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready", "subscriber did not start"

    def stop(self) -> None:
        """Close its stdin (it closes its engine and exits); SIGKILL if it lingers."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events a subscriber wrote; a last line cut short by a SIGKILL is left out."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def plan_of(count: int, tag: str) -> dict[str, Any]:
    tasks = [
        {"id": f"t{i}", "type": "function", "target": "fail" if i % 10 == 9 else "noop"}
        for i in range(count)
    ]
    return {
        "id": f"ev-{tag}-{uuid.uuid4().hex[:6]}",
        "strategy": "allSettled",
        "maxConcurrency": WINDOW,
        "timeout": 120_000,
        "tasks": tasks,
    }


def expected_events(results: list[ExecutionResult]) -> dict[str, str]:
    """task id → the event type its recorded outcome must produce."""
    return {
        r.task_id: "task:completed" if r.status is TaskStatus.SUCCESS else "task:failed"
        for r in results
    }


def tally(events: list[dict[str, Any]], plan_id: str, expected: dict[str, str]) -> dict[str, Any]:
    """Missing, duplicated and wrong-typed events of one plan; and whether ids ascend."""
    mine = [e for e in events if e["planId"] == plan_id]
    counts = Counter(e["taskId"] for e in mine)
    wrong = [e["taskId"] for e in mine if expected.get(e["taskId"]) != e["type"]]
    ids = [event_id_key(e["id"]) for e in events]
    return {
        "received": len(mine),
        "missing": sorted(set(expected) - set(counts)),
        "duplicated": sorted(t for t, n in counts.items() if n > 1),
        "wrong_type": wrong,
        "ids_ascend": all(a < b for a, b in itertools.pairwise(ids)),
    }


def listener_ids(cluster: Cluster) -> list[str]:
    """Client ids of the event listener connections on the state database (the subscriber's)."""
    client = cluster.redis.client(1)
    try:
        return [c["id"] for c in client.client_list() if c.get("name") == LISTENER_CLIENT_NAME]
    finally:
        client.close()


def outcomes_recorded(cluster: Cluster, plan_id: str) -> int:
    return int(cluster.engine.store.status(plan_id).get("done", 0))


def wait_for_events(path: Path, plan_id: str, count: int, timeout_s: float = 30) -> None:
    wait_until(
        lambda: sum(e["planId"] == plan_id for e in read_events(path)) >= count,
        timeout_s=timeout_s,
        interval_s=0.2,
    )


@pytest.mark.timeout(240)
def test_every_recorded_outcome_reaches_a_subscriber_in_another_process(
    events_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = events_cluster
    out = tmp_path / "events-load.jsonl"
    subscriber = Subscriber(cluster, out)
    try:
        plan = plan_of(TASKS, "load")
        started = time.monotonic()
        results = cluster.engine.execute_parallel(plan)
        elapsed = time.monotonic() - started
        expected = expected_events(results)
        wait_for_events(out, plan["id"], len(expected))
        time.sleep(0.5)  # anything extra (a duplicate) would have arrived by now
    finally:
        subscriber.stop()
    found = tally(read_events(out), plan["id"], expected)
    figures = {
        "tasks": TASKS,
        "failed_on_purpose": sum(t == "task:failed" for t in expected.values()),
        "plan_s": round(elapsed, 1),
        **{k: v if isinstance(v, bool | int) else len(v) for k, v in found.items()},
    }
    record_figures("event_delivery_load", figures)
    assert len(results) == TASKS
    assert found["missing"] == [] and found["duplicated"] == [] and found["wrong_type"] == []
    assert found["received"] == TASKS and found["ids_ascend"]


@pytest.mark.timeout(240)
def test_a_subscriber_cut_off_and_replaced_resumes_without_gaps(
    events_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = events_cluster
    first_out, second_out = tmp_path / "events-first.jsonl", tmp_path / "events-second.jsonl"
    first = Subscriber(cluster, first_out)
    second: Subscriber | None = None
    plan = plan_of(RECONNECT_TASKS, "cut")
    cuts: list[dict[str, Any]] = []
    try:
        handle = cluster.engine.submit(plan)
        for share in CUTS:
            target = int(RECONNECT_TASKS * share)
            assert wait_until(
                lambda t=target: outcomes_recorded(cluster, plan["id"]) >= t, timeout_s=60
            )
            killed = listener_ids(cluster)
            assert killed, "the subscriber has no listener connection"
            admin = cluster.redis.client(1)
            try:
                for client_id in killed:
                    admin.client_kill_filter(_id=client_id)
            finally:
                admin.close()
            back = wait_until(
                lambda k=set(killed): bool(set(listener_ids(cluster)) - k), timeout_s=10
            )
            cuts.append({"at_outcomes": outcomes_recorded(cluster, plan["id"]), "back": back})
        target = int(RECONNECT_TASKS * REPLACE_AT)
        assert wait_until(lambda: outcomes_recorded(cluster, plan["id"]) >= target, timeout_s=60)
        first.kill()  # a crash: whatever it had not written is not handled
        handled = read_events(first_out)
        since = handled[-1]["id"] if handled else None
        replaced_at = outcomes_recorded(cluster, plan["id"])
        second = Subscriber(cluster, second_out, since=since)
        results = handle.wait(120)
        expected = expected_events(results)
        wait_for_events(second_out, plan["id"], len(expected) - len(handled))
        time.sleep(0.5)
    finally:
        first.kill()
        first.log.close()
        if second is not None:
            second.stop()
    first_events, second_events = read_events(first_out), read_events(second_out)
    found = tally(first_events + second_events, plan["id"], expected)
    figures = {
        "tasks": RECONNECT_TASKS,
        "connection_cuts": len(cuts),
        "cut_at_outcomes": [c["at_outcomes"] for c in cuts],
        "reconnected_after_each_cut": all(c["back"] for c in cuts),
        "first_subscriber_killed_at_outcomes": replaced_at,
        "events_by_first": sum(e["planId"] == plan["id"] for e in first_events),
        "events_by_second": sum(e["planId"] == plan["id"] for e in second_events),
        **{k: v if isinstance(v, bool | int) else len(v) for k, v in found.items()},
    }
    record_figures("event_delivery_reconnect", figures)
    assert len(results) == RECONNECT_TASKS and all(c["back"] for c in cuts)
    assert found["missing"] == [] and found["duplicated"] == [] and found["wrong_type"] == []
    assert found["received"] == RECONNECT_TASKS and found["ids_ascend"]
