"""The instance adapter never lets an advert that arrives mid-transition reach the failover
machine out of order (issue: re-entrancy through the status line).

The daemon refreshes systemd's STATUS= line on every state change, and rendering it reads
the instance's status. Here the sockets, addresses, link monitor and chain are fakes with the
real interfaces; the router, the machine and the instance are the product. At the moment the
router becomes MASTER, a higher-priority advert is queued and the doorbell rings at once (the
worst case: the kernel hands it over while the transition is still being handled). However the
adapter interleaves the two, the end must be consistent: the router BACKUP (the other router
wins) and nothing held, never a node that serves the VIP while VRRP says BACKUP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv6Address
from typing import Any

import pytest

import agent.instance as instance_mod
from agent.config import parse
from agent.instance import Counters, Instance
from vrrp.packet import Advertisement, encode
from vrrp.vip import LinkInfo

OWN = IPv4Address("192.0.2.1")
RIVAL = IPv4Address("192.0.2.9")
GROUP = IPv4Address("224.0.0.18")
CONFIG = """
[vrrp]
interface = "eth0"
vrid = 51
priority = 100
version = 3
advert_interval = 0.1
vips = ["192.0.2.100/24"]
"""


class FakeSocket:
    """vrrp.socket.VrrpSocket's surface: a queue the test fills, a doorbell it rings."""

    instances: list[FakeSocket] = []

    def __init__(self, ifname: str, ifindex: int, peers: tuple[IPv4Address, ...], on_wake: Callable[[], None],
                 ipv6_source: IPv6Address | None = None) -> None:
        self.on_wake = on_wake
        self.queue: list[tuple[bytes, float]] = []
        self.sent = self.wakeups = 0
        FakeSocket.instances.append(self)

    def open(self, first_byte: int, vrid: int) -> None:
        pass

    def close(self) -> None:
        pass

    def wake_at_or_above(self, threshold: int) -> None:
        pass

    def send(self, datagram_for: Callable[[IPv4Address], bytes | bytearray]) -> bool:
        datagram_for(GROUP)
        self.sent += 1
        return True

    def drain(self, limit: int = 4096) -> list[tuple[bytes, float]]:
        out, self.queue = self.queue, []
        return out

    def ring(self) -> None:
        self.wakeups += 1
        self.on_wake()


class FakeGarp:
    def __init__(self, ifname: str, mac: bytes, ipv6: bool = False) -> None:
        self.sent = 0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, vips: Iterable[IPv4Interface]) -> None:
        self.sent += 1

    async def burst(self, vips: Iterable[IPv4Interface], count: int, interval: float) -> None:
        self.sent += count


class FakeVips:
    def __init__(self, ipr: Any, ifindex: int, vips: Iterable[IPv4Interface], keep: Any = ()) -> None:
        self.vips = tuple(vips)
        self.held: set[IPv4Interface] = set()

    async def present(self) -> set[IPv4Interface]:
        return set(self.held)

    async def add(self, vips: Iterable[IPv4Interface] | None = None) -> list[IPv4Interface]:
        self.held |= set(self.vips)
        return list(self.vips)

    async def remove(self, vips: Iterable[IPv4Interface] | None = None) -> list[IPv4Interface]:
        gone = sorted(self.held)
        self.held.clear()
        return gone


class FakeLink:
    def __init__(self, ifindex: int, up: bool, on_change: Any, on_addr_removed: Any = None) -> None:
        self.up = up

    async def run(self) -> None:
        await asyncio.Event().wait()


def rival_advert() -> tuple[bytes, float]:
    adv = Advertisement(version=3, vrid=51, priority=200, interval=0.1, addresses=(IPv4Address("192.0.2.100"),))
    return encode(adv, RIVAL, GROUP, 1), asyncio.get_running_loop().time()


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSocket.instances = []
    for name, fake in (("VrrpSocket", FakeSocket), ("Garp", FakeGarp), ("VipHolder", FakeVips),
                       ("LinkMonitor", FakeLink)):
        monkeypatch.setattr(instance_mod, name, fake)


@pytest.mark.usefixtures("fakes")
def test_an_advert_queued_at_the_moment_of_a_transition_is_handled_after_it() -> None:
    async def scenario() -> dict[str, Any]:
        cfg = parse(CONFIG)
        info = LinkInfo("eth0", 2, b"\x02\x00\x00\x00\x00\x01", OWN, True)
        pushed: list[bool] = []

        def on_state(inst: Instance) -> None:
            # what the daemon does on every change: render the STATUS= line from the status
            if inst.status()["state"] == "MASTER" and not pushed:
                pushed.append(True)
                sock = FakeSocket.instances[-1]
                sock.queue.append(rival_advert())
                sock.ring()

        async def rival() -> None:  # keeps advertising, as a master does
            while True:
                await asyncio.sleep(0.1)
                if pushed:
                    FakeSocket.instances[-1].queue.append(rival_advert())

        inst = Instance(cfg, None, info, Counters(), on_state=on_state)
        await inst.start()
        task = asyncio.create_task(rival())
        await asyncio.sleep(1.5)  # Master_Down (0.36 s), the takeover, the rival's advert, the release
        status = inst.status()
        task.cancel()
        await inst.stop("test over")
        assert pushed, "the router never became MASTER"
        return status

    status = asyncio.run(scenario())
    assert status["state"] == "BACKUP", status
    assert status["held"] == [] and status["phase"] == "IDLE", status
