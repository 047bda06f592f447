"""The I/O half of reachability tracking: ICMP echo to witnesses and admin check commands.

One raw ICMP socket per instance, bound to the service interface (SO_BINDTODEVICE), so a
witness only counts as reachable through the NIC clients use, never via a backup route. A
classic BPF filter passes only echo replies carrying our identifier: a raw ICMP socket
otherwise sees every ICMP packet of the host (clients pinging the VIP at 100 Hz would wake
the agent for each). Checks run as argument lists, never through a shell, with a timeout
after which the process is killed. Both report `(ok, detail)`; decisions are agent.track's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Sequence

from drbd.runner import run
from vrrp.checksum import checksum
from vrrp.rawsock import JEQ, LD_B_IND, LDX_MSH, RET, BpfProgram, attach_filter, bind_to_device

ECHO_REQUEST, ECHO_REPLY = 8, 0


def echo_reply_program(ident: int) -> BpfProgram:
    """BPF over the IP datagram: pass ICMP echo replies with our identifier only."""
    return [
        (LDX_MSH, 0, 0, 0),
        (LD_B_IND, 0, 0, 0),  # ICMP type
        (JEQ, 0, 5, ECHO_REPLY),
        (LD_B_IND, 0, 0, 4),  # identifier, high byte
        (JEQ, 0, 3, ident >> 8),
        (LD_B_IND, 0, 0, 5),  # identifier, low byte
        (JEQ, 0, 1, ident & 0xFF),
        (RET, 0, 0, 0xFFFF),
        (RET, 0, 0, 0),
    ]


def echo_request(ident: int, seq: int, payload: bytes = b"failover") -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return header[:2] + struct.pack("!H", checksum(header + payload)) + header[4:] + payload


def parse_echo_reply(datagram: bytes) -> tuple[str, int, int] | None:
    """(source address, identifier, sequence) of an echo reply, None for anything else."""
    if len(datagram) < 20:
        return None
    ihl = (datagram[0] & 0xF) * 4
    if len(datagram) < ihl + 8:
        return None
    kind, _code, _sum, ident, seq = struct.unpack("!BBHHH", datagram[ihl:ihl + 8])
    if kind != ECHO_REPLY:
        return None
    return socket.inet_ntoa(datagram[12:16]), ident, seq


class Pinger:
    def __init__(self, interface: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.waiting: dict[tuple[str, int], asyncio.Future[float]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            bind_to_device(self.sock, interface)
            attach_filter(self.sock, echo_reply_program(self.ident))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for fut in self.waiting.values():
            fut.cancel()

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            reply = parse_echo_reply(data)
            if reply is None or reply[1] != self.ident:
                continue
            fut = self.waiting.get((reply[0], reply[2]))
            if fut is not None and not fut.done():
                fut.set_result(time.monotonic())

    async def ping(self, address: str, timeout: float) -> tuple[bool, str]:
        self.seq = (self.seq + 1) & 0xFFFF
        key = (address, self.seq)
        fut: asyncio.Future[float] = self.loop.create_future()
        self.waiting[key] = fut
        t0 = time.monotonic()
        try:
            self.sock.sendto(echo_request(self.ident, self.seq), (address, 0))
            answered = await asyncio.wait_for(fut, timeout)
            return True, f"echo reply in {(answered - t0) * 1000:.1f} ms"
        except TimeoutError:
            return False, f"no echo reply within {timeout:g} s"
        except OSError as e:
            return False, f"cannot send: {e.strerror or e}"
        finally:
            self.waiting.pop(key, None)


async def run_check(argv: Sequence[str], timeout: float) -> tuple[bool, str]:
    """Exit status 0 within `timeout` is a pass; anything else a failure, with what it said."""
    t0 = time.monotonic()
    try:
        code, out, err = await run(argv, timeout)
    except OSError as e:
        return False, f"cannot run {argv[0]}: {e.strerror or e}"
    took = (time.monotonic() - t0) * 1000
    if code == 0:
        return True, f"exit 0 in {took:.0f} ms"
    text = " ".join(f"{out} {err}".split())[:200]
    return False, f"exit {code} in {took:.0f} ms" + (f": {text}" if text else "")
