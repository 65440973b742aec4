"""Event bus behaviour against the in-memory bus and a real Redis, across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskplane.errors import BackendError
from taskplane.events import (
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_STARTED,
    Event,
    EventBus,
    InMemoryEventBus,
    RedisEventBus,
)
from taskplane.events.bus import event_id_key
from taskplane.events.redis_bus import LISTENER_CLIENT_NAME
from taskplane.keys import event_stream_key
from tests.support import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefix() -> str:
    # Pub/sub channels are not per database: a unique prefix keeps runs apart.
    return f"tp-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis"])
def bus(request: pytest.FixtureRequest, prefix: str) -> Iterator[EventBus]:
    made: EventBus
    if request.param == "memory":
        made = InMemoryEventBus()
    else:
        made = RedisEventBus(request.getfixturevalue("redis_client"), prefix=prefix)
    yield made
    made.close()


# --- behaviour suite: both buses -----------------------------------------------------------


def test_subscriber_receives_published_events_in_order(bus: EventBus) -> None:
    got: list[Event] = []
    bus.subscribe(got.append)
    for i in range(20):
        bus.publish(TASK_STARTED, {"i": i, "planId": "p", "worker": "w"})
    assert wait_until(lambda: len(got) == 20)
    assert [e["data"]["i"] for e in got] == list(range(20))
    assert got[0]["type"] == TASK_STARTED and isinstance(got[0]["timestamp"], float)


def test_type_filter_and_failing_handler(bus: EventBus) -> None:
    done: list[Event] = []
    bus.subscribe(lambda event: 1 / 0)
    bus.subscribe(done.append, event_types=[TASK_COMPLETED])
    bus.publish(TASK_STARTED, {"i": 0})
    bus.publish(TASK_COMPLETED, {"i": 1})
    bus.publish(TASK_COMPLETED, {"i": 2})
    assert wait_until(lambda: len(done) == 2)
    assert [e["data"]["i"] for e in done] == [1, 2]


def test_recent_newest_last_with_type_filter(bus: EventBus) -> None:
    for i in range(30):
        bus.publish(TASK_FAILED if i % 3 == 0 else TASK_COMPLETED, {"i": i})
    assert [e["data"]["i"] for e in bus.recent(3)] == [27, 28, 29]
    assert [e["data"]["i"] for e in bus.recent(4, TASK_FAILED)] == [18, 21, 24, 27]
    assert len(bus.recent()) == 30


def test_closed_subscription_stops_receiving(bus: EventBus) -> None:
    got: list[Event] = []
    subscription = bus.subscribe(got.append)
    bus.publish(TASK_STARTED, {"i": 0})
    assert wait_until(lambda: len(got) == 1)
    subscription.close()
    witness: list[Event] = []  # subscribed later, so handed each event after the closed one
    bus.subscribe(witness.append)
    bus.publish(TASK_STARTED, {"i": 1})
    assert wait_until(lambda: any(e["data"]["i"] == 1 for e in witness))
    assert len(got) == 1


# --- Redis only ----------------------------------------------------------------------------

CHILD = """
import json, sys, threading, redis
from taskplane.events import RedisEventBus
url, prefix, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
got, done = [], threading.Event()
def handler(event):
    got.append(event["data"]["i"])
    if len(got) == expected:
        done.set()
