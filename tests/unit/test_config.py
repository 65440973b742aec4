"""Settings: defaults, the environment (nested ``__``, lists) and errors naming the variable."""

from __future__ import annotations

import pytest

from taskplane.config import (
    ENV_PREFIX,
    RetryConfig,
    Settings,
    env_name,
    load_settings,
)
from taskplane.errors import ConfigurationError
from taskplane.redisio import cluster_nodes
from taskplane.tasks import capped_countdown_s
from taskplane.tasks.app import celery_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TASKPLANE_* variable of the calling shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --- defaults ------------------------------------------------------------------------------


def test_top_level_defaults() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.broker_url is None
    assert settings.effective_broker_url == settings.redis_url
    assert settings.database_url.startswith("sqlite:")
    assert settings.max_concurrency == 10
    assert settings.default_timeout == 30000
    assert settings.function_modules == []
    assert settings.http_allowed_hosts == []


def test_retry_defaults() -> None:
    retry = Settings().retry_config
    assert (retry.max_retries, retry.backoff_multiplier, retry.initial_delay) == (2, 2.0, 1000)


def test_cache_defaults() -> None:
    cache = Settings().cache
    assert (cache.enabled, cache.ttl, cache.confidence_threshold, cache.max_entries) == (
        True,
        300,
        0.8,
        1000,
    )


def test_circuit_breaker_defaults() -> None:
    breaker = Settings().circuit_breaker
    assert (breaker.failure_threshold, breaker.reset_timeout, breaker.monitoring_period) == (
        5,
        30000,
        60000,
    )


def test_rate_limit_defaults() -> None:
    limit = Settings().rate_limit
    assert (limit.max_requests, limit.window_ms) == (100, 60000)


def test_aggregation_defaults() -> None:
    agg = Settings().aggregation
    assert (agg.minute, agg.hour, agg.day) == (60, 24, 30)


def test_anomaly_defaults() -> None:
    anomaly = Settings().anomaly_detection
    assert anomaly.enabled is True
    assert anomaly.sudden_drop_threshold == 0.3
    assert anomaly.low_confidence_threshold == 0.5
    assert anomaly.high_variance_threshold == 0.2
    assert anomaly.check_interval_ms == 60000


# --- environment ---------------------------------------------------------------------------


def test_top_level_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("TASKPLANE_BROKER_URL", "amqp://guest@127.0.0.1//")
    settings = load_settings()
    assert settings.max_concurrency == 3
    assert settings.effective_broker_url == "amqp://guest@127.0.0.1//"


def test_nested_env_with_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_RETRY_CONFIG__INITIAL_DELAY", "100")
    monkeypatch.setenv("TASKPLANE_CACHE__ENABLED", "false")
    monkeypatch.setenv("TASKPLANE_CIRCUIT_BREAKER__FAILURE_THRESHOLD", "7")
    monkeypatch.setenv("TASKPLANE_ANOMALY_DETECTION__CHECK_INTERVAL_MS", "1234")
    settings = load_settings()
    assert settings.retry_config.initial_delay == 100
    assert settings.retry_config.max_retries == 2  # siblings keep their defaults
    assert settings.cache.enabled is False
    assert settings.cache.ttl == 300
    assert settings.circuit_breaker.failure_threshold == 7
    assert settings.anomaly_detection.check_interval_ms == 1234


