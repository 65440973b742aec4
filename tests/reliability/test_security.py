"""Security: what tasks may reach, and where secrets must not show up.

* ``function`` tasks run registered names only (``os.system`` is not one);
* ``http`` tasks never reach link-local / cloud-metadata addresses, directly
  or through a redirect, and with ``http_block_private`` no private or
  loopback address either (a separate worker started with that setting);
* a password-protected Redis (``redis://:password@…``) runs plans;
* a bearer token sent by an ``http`` task, and the Redis password, appear in
  no event, no result and no worker log (workers log at INFO).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from taskplane import ExecutionEngine, Settings, TaskStatus
from taskplane.errors import BackendError
from tests.httpserver import HttpTestServer
from tests.reliability.conftest import fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import (
    FIGURES,
    RUN_DIR,
    Cluster,
    record_figures,
    running_cluster,
)

PASSWORD = "r3dis-pa55-secret"
FOUND: dict[str, object] = {}


@pytest.fixture(scope="module")
def secure_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis(fresh_dir("redis-secure"), password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def secure(secure_redis: PrivateRedis) -> Iterator[Cluster]:
    """One worker at INFO level on the password-protected Redis."""
    with running_cluster(secure_redis, workers=1, name="sec", loglevel="INFO") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def private_blocked(secure_redis: PrivateRedis) -> Iterator[Cluster]:
    """A worker with ``TASKPLANE_HTTP_BLOCK_PRIVATE=true`` (its own broker and state DBs)."""
    with running_cluster(
        secure_redis,
        workers=1,
        name="blk",
        broker_db=2,
        state_db=3,
        TASKPLANE_HTTP_BLOCK_PRIVATE="true",
    ) as cluster:
        yield cluster


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run", "__import__"])
def test_function_tasks_run_registered_names_only(cluster: Cluster, target: str) -> None:
    marker = RUN_DIR / "function-escape"
    result = cluster.engine.execute_task(
        {
            "id": "f",
            "type": "function",
            "target": target,
            "payload": {"command": f"touch {marker}", "source": "1"},
        }
    )
    assert result.status is TaskStatus.FAILURE
    assert result.error == f"Function {target} not found"
    assert result.retries == 0 and not marker.exists()


METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fe80::1]/",
]


@pytest.mark.parametrize("url", METADATA_URLS)
def test_http_tasks_never_reach_metadata_addresses(cluster: Cluster, url: str) -> None:
    direct = cluster.engine.execute_task({"id": "h", "type": "http", "target": url})
    assert direct.status is TaskStatus.FAILURE and direct.retries == 0
    assert "link-local or metadata address" in (direct.error or "")
    with HttpTestServer() as server:
        redirected = cluster.engine.execute_task(
            {
                "id": "r",
                "type": "http",
                "target": f"{server.url}/redirect",
                "payload": {"params": {"to": url}},
            }
        )
        assert server.calls("/redirect") == 1  # the first hop is allowed
    assert redirected.status is TaskStatus.FAILURE and redirected.retries == 0
    assert "link-local or metadata address" in (redirected.error or "")


PRIVATE_URLS = [
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://[::1]/",
    "http://[fd12:3456::1]/",
    "http://0.0.0.0/",
    "http://100.64.0.1/",
    "http://localhost/",
]


def test_http_tasks_refuse_private_addresses_when_told(private_blocked: Cluster) -> None:
    with HttpTestServer() as server:
        urls = [*PRIVATE_URLS, f"{server.url}/echo"]
        results = [
            private_blocked.engine.execute_task({"id": f"p{i}", "type": "http", "target": url})
            for i, url in enumerate(urls)
        ]
        assert server.calls("/echo") == 0
    for url, result in zip(urls, results, strict=True):
        assert result.status is TaskStatus.FAILURE, url
        assert "private, loopback or reserved address" in (result.error or ""), url
    FOUND["private_urls_refused"] = len(urls)


def test_password_protected_redis_runs_plans(secure: Cluster) -> None:
    assert f":{PASSWORD}@" in secure.state_url
    results = secure.engine.execute_parallel(
        {
            "id": "pw-plan",
            "tasks": [
                {"id": f"t{i}", "type": "function", "target": "add", "payload": {"a": i, "b": 1}}
                for i in range(20)
            ],
        }
    )
    assert [r.result for r in results] == [i + 1 for i in range(20)]
    wrong = secure.redis.url(1).replace(PASSWORD, "wrong-password")
    with (
        ExecutionEngine(Settings(redis_url=wrong)) as intruder,
        pytest.raises(BackendError) as info,
    ):
        intruder.submit({"id": "x", "tasks": [{"id": "t", "type": "function", "target": "noop"}]})
    assert "wrong-password" not in str(info.value)


def test_secrets_appear_in_no_event_result_or_log(secure: Cluster) -> None:
    token = "s3cret-bearer-token-0123456789"
    headers = {"Authorization": f"Bearer {token}", "X-Api-Key": token}
    with HttpTestServer() as server:
        tasks = [
            # succeeds; the target does not echo the header back
            {"id": "ok", "type": "http", "target": f"{server.url}/status/200"},
            # fails after retries: errors and task:retrying events carry messages
            {"id": "flaky", "type": "http", "target": f"{server.url}/status/503"},
            # refused before any request
            {"id": "meta", "type": "http", "target": "http://169.254.169.254/"},
            # times out
            {
                "id": "slow",
                "type": "http",
                "target": f"{server.url}/hang",
                "metadata": {"timeout": 300},
            },
        ]
        for task in tasks:
            task["payload"] = {"method": "POST", "headers": headers, "json": {"q": 1}}
        results = secure.engine.execute_parallel(
            {"id": "secrets", "strategy": "allSettled", "tasks": tasks, "timeout": 20000}
        )
    statuses = [r.status.value for r in results]
    assert statuses == ["success", "failure", "failure", "timeout"]
    events = secure.engine.events.recent(1000)
    assert any(e["type"] == "task:retrying" for e in events)
    result_text = json.dumps([r.to_json_dict() for r in results])
    event_text = json.dumps(events)
    logs = secure.logs()
    assert "succeeded in" in logs  # INFO-level task lines are there to be searched
    leaks = {
        where: [secret for secret in (token, PASSWORD) if secret in text]
        for where, text in (("results", result_text), ("events", event_text), ("logs", logs))
    }
    FOUND["secret_scan"] = {
        "events_scanned": len(events),
        "log_bytes_scanned": len(logs),
        "leaks": leaks,
    }
    assert leaks == {"results": [], "events": [], "logs": []}


def test_zz_record_security_figures() -> None:
    """Runs last: the figures the scenarios above measured, checked, then written down."""
    missing = {"private_urls_refused", "secret_scan"} - set(FOUND)
    assert not missing, f"run the whole module: no figures from {sorted(missing)}"
    assert FOUND["private_urls_refused"] == len(PRIVATE_URLS) + 1  # and the loopback test server
    scan = FOUND["secret_scan"]
    assert isinstance(scan, dict)
    assert scan["events_scanned"] > 0 and scan["log_bytes_scanned"] > 0  # something was searched
    assert scan["leaks"] == {"results": [], "events": [], "logs": []}
    record_figures("security", FOUND)
    assert json.loads(FIGURES.read_text())["security"] == FOUND
