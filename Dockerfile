# One image for every taskplane process: worker, beat, Flower, the CLI and the example agents.
#   docker build -t taskplane .
#   docker run --rm -e TASKPLANE_REDIS_URL=redis://redis:6379/0 taskplane taskplane worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first (cached until its sources change), PostgreSQL driver included,
# every dependency at the version constraints.txt pins (a reproducible image).
COPY pyproject.toml README.md constraints.txt ./
COPY taskplane ./taskplane
RUN pip install -c constraints.txt ".[postgres]"

# The example agents, functions, plans and patterns (importable from /app).
COPY examples ./examples
ENV PYTHONPATH=/app

RUN useradd --create-home --uid 10001 taskplane \
    && mkdir -p /app/.run \
    && chown taskplane /app/.run
USER taskplane

CMD ["taskplane", "worker"]
