"""Ports for a local Redis Cluster: a node's bus listens 10000 above its port."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskplane.devtools import redis_cluster


def test_free_node_ports_leave_room_for_the_bus_and_do_not_repeat() -> None:
    ports: list[int] = []
    for _ in range(3):
        ports.append(redis_cluster.free_node_port(tuple(ports)))
    assert len(set(ports)) == 3
    assert all(port + 10000 <= 65535 for port in ports)


def test_a_port_too_high_for_the_bus_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="at most 55535"):
        redis_cluster.start(tmp_path, [7000, 7001, 58669])
    assert not (tmp_path / "pids").exists()
