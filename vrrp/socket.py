"""The raw IP protocol-112 socket, driven by the asyncio loop (no threads).

We send whole IP datagrams (IP_HDRINCL) so TOS 0xc0, TTL 255, the per-instance IP ID
counter and the absence of DF match keepalived on the wire. The socket is bound to the
VRRP interface and joins 224.0.0.18 there only (IP_MULTICAST_ALL off), so adverts from
other interfaces or other groups never reach the state machine.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from vrrp.packet import GROUP, PROTO_VRRP

log = logging.getLogger(__name__)

IP_MULTICAST_ALL = 49


def _mreqn(group: IPv4Address, ifindex: int) -> bytes:
    return struct.pack("=4s4si", group.packed, b"\0\0\0\0", ifindex)


class VrrpSocket:
    """One raw socket per VRRP instance; calls `on_datagram(data, received_at)` per packet."""

    def __init__(self, ifname: str, ifindex: int, peers: tuple[IPv4Address, ...],
                 on_datagram: Callable[[bytes, float], None]) -> None:
        self.ifname = ifname
        self.ifindex = ifindex
        self.peers = peers
        self.on_datagram = on_datagram
        self.sent = 0
        self.send_errors = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def destinations(self) -> tuple[IPv4Address, ...]:
        return self.peers or (GROUP,)

    def open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn(IPv4Address(0), self.ifindex))
            if not self.peers:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(GROUP, self.ifindex))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self._sock = s
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(s.fileno(), self._readable)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def send(self, datagram_for: Callable[[IPv4Address], bytes]) -> bool:
        """Send to the group or to every unicast peer; False if the kernel refused (link down...)."""
        if self._sock is None:
            return False
        ok = True
        for dst in self.destinations:
            try:
                self._sock.sendto(datagram_for(dst), (str(dst), 0))
                self.sent += 1
            except OSError as e:
                ok = False
                self.send_errors += 1
                if e.errno not in (errno.ENETDOWN, errno.ENETUNREACH, errno.ENOBUFS, errno.EAGAIN):
                    log.warning("sending VRRP advert to %s on %s failed: %s", dst, self.ifname, e)
        return ok

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):  # bounded, so a flood cannot starve the loop's timers
            try:
                data = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("receiving on VRRP socket failed: %s", e)
                return
            self.on_datagram(data, time.monotonic())
