"""A private ``redis-server`` for reliability tests: AOF on, a fixed port, restartable.

Unlike :func:`taskplane.devtools.redis_server.start`, the server keeps its
data in an append-only file in its own state directory and can be stopped and
started again on the *same* port, so clients that hold its URL reconnect to
the same data — as after a Redis restart in production::

    with PrivateRedis(state_dir, password="s3cret") as server:
        url = server.url(db=1)       # redis://:s3cret@127.0.0.1:PORT/1
        server.restart(down_s=2.0)   # SHUTDOWN (AOF flushed), wait, start again
        server.used_memory()         # INFO memory used_memory, in bytes

Only the process this class started is ever signalled, by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from taskplane.devtools.redis_server import free_port, server_binary

#: How long a start or a stop may take, in seconds.
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
#: Pause between probes while waiting for the server, in seconds.
PROBE_INTERVAL_S = 0.05


class PrivateRedis:
    """One ``redis-server`` process this test suite owns.

    Args:
        state_dir: Where the AOF, the log and the dump live (created if missing).
        password: ``requirepass`` for the server; None for no password.
        appendonly: Keep data in an append-only file (``appendfsync always``).
        port: The port to listen on; a free one is picked when None.
        bind: The addresses to listen on (127.0.0.1 first: the suite's own clients use it).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        password: str | None = None,
        appendonly: bool = True,
        port: int | None = None,
        bind: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        self.state_dir = state_dir
        self.password = password
        self.appendonly = appendonly
        self.port = port or free_port()
        self.bind = bind
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, db: int = 0, *, host: str | None = None) -> str:
        """The server's URL for database *db* (with the password, if any) at *host*.

        *host* is one of :attr:`bind`; None is the first.
        """
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{host or self.bind[0]}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A new client (``decode_responses=True``) for database *db*."""
        return redis.Redis.from_url(self.url(db), decode_responses=True)

    def start(self) -> None:
        """Start the server on :attr:`port`, loading its AOF if one exists."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(),
            "--port",
            str(self.port),
            "--bind",
            *self.bind,
            "--dir",
            str(self.state_dir.resolve()),
            "--logfile",
            str((self.state_dir / "redis.log").resolve()),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if any(address != "127.0.0.1" for address in self.bind):
            # without a password Redis answers only loopback clients, whatever it binds
            args += ["--protected-mode", "no"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}; "
                    f"see {self.state_dir / 'redis.log'}"
                )
            if self.ping():
                return
            time.sleep(PROBE_INTERVAL_S)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def ping(self) -> bool:
        """True when the server answers (and accepts the password)."""
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def alive(self) -> bool:
        """Whether the process this object started is still running."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Graceful stop (SIGTERM: Redis flushes its AOF and exits); SIGKILL if it lingers."""
        if not self.alive():
            return
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would (with ``appendfsync always`` no write is lost)."""
        if self.alive():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def restart(self, *, down_s: float = 1.0, crash: bool = False) -> float:
        """Stop (or crash) the server, stay down *down_s* seconds, start it again.

        Returns:
            How long the server did not answer, in seconds.
        """
        went_down = time.monotonic()
        if crash:
            self.kill()
        else:
            self.stop()
        time.sleep(down_s)
        self.start()
        return time.monotonic() - went_down

    def info(self, section: str = "memory") -> dict[str, Any]:
        """``INFO section`` as a dict."""
        client = self.client()
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def used_memory(self) -> int:
        """``used_memory`` in bytes."""
        return int(self.info("memory")["used_memory"])

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
