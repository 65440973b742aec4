"""Small helpers shared by the integration tests."""

from __future__ import annotations

from typing import Any

import redis


def rec(task_id: str, cluster: Any, key: str, **payload: Any) -> dict[str, Any]:
    """A task that counts its calls under *key* in Redis."""
    return {
        "id": task_id,
        "type": "function",
        "target": "tests.record",
        "payload": {"redis_url": cluster.state_url, "key": key, **payload},
    }


def counter(cluster: Any, key: str, what: str = "calls") -> int:
    client = redis.Redis.from_url(cluster.state_url, decode_responses=True)
    try:
        return int(client.get(f"{key}:{what}") or 0)
    finally:
        client.close()


def cli_runner() -> Any:
    """typer's CliRunner with stderr kept apart from stdout, on every click version.

    click 8.2 always keeps them apart and dropped ``mix_stderr``; older clicks
    (the minimum versions' check) mix them unless told not to.
    """
    from typer.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()