def test_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_MAX_CONCURRENCY", "3")
    assert load_settings(max_concurrency=4).max_concurrency == 4


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('["a.example.com", "*.b.example.com"]', ["a.example.com", "*.b.example.com"]),
        ("a.example.com, *.b.example.com", ["a.example.com", "*.b.example.com"]),
        (" a.example.com ,, ", ["a.example.com"]),
        ("", []),
        ("[]", []),
    ],
)
def test_list_settings_from_json_or_commas(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("TASKPLANE_HTTP_ALLOWED_HOSTS", raw)
    monkeypatch.setenv("TASKPLANE_FUNCTION_MODULES", raw)
    settings = load_settings()
    assert settings.http_allowed_hosts == expected
    assert settings.function_modules == expected


def test_list_settings_from_python() -> None:
    settings = Settings(function_modules="m1,m2", http_allowed_hosts=["h"])
    assert settings.function_modules == ["m1", "m2"]
    assert settings.http_allowed_hosts == ["h"]


def test_malformed_json_list_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_HTTP_ALLOWED_HOSTS", "[1")
    with pytest.raises(ConfigurationError, match="TASKPLANE_HTTP_ALLOWED_HOSTS"):
        load_settings()


# --- errors name the variable --------------------------------------------------------------


def test_negative_initial_delay_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_RETRY_CONFIG__INITIAL_DELAY", "-1")
    with pytest.raises(ConfigurationError, match="TASKPLANE_RETRY_CONFIG__INITIAL_DELAY"):
        load_settings()


def test_confidence_threshold_above_one_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_CACHE__CONFIDENCE_THRESHOLD", "1.5")
    with pytest.raises(ConfigurationError, match="TASKPLANE_CACHE__CONFIDENCE_THRESHOLD"):
        load_settings()


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLANE_MAX_CONCURRENCY", "0")
    monkeypatch.setenv("TASKPLANE_RATE_LIMIT__WINDOW_MS", "nope")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "TASKPLANE_MAX_CONCURRENCY" in str(info.value)
    assert "TASKPLANE_RATE_LIMIT__WINDOW_MS" in str(info.value)


def test_configuration_error_chains_pydantic_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydantic

    monkeypatch.setenv("TASKPLANE_DEFAULT_TIMEOUT", "0")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_env_name_skips_list_indexes() -> None:
    assert env_name(("retry_config", "initial_delay")) == "TASKPLANE_RETRY_CONFIG__INITIAL_DELAY"
    assert env_name(("function_modules", 0)) == "TASKPLANE_FUNCTION_MODULES"


# --- retry arithmetic ----------------------------------------------------------------------


def test_delay_ms_doubles_from_initial_delay() -> None:
    retry = RetryConfig()
    assert [retry.delay_ms(k) for k in (1, 2, 3)] == [1000, 2000, 4000]


def test_delay_ms_with_custom_multiplier() -> None:
    retry = RetryConfig(initial_delay=100, backoff_multiplier=3.0)
    assert [retry.delay_ms(k) for k in (1, 2, 3)] == [100, 300, 900]


def test_longest_run_ms_counts_every_attempt_and_backoff() -> None:
    retry = RetryConfig()
    # 3 attempts of 30 s each, plus 1 s and 2 s of backoff
    assert retry.longest_run_ms(30000) == 93000
    assert retry.longest_run_ms(30000, retries=0) == 30000
    assert retry.longest_run_ms(1000, retries=3) == 4000 + 1000 + 2000 + 4000


def test_visibility_timeout_exceeds_longest_task() -> None:
    settings = Settings()
    assert settings.longest_task_s == 93.0
    assert settings.effective_visibility_timeout_s > settings.longest_task_s


def test_visibility_timeout_grows_with_the_task() -> None:
    settings = Settings(default_timeout=600_000, retry_config=RetryConfig(max_retries=5))
    assert settings.effective_visibility_timeout_s > settings.longest_task_s
    assert settings.effective_visibility_timeout_s >= 6 * 600


def test_explicit_visibility_timeout_wins() -> None:
    assert Settings(visibility_timeout_s=500).effective_visibility_timeout_s == 500


def test_a_task_may_run_the_visibility_timeout_less_the_countdown_margin() -> None:
    # 107 s by default, less the 5 s margin and the shortest (1 s) countdown
    assert Settings().max_task_timeout_ms == 101_000
    assert Settings(visibility_timeout_s=20).max_task_timeout_ms == 14_000
    assert Settings(broker_url="rediss://h:6380/0", visibility_timeout_s=20).max_task_timeout_ms
    assert Settings(broker_url="sentinel://h:26379", visibility_timeout_s=20).max_task_timeout_ms


def test_amqp_brokers_put_no_limit_on_a_task() -> None:
    assert Settings(broker_url="amqp://guest@127.0.0.1:5672//").max_task_timeout_ms is None
    assert Settings(broker_url="pyamqp://guest@127.0.0.1//").max_task_timeout_ms is None


# -- Redis Cluster --------------------------------------------------------------


def test_a_cluster_url_with_a_broker_is_accepted_and_moves_celerys_results() -> None:
    settings = load_settings(
        redis_url="redis+cluster://user:pw@10.0.0.1:7000,redis-2:7001,[::1]:7002",
        broker_url="amqp://guest:guest@rabbitmq:5672//",
        database_url="postgresql+psycopg://tp@db/tp",
    )
    assert settings.redis_cluster
    assert settings.result_backend_url == "db+postgresql+psycopg://tp@db/tp"
    assert cluster_nodes(settings.redis_url) == (
        "user:pw@",
        [("10.0.0.1", 7000), ("redis-2", 7001), ("::1", 7002)],
    )
    single = load_settings()
    assert not single.redis_cluster and single.result_backend_url == single.redis_url


@pytest.mark.parametrize(
    ("overrides", "named", "says"),
    [
        ({"redis_url": "redis+cluster://a:1"}, "TASKPLANE_BROKER_URL", "required"),
        ({"redis_url": "redis+cluster://a", "broker_url": "amqp://x"}, "REDIS_URL", "host:port"),
        ({"redis_url": "redis+cluster://a:1/3", "broker_url": "amqp://x"}, "REDIS_URL", "0 only"),
        ({"broker_url": "redis+cluster://a:1"}, "TASKPLANE_BROKER_URL", "no Redis Cluster"),
        ({"key_prefix": "tp{a}"}, "TASKPLANE_KEY_PREFIX", "pattern"),
    ],
)
def test_bad_cluster_settings_name_the_variable(
    overrides: dict[str, str], named: str, says: str
) -> None:
    with pytest.raises(ConfigurationError, match=named) as caught:
        load_settings(**overrides)
    assert says in str(caught.value)


# -- RabbitMQ quorum queues -------------------------------------------------------------


def test_a_quorum_queue_needs_rabbitmq_and_declares_a_quorum_queue_behind_a_topic_exchange() -> (
    None
):
    with pytest.raises(ConfigurationError, match="TASKPLANE_RABBITMQ_QUEUE_TYPE") as caught:
        load_settings(rabbitmq_queue_type="quorum")  # the broker is Redis
    assert "amqp://" in str(caught.value)
    settings = load_settings(broker_url="amqp://guest@rabbitmq//", rabbitmq_queue_type="quorum")
    conf = celery_config(settings)
    (queue,) = conf["task_queues"]
    assert queue.name == settings.queue and queue.queue_arguments == {"x-queue-type": "quorum"}
    assert queue.exchange.type == "topic" and conf["task_default_exchange_type"] == "topic"
    assert "task_queues" not in celery_config(load_settings(broker_url="amqp://guest@rabbitmq//"))


def test_countdowns_on_a_quorum_queue_are_whole_seconds() -> None:
    quorum = load_settings(broker_url="amqp://guest@rabbitmq//", rabbitmq_queue_type="quorum")
    classic = load_settings(broker_url="amqp://guest@rabbitmq//")
    task: dict[str, object] = {"metadata": {}}
    assert [capped_countdown_s(d, quorum, task) for d in (0.0, 0.05, 1.0, 2.4)] == [0, 1, 1, 3]
    assert capped_countdown_s(0.05, classic, task) == 0.05
