"""The Redis event bus: pub/sub for live delivery, a bounded stream for late readers.

Every publish is one round trip (``PUBLISH`` on ``{prefix}:events`` and
``XADD`` to ``{prefix}:events:stream``, trimmed to about ``stream_maxlen``).
Subscribers in any process are served by one background thread per bus that
listens on the channel and reconnects when Redis drops. Events published
while a subscriber is disconnected are not replayed to it; they remain
readable through :meth:`RedisEventBus.recent`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from typing import Any

import redis

from taskplane.errors import BackendError
from taskplane.events.bus import (
    DEFAULT_MAXLEN,
    DEFAULT_RECENT_COUNT,
    Clock,
    Event,
    EventBus,
    make_event,
)
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "taskplane"
#: How long the listener waits for a message before checking whether to stop.
POLL_INTERVAL_S = 0.2
#: How long ``subscribe`` waits for the listener to be subscribed.
SUBSCRIBE_TIMEOUT_S = 5.0
#: Reconnect backoff bounds.
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
#: Page size when :meth:`RedisEventBus.recent` filters by type.
RECENT_PAGE = 500


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def parse_event(payload: str | bytes) -> Event | None:
    """The event in a published payload; None (and a warning) when it is not one."""
    try:
        event = json.loads(payload)
    except ValueError:
        log.warning("ignoring an event that is not JSON: %.200r", payload)
        return None
    if not isinstance(event, dict) or "type" not in event:
        log.warning("ignoring a malformed event: %.200r", payload)
        return None
    return event


#: Events a background sender holds at most; beyond, the oldest are dropped.
MAX_QUEUED_EVENTS = 100_000
#: How long the sender lets events gather before a round trip, in seconds.
LINGER_S = 0.002
#: Events sent in one round trip at most.
MAX_BATCH = 500
#: How long closing waits for queued events to go out, in seconds.
SENDER_STOP_TIMEOUT_S = 5.0


class RedisEventBus(EventBus):
    """Events through Redis, seen by every process that subscribes.

    Args:
        redis_client: Any ``redis.Redis`` (``decode_responses`` either way).
        prefix: Namespace of the channel and the stream.
        stream_maxlen: About how many events the stream keeps (``MAXLEN ~``).
        clock: Epoch seconds, stamped on each event.
        background: Publish from a background thread, many events per round
            trip, so publishing costs the caller no Redis round trip (workers
            use this; order is kept; ``close()`` sends what is queued).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        stream_maxlen: int = DEFAULT_MAXLEN,
        clock: Clock = time.time,
        background: bool = False,
    ) -> None:
        super().__init__(clock=clock)
        self.redis = redis_client
        self.channel = f"{prefix}:events"
        self.stream = f"{prefix}:events:stream"
        self.stream_maxlen = stream_maxlen
        self._throttle = LogThrottle()
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._sender = _Sender(self) if background else None

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            payload = json.dumps(
                make_event(event_type, data, timestamp=self.clock()),
                separators=(",", ":"),
                default=str,
            )
        except ValueError as exc:
            self._dropped(event_type, exc)
            return
        if self._sender is not None:
            self._sender.put(event_type, payload)
        else:
            self._send([(event_type, payload)])

    def _send(self, batch: list[tuple[str, str]]) -> None:
        """Publish *batch* in one round trip; failures are logged and the events dropped."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for _event_type, payload in batch:
                pipe.publish(self.channel, payload)
                pipe.xadd(
                    self.stream, {"event": payload}, maxlen=self.stream_maxlen, approximate=True
                )
            pipe.execute()
        except (redis.RedisError, OSError, ValueError) as exc:
            self._dropped(batch[0][0] if len(batch) == 1 else f"{len(batch)} events", exc)

    def _dropped(self, what: str, exc: Exception) -> None:
        if self._throttle.due():
            log.warning("dropping event %s: %s (repeats are logged at debug)", what, exc)
        else:
            log.debug("dropping event %s: %s", what, exc)

    def recent(
        self, count: int = DEFAULT_RECENT_COUNT, event_type: str | None = None
    ) -> list[Event]:
        """The newest events in the stream, oldest first (at most ``stream_maxlen``).

        Raises:
            BackendError: Redis cannot be reached.
        """
        count = min(count, self.stream_maxlen)
        if count <= 0:
            return []
        found: list[Event] = []
        newest: str = "+"
        scanned = 0
        page = count if event_type is None else RECENT_PAGE
        try:
            while len(found) < count and scanned < self.stream_maxlen:
                entries: list[Any] = list(
                    self.redis.xrevrange(self.stream, max=newest, min="-", count=page) or []
                )
                for _entry_id, fields in entries:
                    payload = fields.get("event", fields.get(b"event"))
                    event = parse_event(payload) if payload is not None else None
                    if event is not None and event_type in (None, event["type"]):
                        found.append(event)
                        if len(found) == count:
                            break
                scanned += len(entries)
                if len(entries) < page or event_type is None:
                    break
                newest = "(" + _text(entries[-1][0])
        except redis.RedisError as exc:
            raise BackendError(f"cannot read events from Redis: {exc}") from exc
        found.reverse()
        return found

    def close(self) -> None:
        super().close()
        self._stop_listener()
        if self._sender is not None:
            self._sender.stop()

    def _started_subscription(self) -> None:
        with self._listener_lock:
            listener = self._listener
            if listener is None or not listener.is_alive() or listener.stopping.is_set():
                listener = _Listener(self)
                self._listener = listener
                listener.start()
        if not listener.subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            log.warning(
                "event listener not subscribed to %s yet; it keeps trying in the background",
                self.channel,
            )

    def _last_subscription_closed(self) -> None:
        self._stop_listener()

    def _stop_listener(self) -> None:
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.stopping.set()
        if listener is not threading.current_thread():
            listener.join(timeout=POLL_INTERVAL_S * 5)


class _Listener(threading.Thread):
    """Receives the bus's channel and hands each event to the bus's subscribers."""

    def __init__(self, bus: RedisEventBus) -> None:
        super().__init__(name=f"taskplane-events:{bus.channel}", daemon=True)
        self.bus = bus
        self.stopping = threading.Event()
        self.subscribed = threading.Event()

    def run(self) -> None:
        backoff_s = RECONNECT_MIN_S
        while not self.stopping.is_set():
            pubsub = self.bus.redis.pubsub()
            try:
                pubsub.subscribe(self.bus.channel)
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=POLL_INTERVAL_S)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                        backoff_s = RECONNECT_MIN_S
                    elif message["type"] == "message":
                        event = parse_event(message["data"])
                        if event is not None:
                            self.bus._deliver(event)
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                if self.bus._throttle.due():
                    log.warning("event listener lost Redis (%s); reconnecting", exc)
                self.stopping.wait(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()


class _Sender(threading.Thread):
    """Sends a bus's queued events, as many per round trip as have queued up."""

    def __init__(self, bus: RedisEventBus) -> None:
        super().__init__(name="taskplane-event-sender", daemon=True)
        self.bus = bus
        self.queue: deque[tuple[str, str]] = deque()
        self.ready = threading.Condition()
        self.stopping = False
        self.started_once = False

    def put(self, event_type: str, payload: str) -> None:
        with self.ready:
            if len(self.queue) >= MAX_QUEUED_EVENTS:
                self.queue.popleft()
                self.bus._dropped("the oldest queued event", OverflowError("queue full"))
            self.queue.append((event_type, payload))
            if not self.started_once:
                self.started_once = True
                self.start()
            if len(self.queue) == 1:
                self.ready.notify()

    def _take(self) -> list[tuple[str, str]]:
        with self.ready:
            while not self.queue and not self.stopping:
                self.ready.wait()
            if not self.stopping:
                self.ready.wait(LINGER_S)  # let a burst gather into one round trip
            count = min(len(self.queue), MAX_BATCH)
            return [self.queue.popleft() for _ in range(count)]

    def run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self.bus._send(batch)

    def stop(self) -> None:
        """Send what is queued, then stop."""
        with self.ready:
            self.stopping = True
            self.ready.notify()
        if self.started_once:
            self.join(timeout=SENDER_STOP_TIMEOUT_S)