bus = RedisEventBus(redis.Redis.from_url(url), prefix=prefix)
bus.subscribe(handler, event_types=["task:completed"])
print("ready", flush=True)
done.wait(20)
bus.close()
print(json.dumps(got), flush=True)
"""


def test_subscriber_in_another_process_gets_every_event_in_order(
    redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    count = 200
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, redis_url, prefix, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        bus = RedisEventBus(redis_client, prefix=prefix)
        for i in range(count):
            bus.publish(TASK_STARTED, {"i": -1})  # filtered out by the child
            bus.publish(TASK_COMPLETED, {"i": i, "planId": "p1", "worker": "w1"})
        received = json.loads(child.stdout.readline())
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert received == list(range(count))


def test_recent_is_capped_by_the_stream_length(redis_client: redis.Redis, prefix: str) -> None:
    bus = RedisEventBus(redis_client, prefix=prefix, stream_maxlen=20)
    for i in range(300):
        bus.publish(TASK_STARTED, {"i": i})
    assert [e["data"]["i"] for e in bus.recent(1000)] == list(range(280, 300))
    assert redis_client.xlen(event_stream_key(prefix)) < 300


def test_subscription_close_returns_promptly(redis_client: redis.Redis, prefix: str) -> None:
    bus = RedisEventBus(redis_client, prefix=prefix)
    subscription = bus.subscribe(lambda event: None)
    listeners = [t for t in threading.enumerate() if t.name.startswith("taskplane-events")]
    started = time.monotonic()
    subscription.close()
    assert time.monotonic() - started < 1.0
    assert all(not t.is_alive() for t in listeners)


def test_publish_with_redis_down_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    bus = RedisEventBus(client, prefix="tp-test-down")
    started = time.monotonic()
    for i in range(20):
        bus.publish(TASK_STARTED, {"i": i})
    assert time.monotonic() - started < 5.0
    assert sum("dropping event" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(BackendError):
        bus.recent()


def listener_connections(client: redis.Redis) -> list[dict[str, str]]:
    """The named connections event listeners read the stream on, in this database."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return [
        c
        for c in client.client_list()
        if c.get("name") == LISTENER_CLIENT_NAME and int(c["db"]) == db
    ]


def test_listener_resumes_after_its_connection_drops_without_gaps_or_repeats(
    redis_client: redis.Redis, prefix: str
) -> None:
    bus = RedisEventBus(redis_client, prefix=prefix)
    got: list[Event] = []
    bus.subscribe(got.append)
    try:
        assert wait_until(lambda: bool(listener_connections(redis_client)))
        for i in range(50):
            bus.publish(TASK_COMPLETED, {"i": i})
        killed = {c["id"] for c in listener_connections(redis_client)}
        for client_id in killed:
            redis_client.client_kill_filter(_id=client_id)
        for i in range(50, 100):  # published while the listener reconnects
            bus.publish(TASK_COMPLETED, {"i": i})
        assert wait_until(lambda: len(got) >= 100, timeout_s=8.0)
        bus.publish(TASK_COMPLETED, {"i": 100})  # a repeat, were there one, would come before
        assert wait_until(lambda: got[-1]["data"]["i"] == 100)
        assert [e["data"]["i"] for e in got] == list(range(101))
        ids = [e["id"] for e in got]
        assert ids == sorted(ids, key=event_id_key) and len(set(ids)) == 101
        now = {c["id"] for c in listener_connections(redis_client)}
        assert now and killed.isdisjoint(now)
    finally:
        bus.close()


def test_a_new_bus_resumes_after_an_event_id(redis_client: redis.Redis, prefix: str) -> None:
    first = RedisEventBus(redis_client, prefix=prefix)
    seen: list[Event] = []
    first.subscribe(seen.append)
    for i in range(10):
        first.publish(TASK_COMPLETED, {"i": i})
    assert wait_until(lambda: len(seen) == 10)
    first.close()
    last = seen[3]["id"]  # the last event the first process handled
    second = RedisEventBus(redis_client, prefix=prefix)
    resumed: list[Event] = []
    try:
        second.subscribe(resumed.append, event_types=[TASK_COMPLETED], since=last)
        second.publish(TASK_COMPLETED, {"i": 10})
        assert wait_until(lambda: len(resumed) >= 7)
        second.publish(TASK_COMPLETED, {"i": 11})  # a repeat, were there one, would come before
        assert wait_until(lambda: resumed[-1]["data"]["i"] == 11)
        assert [e["data"]["i"] for e in resumed] == list(range(4, 12))
    finally:
        second.close()


def test_a_subscriber_behind_the_trimmed_stream_is_warned(
    redis_client: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = RedisEventBus(redis_client, prefix=prefix, stream_maxlen=10)
    for i in range(5):
        bus.publish(TASK_COMPLETED, {"i": i})
    since = bus.recent(5)[0]["id"]
    for i in range(5, 400):  # the stream keeps about the last 10
        bus.publish(TASK_COMPLETED, {"i": i})
    got: list[Event] = []
    bus.subscribe(got.append, since=since)
    try:
        assert wait_until(lambda: bool(got) and got[-1]["data"]["i"] == 399)
        assert any("trimmed" in r.getMessage() for r in caplog.records)
    finally:
        bus.close()
