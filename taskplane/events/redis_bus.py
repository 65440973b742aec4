"""The Redis event bus: a bounded stream every subscriber reads, and a live channel.

Every event is appended to the stream ``{prefix}:{events}:stream`` (``XADD``,
trimmed to about ``stream_maxlen``) and published on the channel
``{prefix}:events`` in the same round trip. A plan task's
``task:completed``/``task:failed`` is written by the plan store's script
that records the outcome, so there is one such event per recorded outcome,
never lost between the two (see :mod:`taskplane.plan.redis_store`).

Subscribers read the stream, not the channel: one background thread per bus
reads it (``XREAD BLOCK``) from the last id each subscription has seen, and
after a dropped connection resumes from there, so a reconnect loses nothing
and repeats nothing as long as the missed events are still in the stream.
Each delivered event carries its stream id as ``"id"``; ``subscribe(...,
since=id)`` resumes after it in a new process. The channel is a
best-effort live feed for other consumers (``SUBSCRIBE``): what is published
while a reader is disconnected is not replayed there.
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
    Subscription,
    event_id_key,
    make_event,
)
from taskplane.keys import event_channel, event_stream_key
from taskplane.redisio import clone_client, is_cluster, load_script, translated
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "taskplane"
#: How long the listener waits for a message before checking whether to stop.
POLL_INTERVAL_S = 0.2
#: How long an asyncio stream waits for Redis to answer when it opens.
SUBSCRIBE_TIMEOUT_S = 5.0
#: Stream entries read per round trip at most.
READ_COUNT = 1000
#: The client name of a listener's connection (``CLIENT LIST`` shows it).
LISTENER_CLIENT_NAME = "taskplane-events"
#: The id before every stream entry.
FIRST_ID = "0-0"
#: Reconnect backoff bounds.
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
#: Page size when :meth:`RedisEventBus.recent` filters by type.
RECENT_PAGE = 500
#: What a BackendError from Redis names as the component.
_COMPONENT = "event bus"


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def stream_event(entry_id: str | bytes, fields: dict[Any, Any]) -> Event | None:
    """The event in a stream entry, with its id as ``"id"``; None when it holds none."""
    payload = fields.get("event", fields.get(b"event"))
    event = parse_event(payload) if payload is not None else None
    if event is not None:
        event["id"] = _text(entry_id)
    return event


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
        self.channel = event_channel(prefix)
        self.stream = event_stream_key(prefix)
        self.stream_maxlen = stream_maxlen
        self._throttle = LogThrottle()
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._sender = _Sender(self) if background else None
        # a cluster pipeline cannot PUBLISH: there one script (in the stream's slot) sends
        self._cluster_send = (
            load_script(redis_client, "taskplane.events", "publish_events.lua")
            if is_cluster(redis_client)
            else None
        )

    def encode(self, event_type: str, data: dict[str, Any]) -> str:
        """The stream and channel payload of an event of *event_type*, stamped now.

        Raises:
            ValueError: *data* cannot be written as JSON.
        """
        return json.dumps(
            make_event(event_type, data, timestamp=self.clock()),
            separators=(",", ":"),
            default=str,
        )

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            payload = self.encode(event_type, data)
        except ValueError as exc:
            self._dropped(event_type, exc)
            return
        if self._sender is not None:
            self._sender.put(event_type, payload)
        else:
            self._send([(event_type, payload)])

    def take_queued(self) -> list[str]:
        """Events published here but not yet sent (a background bus), oldest first.

        For a caller about to write an event of its own in another round trip
        (the plan store recording an outcome): it writes these first, so the
        stream keeps this process's order. Any batch already on its way is
        waited for (one round trip at most). Beyond ``MAX_BATCH`` events the
        oldest are sent from here first.
        """
        if self._sender is None:
            return []
        taken = self._sender.take_queued()
        while len(taken) > MAX_BATCH:
            head, taken = taken[:MAX_BATCH], taken[MAX_BATCH:]
            self._send([("queued", payload) for payload in head])
        return taken

    def write_now(self, payloads: list[str]) -> None:
        """Send encoded events (see :meth:`encode`) now, in order, in one round trip.

        For a caller that took this process's queued events (:meth:`take_queued`)
        and writes them, and one of its own, after its own round trip.
        """
        for start in range(0, len(payloads), MAX_BATCH):
            self._send([("event", p) for p in payloads[start : start + MAX_BATCH]])

    def _send(self, batch: list[tuple[str, str]]) -> None:
        """Publish *batch* in one round trip; failures are logged and the events dropped."""
        if not batch:
            return
        try:
            if self._cluster_send is not None:
                args: list[str | int] = [self.stream_maxlen, self.channel]
                args += [payload for _type, payload in batch]
                self._cluster_send(keys=[self.stream], args=args)
                return
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
        with translated(_COMPONENT, "reading recent events"):
            while len(found) < count and scanned < self.stream_maxlen:
                entries: list[Any] = list(
                    self.redis.xrevrange(self.stream, max=newest, min="-", count=page) or []
                )
                for entry_id, fields in entries:
                    event = stream_event(entry_id, fields)
                    if event is not None and event_type in (None, event["type"]):
                        found.append(event)
                        if len(found) == count:
                            break
                scanned += len(entries)
                if len(entries) < page or event_type is None:
                    break
                newest = "(" + _text(entries[-1][0])
        found.reverse()
        return found

    def close(self) -> None:
        super().close()
        self._stop_listener()
        if self._sender is not None:
            self._sender.stop()

    def newest_id(self) -> str:
        """The id of the newest event in the stream (``0-0`` when it is empty).

        Raises:
            BackendError: Redis cannot be reached.
        """
        with translated(_COMPONENT, "reading the newest event id"):
            entries: list[Any] = list(
                self.redis.xrevrange(self.stream, max="+", min="-", count=1) or []
            )
        return _text(entries[0][0]) if entries else FIRST_ID

    def _started_subscription(self, subscription: Subscription) -> None:
        if subscription.after is None:
            try:
                subscription.after = self.newest_id()
            except BackendError as exc:  # the listener takes the newest id once it connects
                log.warning("events: %s; the subscription starts once Redis answers", exc)

    def _subscribed(self, subscription: Subscription) -> None:
        with self._listener_lock:
            listener = self._listener
            if listener is None or not listener.is_alive() or listener.stopping.is_set():
                listener = _Listener(self)
                self._listener = listener
                listener.start()
        listener.wake.set()

    def _positions(self) -> str | None:
        """Where the listener reads from: the oldest position of an open subscription.

        Subscriptions whose position is not known yet start at the newest event.
        None when no subscription is open.
        """
        with self._subs_lock:
            subscriptions = list(self._subscriptions)
        if not subscriptions:
            return None
        unset = [s for s in subscriptions if s.after is None]
        if unset:
            newest = self.newest_id()
            for subscription in unset:
                subscription.after = newest
        return min((str(s.after) for s in subscriptions), key=event_id_key)

    def _skip(self, entry_id: str) -> None:
        """Move every subscription past a stream entry that holds no event."""
        with self._subs_lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            if subscription.after is None or event_id_key(entry_id) > event_id_key(
                subscription.after
            ):
                subscription.after = entry_id

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

    def _check_trimmed(self, client: redis.Redis, after: str) -> None:
        """Warn when events after *after* may have left the stream before they were read.

        The stream is trimmed from its oldest end: when its oldest entry is
        newer than *after* and entries were trimmed, the ones between are gone.
        """
        try:
            info: Any = client.xinfo_stream(self.stream)
        except redis.ResponseError:  # no stream yet: nothing was trimmed
            return
        first = info.get("first-entry")
        if not first:
            return
        oldest = _text(first[0])
        trimmed = int(info.get("entries-added", -1)) != int(info.get("length", 0))
        if trimmed and event_id_key(oldest) > event_id_key(after):
            log.warning(
                "events after %s and before %s were trimmed from %s (stream_maxlen %d) "
                "before this subscriber read them; they are lost to it",
                after,
                oldest,
                self.stream,
                self.stream_maxlen,
            )


class _Listener(threading.Thread):
    """Reads the bus's stream and hands each event to the subscriptions that have not seen it."""

    def __init__(self, bus: RedisEventBus) -> None:
        super().__init__(name=f"taskplane-events:{bus.channel}", daemon=True)
        self.bus = bus
        self.stopping = threading.Event()
        self.wake = threading.Event()

    def _client(self) -> redis.Redis:
        """A client of its own (one connection, named), so blocking reads hold no shared slot."""
        return clone_client(self.bus.redis, client_name=LISTENER_CLIENT_NAME)

    def run(self) -> None:
        backoff_s = RECONNECT_MIN_S
        client = self._client()
        resumed = True  # check the first read too: a subscription may start far back
        previous = FIRST_ID
        try:
            while not self.stopping.is_set():
                try:
                    after = self.bus._positions()
                    if after is None:
                        self.wake.wait(POLL_INTERVAL_S)
                        self.wake.clear()
                        continue
                    if resumed or event_id_key(after) < event_id_key(previous):
                        # a reconnect, or a subscription that starts further back
                        self.bus._check_trimmed(client, after)
                        resumed = False
                    previous = after
                    replies: Any = client.xread(
                        {self.bus.stream: after},
                        count=READ_COUNT,
                        block=int(POLL_INTERVAL_S * 1000),
                    )
                    backoff_s = RECONNECT_MIN_S
                    if isinstance(replies, dict):  # RESP3 answers with a map
                        replies = list(replies.items())
                    for _stream, entries in replies or []:
                        if len(entries) >= READ_COUNT:  # behind: events may leave the stream unread
                            self.bus._check_trimmed(client, after)
                        for entry_id, fields in entries:
                            event = stream_event(entry_id, fields)
                            if event is not None:
                                self.bus._deliver(event)
                            else:
                                self.bus._skip(_text(entry_id))
                except (redis.RedisError, BackendError, OSError) as exc:
                    resumed = True
                    if self.bus._throttle.due():
                        log.warning(
                            "event listener lost Redis (%s); resuming after a reconnect", exc
                        )
                    self.stopping.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()
                if not is_cluster(client):
                    client.connection_pool.disconnect()


