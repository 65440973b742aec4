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

from taskplane.errors import (
    ConfigurationError,
    FunctionError,
    InvalidPayloadError,
    NotFoundError,
    ValidationError,
)
from taskplane.executor import CallContext, Outcome
from taskplane.models import ExecutionTask

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FunctionResult:
    """Return this from a registered function to report a confidence with the value."""

    value: Any
    confidence: float | None = None


class FunctionRegistry:
    """Maps names to callables; thread-safe."""

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def register(self, name: str, func: Callable[..., Any]) -> None:
        """Register *func* under *name*; a second, different function for a name is refused."""
        if not name or not isinstance(name, str):
            raise ValidationError("invalid function: name: must be a non-empty string")
        with self._lock:
            existing = self._functions.get(name)
            if existing is not None and existing is not func:
                same = _origin(existing) == _origin(func)  # the same def, module reloaded
                if not same:
                    raise ValidationError(f"invalid function: name: {name!r} is already registered")
            self._functions[name] = func

    def get(self, name: str) -> Callable[..., Any]:
        """The function registered as *name*.

        Raises:
            NotFoundError: Nothing is registered under that name.
        """
        try:
            return self._functions[name]
        except KeyError:
            raise NotFoundError(f"Function {name} not found") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._functions)

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        """Handler for ``function`` tasks: call the function with the payload as keywords."""
        func = self.get(task.target)
        kwargs = task.payload
        if "previous" in kwargs and not _accepts(func, "previous"):
            kwargs = {k: v for k, v in kwargs.items() if k != "previous"}
        try:
            inspect.signature(func).bind(**kwargs)
        except TypeError as exc:
            raise InvalidPayloadError(f"function {task.target}: {exc}") from exc
        except ValueError:  # builtins without a signature: let the call decide
            pass
        try:
            value = func(**kwargs)
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


def _accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether *func* takes a keyword argument *name* (or any keyword arguments)."""
    try:
        params = inspect.signature(func).parameters.values()
    except ValueError:
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


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
