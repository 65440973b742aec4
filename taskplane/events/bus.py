"""The event bus interface, subscriptions, and the in-memory bus.

An event is a JSON dict ``{"type": str, "data": dict, "timestamp": float}``
(epoch seconds). Publishing never raises into the caller; a subscriber's
handler that raises is logged and delivery goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

Clock = Callable[[], float]
#: An event: ``{"type", "data", "timestamp"}``.
Event = dict[str, Any]
EventHandler = Callable[[Event], None]

#: Subscribe to every event type.
ALL_EVENTS = "*"
DEFAULT_RECENT_COUNT = 100
DEFAULT_MAXLEN = 10_000


def make_event(event_type: str, data: dict[str, Any], *, timestamp: float) -> Event:
    """Build an event dict."""
    return {"type": event_type, "data": dict(data), "timestamp": timestamp}


class Subscription:
    """One handler's interest in some event types; :meth:`close` ends it.

    Args:
        bus: The bus that delivers to it.
        handler: Called with each matching event.
        event_types: Types wanted; None (or containing ``"*"``) means all.
    """

    def __init__(
        self, bus: EventBus, handler: EventHandler, event_types: Iterable[str] | None = None
    ) -> None:
        self.bus = bus
        self.handler = handler
        types = frozenset(event_types) if event_types is not None else None
        self.event_types = None if types is None or ALL_EVENTS in types else types
        self.closed = False

    def wants(self, event_type: str) -> bool:
        """Whether this subscription receives events of *event_type*."""
        return not self.closed and (self.event_types is None or event_type in self.event_types)

    def close(self) -> None:
        """Stop receiving events; idempotent."""
        if not self.closed:
            self.closed = True
            self.bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus(ABC):
    """Publishes events and delivers them to subscribers.

    Args:
        clock: Epoch seconds, stamped on each event.
    """

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._subscriptions: list[Subscription] = []
        self._subs_lock = threading.Lock()

    @abstractmethod
    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        """Publish one event; never raises (failures are logged and the event dropped)."""

    @abstractmethod
    def recent(
        self, count: int = DEFAULT_RECENT_COUNT, event_type: str | None = None
    ) -> list[Event]:
        """The newest *count* events (of *event_type* if given), oldest first."""

    def subscribe(
        self, handler: EventHandler, *, event_types: Iterable[str] | None = None
    ) -> Subscription:
        """Call *handler* with every later event of *event_types* (None or ``"*"``: all)."""
        subscription = Subscription(self, handler, event_types)
        with self._subs_lock:
            self._subscriptions.append(subscription)
        self._started_subscription()
        return subscription

    def close(self) -> None:
        """End every subscription and stop background work."""
        with self._subs_lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()

    def _started_subscription(self) -> None:  # noqa: B027 - optional hook
        """Hook for subclasses: a subscription was added."""

    def _last_subscription_closed(self) -> None:  # noqa: B027 - optional hook
        """Hook for subclasses: no subscription is left."""

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._subs_lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
            empty = not self._subscriptions
        if empty:
            self._last_subscription_closed()

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        with self._subs_lock:
            return len(self._subscriptions)

    def _deliver(self, event: Event) -> None:
        """Hand *event* to every interested subscriber, containing their failures."""
        with self._subs_lock:
            subscriptions = list(self._subscriptions)
        event_type = str(event.get("type", ""))
        for subscription in subscriptions:
            if not subscription.wants(event_type):
                continue
            try:
                subscription.handler(event)
            except Exception:
                log.exception("event handler %r failed on %s", subscription.handler, event_type)


class InMemoryEventBus(EventBus):
    """Delivers synchronously inside one process and keeps the last *maxlen* events.

    Args:
        maxlen: How many events :meth:`recent` can return.
        clock: Epoch seconds, stamped on each event.
    """

    def __init__(self, *, maxlen: int = DEFAULT_MAXLEN, clock: Clock = time.time) -> None:
        super().__init__(clock=clock)
        self._history: deque[Event] = deque(maxlen=maxlen)
        self._history_lock = threading.Lock()

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        event = make_event(event_type, data, timestamp=self.clock())
        with self._history_lock:
            self._history.append(event)
        self._deliver(event)

    def recent(
        self, count: int = DEFAULT_RECENT_COUNT, event_type: str | None = None
    ) -> list[Event]:
        if count <= 0:
            return []
        with self._history_lock:
            events = list(self._history)
        if event_type is not None:
            events = [event for event in events if event["type"] == event_type]
        return events[-count:]