class _Sender(threading.Thread):
    """Sends a bus's queued events, as many per round trip as have queued up."""

    def __init__(self, bus: RedisEventBus) -> None:
        super().__init__(name="taskplane-event-sender", daemon=True)
        self.bus = bus
        self.queue: deque[tuple[str, str]] = deque()
        lock = threading.Lock()
        self.ready = threading.Condition(lock)  # events queued, or stopping
        self.idle = threading.Condition(lock)  # no batch in flight
        self.sending = False
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
            while True:
                while not self.queue and not self.stopping:
                    self.ready.wait()
                if not self.stopping:
                    self.ready.wait(LINGER_S)  # let a burst gather into one round trip
                # the plan store may have taken the queue meanwhile (take_queued): wait again
                if self.queue or self.stopping:
                    break
            count = min(len(self.queue), MAX_BATCH)
            self.sending = count > 0
            return [self.queue.popleft() for _ in range(count)]

    def take_queued(self) -> list[str]:
        """Take every queued event, once the batch in flight (if any) has been sent.

        Afterwards nothing queued before this call is left unsent but what it
        returns; the caller writes those before anything of its own.
        """
        with self.ready:
            while self.sending:
                self.idle.wait()
            taken = [payload for _type, payload in self.queue]
            self.queue.clear()
            return taken

    def run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            try:
                self.bus._send(batch)
            finally:
                with self.ready:
                    self.sending = False
                    self.idle.notify_all()

    def stop(self) -> None:
        """Send what is queued, then stop."""
        with self.ready:
            self.stopping = True
            self.ready.notify()
        if self.started_once:
            self.join(timeout=SENDER_STOP_TIMEOUT_S)
