"""Shared Redis plumbing: scripts kept as ``.lua`` files beside the code that runs them."""

from __future__ import annotations

from importlib import resources

import redis
from redis.commands.core import Script


def load_script(client: redis.Redis, package: str, name: str) -> Script:
    """Register the Lua script *name* (a file in *package*'s ``lua/`` folder) with *client*."""
    source = resources.files(package).joinpath("lua", name).read_text(encoding="utf-8")
    return client.register_script(source)
