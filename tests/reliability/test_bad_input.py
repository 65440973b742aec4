"""Bad input: generated malformed plans, tasks and registrations, and raw broker messages.

* ``engine.submit`` / ``execute_task`` / ``register_agent`` refuse every
  malformed input with :class:`taskplane.errors.ValidationError` naming the
  offending field, and nothing reaches Redis or the broker.
* A malformed message put straight on the ``taskplane`` queue (unknown task,
  undecodable body, wrong arguments) is rejected and logged; the worker keeps
  running tasks. A pickle-serialised message is refused unopened.
"""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Exchange, Producer, Queue

from taskplane.errors import ValidationError
from taskplane.keys import plan_key, registry_key
from taskplane.models import MAX_JSON_DEPTH, MAX_PAYLOAD_BYTES
from tests.reliability.conftest import SHORT
from tests.reliability.support import RUN_DIR, Cluster, record_figures
from tests.support import wait_until

EXAMPLES = 40 if SHORT else 150
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
TRIED: dict[str, int] = {}


def deep(depth: int) -> dict[str, Any]:
    """A dict nested *depth* levels."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


# -- generated values of the wrong kind -------------------------------------------------

not_a_string = st.one_of(
    st.none(), st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=3)
)
not_an_object = st.one_of(
    st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)
)
#: Identifiers no run may have: empty, with (Unicode) whitespace or control chars, too long.
bad_ids = st.one_of(
    not_a_string,
    st.just(""),
    st.text(min_size=1, max_size=8).map(lambda s: f"a{s}\u2003b"),
    st.sampled_from(["a b", "tab\there", "nl\n", "nul\x00", "\u2028", "x" * 201]),
)
unknown_words = st.text(min_size=1, max_size=12).filter(
    lambda s: (
        s not in ("all", "allSettled", "race", "weighted", "agent", "pattern", "http")
        and s not in ("function", "parallel", "sequential")
    )
)
huge_payloads = st.integers(MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES + 65536).map(
    lambda n: {"blob": "é" * (n // 2 + 1)}
)
deep_payloads = st.integers(1000, 20000).map(deep)
bad_payloads = st.one_of(
    not_an_object,
    huge_payloads,
    deep_payloads,
    st.just({"x": float("nan")}),
    st.just({"x": float("inf")}),
    st.just({"x": {1, 2}}),
)
bad_metadata = st.one_of(
    not_an_object,
    st.fixed_dictionaries(
        {"timeout": st.one_of(st.integers(max_value=0), st.sampled_from(["", "ten", "1.5s"]))}
    ),
    st.fixed_dictionaries({"retries": st.one_of(st.integers(max_value=-1), st.just(101))}),
    st.fixed_dictionaries({"priority": st.sampled_from([float("nan"), "high", [1]])}),
    st.fixed_dictionaries({"idempotencyKey": st.just("k" * 501)}),
    st.just({"extra": "x" * 70000}),
)


def valid_task(index: int = 0) -> dict[str, Any]:
    return {"id": f"t{index}", "type": "function", "target": "add", "payload": {"a": 1, "b": 2}}


def task_mutations() -> st.SearchStrategy[tuple[str, Any]]:
    """(field, value) pairs that make a task invalid; value ``...`` deletes the field."""
    return st.one_of(
        st.tuples(st.just("id"), bad_ids),
        st.tuples(st.just("id"), st.just(...)),
        st.tuples(st.just("type"), st.one_of(unknown_words, not_a_string, st.just(...))),
        st.tuples(st.just("target"), st.one_of(st.just(""), st.just("u" * 2049), not_a_string)),
        st.tuples(st.just("payload"), bad_payloads),
        st.tuples(st.just("metadata"), bad_metadata),
        st.tuples(
            st.text(min_size=1, max_size=10).filter(lambda s: s not in TASK_FIELDS), st.integers()
        ),
    )


TASK_FIELDS = {"id", "type", "target", "payload", "metadata"}


def mutated(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    out = dict(base)
    if value is ...:
        out.pop(field, None)
    else:
        out[field] = value
    return out


def plan_mutations() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(expected field, invalid plan) pairs."""
    base = {"id": "p", "strategy": "all", "tasks": [valid_task(0), valid_task(1)]}

    def task_level(m: tuple[str, Any]) -> tuple[str, dict[str, Any]]:
        field, value = m
        wrong = mutated(valid_task(1), field, value)
        return "tasks", {**base, "tasks": [valid_task(0), wrong]}

    plan_level = st.one_of(
        st.tuples(st.just("id"), bad_ids),
        st.tuples(st.just("tasks"), st.one_of(st.none(), st.integers(), st.text(max_size=4))),
        st.tuples(st.just("strategy"), st.one_of(unknown_words, not_a_string)),
        st.tuples(
            st.just("maxConcurrency"),
            st.one_of(st.integers(max_value=0), st.integers(min_value=10_001), st.text(max_size=3)),
        ),
        st.tuples(st.just("timeout"), st.one_of(st.integers(max_value=0), st.just(10**12))),
        st.tuples(st.just("kind"), st.one_of(unknown_words, st.integers())),
        st.tuples(st.just("bogusField"), st.integers()),
    ).map(lambda m: (m[0] if m[0] != "kind" else "kind", mutated(base, m[0], m[1])))
    duplicates = st.just(("tasks", {**base, "tasks": [valid_task(0), valid_task(0)]}))
    sequential = st.sampled_from(["maybe", [1], {"a": 1}]).map(
        lambda v: ("continueOnError", {"id": "p", "tasks": [valid_task()], "continueOnError": v})
    )
    return st.one_of(plan_level, task_mutations().map(task_level), duplicates, sequential)


