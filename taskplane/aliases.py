"""Type aliases shared across taskplane, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

#: Epoch seconds now (``time.time``); injected so tests move time instead of sleeping.
Clock: TypeAlias = Callable[[], float]
#: Blocks for the given seconds (``time.sleep``); only off the worker path.
Sleep: TypeAlias = Callable[[float], None]
#: Hands an event not about one task (``circuit:open``, ``anomaly:detected``) to the bus.
Emit: TypeAlias = Callable[[str, dict[str, Any]], None]
#: A JSON object as Python sees it.
JsonObject: TypeAlias = dict[str, Any]
