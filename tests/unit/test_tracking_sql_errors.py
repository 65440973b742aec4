"""SqlTrackingStore: URLs, error translation, building from settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from taskplane.config import Settings
from taskplane.errors import BackendError, ConfigurationError
from taskplane.tracking import (
    ConfidenceTracker,
    DataPoint,
    InMemoryTrackingStore,
    SqlTrackingStore,
    build_tracker,
)


def test_unreachable_database_is_a_backend_error_without_the_password() -> None:
    store = SqlTrackingStore("postgresql+psycopg://user:s3cret@127.0.0.1:1/db")
    with pytest.raises(BackendError) as caught:
        store.points()
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "s3cret" not in message
    assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)
    store.close()


def test_unusable_sqlite_path_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    store = SqlTrackingStore(f"sqlite:///{tmp_path / 'dir.db'}")
    with pytest.raises(BackendError, match=r"dir\.db"):
        store.add([DataPoint(agent_id="a", confidence=0.5, timestamp=1.0)])
    store.close()


@pytest.mark.parametrize(
    "url", ["mysql://x@localhost/db", "::not a url::", "postgresql+nosuchdriver://x@h/db"]
)
def test_unsupported_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SqlTrackingStore(url)


def test_sqlite_file_is_created_with_its_directory_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "tracking.db"
    store = SqlTrackingStore(f"sqlite:///{path}")
    store.add([DataPoint(agent_id="a", confidence=0.5, timestamp=1.0)])
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()
    assert path.exists()


def test_in_memory_sqlite_works_across_threads() -> None:
    store = SqlTrackingStore("sqlite://")
    tracker = ConfidenceTracker(store, clock=lambda: 100.0)
    tracker.record(DataPoint(agent_id="a", confidence=0.5, timestamp=99.0))
    assert tracker.get_agent_stats("a")["totalExecutions"] == 1
    store.close()


def test_build_tracker_from_settings(tmp_path: Path) -> None:
    events: list[str] = []
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 't.db'}",
        anomaly_detection={"low_confidence_threshold": 0.9},
        aggregation={"minute": 5},
    )
    tracker = build_tracker(settings, emit=lambda name, data: events.append(data["type"]))
    assert isinstance(tracker.store, SqlTrackingStore)
    assert tracker.anomaly.low_confidence_threshold == 0.9
    assert tracker.aggregation.minute == 5
    tracker.close()
    memory = build_tracker(Settings(database_url="memory://"), emit=lambda n, d: None)
    assert isinstance(memory.store, InMemoryTrackingStore)
