"""A tiny classic-pcap reader, for the keepalived captures (tests/test_packet.py and their capture) and
bench.jitter's advert timestamps.

Hand-written rather than scapy's rdpcap so a capture's bytes reach the tests exactly as the
file holds them, and so the capture tool needs nothing that the code under test also uses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Frame", "ip_datagram", "read_pcap"]


@dataclass(frozen=True)
class Frame:
    dst_mac: str
    src_mac: str
    ethertype: int
    payload: bytes
    time: float = 0.0  # capture timestamp, seconds since the epoch (us or ns resolution, as the file has it)


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def read_pcap(path: Path) -> list[Frame]:
    """Ethernet frames of a classic (not pcapng) capture file, either byte order, us or ns stamps."""
    data = path.read_bytes()
    magics = {b"\xd4\xc3\xb2\xa1": ("<", 1e6), b"\x4d\x3c\xb2\xa1": ("<", 1e9), b"\xa1\xb2\xc3\xd4": (">", 1e6),
              b"\xa1\xb2\x3c\x4d": (">", 1e9)}
    found = magics.get(data[:4])
    if found is None:
        raise ValueError(f"{path}: not a classic pcap file (magic {data[:4].hex()})")
    order, per_second = found
    _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from(order + "HHiIII", data, 4)
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected 1 (Ethernet)")
    frames: list[Frame] = []
    offset = 24
    while offset < len(data):
        sec, frac, incl, orig = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        raw = data[offset:offset + incl]
        offset += incl
        if len(raw) != incl or incl != orig:
            raise ValueError(f"{path}: truncated record")
        ethertype, payload = struct.unpack_from("!H", raw, 12)[0], raw[14:]
        if ethertype == 0x8100:  # 802.1Q tag
            ethertype, payload = struct.unpack_from("!H", raw, 16)[0], raw[18:]
        frames.append(Frame(_mac(raw[0:6]), _mac(raw[6:12]), ethertype, payload, sec + frac / per_second))
    return frames


def ip_datagram(frame: Frame) -> bytes:
    """The IPv4 datagram of a frame, without Ethernet padding."""
    if frame.ethertype != 0x0800:
        raise ValueError(f"ethertype {frame.ethertype:#06x} is not IPv4")
    total = struct.unpack_from("!H", frame.payload, 2)[0]
    return frame.payload[:total]
