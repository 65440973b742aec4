"""Worker hosts in network namespaces, and cutting one off its servers.

Each host is a network namespace of its own, plugged by a veth pair into a
switch — a bridge in a namespace of its own — whose uplink, another veth
pair, ends in the root namespace. The host's end (``eth0``) holds
``10.213.S.(10+i)/24``; the uplink's root end holds the gateway
``10.213.S.1`` (``S`` a subnet no interface here uses yet). Servers the
hosts reach listen on the gateway address; a worker runs on a host under
:attr:`Host.wrapper` (``ip netns exec NAME``)::

    with HostNetwork(3) as network:
        redis = PrivateRedis(state_dir, bind=("127.0.0.1", network.gateway))
        host = network.hosts[0]
        cluster.start_worker("h0", wrapper=host.wrapper, env=...)
        host.cut(ports=(redis.port,))   # a partition between the host and Redis
        host.restore()

A cut is a blackhole, not a refusal: the switch drops every packet between
the host and the given ports of the gateway, both ways (``tc`` on the
switch's two ports: an ``htb`` root whose second class holds a ``pfifo`` of
zero packets, and ``u32`` filters sending the cut traffic there). Neither
end's kernel drops anything itself — a drop on a host's own interface is
reported to its TCP, which then gives up within seconds — so to both the
other side merely falls silent: open connections hang until their timeouts
or TCP's retransmissions give up, new ones time out, nothing is reset, as
when a switch or a link between racks fails. Other traffic (the agents'
port) still flows.

Names carry the creating process's id (``tph<pid>…``): a run removes, at
start, what a crashed earlier run left (names whose process is gone, and
what still runs in them), and never what a live run owns. Everything is
removed on exit, failure included. Making namespaces needs root, ``ip`` and
``tc``; :func:`require_namespaces` skips the test with the reason when they
cannot be made, and fails it in CI (``CI`` set), where they can.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import pytest

#: Every namespace, bridge and veth of these tests starts with this.
PREFIX = "tph"
#: The hosts' private range; each network takes one /24 of it.
RANGE = ipaddress.IPv4Network("10.213.0.0/16")
#: Address of host *i*: ``10.213.S.(HOST_OFFSET + i)``.
HOST_OFFSET = 10
#: The qdisc class the cut traffic is sent to, and its zero-packet queue.
CUT_CLASS = "1:20"
PASS_CLASS = "1:10"
#: Longest one ``ip``/``tc`` command may take (s).
COMMAND_TIMEOUT_S = 20.0

_OWNED = re.compile(rf"^{PREFIX}(\d+)")


class NamespaceError(RuntimeError):
    """Raised when a namespace, veth, bridge or qdisc cannot be made."""


def run(*args: str, check: bool = True) -> str:
    """Run one ``ip``/``tc`` command; its stdout.

    Raises:
        NamespaceError: It failed (with its stderr) and *check* is set.
    """
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NamespaceError(f"{' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise NamespaceError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str) -> bool:
    owned = _OWNED.match(name)
    return owned is not None and not _alive(int(owned.group(1)))


def namespaces() -> list[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def links() -> list[str]:
    """Names of the root namespace's network interfaces."""
    names = []
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        names.append(name)
    return names


