"""Settings: every option of the data plane, its default and its unit.

Every field is also an environment variable ``TASKPLANE_<FIELD>``; nested
groups use ``__``, e.g. ``TASKPLANE_RETRY_CONFIG__INITIAL_DELAY=100``. Lists
accept JSON (``["a", "b"]``) or a comma-separated string.

Only the edges (the Celery app, the CLI, ``ExecutionEngine()``) build
settings from the environment; everything inside takes them as arguments.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from taskplane.errors import ConfigurationError
from taskplane.redisio import cluster_nodes, is_cluster_url

ENV_PREFIX = "TASKPLANE_"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///taskplane-tracking.db"
#: Broker URL schemes of RabbitMQ (kombu's AMQP transports).
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
#: Broker queue every taskplane task goes to, and workers consume, unless ``queue`` says otherwise.
DEFAULT_QUEUE = "taskplane"

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class RetryConfig(BaseModel):
    """Backoff for retryable errors: attempt k waits initial_delay × multiplier^(k−1) ms."""

    max_retries: int = Field(2, ge=0, le=100)
    backoff_multiplier: float = Field(2.0, ge=1.0)
    initial_delay: int = Field(1000, ge=0, description="ms")

    def delay_ms(self, attempt: int) -> float:
        """Wait before retry number *attempt* (1-based): initial × multiplier^(attempt−1)."""
        return self.initial_delay * self.backoff_multiplier ** (attempt - 1)

    def longest_run_ms(self, timeout_ms: float, retries: int | None = None) -> float:
        """Longest a task can take: every attempt timing out, plus every backoff."""
        retries = self.max_retries if retries is None else retries
        backoff = sum(self.delay_ms(k) for k in range(1, retries + 1))
        return timeout_ms * (retries + 1) + backoff


class CacheConfig(BaseModel):
    """The Redis result cache."""

    enabled: bool = True
    ttl: int = Field(300, gt=0, description="seconds")
    confidence_threshold: Fraction = 0.8
    max_entries: int = Field(1000, ge=1)


class CircuitBreakerConfig(BaseModel):
    """Per-agent circuit breakers, shared by every worker through Redis."""

    failure_threshold: int = Field(5, ge=1)
    reset_timeout: int = Field(30000, gt=0, description="ms")
    monitoring_period: int = Field(60000, gt=0, description="ms")


class RateLimitConfig(BaseModel):
    """Per-agent sliding-window rate limit, shared by every worker through Redis."""

    max_requests: int = Field(100, ge=1)
    window_ms: int = Field(60000, gt=0)


class AggregationConfig(BaseModel):
    """How many rollup buckets of each size the tracker keeps."""

    minute: int = Field(60, ge=1)
    hour: int = Field(24, ge=1)
    day: int = Field(30, ge=1)


class AnomalyDetectionConfig(BaseModel):
    """Confidence anomaly detection."""

    enabled: bool = True
    sudden_drop_threshold: Fraction = 0.3
    low_confidence_threshold: Fraction = 0.5
    high_variance_threshold: Fraction = 0.2
    check_interval_ms: int = Field(60000, gt=0)


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


#: Kept between a countdown plus its attempt and the visibility timeout, in seconds.
COUNTDOWN_MARGIN_S = 5.0
#: A countdown may always be at least this long, whatever the settings (s).
MIN_COUNTDOWN_CAP_S = 1.0
#: Broker URL schemes whose transport redelivers an unacknowledged message
#: once the visibility timeout has passed since delivery.
VISIBILITY_TIMEOUT_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel")


class Settings(BaseSettings):
    """All of taskplane's options. Times are in ms unless the field says seconds."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    redis_url: str = Field(
        DEFAULT_REDIS_URL,
        description="one Redis (redis://, rediss://, unix://), or a Redis Cluster: "
        "redis+cluster://[user:password@]host:port[,host:port…] (then broker_url is required)",
    )
    broker_url: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    key_prefix: str = Field(
        "taskplane",
        min_length=1,
        pattern=r"^[^{}]+$",
        description="starts every Redis key; no braces (they make Redis Cluster hash tags)",
    )
    queue: str = Field(
        DEFAULT_QUEUE,
        min_length=1,
        max_length=255,
        description="broker queue clients send to and workers consume; deployments sharing "
        "one broker (or one RabbitMQ vhost) keep apart by giving each its own",
    )
    rabbitmq_queue_type: Literal["classic", "quorum"] = Field(
        "classic",
        description="the queue RabbitMQ keeps: classic, or quorum (replicated across "
        "RabbitMQ nodes; countdowns then go through Celery's native delayed delivery)",
    )

    max_concurrency: int = Field(10, ge=1)
    default_timeout: int = Field(30000, gt=0, description="ms, per call")
    retry_config: RetryConfig = Field(default_factory=RetryConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    anomaly_detection: AnomalyDetectionConfig = Field(default_factory=AnomalyDetectionConfig)

    function_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    patterns_dir: str = "patterns"
    pattern_executor: str | None = Field(
        None,
        description="module:name of a PatternExecutor (or a factory of one) workers use "
        "for pattern tasks instead of the pattern files",
    )
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    http_block_private: bool = False
    http_max_response_bytes: int = Field(10 * 1024 * 1024, ge=1024)

    worker_pool: Literal["gevent", "threads"] = Field(
        "gevent", description="Celery pool of `taskplane worker`"
    )
    worker_concurrency: int = Field(
        1000, ge=1, description="calls in flight per worker process (greenlets or threads)"
    )
    visibility_timeout_s: int | None = Field(
        None, ge=10, description="seconds; None = derived from the longest task"
    )
    redelivery_sweep_s: int = Field(5, ge=1, description="seconds between unacked sweeps")
    plan_retention_s: int = Field(86400, gt=0, description="seconds plan state is kept")
    beat_schedule: str | None = Field(
        None,
        description="file Celery beat keeps its schedule in; None = "
        "$XDG_CACHE_HOME/taskplane/celerybeat-schedule (~/.cache when unset)",
    )
    events_enabled: bool = True
    log_format: Literal["text", "json"] = Field(
        "text", description="worker log lines: readable text, or one JSON object per line"
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="port each worker serves Prometheus /metrics on; None = off",
    )
    events_stream_maxlen: int = Field(10000, ge=1)
    tracking_enabled: bool = True

    @field_validator("function_modules", "http_allowed_hosts", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("redis_url")
    @classmethod
    def _cluster_url(cls, value: str) -> str:
        if is_cluster_url(value):
            cluster_nodes(value)  # ValueError names what is wrong
        return value

    @field_validator("broker_url")
    @classmethod
    def _cluster_broker(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and is_cluster_url(value):
            raise ValueError("kombu has no Redis Cluster transport: use RabbitMQ (amqp://)")
        if value is None and is_cluster_url(str(info.data.get("redis_url", ""))):
            raise ValueError(
                "required when redis_url is a Redis Cluster (kombu's Redis transport has "
                "no cluster mode): e.g. amqp://user:password@rabbitmq:5672//"
            )
        return value

    @field_validator("rabbitmq_queue_type")
    @classmethod
    def _quorum_on_rabbitmq(cls, value: str, info: ValidationInfo) -> str:
        broker = info.data.get("broker_url") or info.data.get("redis_url") or ""
        if value == "quorum" and not str(broker).startswith(AMQP_SCHEMES):
            raise ValueError("quorum queues are RabbitMQ's: set broker_url to amqp://…")
        return value

    @property
    def redis_cluster(self) -> bool:
        """Whether state lives on a Redis Cluster (``redis+cluster://``)."""
        return is_cluster_url(self.redis_url)

    @property
    def result_backend_url(self) -> str:
        """Celery's result backend (results of ``execute_plan`` sent by name).

        Redis when state is on one Redis; on a Redis Cluster (which Celery's
        Redis backend cannot use) the tracking database, ``db+database_url``.
        """
        return f"db+{self.database_url}" if self.redis_cluster else self.redis_url

    @property
    def effective_broker_url(self) -> str:
        """The broker: ``broker_url`` if set, else Redis."""
        return self.broker_url or self.redis_url

    @property
    def longest_task_s(self) -> float:
        """Upper bound of one task's run time with every retry and backoff, in seconds."""
        return self.retry_config.longest_run_ms(self.default_timeout) / 1000.0

    @property
    def effective_visibility_timeout_s(self) -> int:
        """Redis visibility timeout: longer than the longest task, with a margin."""
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return max(60, int(self.longest_task_s * 1.1) + 5)

    @property
    def max_task_timeout_ms(self) -> int | None:
        """Longest effective timeout a task may carry; None when the broker has no limit.

        On the Redis transport one attempt of a task is one broker message,
        held unacknowledged from delivery through its countdown and its run;
        once the visibility timeout passes, the message is delivered again and
        the task runs twice. So an attempt, plus the shortest countdown and
        the margin, must fit in the visibility timeout. AMQP brokers redeliver
        only when the consumer's connection is lost: no limit.
        """
        scheme = self.effective_broker_url.partition("://")[0].lower()
        if scheme not in VISIBILITY_TIMEOUT_SCHEMES:
            return None
        limit_s = self.effective_visibility_timeout_s - COUNTDOWN_MARGIN_S - MIN_COUNTDOWN_CAP_S
        return int(limit_s * 1000)


def env_name(location: tuple[Any, ...]) -> str:
    """Map a pydantic error location to the environment variable that sets it."""
    parts = [str(part).upper() for part in location if not isinstance(part, int)]
    return ENV_PREFIX + "__".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and *overrides*), naming any bad variable.

    Raises:
        ConfigurationError: A value is missing or out of range; the message
            names ``TASKPLANE_…`` for each.
    """
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{env_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigurationError(f"invalid taskplane settings: {problems}") from exc
