"""Start and stop a local Redis Cluster of three masters on loopback (tests, benchmarks).

Each master is a ``redis-server --cluster-enabled yes`` started here, its
cluster config, log and PID under the state directory; ``redis-cli --cluster
create`` assigns the slots. Only servers this module started are stopped, by
the PIDs it wrote.

Command line::

    python -m taskplane.devtools.redis_cluster start --state-dir .run/cluster  # prints the URL
    python -m taskplane.devtools.redis_cluster stop --state-dir .run/cluster
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from taskplane.devtools.redis_server import server_binary

MASTERS = 3
START_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 1.0


#: A cluster node's bus listens 10000 above its port, so a port may be at most this.
MAX_NODE_PORT = 65535 - 10000
#: Where free node ports are looked for (below the kernel's ephemeral range).
NODE_PORTS = range(20000, MAX_NODE_PORT + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_node_port(taken: tuple[int, ...] = ()) -> int:
    """A port for a cluster node: free, and its bus port (10000 higher) free as well.

    Raises:
        RuntimeError: None was found.
    """
    for _ in range(200):
        port = random.choice(NODE_PORTS)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port for a Redis Cluster node (and its bus, 10000 higher)")


def cluster_url(ports: list[int]) -> str:
    """The ``redis+cluster://`` URL of masters on *ports* of 127.0.0.1."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)


def _state(port: int) -> str:
    """``cluster_state`` as the master on *port* reports it."""
    client = redis.Redis(
        port=port,
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
        decode_responses=True,
    )
    try:
        info = client.execute_command("CLUSTER INFO")
    finally:
        client.close()
    if isinstance(info, dict):
        return str(info.get("cluster_state", ""))
    fields = dict(line.split(":", 1) for line in str(info).split() if ":" in line)
    return fields.get("cluster_state", "")


def healthy(ports: list[int]) -> bool:
    """True when every master on *ports* answers and reports ``cluster_state:ok``."""
    try:
        return all(_state(port) == "ok" for port in ports)
    except (redis.RedisError, OSError):
        return False


def _wait(until: object, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(until) and until():
            return
        time.sleep(0.1)
    raise RuntimeError(f"Redis Cluster: {what} within {timeout_s:.0f} s")


def _answers(port: int) -> bool:
    try:
        client = redis.Redis(port=port, socket_connect_timeout=PROBE_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def start(state_dir: Path, ports: list[int] | None = None) -> str:
    """Start three masters (on *ports*, else free ones), join them; returns the cluster URL.

    Raises:
        RuntimeError: A server did not start, or the cluster did not form.
    """
    if not ports:
        ports = []
        for _ in range(MASTERS):
            ports.append(free_node_port(tuple(ports)))
    if any(port > MAX_NODE_PORT for port in ports):
        raise RuntimeError(f"Redis Cluster node ports must be at most {MAX_NODE_PORT}: {ports}")
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not on PATH: install Redis to run a Redis Cluster")
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    pids: list[int] = []
    try:
        for port in ports:
            node_dir = state_dir / str(port)
            if node_dir.exists():
                shutil.rmtree(node_dir)  # a fresh node: no stale cluster config
            node_dir.mkdir()
            proc = subprocess.Popen(
                [
                    server_binary(),
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout", "5000",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(node_dir),
                    "--logfile", str(node_dir / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            pids.append(proc.pid)
            (state_dir / "pids").write_text("\n".join(map(str, pids)))
        for port in ports:
            _wait(lambda port=port: _answers(port), f"no answer on port {port}")
        nodes = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        _wait(lambda: healthy(ports), "the cluster did not report ok")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        stop(state_dir)
        raise RuntimeError(f"could not start a Redis Cluster on ports {ports}: {exc}") from exc
    url = cluster_url(ports)
    (state_dir / "url").write_text(url)
    return url


def stop(state_dir: Path) -> bool:
    """Stop the masters this module started in *state_dir*; False when there were none."""
    pid_file = state_dir / "pids"
    if not pid_file.exists():
        return False
    for line in pid_file.read_text().split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(line), signal.SIGTERM)
    pid_file.unlink(missing_ok=True)
    (state_dir / "url").unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--state-dir", default=".run/cluster")
    parser.add_argument("--ports", default="", help="comma-separated; default: free ports")
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir)
    if args.action == "start":
        ports = [int(p) for p in args.ports.split(",") if p] or None
        print(start(state_dir, ports))
    else:
        stop(state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
