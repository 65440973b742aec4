"""The one exception tree of taskplane.

::

    TaskplaneError
    ├── ConfigurationError          settings that cannot be used
    ├── ValidationError             a plan, task or registration is malformed (also a ValueError)
    ├── BackendError                Redis or the tracking database cannot be reached
    ├── PlanFailedError             a plan ended without the outcome its strategy needs
    ├── WaitTimeoutError            waiting for a plan gave up before the plan ended
    └── ExecutionError              one attempt at a task went wrong (caught inside the worker)
        ├── TransportError          the target could not be reached (connection refused, reset)
        ├── TaskTimeoutError        the target did not answer within the call's timeout
        ├── UpstreamError           the target answered with a retryable error (5xx, 429)
        │   └── ThrottledError      the target throttles (429, RESOURCE_EXHAUSTED): not unhealthy
        ├── ClientError             the target refused the request as malformed (4xx)
        ├── InvalidReplyError       the target's reply could not be understood
        ├── NotFoundError           no such agent, function or pattern
        ├── InvalidPayloadError     the payload does not fit the task type
        ├── ForbiddenTargetError    an HTTP target is not allowed (allow-list, link-local, private)
        ├── CircuitOpenError        the agent's circuit breaker is open
        ├── RateLimitedError        no rate-limit slot now: the task is rescheduled, not failed
        ├── PatternError            a nested pattern is cyclic, too deep or malformed
        ├── FunctionError           a registered function raised
        ├── CredentialsError        the API key an agent's policy names is not set in the worker
        └── TaskCancelledError      the plan was cancelled before this attempt

Whether an error is retried is data, not code: see :data:`RETRYABLE_ERRORS`.
Whether it counts against an agent's circuit breaker: :data:`BREAKER_IGNORED_ERRORS`.

Every constructor passes all of its arguments to the base class, so an
exception survives a round trip through Celery's JSON result backend.
"""

from __future__ import annotations

from typing import Any


class TaskplaneError(Exception):
    """Root of every error taskplane raises."""


class ConfigurationError(TaskplaneError):
    """Raised when settings are missing or out of range; the message names the variable."""


class ValidationError(TaskplaneError, ValueError):
    """Raised when a plan, task or registration is malformed; the message names each field.

    Args:
        message: A readable summary naming every offending field.
        errors: One ``{"field", "message"}`` dict per problem.
    """

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message, errors or [])
        self.message = message
        self.errors: list[dict[str, str]] = errors or []

    def __str__(self) -> str:
        return self.message


class BackendError(TaskplaneError):
    """Raised when Redis or the tracking store cannot be reached; the message names the URL."""


class PlanFailedError(TaskplaneError):
    """Raised when a plan ends without the outcome its strategy needs.

    Args:
        message: Why the plan failed.
        results: Every task's result so far, in task order (``ExecutionResult``
            objects, or their JSON dicts after a trip through a result backend).
        plan_id: The plan's id.
    """

    def __init__(self, message: str, results: list[Any] | None = None, plan_id: str = "") -> None:
        super().__init__(message, results or [], plan_id)
        self.message = message
        self.results: list[Any] = results or []
        self.plan_id = plan_id

    def __str__(self) -> str:
        return self.message


class WaitTimeoutError(TaskplaneError, TimeoutError):
    """Raised when ``PlanHandle.wait(timeout)`` gives up first (the plan keeps running)."""


class ExecutionError(TaskplaneError):
    """Raised by one attempt at a task; the task runner turns it into a result envelope."""


class TransportError(ExecutionError):
    """Raised when the target cannot be reached (connection refused, reset, DNS)."""


class TaskTimeoutError(ExecutionError):
    """Raised when the target does not answer within the call's timeout."""


class UpstreamError(ExecutionError):
    """Raised when the target answers with a server-side error worth retrying.

    Args:
        message: What the target said.
        status: HTTP status (5xx, 429) or gRPC status name.
        retry_after_s: The target's own hint of when to retry, if it gave one.
    """

    def __init__(self, message: str, status: int | str = 0, retry_after_s: float | None = None):
        super().__init__(message, status, retry_after_s)
        self.status = status
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return str(self.args[0])


class ThrottledError(UpstreamError):
    """Raised when the target says it is throttling (HTTP 429, gRPC RESOURCE_EXHAUSTED).

    Retried like any upstream error (after its ``Retry-After``), but it says
    nothing about the agent's health, so it never trips the circuit breaker.
    """


class ClientError(ExecutionError):
    """Raised when the target rejects the request itself (HTTP 4xx other than 429).

    Args:
        message: What the target said.
        status: The HTTP status or gRPC status name.
    """

    def __init__(self, message: str, status: int | str = 0) -> None:
        super().__init__(message, status)
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidReplyError(ExecutionError):
    """Raised when the target's reply is not what its protocol promises (not JSON, no fields)."""


class NotFoundError(ExecutionError):
    """Raised when a task names an agent, function or pattern nobody registered."""


class InvalidPayloadError(ExecutionError):
    """Raised when a task's payload does not fit its type (bad method, bad arguments)."""


class ForbiddenTargetError(ExecutionError):
    """Raised when an HTTP target is outside the allow-list, link-local or (optionally) private."""


class CircuitOpenError(ExecutionError):
    """Raised when the agent's circuit breaker is open and the call fails fast."""


class RateLimitedError(ExecutionError):
    """Raised when an agent's rate limit has no free slot now; the task waits off the worker.

    Not a failure and not an attempt: the runner reschedules the task for
    *wait_s* seconds later (its slot, reserved in advance when *reserved*).

    Args:
        message: Which limit and how long until the slot.
        wait_s: Seconds until the slot.
        reserved: Whether the slot is already held for this task.
    """

    def __init__(self, message: str, wait_s: float = 0.0, reserved: bool = False) -> None:
        super().__init__(message, wait_s, reserved)
        self.wait_s = wait_s
        self.reserved = reserved

    def __str__(self) -> str:
        return str(self.args[0])


class PatternError(ExecutionError):
    """Raised when a nested pattern is cyclic, nests too deep or is malformed."""


class FunctionError(ExecutionError):
    """Raised when a registered function raises; the message carries its exception."""


class CredentialsError(ExecutionError):
    """Raised when the environment variable an agent's policy names for its API key is unset."""


class TaskCancelledError(ExecutionError):
    """Raised when a plan's cancel flag is seen before an attempt."""


#: Errors worth another attempt, with backoff (a Redis hiccup included).
RETRYABLE_ERRORS: tuple[type[TaskplaneError], ...] = (
    TransportError,
    TaskTimeoutError,
    UpstreamError,
    BackendError,
)

#: Errors that say nothing about an agent's health and never trip its breaker.
BREAKER_IGNORED_ERRORS: tuple[type[ExecutionError], ...] = (
    ThrottledError,
    ClientError,
    NotFoundError,
    InvalidPayloadError,
    ForbiddenTargetError,
    CircuitOpenError,
    RateLimitedError,
    TaskCancelledError,
    PatternError,
    CredentialsError,
)


def http_status_error(
    status: int, message: str, retry_after_s: float | None = None
) -> ExecutionError | None:
    """The error an HTTP status stands for: 5xx and 429 are retryable, other 4xx are not.

    Returns None below 400; callers decide what a non-2xx success-range status means.
    """
    if status == 429:
        return ThrottledError(message, status, retry_after_s)
    if status >= 500:
        return UpstreamError(message, status, retry_after_s)
    if status >= 400:
        return ClientError(message, status)
    return None
