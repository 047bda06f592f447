"""vrrp.vip for IPv6 without a kernel: which link-local address an IPv6 instance sends from, and
VIPs added without DAD (a fake netlink handle answers as pyroute2 0.9 does and records requests)."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface
from typing import Any

from vrrp.packet import Address
from vrrp.vip import IFA_F_NODAD, IFA_F_SECONDARY, IFA_F_TENTATIVE, LinkInfo, VipHolder


class FakeIPRoute:
    def __init__(self, addrs: list[tuple[str, int, int]]) -> None:
        self.addrs = addrs  # (address, prefixlen, flags) on eth0, index 2
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def link(self, command: str, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"index": 2, "flags": 0x10001, "address": "02:00:00:00:00:0a"}]

    async def addr(self, command: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append((command, kwargs))
        if command != "dump":
            return []
        six = kwargs["family"] == socket.AF_INET6
        return [{"address": a, "prefixlen": p, "flags": f} for a, p, f in self.addrs if (":" in a) == six]


ADDRS = [("192.0.2.1", 24, 0), ("192.0.2.100", 24, IFA_F_SECONDARY), ("2001:db8::1", 64, 0),
         ("fe80::1", 64, IFA_F_TENTATIVE), ("fe80::ff:fe00:a", 64, 0)]


def source(addrs: list[tuple[str, int, int]], ipv6: bool = True, exclude: tuple[Address, ...] = ()) -> Address | None:
    return asyncio.run(LinkInfo.query(FakeIPRoute(addrs), "eth0", exclude=exclude, ipv6=ipv6)).primary


def test_ipv6_source_is_a_link_local_address_done_with_dad() -> None:
    assert source(ADDRS) == IPv6Address("fe80::ff:fe00:a")  # not the global one, not the tentative one
    assert source(ADDRS[:4]) == IPv6Address("fe80::1")  # a tentative one if it is the only one
    assert source(ADDRS[:3]) is None
    assert source(ADDRS, exclude=(IPv6Address("fe80::ff:fe00:a"),)) == IPv6Address("fe80::1")  # a link-local VIP
    assert str(source(ADDRS, ipv6=False)) == "192.0.2.1"  # IPv4 as before


def test_ipv6_vips_go_on_without_dad_ipv4_ones_as_before() -> None:
    ipr = FakeIPRoute([("2001:db8::100", 64, 0)])
    six, four = IPv6Interface("2001:db8::100/64"), IPv4Interface("192.0.2.100/24")
    assert asyncio.run(VipHolder(ipr, 2, [six]).present()) == {six}
    asyncio.run(VipHolder(ipr, 2, [six]).add())
    asyncio.run(VipHolder(ipr, 2, [four]).add())
    adds = [kw for command, kw in ipr.calls if command == "add"]
    assert adds == [{"index": 2, "address": "2001:db8::100", "prefixlen": 64, "flags": IFA_F_NODAD},
                    {"index": 2, "address": "192.0.2.100", "prefixlen": 24}]