def kill_programs(namespace: str) -> list[int]:
    """SIGKILL what still runs in *namespace* (a worker a crashed run left); their PIDs."""
    pids = [int(pid) for pid in run("ip", "netns", "pids", namespace, check=False).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def remove_stale() -> list[str]:
    """Remove namespaces and links of earlier runs whose process is gone; their names.

    Programs still running in such a namespace (workers of a run that was
    killed) are killed first: they would hold the namespace and its veth.
    """
    removed = []
    for name in namespaces():
        if _stale(name):
            kill_programs(name)
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for name in links():
        if _stale(name):
            run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of :data:`RANGE` no interface of the root namespace has an address in."""
    used = set()
    for line in run("ip", "-o", "-4", "addr", "show").splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            used.add(ipaddress.ip_interface(match.group(1)).network)
    start = os.getpid() % 250
    subnets = list(RANGE.subnets(new_prefix=24))[1:255]
    for offset in range(len(subnets)):
        subnet = subnets[(start + offset) % len(subnets)]
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NamespaceError(f"no free /24 left in {RANGE}")


def _install_cut_qdisc(tc: Sequence[str], dev: str) -> None:
    """On *dev*'s egress: an ``htb`` root passing everything, and a class that drops all."""
    run(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
    for classid in (PASS_CLASS, CUT_CLASS):
        run(
            *tc,
            "class",
            "add",
            "dev",
            dev,
            "parent",
            "1:",
            "classid",
            classid,
            "htb",
            "rate",
            "10gbit",
            "quantum",
            "60000",
        )
    run(
        *tc, "qdisc", "add", "dev", dev, "parent", CUT_CLASS, "handle", "20:", "pfifo", "limit", "0"
    )


def _add_cut_filters(
    tc: Sequence[str], dev: str, prio: int, matches: Sequence[Sequence[str]]
) -> None:
    """Send what matches one of *matches* on *dev* to the dropping class (filters of *prio*)."""
    for match in matches:
        run(
            *tc,
            "filter",
            "add",
            "dev",
            dev,
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            str(prio),
            "u32",
            *match,
            "flowid",
            CUT_CLASS,
        )


def _dropped(tc: Sequence[str], dev: str) -> int:
    """Packets the dropping class on *dev* dropped so far (0 when it has none)."""
    out = run(*tc, "-s", "qdisc", "show", "dev", dev, check=False)
    found = re.search(r"qdisc pfifo 20:.*?dropped (\d+)", out, re.S)
    return int(found.group(1)) if found else 0


#: The switch's port to the root namespace, and its filters' priority for host *i*.
UPLINK = "uplink"
UPLINK_PRIO_BASE = 100


@dataclass
class Host:
    """One worker host: a network namespace, its port on the switch and its address."""

    index: int
    namespace: str
    switch: str
    port: str
    address: str
    gateway: str
    cut_ports: tuple[int, ...] | None = None
    dropped: int = 0
    _uplink_mark: int = 0

    @property
    def wrapper(self) -> tuple[str, ...]:
        """The command that runs a program on this host."""
        return ("ip", "netns", "exec", self.namespace)

    @property
    def _switch_tc(self) -> tuple[str, ...]:
        return ("tc", "-n", self.switch)

    @property
    def _prio(self) -> int:
        return UPLINK_PRIO_BASE + self.index

    def cut(self, *, ports: Sequence[int] = ()) -> None:
        """Drop every packet between this host and *ports* of the gateway (all of it: empty).

        Both directions are dropped in the switch, so neither end's own kernel
        sees a drop: to both, the other side merely stops answering.

        Raises:
            NamespaceError: The qdiscs could not be installed.
        """
        if self.cut_ports is not None:
            raise NamespaceError(f"host {self.index} is cut already")
        gateway, me = f"{self.gateway}/32", f"{self.address}/32"
        outbound: list[tuple[str, ...]]
        inbound: list[tuple[str, ...]]
        if ports:
            outbound = [
                (
                    "match",
                    "ip",
                    "src",
                    me,
                    "match",
                    "ip",
                    "dst",
                    gateway,
                    "match",
                    "ip",
                    "dport",
                    str(p),
                    "0xffff",
                )
                for p in ports
            ]
            inbound = [
                ("match", "ip", "src", gateway, "match", "ip", "sport", str(p), "0xffff")
                for p in ports
            ]
        else:
            outbound = [("match", "ip", "src", me, "match", "ip", "dst", gateway)]
            inbound = [("match", "ip", "src", gateway)]
        self.cut_ports = tuple(ports)
        if "qdisc htb 1:" not in run(*self._switch_tc, "qdisc", "show", "dev", UPLINK):
            _install_cut_qdisc(self._switch_tc, UPLINK)
        self._uplink_mark = _dropped(self._switch_tc, UPLINK)
        _add_cut_filters(self._switch_tc, UPLINK, self._prio, outbound)
        _install_cut_qdisc(self._switch_tc, self.port)
        _add_cut_filters(self._switch_tc, self.port, 1, inbound)

    def restore(self) -> None:
        """Let the cut traffic through again; counts what was dropped in :attr:`dropped`.

        (The switch's uplink counts for every host: with several cut at once,
        each host's count includes the others' packets dropped meanwhile.)
        """
        if self.cut_ports is None:
            return
        uplink = _dropped(self._switch_tc, UPLINK) - self._uplink_mark
        self.dropped += _dropped(self._switch_tc, self.port) + uplink
        run(
            *self._switch_tc,
            "filter",
            "del",
            "dev",
            UPLINK,
            "parent",
            "1:",
            "prio",
            str(self._prio),
            check=False,
        )
        run(*self._switch_tc, "qdisc", "del", "dev", self.port, "root", check=False)
        self.cut_ports = None


@dataclass
class HostNetwork:
    """*count* hosts on one switch; made on enter, removed on exit.

    Raises:
        NamespaceError: On enter, when something cannot be made (what was
            made is removed again).
    """

    count: int
    hosts: list[Host] = field(default_factory=list)
    subnet: ipaddress.IPv4Network | None = None
    removed_stale: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"{PREFIX}{os.getpid()}"

    @property
    def switch(self) -> str:
        """The namespace of the switch (a bridge) every host and the uplink plug into."""
        return f"{self.tag}-sw"

    @property
    def uplink(self) -> str:
        """The root namespace's end of the switch's uplink; it holds :attr:`gateway`."""
        return f"{self.tag}u"

    @property
    def gateway(self) -> str:
        """The root namespace's address towards the hosts, where servers listen."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def __enter__(self) -> HostNetwork:
        self.removed_stale = remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _plug(self, veth: str, name: str) -> None:
        """Move *veth* into the switch as port *name*, on its bridge, up."""
        sw = ("ip", "-n", self.switch)
        run("ip", "link", "set", veth, "netns", self.switch)
        run(*sw, "link", "set", veth, "name", name)
        run(*sw, "link", "set", name, "master", "br0")
        run(*sw, "link", "set", name, "up")

    def _build(self) -> None:
        self.subnet = free_subnet()
        prefix = self.subnet.prefixlen
        run("ip", "netns", "add", self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        run("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", f"{self.tag}w")
        self._plug(f"{self.tag}w", UPLINK)
        run("ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.uplink)
        run("ip", "link", "set", self.uplink, "up")
        for index in range(self.count):
            namespace, outer, inner = (
                f"{self.tag}-{index}",
                f"{self.tag}h{index}",
                f"{self.tag}n{index}",
            )
            address = str(self.subnet.network_address + HOST_OFFSET + index)
            run("ip", "netns", "add", namespace)
            port = f"host{index}"
            self.hosts.append(Host(index, namespace, self.switch, port, address, self.gateway))
            run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self._plug(outer, port)
            run("ip", "link", "set", inner, "netns", namespace)
            run("ip", "-n", namespace, "link", "set", inner, "name", "eth0")
            run("ip", "-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
            run("ip", "-n", namespace, "link", "set", "eth0", "up")
            run("ip", "-n", namespace, "link", "set", "lo", "up")

    def close(self) -> None:
        """Remove every host, the switch and the uplink (the hosts' programs must have ended)."""
        for host in self.hosts:
            host.restore()
            kill_programs(host.namespace)  # none, unless stopping a worker failed
            run("ip", "netns", "del", host.namespace, check=False)
        self.hosts = []
        if self.switch in namespaces():
            run("ip", "netns", "del", self.switch, check=False)  # its ports go with it
        if self.uplink in links():
            run("ip", "link", "del", self.uplink, check=False)

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse(reason: str) -> NoReturn:
    """Skip with *reason*; in CI (``CI`` set), fail with it."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_namespaces() -> None:
    """Skip (fail in CI) unless this process can make network namespaces and qdiscs."""
    if os.geteuid() != 0:
        refuse("network namespaces need root (ip netns add)")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        refuse(f"network namespaces need {' and '.join(missing)} (iproute2) on PATH")
