"""The event bus interface, subscriptions, and the in-memory bus.

An event is a JSON dict ``{"type": str, "data": dict, "timestamp": float}``
(epoch seconds); an event a subscriber receives also carries ``"id"``, its
position in the bus (a Redis stream id, ``"<ms>-<seq>"``), which it may pass
back as ``since=`` to resume after it. Publishing never raises into the
caller; a subscriber's handler that raises is logged and delivery goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from taskplane.aliases import Clock

log = logging.getLogger(__name__)

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


def event_id_key(event_id: str) -> tuple[int, int]:
    """An event id (``"<ms>-<seq>"``) as a pair that sorts as the bus orders events."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def check_event_id(event_id: str) -> str:
    """*event_id* if it is one (``"<ms>-<seq>"``, or just ``"<ms>"``).

    Raises:
        ValueError: It is not, naming the ``since`` argument.
    """
    try:
        ms, seq = event_id_key(str(event_id))
    except ValueError:
        raise ValueError(f"since: not an event id: {event_id!r} (expected '<ms>-<seq>')") from None
    if ms < 0 or seq < 0:
        raise ValueError(f"since: not an event id: {event_id!r} (expected '<ms>-<seq>')")
    return f"{ms}-{seq}"


class Subscription:
    """One handler's interest in some event types; :meth:`close` ends it.

    Args:
        bus: The bus that delivers to it.
        handler: Called with each matching event.
        event_types: Types wanted; None (or containing ``"*"``) means all.
        after: The id of the last event this subscription has seen; it
            receives events with a later id (None: not known yet, the bus
            sets it to its newest event's id).
    """

    def __init__(
        self,
        bus: EventBus,
        handler: EventHandler,
        event_types: Iterable[str] | None = None,
        *,
        after: str | None = None,
    ) -> None:
        self.bus = bus
        self.handler = handler
        types = frozenset(event_types) if event_types is not None else None
        self.event_types = None if types is None or ALL_EVENTS in types else types
        self.after = after
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
        self,
        handler: EventHandler,
        *,
        event_types: Iterable[str] | None = None,
        since: str | None = None,
    ) -> Subscription:
        """Call *handler* with every later event of *event_types* (None or ``"*"``: all).

        Args:
            handler: Called with each event, in the order the bus keeps them.
            event_types: Types wanted; None or ``"*"`` means all.
            since: An event's ``id``: deliver the events after it first (those
                the bus still keeps), then every later one. None starts at
                the events published after this call.

        Raises:
            ValueError: *since* is not an event id.
        """
        after = None if since is None else check_event_id(since)
        subscription = Subscription(self, handler, event_types, after=after)
        self._started_subscription(subscription)
        with self._subs_lock:
            self._subscriptions.append(subscription)
        self._subscribed(subscription)
        return subscription

    def close(self) -> None:
        """End every subscription and stop background work."""
        with self._subs_lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()

    def _started_subscription(self, subscription: Subscription) -> None:  # noqa: B027
        """Hook for subclasses: *subscription* is about to be added (set its position)."""

    def _subscribed(self, subscription: Subscription) -> None:  # noqa: B027 - optional hook
        """Hook for subclasses: *subscription* was added."""

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
        """Hand *event* to every subscriber that has not seen it, containing their failures."""
        with self._subs_lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            self._deliver_to(subscription, event)

    def _deliver_to(self, subscription: Subscription, event: Event) -> None:
        """Hand *event* to *subscription* if it wants it and has not seen it; move it on."""
        event_id = event.get("id")
        if event_id is not None and subscription.after is not None:
            key = event_id_key(str(event_id))
            if key <= event_id_key(subscription.after):
                return  # seen already, or published before it subscribed
            subscription.after = str(event_id)
        event_type = str(event.get("type", ""))
        if not subscription.wants(event_type):
            return
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
        self._count = 0

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        event = make_event(event_type, data, timestamp=self.clock())
        with self._history_lock:
            self._count += 1
            event["id"] = f"{self._count}-0"
            self._history.append(event)
        self._deliver(event)

    def _started_subscription(self, subscription: Subscription) -> None:
        if subscription.after is None:
            with self._history_lock:
                subscription.after = f"{self._count}-0"

    def _subscribed(self, subscription: Subscription) -> None:
        with self._history_lock:
            kept = list(self._history)
        for event in kept:  # those after its ``since``; the rest are skipped by position
            self._deliver_to(subscription, event)

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
