"""The tracking database schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Times are UTC epoch seconds in double-precision columns. Rollup time sums
(``sum_offset`` …) are measured in seconds from the bucket's start, which
keeps them small enough for exact regression arithmetic.

``tracking_meta`` holds ``schema_version``; :meth:`SqlTrackingStore.upgrade`
creates what is missing and applies any later migrations in order
(:data:`MIGRATIONS`).
"""

from __future__ import annotations

import sqlalchemy as sa

#: Version of the schema this code writes; bumped with each migration.
SCHEMA_VERSION = 2

NAME_LENGTH = 200

metadata = sa.MetaData()

#: Integer primary keys: BIGINT on PostgreSQL, SQLite's rowid alias there.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

points = sa.Table(
    "tracking_points",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("agent_id", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("pattern_name", sa.String(NAME_LENGTH), nullable=False, default=""),
    sa.Column("task_type", sa.String(20), nullable=False),
    sa.Column("confidence", sa.Float(53), nullable=False),
    sa.Column("success", sa.Boolean(), nullable=False),
    sa.Column("timestamp", sa.Float(53), nullable=False),
    sa.Column("execution_time_ms", sa.Float(53), nullable=False, default=0.0),
    # input + output tokens the agent reported; NULL when it reported none (version 2)
    sa.Column("tokens", sa.BigInteger(), nullable=True),
    # Covering: per-agent sums over a time range read the index alone.
    sa.Index(
        "ix_tracking_points_agent_time",
        "agent_id",
        "timestamp",
        "confidence",
        "success",
        "execution_time_ms",
        "pattern_name",
    ),
    sa.Index("ix_tracking_points_pattern_time", "pattern_name", "timestamp"),
    # Retention deletes by age alone.
    sa.Index("ix_tracking_points_time", "timestamp"),
)

rollups = sa.Table(
    "tracking_rollups",
    metadata,
    sa.Column("granularity", sa.String(8), primary_key=True),
    sa.Column("agent_id", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("bucket_start", sa.Float(53), primary_key=True),
    sa.Column("pattern_name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("count", sa.BigInteger(), nullable=False),
    sa.Column("sum_confidence", sa.Float(53), nullable=False),
    sa.Column("sum_sq_confidence", sa.Float(53), nullable=False),
    sa.Column("success_count", sa.BigInteger(), nullable=False),
    sa.Column("sum_execution_time", sa.Float(53), nullable=False),
    sa.Column("sum_offset", sa.Float(53), nullable=False),
    sa.Column("sum_sq_offset", sa.Float(53), nullable=False),
    sa.Column("sum_offset_confidence", sa.Float(53), nullable=False),
    # the tokens reported, and how many points reported them (version 2)
    sa.Column("sum_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("token_count", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Index("ix_tracking_rollups_pattern", "granularity", "pattern_name", "bucket_start"),
    sa.Index("ix_tracking_rollups_time", "granularity", "bucket_start"),
)

#: The columns an upsert adds to.
ROLLUP_SUMS = (
    "count",
    "sum_confidence",
    "sum_sq_confidence",
    "success_count",
    "sum_execution_time",
    "sum_offset",
    "sum_sq_offset",
    "sum_offset_confidence",
    "sum_tokens",
    "token_count",
)

anomalies = sa.Table(
    "tracking_anomalies",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("agent_id", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("opened_at", sa.Float(53), nullable=False),
    sa.Column("cleared_at", sa.Float(53), nullable=True),
    sa.Column("details", sa.JSON(), nullable=False),
    # 1 while the episode is open, NULL once cleared: NULLs never collide in a
    # unique constraint, so at most one open episode per (agent, type).
    sa.Column("open_marker", sa.SmallInteger(), nullable=True),
    sa.UniqueConstraint("agent_id", "type", "open_marker", name="uq_tracking_anomalies_open"),
)

meta = sa.Table(
    "tracking_meta",
    metadata,
    sa.Column("key", sa.String(50), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

#: ``(version, statements)``: what takes a database from ``version - 1`` to
#: ``version``. Each statement adds one column; :meth:`SqlTrackingStore.upgrade`
#: runs the ones whose column is still missing.
MIGRATIONS: tuple[tuple[int, tuple[tuple[str, str, str], ...]], ...] = (
    (
        2,
        (
            ("tracking_points", "tokens", "BIGINT"),
            ("tracking_rollups", "sum_tokens", "BIGINT NOT NULL DEFAULT 0"),
            ("tracking_rollups", "token_count", "BIGINT NOT NULL DEFAULT 0"),
        ),
    ),
)