def plan_keys(cluster: Cluster) -> set[str]:
    client = cluster.redis.client(1)
    try:
        return set(client.scan_iter("taskplane:plan:*", count=1000))
    finally:
        client.close()


def queued(cluster: Cluster) -> int:
    client = cluster.redis.client(0)
    try:
        return int(client.llen("taskplane"))
    finally:
        client.close()


def names_field(exc: ValidationError, field: str) -> bool:
    fields = [e["field"] for e in exc.errors]
    return bool(fields) and any(f == field or f.startswith(f"{field}.") for f in fields)


@HYPOTHESIS
@given(case=plan_mutations())
def test_malformed_plans_are_refused_and_nothing_is_stored(
    cluster: Cluster, case: tuple[str, dict[str, Any]]
) -> None:
    field, plan = case
    plan_id = plan.get("id")
    before = plan_keys(cluster)
    with pytest.raises(ValidationError) as info:
        cluster.engine.submit(plan)
    assert names_field(info.value, field), (field, info.value.errors)
    assert str(info.value).startswith("invalid plan")
    assert not plan_keys(cluster) - before  # nothing new (leases may expire meanwhile)
    if isinstance(plan_id, str):
        assert not any(k.startswith(plan_key("taskplane", plan_id, "")) for k in plan_keys(cluster))
    assert queued(cluster) == 0
    TRIED["plans"] = TRIED.get("plans", 0) + 1


@HYPOTHESIS
@given(mutation=task_mutations())
def test_malformed_tasks_are_refused_by_execute_task(
    cluster: Cluster, mutation: tuple[str, Any]
) -> None:
    field, value = mutation
    before = plan_keys(cluster)
    with pytest.raises(ValidationError) as info:
        cluster.engine.execute_task(mutated(valid_task(), field, value))
    assert names_field(info.value, field), (field, info.value.errors)
    assert not plan_keys(cluster) - before and queued(cluster) == 0
    TRIED["tasks"] = TRIED.get("tasks", 0) + 1


registrations = st.one_of(
    st.tuples(st.just("agentId"), st.just("agent_id"), bad_ids),
    st.tuples(
        st.just("endpoint"),
        st.just("endpoint"),
        st.one_of(
            not_a_string,
            st.sampled_from(
                [
                    "",
                    "ftp://h:1",
                    "http://",
                    "http://h:99999",
                    "http://h:1/?q=1",
                    "h:1",
                    "javascript:x",
                ]
            ),
        ),
    ),
    st.tuples(st.just("protocol"), st.just("protocol"), st.one_of(unknown_words, not_a_string)),
    st.tuples(
        st.just("capabilities"),
        st.just("capabilities"),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(min_size=1, max_size=5),
            st.lists(st.one_of(st.integers(), st.just(""), st.none()), min_size=1, max_size=3),
        ),
    ),
)


@HYPOTHESIS
@given(case=registrations)
def test_malformed_registrations_are_refused_and_nothing_is_stored(
    cluster: Cluster, case: tuple[str, str, Any]
) -> None:
    field, argument, value = case
    args: dict[str, Any] = {
        "agent_id": f"ok-{uuid.uuid4().hex[:6]}",
        "endpoint": "http://127.0.0.1:9",
        "protocol": "http",
        "capabilities": ["x"],
        argument: value,
    }
    client = cluster.redis.client(1)
    before = client.hgetall(registry_key("taskplane", "agents"))
    with pytest.raises(ValidationError) as info:
        cluster.engine.register_agent(**args, check_health=False)
    assert names_field(info.value, field), (field, info.value.errors)
    assert client.hgetall(registry_key("taskplane", "agents")) == before
    client.close()
    TRIED["registrations"] = TRIED.get("registrations", 0) + 1


