"""The RFC 1071 internet checksum, kept apart from every socket.

vrrp.packet needs it for VRRP and IP headers, agent.probes for ICMP echo requests and
agent.tickle for TCP ACKs. vrrp.packet is sans-I/O core and may not import socket, even
through another module, so the checksum is not in vrrp.rawsock with the socket helpers.
"""

from __future__ import annotations


def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum.

    The one's complement sum of the 16-bit words is the whole message read as one big number,
    modulo 0xFFFF (2**16 is 1 modulo 0xFFFF), except that a nonzero multiple of 0xFFFF sums to
    0xFFFF: one big-integer operation instead of a Python loop, which matters under a flood.
    """
    if len(data) % 2:
        data += b"\0"
    whole = int.from_bytes(data, "big")
    total = whole % 0xFFFF
    if total == 0 and whole:
        total = 0xFFFF
    return ~total & 0xFFFF
