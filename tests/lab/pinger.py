"""ICMP echo loop that runs *inside* a lab namespace and reports every reply on stdout.

Started by tests.lab.probe.Pinger as ``nsenter --net=... python3 pinger.py ...``.  It is a
standalone script (stdlib only, no imports from the project) so it works whatever the
child's sys.path is.

Why not ping(8): we need per-packet monotonic send and receive times that the parent can
compare with its own ``time.monotonic()`` (CLOCK_MONOTONIC is one system-wide clock; network
namespaces do not change it, only time namespaces would, and the READY line lets the parent
verify that), a fixed send schedule that does not stall on unanswered requests, and the
source MAC of each reply, which shows which node answered for a VIP.

Sending uses a raw ICMP socket (the kernel routes and resolves ARP as for any application);
that socket gets an ICMP_FILTER blocking every type, so its receive queue never fills.
Replies are read from an AF_PACKET socket on the interface, which costs nothing extra and
gives the Ethernet source address. An IPv6 target (an address with ':') is pinged the same
way with ICMPv6 (the kernel fills in its checksum, ICMP6_FILTER blocks every type, the neighbour
cache stands for ARP).

Output, one line each, times are time.monotonic() seconds:
    READY <t> <time-namespace id>
    S <seq> <t_send>
    R <seq> <t_send> <t_recv> <src_ip> <src_mac>
    E <seq> <t> <errno name>          (sendto failed, e.g. ENETUNREACH, EHOSTUNREACH)
    END <sent> <received>
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import select
import signal
import socket
import struct
import sys
import time
from types import FrameType

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23
SOL_RAW = 255
SOL_PACKET = 263
ICMP_FILTER = 1
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP6_FILTER = 1
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129


class _Stop(Exception):
    """Raised from the SIGTERM handler to leave the select() loop at once."""


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request with a valid checksum."""
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_reply6(frame: bytes, ident: int) -> tuple[int, str, str] | None:
    """`parse_reply` for ICMPv6 (an echo reply right after the IPv6 header: no extension headers)."""
    if len(frame) < 14 + 40 + 8 or frame[12:14] != b"\x86\xdd" or frame[14 + 6] != socket.IPPROTO_ICMPV6:
        return None
    icmp_type, _code, _csum, rid, seq = struct.unpack("!BBHHH", frame[54:62])
    if icmp_type != ICMP6_ECHO_REPLY or rid != ident:
        return None
    return seq, socket.inet_ntop(socket.AF_INET6, frame[22:38]), ":".join(f"{b:02x}" for b in frame[6:12])


def parse_reply(frame: bytes, ident: int) -> tuple[int, str, str] | None:
    """(seq, source IP, source MAC) if ``frame`` is an echo reply for ``ident``, else None."""
    if frame[12:14] == b"\x86\xdd":
        return parse_reply6(frame, ident)
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_ICMP or len(ip) < ihl + 8:
        return None
    if struct.unpack("!H", ip[6:8])[0] & 0x1FFF:  # a non-first fragment has no ICMP header
        return None
    icmp_type, _code, _csum, rid, seq = struct.unpack("!BBHHH", ip[ihl : ihl + 8])
    if icmp_type != ICMP_ECHO_REPLY or rid != ident:
        return None
    return seq, socket.inet_ntoa(ip[12:16]), ":".join(f"{b:02x}" for b in frame[6:12])


def main(argv: list[str] | None = None) -> int:
    """Run the echo loop until the duration ends, SIGTERM arrives or stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("target")
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until stopped")
    parser.add_argument("--dev", default="eth0")
    parser.add_argument("--ident", type=int, default=os.getpid() & 0xFFFF)
    parser.add_argument("--payload", type=int, default=16, help="payload bytes (>= 8)")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be > 0")

    signal.signal(signal.SIGTERM, _on_term)
    out = sys.stdout

    six = ":" in args.target
    if six:
        send = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        send.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
    else:
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        send.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))
    ethertype = ETH_P_IPV6 if six else ETH_P_IP
    recv = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    with contextlib.suppress(OSError):  # old kernel: outgoing frames are filtered by pkttype below
        recv.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    recv.bind((args.dev, ethertype))
    recv.setblocking(False)

    try:
        time_ns = os.readlink("/proc/self/ns/time")
    except OSError:
        time_ns = "time:[none]"
    print(f"READY {time.monotonic():.9f} {time_ns}", file=out, flush=True)

    outstanding: dict[int, tuple[int, float]] = {}  # wire seq -> (sequence number, send time)
    sent = received = 0
    start = time.monotonic()
    end = start + args.duration if args.duration > 0 else float("inf")
    next_send = start
    stdin_fd = sys.stdin.fileno() if not sys.stdin.closed else -1
    watch = [recv.fileno()] + ([stdin_fd] if stdin_fd >= 0 else [])
    pad = b"\0" * max(0, args.payload - 8)
    try:
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_send:
                wire = sent & 0xFFFF
                packet = echo_request(args.ident, wire, struct.pack("!Q", sent) + pad)
                if six:  # type 128; the kernel computes an ICMPv6 checksum (pseudo-header) itself
                    packet = bytes([ICMP6_ECHO_REQUEST, 0, 0, 0]) + packet[4:]
                t_send = time.monotonic()
                try:
                    send.sendto(packet, (args.target, 0))
                    outstanding[wire] = (sent, t_send)
                    print(f"S {sent} {t_send:.9f}", file=out)
                except OSError as exc:
                    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                    print(f"E {sent} {t_send:.9f} {name}", file=out)
                sent += 1
                next_send += args.interval
                if next_send < now:  # we were descheduled: keep the pace, do not burst
                    next_send = now + args.interval
                out.flush()
            timeout = max(0.0, min(next_send, end) - time.monotonic())
            readable, _, _ = select.select(watch, [], [], timeout)
            if stdin_fd in readable and not os.read(stdin_fd, 4096):
                break  # parent went away (or closed our stdin to stop us)
            if recv.fileno() not in readable:
                continue
            while True:
                try:
                    frame, addr = recv.recvfrom(2048)
                except BlockingIOError:
                    break
                t_recv = time.monotonic()
                if addr[2] == PACKET_OUTGOING:
                    continue
                parsed = parse_reply(frame, args.ident)
                if parsed is None:
                    continue
                wire, src_ip, src_mac = parsed
                entry = outstanding.pop(wire, None)
                if entry is None:
                    continue  # duplicate or long-overdue reply
                received += 1
                print(f"R {entry[0]} {entry[1]:.9f} {t_recv:.9f} {src_ip} {src_mac}", file=out)
            out.flush()
    except (_Stop, KeyboardInterrupt):
        pass
    except BrokenPipeError:
        return 0
    with contextlib.suppress(BrokenPipeError):
        print(f"END {sent} {received}", file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