def test_inputs_at_the_limits_run_through_the_workers(cluster: Cluster, uid: str) -> None:
    """The largest and deepest payloads accepted are carried to the worker and back."""
    nested = deep(MAX_JSON_DEPTH - 2)  # {"d": nested} is MAX_JSON_DEPTH levels deep
    text = "ü€𝄞" * ((MAX_PAYLOAD_BYTES - 100) // 24)  # 24 characters as escaped JSON
    results = cluster.engine.execute_parallel(
        {
            "id": f"limits-{uid}",
            "tasks": [
                {"id": "deep", "type": "function", "target": "echo", "payload": {"d": nested}},
                {"id": "big", "type": "function", "target": "echo", "payload": {"t": text}},
            ],
        }
    )
    assert results[0].result == {"d": nested}
    assert results[1].result == {"t": text}


# -- raw broker messages -------------------------------------------------------------------


class Tripwire:
    """Unpickling this creates a file: proof that a pickle was (not) opened."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def headers(task: str) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "reliability-tests",
    }


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_malformed_and_pickled_broker_messages_are_refused(cluster: Cluster, uid: str) -> None:
    tripwire = RUN_DIR / f"tripwire-{uid}"
    key = f"{uid}:pickled"
    record = {
        "id": "r",
        "type": "function",
        "target": "tests.record",
        "payload": {"redis_url": cluster.state_url, "key": key},
    }
    plan = {"id": f"pickled-{uid}", "tasks": [record]}
    queue = Queue("taskplane", Exchange("taskplane", "direct"), routing_key="taskplane")
    marks = cluster.log_marks()
    sent = {
        "unknown task": (json.dumps([[], {}, EMBED]), headers("taskplane.no_such_task")),
        "not JSON": ("{{{ not json", headers("taskplane.run_task")),
        "body an object": (json.dumps({"a": 1}), headers("taskplane.run_task")),
        "body a number": ("5", headers("taskplane.run_task")),
        "body null": ("null", headers("taskplane.run_task")),
        "body too short": (json.dumps([[], {}]), headers("celery.chord_unlock")),
        "run_task garbage": (
            json.dumps([[], {"plan_id": 5, "index": "x", "task": "junk"}, EMBED]),
            headers("taskplane.run_task"),
        ),
        "run_task no args": (json.dumps([[], {}, EMBED]), headers("taskplane.run_task")),
        "run_task unknown plan": (
            json.dumps([[], {"plan_id": f"nope-{uid}", "index": 0, "task": record}, EMBED]),
            headers("taskplane.run_task"),
        ),
        "execute_plan invalid": (
            json.dumps([[{"id": "bad plan", "tasks": 3}], {}, EMBED]),
            headers("taskplane.execute_plan"),
        ),
    }
    with Connection(cluster.env["TASKPLANE_BROKER_URL"]) as conn:
        producer = Producer(conn)
        for body, head in sent.values():
            producer.publish(
                body,
                exchange=queue.exchange,
                routing_key="taskplane",
                declare=[queue],
                headers=head,
                content_type="application/json",
                content_encoding="utf-8",
                serializer=None,
            )
        # a pickled message: if it were ever unpickled the tripwire file would appear,
        # and if it were run the recorded function would count a call
        pickled = pickle.dumps(([plan, Tripwire(tripwire)], {}, EMBED))
        producer.publish(
            pickled,
            exchange=queue.exchange,
            routing_key="taskplane",
            declare=[queue],
            headers=headers("taskplane.execute_plan"),
            content_type="application/x-python-serialize",
            content_encoding="binary",
            serializer=None,
        )
    sent_count = len(sent) + 1
    assert wait_until(lambda: queued(cluster) == 0, timeout_s=20), "messages stuck in the queue"
    expected_lines = (  # what the workers log about the messages above, once they took them
        "Received unregistered task of type 'taskplane.no_such_task'",
        "Refusing to deserialize untrusted content of type pickle",
        "nope-",
    )

    def logged_every_message() -> bool:
        text = cluster.logs(since=marks)
        invalid = text.count("Received invalid task message")
        return invalid >= 5 and all(line in text for line in expected_lines)

    assert wait_until(logged_every_message, timeout_s=10), cluster.logs(since=marks)[-3000:]
    logs = cluster.logs(since=marks)

    assert all(worker.alive() for worker in cluster.workers)
    assert not tripwire.exists(), "a pickled message was deserialised"
    client = cluster.redis.client(1)
    assert client.get(f"{key}:calls") is None, "a pickled message was executed"
    assert cluster.engine.store.status(f"pickled-{uid}") == {}, "a pickled plan was stored"
    client.close()
    assert "Received unregistered task of type 'taskplane.no_such_task'" in logs
    assert "Refusing to deserialize untrusted content of type pickle" in logs
    assert logs.count("Received invalid task message") == 5  # 4 malformed bodies + pickle
    assert "nope-" in logs and "missing" in logs  # the unknown plan's delivery was dropped

    # the workers still run ordinary tasks
    after = cluster.engine.execute_task(valid_task())
    assert after.ok and after.result == 3
    record_figures(
        "bad_input",
        {
            "generated_inputs_refused": dict(TRIED),
            "broker_messages_refused": sent_count,
            "broker_message_kinds": [*sent, "pickle"],
        },
    )
