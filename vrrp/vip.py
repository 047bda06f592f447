"""Virtual addresses through netlink (pyroute2); gratuitous ARP, or for IPv6 unsolicited Neighbor
Advertisements, over one packet socket.

Only the configured VIPs are ever added or removed, and both operations are idempotent
(EEXIST / EADDRNOTAVAIL count as done), so a restarted agent can reconcile whatever a
crashed one left behind without touching the node's own addresses.

IPv6 VIPs are added with IFA_F_NODAD: Duplicate Address Detection would keep a fresh VIP
tentative (unusable as a source, not answering Neighbor Solicitations) for a second or more
after the takeover, and the address is ours by the VRRP election, not by DAD. The
announcements are built here byte by byte (as the GARP is) and sent on an AF_PACKET socket,
so they neither wait for the kernel's view of the address nor depend on its source selection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import AsyncIterable, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_interface
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from vrrp.checksum import checksum
from vrrp.netlink import AsyncIPRoute
from vrrp.packet import TTL, Address, Interface

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # RFC 2464 7: 33:33 and the group's last 32 bits
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
NA_OVERRIDE = 0x20000000  # the O flag of RFC 4861 4.4 (R is 0x80000000, S 0x40000000)


async def as_list(result: Any) -> list[Any]:
    """pyroute2 0.9 returns lists for some requests and async generators for dumps."""
    if isinstance(result, AsyncIterable):
        return [item async for item in result]
    return list(result)


class LinkInfo:
    """What we need to know of the VRRP interface: index, MAC and the advert source, its primary
    IPv4 address or (`ipv6`) its link-local address."""

    def __init__(self, name: str, index: int, mac: bytes, primary: Address | None, up: bool) -> None:
        self.name, self.index, self.mac, self.primary, self.up = name, index, mac, primary, up

    @classmethod
    async def query(cls, ipr: AsyncIPRoute, name: str, exclude: Iterable[Address] = (),
                    ipv6: bool = False) -> LinkInfo:
        try:
            links = await as_list(await ipr.link("get", ifname=name))
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            links = []
        if not links:
            raise LookupError(f"interface {name} not found")
        link = links[0]
        skip = set(exclude)
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        addrs = await as_list(await ipr.addr("dump", index=link["index"], family=family))
        primary: Address | None
        if ipv6:
            # RFC 5798 5.1.2.1: the source is the interface's link-local address. One still in
            # DAD (tentative) only if there is no other: it is usable a second later, long before
            # a backup's first Master_Down_Interval ends and it sends anything.
            local = [(bool(a["flags"] & IFA_F_TENTATIVE), ip) for a in addrs
                     if (ip := IPv6Address(a.get("address"))).is_link_local and ip not in skip
                     and not a["flags"] & IFA_F_DADFAILED]
            primary = min(local, key=lambda t: t[0])[1] if local else None
        else:
            # the advert source: the first primary address that is not a VIP, else (an address
            # owner listing its own address as VIP) the first primary address at all
            primaries = [IPv4Address(a.get("address")) for a in addrs if not a["flags"] & IFA_F_SECONDARY]
            primary = next((ip for ip in primaries if ip not in skip), primaries[0] if primaries else None)
        mac = bytes.fromhex((link.get("address") or "00:00:00:00:00:00").replace(":", ""))
        return cls(name, link["index"], mac, primary, link_is_up(link))


async def primary_address(name: str, exclude: Iterable[Address] = (), ipv6: bool = False) -> Address | None:
    """The interface's own address as the agent would pick it, for one-shot tools (LookupError: no such interface)."""
    async with AsyncIPRoute() as ipr:
        return (await LinkInfo.query(ipr, name, exclude=exclude, ipv6=ipv6)).primary


def link_is_up(msg: Any) -> bool:
    """Admin up and carrier present (IFF_UP and IFF_LOWER_UP)."""
    flags = int(msg["flags"])
    return bool(flags & 0x1) and bool(flags & 0x10000)


