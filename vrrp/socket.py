"""The raw IP protocol-112 sockets, driven by the asyncio loop (no threads).

We send whole IP datagrams (IP_HDRINCL) so TOS 0xc0, TTL 255, the per-instance IP ID
counter and the absence of DF match keepalived on the wire. Sockets are bound to the VRRP
interface and join 224.0.0.18 there only (IP_MULTICAST_ALL off), so adverts from other
interfaces or groups never reach the state machine.

Waking a Python process costs several times what it costs keepalived (measured ~90 us for a
bare asyncio reader against ~30 us), so we do not wake for every routine advert. Two sockets
see the same packets:

- the *queue* socket keeps every packet with its kernel receive timestamp and is only
  drained when the daemon wakes up anyway (its own timer, or the doorbell);
- the *doorbell* socket has a classic BPF filter that passes only what needs a decision at
  once: priority 0 (a master leaving), a priority at or above a threshold (a challenger to
  our mastership), and anything that is not a plausible advert for our VRID (so malformed
  or foreign traffic is drained and counted as it comes and cannot pile up).

A routine advert from the current master therefore costs no wakeup; the backup drains them
when its Master_Down timer expires and feeds them to the router with their real arrival
times, which is exactly what the RFC timers need.

IPv6 (VRRPv3, RFC 5798): the same two sockets in AF_INET6, joined to ff02::12 on the interface
(IPV6_MULTICAST_ALL off). The kernel writes the IPv6 header, so the hop limit 255 is set with
IPV6_MULTICAST_HOPS / IPV6_UNICAST_HOPS, the traffic class 0xc0 (keepalived's, as IPv4's TOS) with
IPV6_TCLASS, and the source, the interface's link-local address
(RFC 5798 5.1.2.1), with IPV6_PKTINFO on every send; the checksum in our template covers that
source. A raw AF_INET6 socket receives the message without the header, so the received hop
limit (IPV6_RECVHOPLIMIT) and destination (IPV6_RECVPKTINFO) come as ancillary data, and `drain`
puts a synthetic IPv6 header in front of each message: vrrp.packet checks the hop limit and the
checksum exactly as it does for IPv4. The doorbell's filter sees the message at offset 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from vrrp.packet import GROUP, GROUP6, PROTO_VRRP, TOS, TTL, Address, ipv6_header
from vrrp.rawsock import JEQ, JGE, LD_B_IND, LDX_IMM, LDX_MSH, RET, BpfProgram, attach_filter, bind_to_device

log = logging.getLogger(__name__)

IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29  # <linux/in6.h>, Linux 4.20; Python's socket module does not name it
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
# The queue holds what arrives between two drains: a backup drains every Master_Down_Interval -
# interval, a few adverts of its master. More is only backlog under a flood of packets, which
# the next drain would have to work through while the advert timer waits (256 KiB of kernel
# memory is ~300 small datagrams, ~4 ms of validation); beyond that the kernel drops them.
QUEUE_BUFFER = 1 << 17
# The doorbell only has to be readable: its datagrams are read and thrown away (the queue has
# them), so a small buffer (the kernel's minimum, a few datagrams) saves reading each one.
BELL_BUFFER = 1024
WAKE_NEVER = 256  # a priority threshold no advert reaches


def _mreqn(group: IPv4Address, ifindex: int) -> bytes:
    return struct.pack("=4s4si", group.packed, b"\0\0\0\0", ifindex)


def _in6(address: IPv6Address, ifindex: int) -> bytes:
    """struct ipv6_mreq and struct in6_pktinfo alike: an address and an interface index."""
    return struct.pack("=16si", address.packed, ifindex)


def doorbell_program(first_byte: int, vrid: int, threshold: int, ip_header: bool = True) -> BpfProgram:
    """BPF over the IP datagram (or, without `ip_header`, over the VRRP message: what an AF_INET6
    raw socket's filter sees): pass unless it is a routine advert for `vrid` below `threshold`."""
    return [
        (LDX_MSH, 0, 0, 0) if ip_header else (LDX_IMM, 0, 0, 0),
        (LD_B_IND, 0, 0, 0),  # version/type
        (JEQ, 0, 6, first_byte),
        (LD_B_IND, 0, 0, 1),  # VRID
        (JEQ, 0, 4, vrid),
        (LD_B_IND, 0, 0, 2),  # priority
        (JEQ, 2, 0, 0),
        (JGE, 1, 0, threshold),
        (RET, 0, 0, 0),  # routine: stays in the queue socket only
        (RET, 0, 0, 0xFFFF),  # wake up
    ]


class VrrpSocket:
    """The sockets of one VRRP instance; `on_wake()` runs when the doorbell rings.

    `ipv6_source`: an IPv6 instance, sending from this link-local address of the interface.
    """

    def __init__(self, ifname: str, ifindex: int, peers: tuple[Address, ...],
                 on_wake: Callable[[], None], ipv6_source: IPv6Address | None = None) -> None:
        self.ifname = ifname
        self.ifindex = ifindex
        self.peers = peers
        self.on_wake = on_wake
        self.ipv6_source = ipv6_source
        self.sent = 0
        self.send_errors = 0
        self.wakeups = 0
        self._queue: socket.socket | None = None
        self._bell: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.destinations: tuple[Address, ...] = peers or (GROUP6 if ipv6_source else GROUP,)
        # what each send needs, made once: a master sends every interval, and formatting the
        # address anew each time was a good part of an idle master's CPU (bench.takeover's idle)
        self._targets = tuple((dst, (str(dst), 0) if ipv6_source is None else (str(dst), 0, 0, ifindex))
                              for dst in self.destinations)
        self._pktinfo = None if ipv6_source is None else [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                                                           _in6(ipv6_source, ifindex))]

    def _raw(self) -> socket.socket:
        s = socket.socket(socket.AF_INET6 if self.ipv6_source else socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP)
        try:
            bind_to_device(s, self.ifname)
            if self.ipv6_source:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
                if not self.peers:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, _in6(GROUP6, self.ifindex))
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                if not self.peers:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(GROUP, self.ifindex))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

    def open(self, first_byte: int, vrid: int) -> None:
        queue = self._raw()
        bell = self._raw()
        try:
            if self.ipv6_source:
                for option, value in ((socket.IPV6_MULTICAST_HOPS, TTL), (socket.IPV6_UNICAST_HOPS, TTL),
                                      (socket.IPV6_TCLASS, TOS),
                                      (socket.IPV6_MULTICAST_LOOP, 0), (socket.IPV6_MULTICAST_IF, self.ifindex),
                                      (socket.IPV6_RECVHOPLIMIT, 1), (socket.IPV6_RECVPKTINFO, 1)):
                    queue.setsockopt(socket.IPPROTO_IPV6, option, value)
            else:
                queue.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                queue.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, TTL)
                queue.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                queue.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn(IPv4Address(0), self.ifindex))
            queue.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            queue.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, QUEUE_BUFFER)
            self._first_byte, self._vrid = first_byte, vrid
            bell.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BELL_BUFFER)
            attach_filter(bell, self._doorbell(WAKE_NEVER))
        except OSError:
            queue.close()
            bell.close()
            raise
        self._queue, self._bell = queue, bell
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(bell.fileno(), self._ring)

    def _doorbell(self, threshold: int) -> BpfProgram:
        return doorbell_program(self._first_byte, self._vrid, threshold, ip_header=self.ipv6_source is None)

    def wake_at_or_above(self, threshold: int) -> None:
        """Besides priority 0 and odd packets, wake for adverts with priority >= threshold."""
        if self._bell is not None:
            attach_filter(self._bell, self._doorbell(threshold))

    def close(self) -> None:
        if self._bell is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._bell.fileno())
            self._bell.close()
            self._bell = None
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    def send(self, datagram_for: Callable[[Address], bytes | bytearray]) -> bool:
        """Send to the group or to every unicast peer; False if the kernel refused (link down...)."""
        if self._queue is None:
            return False
        ok = True
        source = self._pktinfo
        for dst, target in self._targets:
            try:
                if source is None:
                    self._queue.sendto(datagram_for(dst), target)
                else:
                    self._queue.sendmsg([datagram_for(dst)], source, 0, target)
                self.sent += 1
            except OSError as e:
                ok = False
                self.send_errors += 1
                if e.errno not in (errno.ENETDOWN, errno.ENETUNREACH, errno.ENOBUFS, errno.EAGAIN):
                    log.warning("sending VRRP advert to %s on %s failed: %s", dst, self.ifname, e)
        return ok

    def drain(self, limit: int = 4096) -> list[tuple[bytes, float]]:
        """Every datagram queued when the drain began, with its arrival time on the monotonic clock, oldest first.

        It stops after the first datagram that arrived while it was reading: under a flood the queue
        refills as fast as it is read, and a drain that followed it would keep the loop (and the
        advert timer) waiting for as long as the flood lasts. What came later is the next drain's.
        """
        out: list[tuple[bytes, float]] = []
        if self._queue is None:
            return out
        began = time.monotonic()
        offset = time.time() - began
        ipv6 = self.ipv6_source is not None
        for _ in range(limit):
            try:
                data, anc, _flags, addr = self._queue.recvmsg(65535, 256)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("receiving on VRRP socket failed: %s", e)
                break
            at = None
            hop_limit, dst = 0, bytes(16)
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack_from("=qq", payload)
                    at = sec + nsec / 1e9 - offset
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(payload) >= 4:
                    hop_limit = struct.unpack_from("=i", payload)[0]
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(payload) >= 16:
                    dst = payload[:16]
            if ipv6:  # the header the kernel kept from us, rebuilt for vrrp.packet (see module doc)
                src = socket.inet_pton(socket.AF_INET6, addr[0].partition("%")[0])
                data = ipv6_header(src, dst, hop_limit, len(data)) + data
            out.append((data, time.monotonic() if at is None else min(at, time.monotonic())))
            if at is not None and at > began:
                break
        return out

    def _ring(self) -> None:
        assert self._bell is not None
        self.wakeups += 1
        for _ in range(4096):  # empty the doorbell; the packets themselves come from the queue
            try:
                self._bell.recv(1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        self.on_wake()
