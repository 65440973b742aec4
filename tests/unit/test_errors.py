"""The exception tree: one root, drawn in the docstring, every error rebuildable from its args."""

from __future__ import annotations

import inspect
import json
import pickle

import pytest
from celery import Celery
from celery.backends.base import Backend

from taskplane import errors
from taskplane.errors import (
    BREAKER_IGNORED_ERRORS,
    RETRYABLE_ERRORS,
    ClientError,
    ExecutionError,
    PlanFailedError,
    TaskplaneError,
    UpstreamError,
    ValidationError,
)

ALL_ERRORS = sorted(
    (
        cls
        for _name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, TaskplaneError) and cls.__module__ == errors.__name__
    ),
    key=lambda cls: cls.__name__,
)

#: One instance of every class, built with every argument it takes.
SAMPLES: list[TaskplaneError] = [
    errors.TaskplaneError("root"),
    errors.ConfigurationError("TASKPLANE_X: bad"),
    ValidationError("invalid plan: id: empty", [{"field": "id", "message": "empty"}]),
    errors.BackendError("redis://127.0.0.1:6379/0 refused"),
    PlanFailedError(
        "task t1 ended failure", [{"taskId": "t1", "status": "failure", "error": "x"}], "p1"
    ),
    errors.WaitTimeoutError("plan p1 still running after 5s"),
    ExecutionError("attempt failed"),
    errors.TransportError("connection refused"),
    errors.TaskTimeoutError("no answer within 1.000s"),
    UpstreamError("HTTP 503: busy", 503, 2.5),
    ClientError("HTTP 404: nope", 404),
    errors.ThrottledError("HTTP 429: slow down", 429, 1.0),
    errors.InvalidReplyError("not JSON"),
    errors.NotFoundError("Function f not found"),
    errors.InvalidPayloadError("bad method"),
    errors.ForbiddenTargetError("169.254.169.254 is link-local"),
    errors.CircuitOpenError("circuit for a1 is open"),
    errors.RateLimitedError("agent a1: rate limit, next slot in 0.250 s (booked)", 0.25, True),
    errors.PatternError("pattern p nests too deep"),
    errors.FunctionError("function f raised KeyError"),
    errors.CredentialsError("OPENAI_API_KEY (policy.apiKeyEnv) is not set"),
    errors.TaskCancelledError("plan cancelled"),
]


def _state(exc: BaseException) -> dict[str, object]:
    """What a caller reads off an error: its text, its args and its public attributes."""
    return {"str": str(exc), "args": exc.args, **vars(exc)}


def test_every_class_has_a_sample() -> None:
    assert sorted({type(e) for e in SAMPLES}, key=lambda c: c.__name__) == ALL_ERRORS


def test_docstring_draws_every_class() -> None:
    doc = errors.__doc__ or ""
    for cls in ALL_ERRORS:
        assert f" {cls.__name__} " in doc or f"    {cls.__name__}\n" in doc, cls.__name__


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_rebuilt_from_args(exc: TaskplaneError) -> None:
    rebuilt = type(exc)(*exc.args)
    assert str(rebuilt) == str(exc)
    assert _state(rebuilt) == _state(exc)


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_through_celery_json_backend(exc: TaskplaneError) -> None:
    backend = Backend(Celery("errors-test", set_as_current=False), serializer="json")
    wire = json.loads(json.dumps(backend.prepare_exception(exc)))
    rebuilt = backend.exception_to_python(wire)
    assert type(rebuilt) is type(exc)
    assert str(rebuilt) == str(exc)
    assert _state(rebuilt) == _state(exc)


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip_through_pickle(exc: TaskplaneError) -> None:
    # Not used on the wire (JSON only), but logging/multiprocessing tools may pickle errors.
    rebuilt = pickle.loads(pickle.dumps(exc))
    assert _state(rebuilt) == _state(exc)


def test_one_root() -> None:
    assert all(issubclass(cls, TaskplaneError) for cls in ALL_ERRORS)


def test_validation_error_is_a_value_error_with_fields() -> None:
    exc = ValidationError("invalid task: id: empty", [{"field": "id", "message": "empty"}])
    assert isinstance(exc, ValueError)
    assert exc.errors == [{"field": "id", "message": "empty"}]
    assert ValidationError("m").errors == []


def test_wait_timeout_is_a_timeout_error() -> None:
    assert isinstance(errors.WaitTimeoutError("x"), TimeoutError)


def test_plan_failed_error_keeps_results_and_plan_id() -> None:
    exc = PlanFailedError("race: no task succeeded", [1, 2], "p9")
    assert (exc.results, exc.plan_id, str(exc)) == ([1, 2], "p9", "race: no task succeeded")
    assert PlanFailedError("m").results == []


def test_upstream_error_fields() -> None:
    exc = UpstreamError("HTTP 429: slow down", 429, 3.0)
    assert (exc.status, exc.retry_after_s, str(exc)) == (429, 3.0, "HTTP 429: slow down")
    assert UpstreamError("x").retry_after_s is None


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (errors.TransportError, True),
        (errors.TaskTimeoutError, True),
        (UpstreamError, True),
        (errors.BackendError, True),
        (ClientError, False),
        (errors.NotFoundError, False),
        (errors.InvalidPayloadError, False),
        (errors.CircuitOpenError, False),
        (errors.ForbiddenTargetError, False),
        (errors.FunctionError, False),
        (errors.TaskCancelledError, False),
    ],
)
def test_retryable_is_data(cls: type[TaskplaneError], retryable: bool) -> None:
    assert isinstance(cls("x"), RETRYABLE_ERRORS) is retryable
    assert (cls in RETRYABLE_ERRORS) is retryable


def test_retryable_and_breaker_ignored_do_not_overlap() -> None:
    assert not set(RETRYABLE_ERRORS) & set(BREAKER_IGNORED_ERRORS)
    assert ClientError in BREAKER_IGNORED_ERRORS
    assert errors.CircuitOpenError in BREAKER_IGNORED_ERRORS


def test_foreign_exceptions_are_not_retryable() -> None:
    assert not isinstance(ConnectionError("x"), RETRYABLE_ERRORS)
    assert not isinstance(TimeoutError("x"), RETRYABLE_ERRORS)
