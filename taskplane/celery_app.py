"""The Celery app: ``celery -A taskplane.celery_app worker`` works.

Configuration comes from :class:`taskplane.config.Settings` (the
environment); :func:`create_app` builds an app for any settings, and the
module-level ``app`` is the one for the environment. Creating an app does not
connect to anything.

Delivery guarantees: JSON only, late acks, a task whose worker dies is
rejected back to the queue, prefetch 1. On Redis the broker redelivers an
unacknowledged task once its visibility timeout has passed since delivery;
kombu sweeps for such tasks every ``redelivery_sweep_s`` seconds. With the
defaults the visibility timeout is 107 s (longer than the longest task:
3 × 30 s calls plus 3 s of backoff, with a margin), so a killed worker's
tasks run again within about 112 s.
"""

from __future__ import annotations

from taskplane.tasks.app import DEFAULT_QUEUE, celery_config, create_app, settings_of

__all__ = ["DEFAULT_QUEUE", "app", "celery_config", "create_app", "settings_of"]

#: The app for the environment's settings (``celery -A taskplane.celery_app worker``).
app = create_app()
