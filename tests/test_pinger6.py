"""tests/lab/pinger.py over IPv6 (bench.takeover's v6 modes), and over IPv4 as before: which frames
count as our echo replies."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

from tests.lab.pinger import ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP_ECHO_REPLY, echo_request, parse_reply

SRC = IPv6Address("2001:db8::100")
DST = IPv6Address("2001:db8::10")


def frame(icmp_type: int, ident: int, seq: int, next_header: int = 58) -> bytes:
    icmp = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq) + b"\0" * 8
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), next_header, 64, SRC.packed, DST.packed)
    return bytes.fromhex("020000000010" "02000000000b" "86dd") + ip + icmp


def test_echo_replies_over_ipv6() -> None:
    assert parse_reply(frame(ICMP6_ECHO_REPLY, 7, 3), 7) == (3, str(SRC), "02:00:00:00:00:0b")
    assert parse_reply(frame(ICMP6_ECHO_REPLY, 8, 3), 7) is None  # another pinger's
    assert parse_reply(frame(ICMP6_ECHO_REQUEST, 7, 3), 7) is None
    assert parse_reply(frame(ICMP6_ECHO_REPLY, 7, 3, next_header=17), 7) is None
    assert parse_reply(frame(ICMP6_ECHO_REPLY, 7, 3)[:60], 7) is None


def test_echo_replies_over_ipv4_as_before() -> None:
    icmp = bytes([ICMP_ECHO_REPLY]) + echo_request(7, 3, b"\0" * 8)[1:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, bytes([192, 0, 2, 100]),
                     bytes([192, 0, 2, 10]))
    eth = bytes.fromhex("020000000010" "02000000000a" "0800")
    assert parse_reply(eth + ip + icmp, 7) == (3, "192.0.2.100", "02:00:00:00:00:0a")
    assert parse_reply(eth + ip + icmp, 8) is None