class VipHolder:
    """Adds and removes exactly the configured VIPs on one interface."""

    def __init__(self, ipr: AsyncIPRoute, ifindex: int, vips: Iterable[Interface],
                 keep: Iterable[Address] = ()) -> None:
        self.ipr = ipr
        self.ifindex = ifindex
        self.vips = tuple(vips)
        self.keep = frozenset(keep)  # the node's own address is never removed, even if listed

    async def present(self) -> set[Interface]:
        got: set[Interface] = set()
        for family in {socket.AF_INET6 if vip.version == 6 else socket.AF_INET for vip in self.vips}:
            for a in await as_list(await self.ipr.addr("dump", index=self.ifindex, family=family)):
                got.add(ip_interface(f"{a.get('address')}/{a['prefixlen']}"))
        return got & set(self.vips)

    async def add(self, vips: Iterable[Interface] | None = None) -> list[Interface]:
        added = []
        for vip in self.vips if vips is None else vips:
            extra = {"flags": IFA_F_NODAD} if vip.version == 6 else {}
            try:
                await self.ipr.addr("add", index=self.ifindex, address=str(vip.ip),
                                    prefixlen=vip.network.prefixlen, **extra)
                added.append(vip)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
        return added

    async def remove(self, vips: Iterable[Interface] | None = None) -> list[Interface]:
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


def na_frame(mac: bytes, ip: IPv6Address) -> bytes:
    """An unsolicited Neighbor Advertisement (RFC 4861 4.4, 7.2.6) for the VIP, to all nodes.

    Source = the VIP itself (as the kernel's own unsolicited NAs), hop limit 255 (receivers drop
    any other), Solicited 0 (it answers nobody), Override 1 (replace the cached link-layer
    address), Router 0, and the Target Link-Layer Address option carrying our MAC: what
    keepalived 2.2.7 sends, byte for byte. The ICMPv6 checksum covers the IPv6 pseudo-header
    (RFC 8200 8.1).
    """
    icmp = struct.pack("!BBHI16sBB6s", ND_NEIGHBOR_ADVERT, 0, 0, NA_OVERRIDE, ip.packed, 2, 1, mac)
    pseudo = ip.packed + ALL_NODES.packed + struct.pack("!I3xB", len(icmp), IPPROTO_ICMPV6)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    header = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), IPPROTO_ICMPV6, TTL, ip.packed, ALL_NODES.packed)
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + header + icmp


def announcement(mac: bytes, ip: Address) -> bytes:
    """The frame that points the link's neighbour caches at `mac` for a VIP: GARP or unsolicited NA."""
    return na_frame(mac, ip) if isinstance(ip, IPv6Address) else garp_frame(mac, ip)


class Garp:
    """Gratuitous ARP (IPv4 VIPs) and unsolicited Neighbor Advertisement (IPv6 VIPs) bursts over
    one persistent AF_PACKET socket; one instance's VIPs are all of one family."""

    def __init__(self, ifname: str, mac: bytes, ipv6: bool = False) -> None:
        self.ifname = ifname
        self.mac = mac
        # protocol 0 registers no receive hook: an ETH_P_IPV6 socket would be handed a copy of every
        # IPv6 frame of the link, for nobody to read (the ARP one sees only the link's ARP)
        self.protocol = 0 if ipv6 else ETH_P_ARP
        self.sent = 0
        self._sock: socket.socket | None = None

    def open(self) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(self.protocol))
        s.bind((self.ifname, self.protocol))
        s.setblocking(False)
        self._sock = s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, vips: Iterable[Interface]) -> None:
        if self._sock is None:
            return
        for vip in vips:
            try:
                self._sock.send(announcement(self.mac, vip.ip))
                self.sent += 1
            except OSError as e:
                log.warning("announcing %s on %s failed: %s", vip.ip, self.ifname, e)

    async def burst(self, vips: Iterable[Interface], count: int, interval: float) -> None:
        vips = tuple(vips)
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            self.send(vips)
