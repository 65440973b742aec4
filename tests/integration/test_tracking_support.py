"""Fixtures for the tracking behaviour suites: one store per backend, and a fake clock.

Every suite using ``store_url`` runs against the in-memory store, a SQLite
file and a real PostgreSQL (``TASKPLANE_TEST_DATABASE_URL``, by default the
local ``test`` database). Each PostgreSQL test gets its own schema, dropped
afterwards. A PostgreSQL that cannot be reached fails the tests in CI (``CI``
set) and skips them, loudly, on a developer machine without one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from taskplane.tracking import DataPoint, InMemoryTrackingStore, SqlTrackingStore, TrackingStore

PG_URL = os.environ.get(
    "TASKPLANE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

#: "Now" in the suites: not aligned to a minute, hour or day.
NOW = 1_750_000_000.0 + 1234.5

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


class FakeClock:
    """A settable epoch clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def point(
    agent: str,
    confidence: float,
    timestamp: float,
    *,
    pattern: str = "",
    success: bool = True,
    ms: float = 100.0,
    tokens: int | None = None,
) -> DataPoint:
    return DataPoint(
        agent_id=agent,
        pattern_name=pattern,
        task_type="agent",
        confidence=confidence,
        success=success,
        timestamp=timestamp,
        execution_time=ms,
        tokens=tokens,
    )


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL; yields a URL whose search_path is it."""
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        message = f"the tracking tests need PostgreSQL at {PG_URL}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing service is a failure
        pytest.skip(message + " (set TASKPLANE_TEST_DATABASE_URL; CI fails here)")
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


StoreFactory = Callable[[], TrackingStore]


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes stores over one database (the in-memory backend shares one instance)."""
    opened: list[TrackingStore] = []

    def sql_factory(url: str) -> StoreFactory:
        def make() -> TrackingStore:
            store = SqlTrackingStore(url)
            opened.append(store)
            return store

        return make

    if request.param == "memory":
        shared = InMemoryTrackingStore()
        yield lambda: shared
    elif request.param == "sqlite":
        yield sql_factory(f"sqlite:///{tmp_path / 'tracking.db'}")
    else:
        with postgres_schema() as url:
            try:
                yield sql_factory(url)
            finally:
                for store in opened:
                    store.close()
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> TrackingStore:
    return store_factory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
