"""Tasks longer than the visibility timeout: refused at submit, or run exactly once.

On the Redis broker a message is delivered again once the visibility timeout
has passed since its delivery, so a task attempt that could outlive it would
run twice. taskplane refuses such a task at submit (naming the field and
``TASKPLANE_VISIBILITY_TIMEOUT_S``); a task within the limit whose retries and
backoffs together last far longer than the visibility timeout runs each
attempt exactly once, because every attempt is its own message and a long
wait is cut into countdowns that fit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from taskplane import TaskStatus
from taskplane.errors import ValidationError
from taskplane.keys import plan_key
from tests.agents import HttpAgentServer
from tests.reliability.conftest import fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import Cluster, record_figures, running_cluster
from tests.support import wait_until

#: Visibility timeout of the short cluster (the smallest the settings allow), in seconds.
VISIBILITY_S = 10
#: The longest a task may run there: 10 s less the 5 s margin and the 1 s countdown.
LIMIT_MS = 4000
ATTEMPT_MS = 3500
RETRIES = 2
BACKOFF_MS = 4000


@pytest.fixture(scope="module")
def short_cluster() -> Iterator[Cluster]:
    server = PrivateRedis(fresh_dir("redis-long-tasks"))
    with (
        server,
        running_cluster(
            server,
            workers=1,
            name="long",
            TASKPLANE_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
            TASKPLANE_DEFAULT_TIMEOUT=str(LIMIT_MS),
            TASKPLANE_RETRY_CONFIG__INITIAL_DELAY=str(BACKOFF_MS),
        ) as cluster,
    ):
        yield cluster


def broker_backlog(cluster: Cluster) -> tuple[int, int]:
    client = cluster.redis.client(0)
    try:
        return int(client.llen("taskplane")), int(client.hlen("unacked"))
    finally:
        client.close()


def test_a_task_longer_than_the_visibility_timeout_is_refused(short_cluster: Cluster) -> None:
    assert short_cluster.settings.max_task_timeout_ms == LIMIT_MS
    plan_id = f"long-{uuid.uuid4().hex[:8]}"
    plan = {
        "id": plan_id,
        "tasks": [
            {"id": "ok", "type": "function", "target": "echo", "payload": {}},
            {
                "id": "long",
                "type": "function",
                "target": "echo",
                "payload": {},
                "metadata": {"timeout": LIMIT_MS + 1},
            },
        ],
    }
    with pytest.raises(ValidationError) as info:
        short_cluster.engine.submit(plan)
    assert [e["field"] for e in info.value.errors] == ["tasks[1].metadata.timeout"]
    assert "TASKPLANE_VISIBILITY_TIMEOUT_S" in str(info.value)
    state = short_cluster.redis.client(1)
    try:
        assert not state.keys(plan_key("taskplane", plan_id, "*"))
    finally:
        state.close()
    assert broker_backlog(short_cluster) == (0, 0)


@pytest.mark.timeout(120)
def test_retries_longer_than_the_visibility_timeout_run_each_attempt_once(
    short_cluster: Cluster,
) -> None:
    """Three attempts of 4 s and backoffs of 4 s and 8 s: 24 s, the visibility timeout is 10 s."""
    agent_id = f"hang-{uuid.uuid4().hex[:8]}"
    with HttpAgentServer(mode="hang") as agent:
        short_cluster.engine.register_agent(agent_id, agent.endpoint, check_health=False)
        task = {
            "id": "slow",
            "type": "agent",
            "target": agent_id,
            "payload": {"prompt": "wait"},
            "metadata": {"timeout": LIMIT_MS, "retries": RETRIES},
        }
        started = time.monotonic()
        result = short_cluster.engine.execute_task(task)
        elapsed = time.monotonic() - started
        assert result.status is TaskStatus.TIMEOUT, result.error
        assert result.retries == RETRIES
        assert elapsed > 2 * VISIBILITY_S  # the task as a whole far outlived the timeout
        # a message delivered twice would be swept back after the visibility timeout
        time.sleep(VISIBILITY_S + 2 * short_cluster.settings.redelivery_sweep_s)
        assert wait_until(lambda: broker_backlog(short_cluster) == (0, 0), timeout_s=10)
        calls = agent.calls
    assert calls == RETRIES + 1
    record_figures(
        "long_task_across_visibility_timeout",
        {
            "visibility_timeout_s": VISIBILITY_S,
            "task_s": round(elapsed, 1),
            "calls": calls,
            "retries": result.retries,
        },
    )
