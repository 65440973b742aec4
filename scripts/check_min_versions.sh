#!/usr/bin/env bash
# Install taskplane with the oldest dependency versions it claims to support
# (constraints-min.txt, the floors in pyproject.toml) into a fresh virtualenv, then
# run the unit tests, the gRPC and asyncio tests and one plan on a real worker with them.
# CI runs this (.ci/run).
#
# Usage (from anywhere; Redis as in `make test`: TASKPLANE_REDIS_URL if it answers,
# else one started here through the dev virtualenv's taskplane.devtools):
#     scripts/check_min_versions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEV_PY="${DEV_PY:-.venv/bin/python}"
state=.run/min-versions
work="$(mktemp -d)"
worker_pid=""
cleanup() {
    if [ -n "$worker_pid" ]; then kill "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true; fi
    "$DEV_PY" -m taskplane.devtools.redis_server stop --state-dir "$state" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

started=$(date +%s)
"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check \
    -c constraints-min.txt ".[postgres]" pytest pytest-timeout hypothesis
"$py" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(celery|kombu|redis|httpx|grpcio|protobuf|pydantic|pydantic-settings|typer|rich|sqlalchemy) '

base=$("$DEV_PY" -m taskplane.devtools.redis_server ensure --state-dir "$state" \
    --url "${TASKPLANE_REDIS_URL:-redis://127.0.0.1:6379/0}")
url_db() { "$DEV_PY" -c "import sys; from taskplane.devtools.redis_server import with_db; print(with_db(sys.argv[1], int(sys.argv[2])))" "$base" "$1"; }

# the unit tests, real gRPC round trips and the asyncio engine on real workers,
# with warnings as errors as always
# (the A2A and MCP SDKs and the OpenTelemetry SDK are extras with floors of their own:
# the main suite tests them; here tracing stays off, on the API floor)
TASKPLANE_TEST_REDIS_URL="$(url_db 15)" "$py" -m pytest -q -p no:cacheprovider tests/unit \
    --ignore tests/unit/test_proxy_a2a.py --ignore tests/unit/test_proxy_mcp.py \
    --ignore tests/unit/test_tracing.py \
    tests/integration/test_proxy_grpc.py tests/integration/test_aio.py \
    tests/integration/test_as_completed.py

# one plan end to end: a worker and the CLI of the minimum-versions install
export TASKPLANE_REDIS_URL="$(url_db 10)" TASKPLANE_FUNCTION_MODULES=examples.functions
export TASKPLANE_DATABASE_URL="sqlite:///$work/tracking.db" PYTHONPATH="$PWD"
"$py" -m celery -A taskplane.celery_app worker -P gevent -c 4 --loglevel WARNING \
    --without-gossip --without-mingle -n "min-check-$$@%h" >"$work/worker.log" 2>&1 &
worker_pid=$!
if ! "$work/venv/bin/taskplane" run examples/plans/parallel.json --id "min-check-$$-$(date +%s)" --json \
    >"$work/results.json"; then
    cat "$work/worker.log"
    exit 1
fi
"$py" -c "import json, sys; r = json.load(open(sys.argv[1])); \
assert [x['status'] for x in r] == ['success'] * len(r) and r, r; print(f'plan ok: {len(r)} tasks')" \
    "$work/results.json"
echo "minimum versions check passed in $(( $(date +%s) - started )) s"
