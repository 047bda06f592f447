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
from vrrp.rawsock import JEQ, JGE, LD_B_IND, LDX_MSH, RET, BpfProgram, attach_filter, bind_to_device

log = logging.getLogger(__name__)

IP_MULTICAST_ALL = 49
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


def doorbell_program(first_byte: int, vrid: int, threshold: int) -> BpfProgram:
    """BPF over the IP datagram: pass unless it is a routine advert for `vrid` below `threshold`."""
    return [
        (LDX_MSH, 0, 0, 0),
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
    """The sockets of one VRRP instance; `on_wake()` runs when the doorbell rings."""

    def __init__(self, ifname: str, ifindex: int, peers: tuple[IPv4Address, ...],
                 on_wake: Callable[[], None]) -> None:
        self.ifname = ifname
        self.ifindex = ifindex
        self.peers = peers
        self.on_wake = on_wake
        self.sent = 0
        self.send_errors = 0
        self.wakeups = 0
        self._queue: socket.socket | None = None
        self._bell: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def destinations(self) -> tuple[IPv4Address, ...]:
        return self.peers or (GROUP,)

    def _raw(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP)
        try:
            bind_to_device(s, self.ifname)
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
            queue.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            queue.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            queue.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            queue.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn(IPv4Address(0), self.ifindex))
            queue.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            queue.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, QUEUE_BUFFER)
            self._first_byte, self._vrid = first_byte, vrid
            bell.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BELL_BUFFER)
            attach_filter(bell, doorbell_program(first_byte, vrid, WAKE_NEVER))
        except OSError:
            queue.close()
            bell.close()
            raise
        self._queue, self._bell = queue, bell
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(bell.fileno(), self._ring)

    def wake_at_or_above(self, threshold: int) -> None:
        """Besides priority 0 and odd packets, wake for adverts with priority >= threshold."""
        if self._bell is not None:
            attach_filter(self._bell, doorbell_program(self._first_byte, self._vrid, threshold))

    def close(self) -> None:
        if self._bell is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._bell.fileno())
            self._bell.close()
            self._bell = None
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    def send(self, datagram_for: Callable[[IPv4Address], bytes | bytearray]) -> bool:
        """Send to the group or to every unicast peer; False if the kernel refused (link down...)."""
        if self._queue is None:
            return False
        ok = True
        for dst in self.destinations:
            try:
                self._queue.sendto(datagram_for(dst), (str(dst), 0))
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
        for _ in range(limit):
            try:
                data, anc, _flags, _addr = self._queue.recvmsg(65535, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.warning("receiving on VRRP socket failed: %s", e)
                break
            at = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack_from("=qq", payload)
                    at = sec + nsec / 1e9 - offset
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
