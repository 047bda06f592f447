"""The RFC 1071 internet checksum, kept apart from every socket.

vrrp.packet needs it for VRRP and IP headers, agent.probes for ICMP echo requests and
agent.tickle for TCP ACKs. vrrp.packet is sans-I/O core and may not import socket, even
through another module, so the checksum is not in vrrp.rawsock with the socket helpers.
"""

from __future__ import annotations

import struct


def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
