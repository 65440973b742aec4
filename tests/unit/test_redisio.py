"""Shared Redis I/O: Lua scripts read from package files (with includes), and Redis errors
translated to BackendError where they enter.

The loader is tested on a throwaway package written to a temporary folder; the
scripts taskplane ships are checked for the comment each opens with. One test
runs a loaded script on the test Redis.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.devtools.redis_server import free_port
from taskplane.errors import BackendError
from taskplane.proxy.inflight import RedisInFlightBackend
from taskplane.proxy.registry import RedisAgentRegistry
from taskplane.redisio import (
    LUA_FOLDER,
    backend_error,
    load_script,
    script_during,
    script_source,
    translated,
)

PackageMaker = Callable[[dict[str, str]], str]


@pytest.fixture
def lua_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PackageMaker]:
    """Writes a package of its own (a fresh name: sources are read once per name)."""

    def make(scripts: dict[str, str]) -> str:
        name = f"luapkg_{uuid.uuid4().hex}"
        folder = tmp_path / name / LUA_FOLDER
        folder.mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text("")
        for file, text in scripts.items():
            (folder / file).write_text(text, encoding="utf-8")
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for module in [m for m in sys.modules if m.startswith("luapkg_")]:
        del sys.modules[module]


# -- the loader ---------------------------------------------------------------


def test_a_script_is_read_from_the_lua_folder_of_its_package(lua_package: PackageMaker) -> None:
    package = lua_package({"one.lua": "-- KEYS[1] a key\nreturn 1\n"})
    assert script_source(package, "one.lua") == "-- KEYS[1] a key\nreturn 1\n"


def test_an_include_line_is_replaced_by_the_file_it_names(lua_package: PackageMaker) -> None:
    package = lua_package(
        {
            "helpers.lua": "local function twice(x) return 2 * x end\n",
            "constants.lua": "--#include helpers.lua\nlocal base = twice(3)\n",
            "main.lua": "-- ARGV[1] a number\n--#include constants.lua\nreturn base + ARGV[1]\n",
        }
    )
    assert script_source(package, "main.lua") == (
        "-- ARGV[1] a number\n"
        "local function twice(x) return 2 * x end\n"
        "\n"
        "local base = twice(3)\n"
        "\n"
        "return base + ARGV[1]\n"
    )


def test_only_a_whole_include_line_includes(lua_package: PackageMaker) -> None:
    text = "-- see --#include other.lua\nlocal s = '--#include x.lua'\nreturn s\n"
    package = lua_package({"main.lua": text})
    assert script_source(package, "main.lua") == text


def test_an_include_cycle_is_refused(lua_package: PackageMaker) -> None:
    package = lua_package({"a.lua": "--#include b.lua\n", "b.lua": "--#include a.lua\n"})
    with pytest.raises(ValueError, match=r"a\.lua -> b\.lua -> a\.lua"):
        script_source(package, "a.lua")


def test_a_missing_script_or_include_is_an_error(lua_package: PackageMaker) -> None:
    package = lua_package({"main.lua": "--#include gone.lua\nreturn 1\n"})
    with pytest.raises(FileNotFoundError):
        script_source(package, "absent.lua")
    with pytest.raises(FileNotFoundError):
        script_source(package, "main.lua")


def test_a_loaded_script_is_registered_and_runs_with_its_includes(
    lua_package: PackageMaker, redis_client: redis.Redis
) -> None:
    package = lua_package(
        {
            "push.lua": "local function push(v) return redis.call('RPUSH', KEYS[1], v) end\n",
            "main.lua": "-- KEYS[1] a list   ARGV[1] a value\n--#include push.lua\n"
            "return push(ARGV[1])\n",
        }
    )
    script = load_script(redis_client, package, "main.lua")
    assert script(keys=["rio:list"], args=["a"]) == 1
    redis_client.script_flush()  # as after a restart: the script object loads it again
    assert script(keys=["rio:list"], args=["b"]) == 2
    assert redis_client.lrange("rio:list", 0, -1) == ["a", "b"]


def test_a_script_run_during_other_work_replies_after_it(
    lua_package: PackageMaker, redis_client: redis.Redis
) -> None:
    package = lua_package(
        {
            "push.lua": "-- KEYS[1] a list   ARGV[1] a value\n"
            "return redis.call('RPUSH', KEYS[1], ARGV[1])\n"
        }
    )
    script = load_script(redis_client, package, "push.lua")
    done: list[int] = []
    assert script_during(redis_client, script, ["rio:during"], ["a"], lambda: done.append(1)) == 1
    redis_client.script_flush()  # NOSCRIPT: run again through the script object, after *during*
    assert script_during(redis_client, script, ["rio:during"], ["b"], lambda: done.append(2)) == 2
    assert done == [1, 2]

    def fails() -> None:
        raise KeyError("elsewhere")

    with pytest.raises(KeyError, match="elsewhere"):
        script_during(redis_client, script, ["rio:during"], ["c"], fails)
    # the script ran and its reply was read: the pooled connection answers the next call
    assert redis_client.lrange("rio:during", 0, -1) == ["a", "b", "c"]


def _shipped_scripts() -> list[tuple[str, str]]:
    root = resources.files("taskplane")
    found = []
    for path in sorted(Path(str(root)).rglob(f"{LUA_FOLDER}/*.lua")):
        folder = path.parent.parent.relative_to(Path(str(root)).parent)
        found.append((".".join(folder.parts), path.name))
    return found


@pytest.mark.parametrize(("package", "name"), _shipped_scripts())
def test_every_shipped_script_loads_and_opens_with_its_keys_and_arguments(
    package: str, name: str
) -> None:
    source = script_source(package, name)
    opening = []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        opening.append(line)
    assert "KEYS[" in "\n".join(opening) and "ARGV[" in "\n".join(opening), name


def test_the_scripts_taskplane_ships_are_found() -> None:
    assert ("taskplane.proxy", "take_lease.lua") in _shipped_scripts()
    assert ("taskplane", "plan_budget.lua") in _shipped_scripts()


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
