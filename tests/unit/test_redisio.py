"""Shared Redis I/O: Redis errors translated to BackendError where they enter."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.devtools.redis_server import free_port
from taskplane.errors import BackendError
from taskplane.proxy.inflight import RedisInFlightBackend
from taskplane.proxy.registry import RedisAgentRegistry
from taskplane.redisio import backend_error, translated

# -- translating Redis errors -------------------------------------------------


def test_a_redis_error_becomes_a_backend_error_naming_component_and_operation() -> None:
    cause = redis.ConnectionError("Connection refused")
    with pytest.raises(BackendError) as raised, translated("agent registry", "reading agent a1"):
        raise cause
    assert str(raised.value) == "agent registry: reading agent a1 failed: Connection refused"
    assert raised.value.__cause__ is cause


@pytest.mark.parametrize(
    "cause",
    [redis.TimeoutError("Timeout reading"), redis.ResponseError("NOSCRIPT"), redis.RedisError()],
)
def test_every_redis_error_is_translated(cause: redis.RedisError) -> None:
    with (
        pytest.raises(BackendError, match=r"^event bus: reading failed: "),
        translated("event bus", "reading"),
    ):
        raise cause


def test_other_errors_pass_through_untouched() -> None:
    with pytest.raises(KeyError), translated("event bus", "reading"):
        raise KeyError("not a Redis problem")
    with pytest.raises(OSError), translated("event bus", "reading"):
        raise OSError("a socket, but this site did not say so")


def test_a_site_may_name_more_errors_that_mean_a_lost_redis() -> None:
    with (
        pytest.raises(BackendError, match="waited too long"),
        translated("event stream", "reading", also=(OSError,)),
    ):
        raise TimeoutError("waited too long")


def test_nothing_happens_when_the_block_succeeds() -> None:
    with translated("event bus", "reading"):
        value = 1
    assert value == 1


def test_the_async_client_raises_the_same_errors_and_await_works_inside() -> None:
    assert aioredis.RedisError is redis.RedisError

    async def fails() -> None:
        raise aioredis.ConnectionError("lost")

    async def read() -> None:
        with translated("event stream", "reading the newest event id"):
            await fails()

    with pytest.raises(BackendError, match="event stream: reading the newest event id failed"):
        asyncio.run(read())


def test_an_error_handed_over_as_a_value_reads_the_same() -> None:
    error = backend_error("run watcher", "waiting on k", redis.ConnectionError("gone"))
    assert isinstance(error, BackendError)
    assert str(error) == "run watcher: waiting on k failed: gone"


def test_a_store_with_no_redis_behind_it_says_which_part_and_what_it_did() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(BackendError, match=r"^agent registry: reading agent a1 failed: "):
        RedisAgentRegistry(dead).get("a1")
    with pytest.raises(BackendError, match=r"^calls in flight to a1: releasing a lease failed"):
        RedisInFlightBackend(dead).release("a1", "token")
