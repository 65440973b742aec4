"""The worker's background event sender: batched, ordered, flushed on close."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from taskplane.events import RedisEventBus, redis_bus
from tests.support import wait_until

pytestmark = pytest.mark.integration


def test_background_sender_keeps_order_and_flushes_on_close(redis_client: redis.Redis) -> None:
    reader = RedisEventBus(redis_client, prefix="bg-test")
    got: list[int] = []
    done = threading.Event()

    def collect(event: dict[str, Any]) -> None:
        got.append(event["data"]["n"])
        if len(got) == 500:
            done.set()

    reader.subscribe(collect)
    writer = RedisEventBus(redis_client, prefix="bg-test", background=True)
    started = time.perf_counter()
    for n in range(500):
        writer.publish("task:started", {"n": n})
    publish_s = time.perf_counter() - started
    writer.close()  # sends whatever is still queued
    assert done.wait(5)
    reader.close()
    assert got == list(range(500))
    assert [e["data"]["n"] for e in reader.recent(3)] == [497, 498, 499]
    assert publish_s < 0.5  # queued, not one round trip each


def test_background_sender_survives_redis_down() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    bus = RedisEventBus(client, prefix="bg-down", background=True)
    bus.publish("task:started", {"n": 1})
    bus.close()  # logs and drops; must not raise or hang
    assert not bus._sender.is_alive()  # type: ignore[union-attr]


def test_the_sender_keeps_sending_after_the_plan_store_takes_its_queue(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """take_queued() may empty the queue while the sender lingers; it must wait again, not stop."""
    monkeypatch.setattr(redis_bus, "LINGER_S", 0.3)  # a linger long enough to take the queue in
    bus = RedisEventBus(redis_client, prefix="bg-taken", background=True)
    bus.publish("task:started", {"n": 1})
    time.sleep(0.1)  # the sender has woken and lingers
    taken = bus.take_queued()
    time.sleep(0.4)  # the linger is over: the sender found its queue empty
    bus.publish("circuit:open", {"n": "after"})
    wait_until(lambda: bool(bus.recent(1, "circuit:open")))
    found = bus.recent(1, "circuit:open")
    bus.close()
    assert len(taken) == 1
    assert [e["data"]["n"] for e in found] == ["after"]
