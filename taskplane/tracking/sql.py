"""The tracking store on SQLAlchemy: a SQLite file by default, PostgreSQL in production.

SQLite is opened in WAL mode with a busy timeout, so several worker
processes can write to one file while others read. Rollups are upserted in
the same transaction as the points they summarise (``INSERT … ON CONFLICT
DO UPDATE``, one statement per batch). Anomaly episodes rely on a unique
constraint over (agent, type, open marker), so opening one is a single
atomic ``INSERT … ON CONFLICT DO NOTHING`` whichever process gets there
first.

Every SQLAlchemy error is raised as :class:`~taskplane.errors.BackendError`
naming the database URL without its password.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool

from taskplane.errors import BackendError, ConfigurationError
from taskplane.tracking import schema
from taskplane.tracking.points import DataPoint
from taskplane.tracking.rollups import Granularity, Sums, bucket_start
from taskplane.tracking.store import Anomaly, TrackingStore, bucket_deltas

#: How long a SQLite writer waits for another process's write lock, in seconds.
DEFAULT_BUSY_TIMEOUT_S = 30.0

_DIALECTS = ("sqlite", "postgresql")


class SqlTrackingStore(TrackingStore):
    """Tracking data in a SQL database; the schema is created on first use.

    Args:
        database_url: A SQLAlchemy URL: ``sqlite:///path/to/file.db`` or
            ``postgresql+psycopg://user@host/db``. A bare ``sqlite://`` is an
            in-memory database private to this object.
        busy_timeout_s: SQLite only: how long to wait for another writer.

    Raises:
        ConfigurationError: The URL is malformed or names another database.
    """

    def __init__(self, database_url: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S):
        try:
            url = sa.make_url(database_url)
        except sa.exc.ArgumentError as exc:
            raise ConfigurationError(f"invalid tracking database URL: {exc}") from None
        self.safe_url = url.render_as_string(hide_password=True)
        self.dialect = url.get_backend_name()
        if self.dialect not in _DIALECTS:
            raise ConfigurationError(
                f"tracking store supports sqlite and postgresql, not {self.dialect!r}"
            )
        self._serial: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._ready = False
        self._ready_lock = threading.Lock()
        with self._backend():
            try:
                self.engine = self._create_engine(url, busy_timeout_s)
            except (ImportError, sa.exc.NoSuchModuleError) as exc:
                raise ConfigurationError(
                    f"tracking database {self.safe_url}: no such driver installed ({exc}); "
                    "for PostgreSQL: pip install 'taskplane[postgres]'"
                ) from exc

    def _insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        """``INSERT`` with this dialect's ``ON CONFLICT`` clauses."""
        return sqlite.insert(table) if self.dialect == "sqlite" else postgresql.insert(table)

    def _create_engine(self, url: sa.URL, busy_timeout_s: float) -> sa.Engine:
        if self.dialect == "postgresql":
            return sa.create_engine(url, pool_pre_ping=True)
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            # One shared connection, used by one thread at a time.
            self._serial = threading.Lock()
            engine = sa.create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
        busy_ms = int(busy_timeout_s * 1000)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        return engine

    @contextlib.contextmanager
    def _backend(self) -> Iterator[None]:
        """Translate database errors into BackendError naming the (password-free) URL."""
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause)
            raise BackendError(f"tracking store {self.safe_url}: {detail}") from exc
        except OSError as exc:
            raise BackendError(f"tracking store {self.safe_url}: {exc}") from exc

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[sa.Connection]:
        self._ensure_schema()
        with self._backend(), self._serial:
            opener = self.engine.begin() if write else self.engine.connect()
            with opener as connection:
                yield connection

    def _ensure_schema(self) -> None:
        if not self._ready:
            with self._ready_lock:
                if not self._ready:
                    self.upgrade()
                    self._ready = True

    def upgrade(self) -> None:
        """Create missing tables and indexes and apply pending migrations.

        Safe to run from several processes at once and on every start.
        Migrations (:data:`schema.MIGRATIONS`) are applied in order from the
        version recorded in ``tracking_meta``; each adds columns that are
        still missing, so two processes upgrading at once do no harm.

        Raises:
            BackendError: The database cannot be reached or changed.
            ConfigurationError: The database was written by a newer taskplane.
        """
        with self._backend(), self._serial:
            try:
                schema.metadata.create_all(self.engine, checkfirst=True)
            except sa.exc.SQLAlchemyError:
                # Another process created the same tables between check and create.
                schema.metadata.create_all(self.engine, checkfirst=True)
            with self.engine.begin() as conn:
                key = schema.meta.c.key == "schema_version"
                found = conn.execute(sa.select(schema.meta.c.value).where(key)).scalar()
                if found is None:
                    stmt = self._insert(schema.meta).values(
                        key="schema_version", value=str(schema.SCHEMA_VERSION)
                    )
                    conn.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))
                elif int(found) > schema.SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"tracking database {self.safe_url} has schema version {found}, "
                        f"newer than this taskplane's {schema.SCHEMA_VERSION}"
                    )
                elif int(found) < schema.SCHEMA_VERSION:
                    self._migrate(conn, int(found))

    def _migrate(self, conn: sa.Connection, found: int) -> None:
        """Apply the migrations after version *found*, then record the new version."""
        for version, columns in schema.MIGRATIONS:
            if version <= found:
                continue
            for table, column, kind in columns:
                present = {c["name"] for c in sa.inspect(conn).get_columns(table)}
                if column in present:
                    continue
                if self.dialect == "postgresql":  # another process may add it meanwhile
                    conn.execute(
                        sa.text(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
                    )
                    continue
                try:
                    conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                except sa.exc.OperationalError as exc:  # SQLite: added by another process
                    if "duplicate column" not in str(exc):
                        raise
        conn.execute(
            sa.update(schema.meta)
            .where(schema.meta.c.key == "schema_version")
            .values(value=str(schema.SCHEMA_VERSION))
        )

    def add(self, points: Sequence[DataPoint]) -> None:
        if not points:
            return
        rows = [
            {
                "agent_id": p.agent_id,
                "pattern_name": p.pattern_name,
                "task_type": p.task_type,
                "confidence": p.confidence,
                "success": p.success,
                "timestamp": p.timestamp,
                "execution_time_ms": p.execution_time,
                "tokens": p.tokens,
            }
            for p in points
        ]
        # Sorted keys: concurrent PostgreSQL upserts lock rows in one order, no deadlock.
        deltas = sorted(bucket_deltas(points).items(), key=lambda item: item[0])
        buckets = [
            {
                "granularity": key[0],
                "agent_id": key[1],
                "pattern_name": key[2],
                "bucket_start": key[3],
                **{name: getattr(sums, name) for name in schema.ROLLUP_SUMS},
            }
            for key, sums in deltas
        ]
        table = schema.rollups
        upsert = self._insert(table)
        upsert = upsert.on_conflict_do_update(
            index_elements=["granularity", "agent_id", "bucket_start", "pattern_name"],
            set_={name: table.c[name] + upsert.excluded[name] for name in schema.ROLLUP_SUMS},
        )
        with self._connect(write=True) as conn:
            conn.execute(schema.points.insert(), rows)
            conn.execute(upsert, buckets)

    @staticmethod
    def _filters(
        columns: Any, start: float | None, end: float | None, time: sa.ColumnElement[float]
    ) -> list[sa.ColumnElement[bool]]:
        clauses = []
        for name, value in columns:
            if value is not None:
                clauses.append(name == value)
        if start is not None:
            clauses.append(time >= start)
        if end is not None:
            clauses.append(time < end)
        return clauses

    def sum_points(
        self,
        *,
        start: float | None,
        end: float | None,
        ref: float,
        agent_id: str | None = None,
        pattern_name: str | None = None,
    ) -> dict[str, Sums]:
        t = schema.points.c
        offset = t.timestamp - sa.literal(ref, sa.Float(53))
        query = (
            sa.select(
                t.agent_id,
                sa.func.count(),
                sa.func.sum(t.confidence),
                sa.func.sum(t.confidence * t.confidence),
                sa.func.sum(sa.cast(t.success, sa.Integer)),
                sa.func.sum(t.execution_time_ms),
                sa.func.sum(offset),
                sa.func.sum(offset * offset),
                sa.func.sum(offset * t.confidence),
                sa.func.sum(t.tokens),
                sa.func.count(t.tokens),
            )
            .where(
                *self._filters(
                    [(t.agent_id, agent_id), (t.pattern_name, pattern_name)],
                    start,
                    end,
                    t.timestamp,
                )
            )
            .group_by(t.agent_id)
        )
        return self._sums_by_agent(query, ref)

    def sum_buckets(
        self,
        granularity: Granularity,
        *,
        start: float | None,
        end: float | None,
        ref: float,
        agent_id: str | None = None,
        pattern_name: str | None = None,
    ) -> dict[str, Sums]:
        b = schema.rollups.c
        shift = b.bucket_start - sa.literal(ref, sa.Float(53))
        query = (
            sa.select(
                b.agent_id,
                sa.func.sum(b.count),
                sa.func.sum(b.sum_confidence),
                sa.func.sum(b.sum_sq_confidence),
                sa.func.sum(b.success_count),
                sa.func.sum(b.sum_execution_time),
                sa.func.sum(b.sum_offset + b.count * shift),
                sa.func.sum(b.sum_sq_offset + 2 * shift * b.sum_offset + b.count * shift * shift),
                sa.func.sum(b.sum_offset_confidence + shift * b.sum_confidence),
                sa.func.sum(b.sum_tokens),
                sa.func.sum(b.token_count),
            )
            .where(
                b.granularity == granularity.value,
                *self._filters(
                    [(b.agent_id, agent_id), (b.pattern_name, pattern_name)],
                    start,
                    end,
                    b.bucket_start,
                ),
            )
            .group_by(b.agent_id)
        )
        return self._sums_by_agent(query, ref)

    def _sums_by_agent(self, query: sa.Select[Any], ref: float) -> dict[str, Sums]:
        with self._connect(write=False) as conn:
            rows = conn.execute(query).all()
        return {row[0]: _sums(ref, row[1:]) for row in rows if row[1]}

    def series(
        self,
        granularity: Granularity,
        *,
        agent_id: str,
        start: float | None = None,
        end: float | None = None,
    ) -> list[Sums]:
        b = schema.rollups.c
        query = (
            sa.select(b.bucket_start, *(sa.func.sum(b[name]) for name in schema.ROLLUP_SUMS))
            .where(
                b.granularity == granularity.value,
                *self._filters([(b.agent_id, agent_id)], start, end, b.bucket_start),
            )
            .group_by(b.bucket_start)
            .order_by(b.bucket_start)
        )
        with self._connect(write=False) as conn:
            rows = conn.execute(query).all()
        return [_sums(float(row[0]), row[1:]) for row in rows]

    def points(
        self,
        *,
        agent_ids: Sequence[str] | None = None,
        pattern_names: Sequence[str] | None = None,
        start: float | None = None,
        end: float | None = None,
        min_confidence: float | None = None,
        max_confidence: float | None = None,
        limit: int = 100,
    ) -> list[DataPoint]:
        t = schema.points.c
        clauses = self._filters([], start, end, t.timestamp)
        if agent_ids is not None:
            clauses.append(t.agent_id.in_(list(agent_ids)))
        if pattern_names is not None:
            clauses.append(t.pattern_name.in_(list(pattern_names)))
        if min_confidence is not None:
            clauses.append(t.confidence >= min_confidence)
        if max_confidence is not None:
            clauses.append(t.confidence <= max_confidence)
        query = (
            sa.select(schema.points)
            .where(*clauses)
            .order_by(t.timestamp.desc(), t.id.desc())
            .limit(max(limit, 0))
        )
        with self._connect(write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [
            DataPoint(
                agent_id=row["agent_id"],
                pattern_name=row["pattern_name"],
                task_type=row["task_type"],
                confidence=row["confidence"],
                success=bool(row["success"]),
                timestamp=row["timestamp"],
                execution_time=row["execution_time_ms"],
                tokens=row["tokens"],
            )
            for row in rows
        ]

    def agents(self, *, since: float) -> list[str]:
        b = schema.rollups.c
        query = (
            sa.select(b.agent_id)
            .distinct()
            .where(
                b.granularity == Granularity.HOUR.value,
                b.bucket_start >= bucket_start(since, Granularity.HOUR),
            )
            .order_by(b.agent_id)
        )
        with self._connect(write=False) as conn:
            return list(conn.execute(query).scalars())

    def prune(self, *, points_before: float, buckets_before: Mapping[Granularity, float]) -> int:
        b = schema.rollups.c
        with self._connect(write=True) as conn:
            deleted = conn.execute(
                schema.points.delete().where(schema.points.c.timestamp < points_before)
            ).rowcount
            for granularity, horizon in buckets_before.items():
                deleted += conn.execute(
                    schema.rollups.delete().where(
                        b.granularity == granularity.value, b.bucket_start < horizon
                    )
                ).rowcount
        return int(deleted)

    def open_anomaly(self, anomaly: Anomaly) -> bool:
        stmt = (
            self._insert(schema.anomalies)
            .values(
                agent_id=anomaly.agent_id,
                type=anomaly.type,
                severity=anomaly.severity,
                opened_at=anomaly.opened_at,
                details=anomaly.details,
                open_marker=1,
            )
            .on_conflict_do_nothing(index_elements=["agent_id", "type", "open_marker"])
            .returning(schema.anomalies.c.id)
        )
        with self._connect(write=True) as conn:
            return conn.execute(stmt).first() is not None

    def clear_anomaly(self, agent_id: str, anomaly_type: str, *, cleared_at: float) -> bool:
        a = schema.anomalies.c
        stmt = (
            schema.anomalies.update()
            .where(a.agent_id == agent_id, a.type == anomaly_type, a.open_marker == 1)
            .values(open_marker=None, cleared_at=cleared_at)
        )
        with self._connect(write=True) as conn:
            return bool(conn.execute(stmt).rowcount > 0)

    def anomalies(self, *, agent_id: str | None = None, open_only: bool = True) -> list[Anomaly]:
        a = schema.anomalies.c
        query = sa.select(schema.anomalies).order_by(a.opened_at, a.id)
        if agent_id is not None:
            query = query.where(a.agent_id == agent_id)
        if open_only:
            query = query.where(a.open_marker == 1)
        with self._connect(write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Anomaly(
                agent_id=row["agent_id"],
                type=row["type"],
                opened_at=row["opened_at"],
                severity=row["severity"],
                details=dict(row["details"] or {}),
                cleared_at=row["cleared_at"],
            )
            for row in rows
        ]

    def close(self) -> None:
        self.engine.dispose()


def _sums(ref: float, values: Sequence[Any]) -> Sums:
    """Build Sums from a row of SQL aggregates (PostgreSQL sums integers as Decimal)."""
    count, s_c, s_c2, success, s_ms, s_u, s_u2, s_uc, tokens, token_count = values
    return Sums(
        ref=ref,
        count=int(count or 0),
        sum_confidence=float(s_c or 0.0),
        sum_sq_confidence=float(s_c2 or 0.0),
        success_count=int(success or 0),
        sum_execution_time=float(s_ms or 0.0),
        sum_offset=float(s_u or 0.0),
        sum_sq_offset=float(s_u2 or 0.0),
        sum_offset_confidence=float(s_uc or 0.0),
        sum_tokens=int(tokens or 0),
        token_count=int(token_count or 0),
    )
