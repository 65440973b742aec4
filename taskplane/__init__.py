"""taskplane: a data plane for AI-agent work on Celery and Redis."""
