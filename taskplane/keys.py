"""Every Redis key taskplane writes, in one place, hash-tagged for Redis Cluster.

A Redis Cluster stores a key in the slot of its *hash tag*, the text between
its first ``{`` and the next ``}``; keys with the same tag share a slot, and
only keys of one slot can meet in one Lua script or transaction. The layout:

* a plan run: ``plan:{id}:meta``, ``:tasks``, ``:results``, ``:done``,
  ``:order``, ``:reply``, ``:children``, ``:lease:<index>`` — tagged by run id;
* an agent's breaker and calls in flight: ``breaker:{agent}`` (and
  ``…:failures``), ``inflight:{agent}`` — tagged by agent id;
* an agent's own limiter windows: ``ratelimit:{owner}:<agent>``,
  ``tokens:{owner}:<agent>`` — tagged by the agent's quota, else its id;
* a quota's windows: ``quota:{name}:requests``, ``quota:{name}:tokens``;
* the registry ``{registry}:agents`` / ``:quotas``, the result cache
  ``{cache}:lru`` … ``{cache}:entry:<key>`` and the event stream
  ``{events}:stream`` — one tag each.

All of them start with ``{prefix}:``.

An agent that shares a quota keeps its own limiter windows in the quota's
slot, so one script books the agent's and the quota's windows together (its
breaker and in-flight leases stay in the agent's slot). The cache keeps one
slot so that its LRU index and its entries change together in one script.
A single Redis ignores the tags: the same keys, the same scripts.

Text inside a tag is escaped (``%``, ``{``, ``}`` as ``%25``, ``%7B``,
``%7D``; the empty id as a lone ``%``), so any id makes a non-empty tag of its own.
"""

from __future__ import annotations

#: Characters a tag may not hold as they are, with their escapes (``%`` first).
_ESCAPES = (("%", "%25"), ("{", "%7B"), ("}", "%7D"))


def tag(value: str) -> str:
    """*value* as a hash tag: ``{value}``, with braces (and ``%``) escaped."""
    if not value:
        return "{%}"
    for char, escape in _ESCAPES:
        value = value.replace(char, escape)
    return "{" + value + "}"


def untag(text: str) -> str:
    """The value of a hash tag made by :func:`tag` (with or without its braces)."""
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text == "%":
        return ""
    for char, escape in reversed(_ESCAPES):
        text = text.replace(escape, char)
    return text


def plan_key(prefix: str, plan_id: str, part: str) -> str:
    """Part *part* (``meta``, ``tasks``, ``results``, ``lease:3`` …) of plan run *plan_id*."""
    return f"{prefix}:plan:{tag(plan_id)}:{part}"


def breaker_key(prefix: str, agent_id: str) -> str:
    """The hash of *agent_id*'s circuit breaker (its failures: ``…:failures``)."""
    return f"{prefix}:{BREAKER}{tag(agent_id)}"


#: What every breaker key starts with after the prefix (metrics scan for it).
BREAKER = "breaker:"


def inflight_key(prefix: str, agent_id: str) -> str:
    """The sorted set of *agent_id*'s calls in flight."""
    return f"{prefix}:inflight:{tag(agent_id)}"


def agent_window_key(agent_id: str, quota: str | None = None) -> str:
    """Where an agent's own request window lives (after the prefix), in its quota's slot."""
    return f"ratelimit:{tag(quota or agent_id)}:{agent_id}"


def agent_tokens_key(agent_id: str, quota: str | None = None) -> str:
    """Where an agent's own token window lives (after the prefix), in its quota's slot."""
    return f"tokens:{tag(quota or agent_id)}:{agent_id}"


def quota_window_key(name: str) -> str:
    """Where a quota's request window lives (after the prefix)."""
    return f"quota:{tag(name)}:requests"


def quota_tokens_key(name: str) -> str:
    """Where a quota's token window lives (after the prefix)."""
    return f"quota:{tag(name)}:tokens"


def registry_key(prefix: str, name: str) -> str:
    """The registry hash *name* (``agents`` or ``quotas``)."""
    return f"{prefix}:{{registry}}:{name}"


def result_cache_key(prefix: str, name: str) -> str:
    """Cache key *name*: an index (``lru``, ``exp``, ``stats``, ``seq``) or ``entry:``."""
    return f"{prefix}:{{cache}}:{name}"


def event_stream_key(prefix: str) -> str:
    """The bounded event stream."""
    return f"{prefix}:{{events}}:stream"


def event_channel(prefix: str) -> str:
    """The live event channel (pub/sub: a channel is no key, it has no slot)."""
    return f"{prefix}:events"
