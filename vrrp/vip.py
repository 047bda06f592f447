"""Virtual addresses through netlink (pyroute2) and gratuitous ARP over one packet socket.

Only the configured VIPs are ever added or removed, and both operations are idempotent
(EEXIST / EADDRNOTAVAIL count as done), so a restarted agent can reconcile whatever a
crashed one left behind without touching the node's own addresses.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import AsyncIterable, Iterable
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from vrrp.netlink import AsyncIPRoute

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


async def as_list(result: Any) -> list[Any]:
    """pyroute2 0.9 returns lists for some requests and async generators for dumps."""
    if isinstance(result, AsyncIterable):
        return [item async for item in result]
    return list(result)


class LinkInfo:
    """What we need to know of the VRRP interface: index, MAC and primary IPv4 address."""

    def __init__(self, name: str, index: int, mac: bytes, primary: IPv4Address | None, up: bool) -> None:
        self.name, self.index, self.mac, self.primary, self.up = name, index, mac, primary, up

    @classmethod
    async def query(cls, ipr: AsyncIPRoute, name: str, exclude: Iterable[IPv4Address] = ()) -> LinkInfo:
        try:
            links = await as_list(await ipr.link("get", ifname=name))
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            links = []
        if not links:
            raise LookupError(f"interface {name} not found")
        link = links[0]
        # the advert source: the first primary address that is not a VIP, else (an address
        # owner listing its own address as VIP) the first primary address at all
        skip = set(exclude)
        primaries = [IPv4Address(a.get("address"))
                     for a in await as_list(await ipr.addr("dump", index=link["index"], family=socket.AF_INET))
                     if not a["flags"] & 0x01]  # IFA_F_SECONDARY
        primary = next((ip for ip in primaries if ip not in skip), primaries[0] if primaries else None)
        mac = bytes.fromhex((link.get("address") or "00:00:00:00:00:00").replace(":", ""))
        return cls(name, link["index"], mac, primary, link_is_up(link))


async def primary_address(name: str, exclude: Iterable[IPv4Address] = ()) -> IPv4Address | None:
    """The interface's own address as the agent would pick it, for one-shot tools (LookupError: no such interface)."""
    async with AsyncIPRoute() as ipr:
        return (await LinkInfo.query(ipr, name, exclude=exclude)).primary


def link_is_up(msg: Any) -> bool:
    """Admin up and carrier present (IFF_UP and IFF_LOWER_UP)."""
    flags = int(msg["flags"])
    return bool(flags & 0x1) and bool(flags & 0x10000)


class VipHolder:
    """Adds and removes exactly the configured VIPs on one interface."""

    def __init__(self, ipr: AsyncIPRoute, ifindex: int, vips: Iterable[IPv4Interface],
                 keep: Iterable[IPv4Address] = ()) -> None:
        self.ipr = ipr
        self.ifindex = ifindex
        self.vips = tuple(vips)
        self.keep = frozenset(keep)  # the node's own address is never removed, even if listed

    async def present(self) -> set[IPv4Interface]:
        got = set()
        for a in await as_list(await self.ipr.addr("dump", index=self.ifindex, family=socket.AF_INET)):
            got.add(IPv4Interface(f"{a.get('address')}/{a['prefixlen']}"))
        return got & set(self.vips)

    async def add(self, vips: Iterable[IPv4Interface] | None = None) -> list[IPv4Interface]:
        added = []
        for vip in self.vips if vips is None else vips:
            try:
                await self.ipr.addr("add", index=self.ifindex, address=str(vip.ip),
                                    prefixlen=vip.network.prefixlen)
                added.append(vip)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
        return added

    async def remove(self, vips: Iterable[IPv4Interface] | None = None) -> list[IPv4Interface]:
        removed = []
        for vip in self.vips if vips is None else vips:
            if vip.ip in self.keep:
                continue
            try:
                await self.ipr.addr("del", index=self.ifindex, address=str(vip.ip),
                                    prefixlen=vip.network.prefixlen)
                removed.append(vip)
            except NetlinkError as e:
                if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                    raise
        return removed


def garp_frame(mac: bytes, ip: IPv4Address) -> bytes:
    """An ARP request with sender = target = VIP and target MAC zero.

    Linux neighbours take a gratuitous request inside locktime (a reply needs target MAC
    equal to sender MAC), so this form moves clients at once.
    """
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip.packed, b"\0" * 6, ip.packed)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


class Garp:
    """Gratuitous ARP bursts over one persistent AF_PACKET socket."""

    def __init__(self, ifname: str, mac: bytes) -> None:
        self.ifname = ifname
        self.mac = mac
        self.sent = 0
        self._sock: socket.socket | None = None

    def open(self) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        s.bind((self.ifname, ETH_P_ARP))
        s.setblocking(False)
        self._sock = s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, vips: Iterable[IPv4Interface]) -> None:
        if self._sock is None:
            return
        for vip in vips:
            try:
                self._sock.send(garp_frame(self.mac, vip.ip))
                self.sent += 1
            except OSError as e:
                log.warning("gratuitous ARP for %s on %s failed: %s", vip.ip, self.ifname, e)

    async def burst(self, vips: Iterable[IPv4Interface], count: int, interval: float) -> None:
        vips = tuple(vips)
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            self.send(vips)
