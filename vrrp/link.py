"""Carrier and admin state of the VRRP interface, followed over netlink (RTMGRP_LINK).

Polling would add a second of latency to noticing a pulled cable; the kernel tells us
within ~10 ms. Only changes are reported, so a burst of RTM_NEWLINK messages for other
reasons (MTU, stats) does not disturb the state machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import ip_interface

from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

from vrrp.netlink import AsyncIPRoute
from vrrp.packet import Interface
from vrrp.vip import link_is_up

log = logging.getLogger(__name__)


def describe(msg: object) -> str:
    get = getattr(msg, "get", None)
    operstate = get("operstate") if get else None
    return f"operstate {operstate or 'unknown'}"


class LinkMonitor:
    """Calls `on_change(up, detail)` when the interface's usable state flips, and
    `on_addr_removed(address)` when an IPv4 or IPv6 address leaves it (how a deleted VIP is
    noticed without polling)."""

    def __init__(self, ifindex: int, up: bool, on_change: Callable[[bool, str], None],
                 on_addr_removed: Callable[[Interface], None] = lambda _: None) -> None:
        self.ifindex = ifindex
        self.up = up
        self.on_change = on_change
        self.on_addr_removed = on_addr_removed
        self.events = 0

    async def run(self) -> None:
        async with AsyncIPRoute() as ipr:
            await ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            while True:  # pyroute2 0.9's get() ends after one datagram
                async for msg in ipr.get():
                    self.feed(msg)

    def feed(self, msg: object) -> None:
        get = getattr(msg, "get", None)
        if get is None or get("index") != self.ifindex:
            return
        self.events += 1
        event = get("event")
        if event in ("RTM_NEWADDR", "RTM_DELADDR"):
            if event == "RTM_DELADDR" and get("address"):
                try:
                    address = ip_interface(f"{get('address')}/{get('prefixlen')}")
                except ValueError:
                    return
                self.on_addr_removed(address)
            return
        if event == "RTM_DELLINK":
            up, detail = False, "interface deleted"
        else:
            up, detail = link_is_up(msg), describe(msg)
        if up != self.up:
            self.up = up
            self.on_change(up, detail)
