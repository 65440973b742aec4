"""Raw Celery baselines, on the same app and worker as taskplane's own tasks.

The benchmark worker runs ``celery -A bench.baseline worker``: taskplane's
app with three bare tasks added, so baseline and taskplane share one worker,
one pool and one Redis.
"""

from __future__ import annotations

from typing import Any

import httpx

from taskplane.tasks.app import create_app

app = create_app()

_client = httpx.Client(timeout=30.0)


@app.task(name="bench.noop", shared=False)
def noop(*_args: Any, **_kwargs: Any) -> None:
    """Do nothing."""
    return None


@app.task(name="bench.http_get", shared=False)
def http_get(url: str) -> int:
    """GET *url*; return the status."""
    return _client.get(url).status_code


@app.task(name="bench.collect", shared=False)
def collect(results: list[Any]) -> int:
    """A chord body: count the header's results."""
    return len(results)
