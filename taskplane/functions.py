"""Named functions for ``function`` tasks.

Only functions registered by name run; nothing is imported because a message
names it. Register with the decorator in a module listed in
``Settings.function_modules`` (each worker imports those at start)::

    import taskplane

    @taskplane.function("add")
    def add(a: int, b: int) -> int:
        return a + b

A task ``{"type": "function", "target": "add", "payload": {"a": 1, "b": 2}}``
calls ``add(a=1, b=2)``; the return value (JSON-serialisable) is the result.
To report a confidence with the value, return a :class:`FunctionResult`.
In a sequential plan the payload also carries ``previous`` (the previous
task's result); it is passed only to functions that take a ``previous``
argument or ``**kwargs``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from taskplane.contract import CallContext, Outcome
from taskplane.errors import (
    ConfigurationError,
    FunctionError,
    InvalidPayloadError,
    NotFoundError,
    ValidationError,
)
from taskplane.models import ExecutionTask

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FunctionResult:
    """Return this from a registered function to report a confidence with the value."""

    value: Any
    confidence: float | None = None


@dataclass(frozen=True)
class _Registered:
    """A registered function with what each call needs of its signature, read once."""

    func: Callable[..., Any]
    signature: inspect.Signature | None  # None: a builtin without one (the call decides)
    takes_previous: bool

    @classmethod
    def of(cls, func: Callable[..., Any]) -> _Registered:
        try:
            signature = inspect.signature(func)
        except ValueError:
            return cls(func, None, True)
        takes = any(
            p.name == "previous" or p.kind is inspect.Parameter.VAR_KEYWORD
            for p in signature.parameters.values()
        )
        return cls(func, signature, takes)


class FunctionRegistry:
    """Maps names to callables; thread-safe."""

    def __init__(self) -> None:
        self._functions: dict[str, _Registered] = {}
        self._lock = threading.Lock()

    def register(self, name: str, func: Callable[..., Any]) -> None:
        """Register *func* under *name*; a second, different function for a name is refused."""
        if not name or not isinstance(name, str):
            raise ValidationError("invalid function: name: must be a non-empty string")
        with self._lock:
            existing = self._functions.get(name)
            if existing is not None and existing.func is not func:
                same = _origin(existing.func) == _origin(func)  # the same def, module reloaded
                if not same:
                    raise ValidationError(f"invalid function: name: {name!r} is already registered")
            self._functions[name] = _Registered.of(func)

    def get(self, name: str) -> Callable[..., Any]:
        """The function registered as *name*.

        Raises:
            NotFoundError: Nothing is registered under that name.
        """
        return self._registered(name).func

    def _registered(self, name: str) -> _Registered:
        try:
            return self._functions[name]
        except KeyError:
            raise NotFoundError(f"Function {name} not found") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._functions)

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        """Handler for ``function`` tasks: call the function with the payload as keywords."""
        registered = self._registered(task.target)
        kwargs = task.payload
        if "previous" in kwargs and not registered.takes_previous:
            kwargs = {k: v for k, v in kwargs.items() if k != "previous"}
        if registered.signature is not None:
            try:
                registered.signature.bind(**kwargs)
            except TypeError as exc:
                raise InvalidPayloadError(f"function {task.target}: {exc}") from exc
        try:
            value = registered.func(**kwargs)
        except Exception as exc:
            raise FunctionError(
                f"function {task.target} raised {type(exc).__name__}: {exc}"
            ) from exc
        confidence = None
        if isinstance(value, FunctionResult):
            value, confidence = value.value, value.confidence
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise FunctionError(f"function {task.target} returned a non-JSON value: {exc}") from exc
        return Outcome(result=value, confidence=confidence)


def _origin(func: Callable[..., Any]) -> tuple[str | None, str | None]:
    return getattr(func, "__module__", None), getattr(func, "__qualname__", None)


#: The registry the decorator fills; workers use it for ``function`` tasks.
registry = FunctionRegistry()


def function(name: str) -> Callable[[F], F]:
    """Decorator: register the function as *name* for ``function`` tasks."""

    def decorate(func: F) -> F:
        registry.register(name, func)
        return func

    return decorate


def import_function_modules(modules: Iterable[str]) -> None:
    """Import the modules that register functions (``Settings.function_modules``).

    Raises:
        ConfigurationError: A module cannot be imported; the message names it.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigurationError(
                f"TASKPLANE_FUNCTION_MODULES: cannot import {module!r}: {exc}"
            ) from exc
