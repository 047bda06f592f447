"""VRRPv2 (RFC 3768) and VRRPv3 (RFC 5798, IPv4 and IPv6) advertisements on the wire.

The daemon encodes and decodes with `struct` rather than scapy: scapy's IP and VRRP
layers alone take the process past its 60 MB RSS budget and cost ~50-150 us a packet
(see bench/packet_cost.py). scapy stays the reference: tests check that both agree
byte for byte, and keepalived 2.2.7 captures pin the exact bytes.

Decoding never raises on bad input: `Validator.check` turns every packet into either an
`Advertisement` or a `Drop` with a named reason, and counts it.

IPv6 (VRRPv3 only): the kernel hands a raw AF_INET6 socket the VRRP message without the IPv6
header, so the socket adapter puts a fixed 40-byte header (`ipv6_header`: source, destination,
hop limit from the ancillary data) in front of it. Everything here then reads one kind of
input, a whole IP datagram of either family, which is also what a packet socket captures.
"""

from __future__ import annotations

import enum
import struct
from collections import Counter
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from vrrp.checksum import checksum

__all__ = [
    "AUTH_NONE",
    "AUTH_PASS",
    "GROUP",
    "GROUP6",
    "PROTO_VRRP",
    "TOS",
    "TTL",
    "UNSPECIFIED",
    "Address",
    "Advertisement",
    "Drop",
    "DropReason",
    "Interface",
    "Templates",
    "Validator",
    "auth_bytes",
    "decode",
    "encode",
    "encode_vrrp",
    "ipv6_header",
]

PROTO_VRRP = 112
GROUP = IPv4Address("224.0.0.18")
TTL = 255
TOS = 0xC0
AUTH_NONE = 0
AUTH_PASS = 1
UNSPECIFIED = IPv4Address("0.0.0.0")
GROUP6 = IPv6Address("ff02::12")  # RFC 5798 5.1.2.2: link-local scope, all VRRP routers

#: one address of either family. An instance, every advert it sends or accepts and its router
#: (whose equal-priority tie-break compares two primary addresses as integers) use one family
Address = IPv4Address | IPv6Address
#: a virtual address with its prefix, of either family (one family per instance as well)
Interface = IPv4Interface | IPv6Interface

_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
_V2_HEAD = struct.Struct("!BBBBBBH")
_V3_HEAD = struct.Struct("!BBBBHH")
_IP6_HEADER = struct.Struct("!IHBB16s16s")


class DropReason(enum.StrEnum):
    """Why a received packet was not accepted as an advertisement for us."""

    MALFORMED_IP = "malformed_ip"
    TTL = "ttl"
    VERSION = "version"
    TYPE = "type"
    CHECKSUM = "checksum"
    VRID = "vrid"
    LENGTH = "length"
    INTERVAL = "interval"
    AUTH = "auth"
    NOT_PEER = "not_peer"
    OWN = "own"


@dataclass(frozen=True)
class Advertisement:
    """One VRRP advertisement; `interval` is in seconds for both versions."""

    version: int
    vrid: int
    priority: int
    interval: float
    addresses: tuple[Address, ...]
    auth_type: int = AUTH_NONE
    auth_data: bytes = b"\0" * 8
    src: Address = UNSPECIFIED
    dst: Address = GROUP
    ttl: int = TTL  # the IPv4 TTL or the IPv6 hop limit


@dataclass(frozen=True)
class Drop:
    reason: DropReason
    detail: str


def auth_bytes(password: str) -> bytes:
    """keepalived sends the PASS password NUL-padded (and cut) to 8 bytes."""
    return password.encode()[:8].ljust(8, b"\0")


def _pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    """RFC 5798 5.2.8: the checksum covers IPv4's (RFC 768 style) or IPv6's (RFC 8200 8.1) pseudo-header."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, PROTO_VRRP, length)
    return src + dst + struct.pack("!I3xB", length, PROTO_VRRP)


def encode_vrrp(adv: Advertisement, src: Address, dst: Address) -> bytes:
    """The VRRP message alone (what follows the IP header)."""
    if any(a.version != src.version for a in (dst, *adv.addresses)):
        raise ValueError("an advert's addresses, source and destination are of one family")
    if adv.version == 2 and src.version == 6:
        raise ValueError("VRRPv2 (RFC 3768) is IPv4 only")
    addrs = b"".join(a.packed for a in adv.addresses)
    if adv.version == 2:
        head = _V2_HEAD.pack(0x21, adv.vrid, adv.priority, len(adv.addresses), adv.auth_type,
                             round(adv.interval), 0)
        body = head + addrs + adv.auth_data.ljust(8, b"\0")[:8]
        ck = checksum(body)
    else:
        head = _V3_HEAD.pack(0x31, adv.vrid, adv.priority, len(adv.addresses),
                             round(adv.interval * 100) & 0x0FFF, 0)
        body = head + addrs
        ck = checksum(_pseudo_header(src.packed, dst.packed, len(body)) + body)
    return body[:6] + struct.pack("!H", ck) + body[8:]


def ipv6_header(src: bytes, dst: bytes, hop_limit: int, payload_length: int) -> bytes:
    """A fixed IPv6 header (traffic class and flow label 0, next header VRRP) for packed addresses."""
    return _IP6_HEADER.pack(6 << 28, payload_length, PROTO_VRRP, hop_limit, src, dst)


def encode(adv: Advertisement, src: Address, dst: Address, ip_id: int) -> bytes:
    """A whole IPv4 datagram, as keepalived sends it (for an IP_HDRINCL socket); or a whole IPv6
    datagram as the wire carries it (hop limit 255; IPv6 has no IP ID, `ip_id` is not used)."""
    vrrp = encode_vrrp(adv, src, dst)
    if src.version == 6:
        return ipv6_header(src.packed, dst.packed, TTL, len(vrrp)) + vrrp
    header = _IP_HEADER.pack(0x45, TOS, 20 + len(vrrp), ip_id & 0xFFFF, 0, TTL, PROTO_VRRP, 0,
                             src.packed, dst.packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + vrrp


class Templates:
    """Our own adverts as the socket sends them, built once per (priority, destination, interval).

    Sending is the daemon's most frequent work: each IPv4 advert re-uses its template with a
    fresh IP ID and a zero IP checksum (IP_HDRINCL: the kernel fills it in) instead of encoding
    anew. IPv6 has no IP ID and no IPV6_HDRINCL for protocol 112: an IPv6 template is the VRRP
    message alone, sent as it is (the kernel writes the header, the source comes from IPV6_PKTINFO).
    """

    def __init__(self, adv: Advertisement, src: Address) -> None:
        self.adv, self.src = adv, src
        self.ip_id = 0
        self._cache: dict[tuple[int, Address, float | None], bytearray] = {}
        self._ipv6 = src.version == 6
        # the last one sent, found by identity (the socket passes the same destination object
        # each time): hashing and comparing address objects cost more than the send itself
        self._last: tuple[int, Address | None, float | None, bytearray] = (-1, None, None, bytearray())

    def datagram(self, priority: int, dst: Address, interval: float | None = None) -> bytearray:
        """`interval`: None for our own; v2 always carries our own."""
        last_priority, last_dst, last_interval, template = self._last
        if priority != last_priority or dst is not last_dst or interval != last_interval:
            key = (priority, dst, interval)
            cached = self._cache.get(key)
            if cached is None:
                chosen = self.adv.interval if interval is None or self.adv.version == 2 else interval
                adv = replace(self.adv, priority=priority, interval=chosen)
                raw = encode_vrrp(adv, self.src, dst) if self._ipv6 else encode(adv, self.src, dst, 0)
                cached = self._cache[key] = bytearray(raw)
            template = cached
            self._last = (priority, dst, interval, template)
        if self._ipv6:
            return template
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        struct.pack_into("!H", template, 4, self.ip_id)
        struct.pack_into("!H", template, 10, 0)
        return template


def _dotted(packed: bytes) -> str:
    """What str(IPv4Address(packed)) gives, without building the object (drop messages only)."""
    if len(packed) == 16:
        return str(IPv6Address(packed))
    return "%d.%d.%d.%d" % (packed[0], packed[1], packed[2], packed[3])  # noqa: UP031


def _split6(datagram: bytes) -> tuple[bytes, int, bytes, bytes] | Drop:
    """(payload, hop limit, source, destination) of an IPv6 datagram whose next header is VRRP.

    Extension headers are not walked: the socket's synthetic header never has any, and a VRRP
    advert (link-local, hop limit 255) has no reason to carry one.
    """
    if len(datagram) < 40:
        return Drop(DropReason.MALFORMED_IP, f"{len(datagram)} bytes is shorter than an IPv6 header")
    _vtf, length, next_header, hop_limit, src_b, dst_b = _IP6_HEADER.unpack_from(datagram)
    if next_header != PROTO_VRRP or 40 + length > len(datagram):
        return Drop(DropReason.MALFORMED_IP, "not a well-formed IPv6 datagram with next header 112")
    return datagram[40:40 + length], hop_limit, src_b, dst_b


def _parse(datagram: bytes) -> tuple[bytes, int, bytes, bytes] | Drop:
    """(VRRP message, IP TTL, source, destination as packed bytes) of a well-formed VRRP datagram.

    Every structural check of `decode`, in its order, without building address objects: a flood
    of bogus packets is mostly refused here or by the raw-byte checks of `Validator`.
    """
    if datagram[:1] and datagram[0] >> 4 == 6:
        split = _split6(datagram)
        if isinstance(split, Drop):
            return split
        msg, ttl, src_b, dst_b = split
    else:
        if len(datagram) < 20:
            return Drop(DropReason.MALFORMED_IP, f"{len(datagram)} bytes is shorter than an IP header")
        ver_ihl, _tos, total, _id, _frag, ttl, proto, _ck, src_b, dst_b = _IP_HEADER.unpack_from(datagram)
        ihl = (ver_ihl & 0x0F) * 4
        if ver_ihl >> 4 != 4 or ihl < 20 or total < ihl or total > len(datagram) or proto != PROTO_VRRP:
            return Drop(DropReason.MALFORMED_IP, "not a well-formed IPv4 datagram of protocol 112")
        msg = datagram[ihl:total]
    if len(msg) < 8:
        return Drop(DropReason.LENGTH, f"VRRP message of {len(msg)} bytes")
    version, vtype = msg[0] >> 4, msg[0] & 0x0F
    if version not in (2, 3):
        return Drop(DropReason.VERSION, f"version {version}")
    if version == 2 and len(src_b) == 16:
        return Drop(DropReason.VERSION, "version 2 over IPv6 (RFC 3768 is IPv4 only)")
    if vtype != 1:
        return Drop(DropReason.TYPE, f"type {vtype}")
    count = msg[3]
    expected = 8 + len(src_b) * count + (8 if version == 2 else 0)
    if len(msg) != expected:
        return Drop(DropReason.LENGTH, f"{count} addresses need {expected} bytes, got {len(msg)}")
    covered = msg if version == 2 else _pseudo_header(src_b, dst_b, len(msg)) + msg
    if checksum(covered) != 0:
        return Drop(DropReason.CHECKSUM, "checksum does not verify")
    return msg, ttl, src_b, dst_b


def _advertisement(msg: bytes, ttl: int, src_b: bytes, dst_b: bytes) -> Advertisement:
    count, size = msg[3], len(src_b)
    kind: type[IPv4Address] | type[IPv6Address] = IPv4Address if size == 4 else IPv6Address
    addresses = tuple(kind(msg[8 + size * i: 8 + size * (i + 1)]) for i in range(count))
    src, dst = kind(src_b), kind(dst_b)
    if msg[0] >> 4 == 2:
        return Advertisement(2, msg[1], msg[2], float(msg[5]), addresses, msg[4], bytes(msg[-8:]),
                             src, dst, ttl)
    interval = (struct.unpack_from("!H", msg, 4)[0] & 0x0FFF) / 100
    return Advertisement(3, msg[1], msg[2], interval, addresses, AUTH_NONE, b"\0" * 8, src, dst, ttl)


def decode(datagram: bytes) -> Advertisement | Drop:
    """Parse an IPv4 or IPv6 datagram holding VRRP; no policy beyond what makes it a VRRP packet."""
    parsed = _parse(datagram)
    if isinstance(parsed, Drop):
        return parsed
    return _advertisement(*parsed)


@dataclass
class Validator:
    """RFC receive checks for one virtual router, with a counter per drop reason."""

    version: int
    vrid: int
    interval: float
    auth_pass: str = ""
    own: frozenset[Address] = frozenset()
    peers: frozenset[Address] = frozenset()
    drops: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    _memo: tuple[bytes, Advertisement] | None = field(default=None, repr=False, compare=False)
    _packed_cache: tuple[frozenset[Address], frozenset[Address], frozenset[bytes], frozenset[bytes]] | None \
        = field(default=None, repr=False, compare=False)

    def check(self, datagram: bytes) -> Advertisement | Drop:
        # A master repeats one advert; only the IP ID and header checksum (which the kernel
        # has verified) change, so the last accepted advert is remembered by the other bytes.
        # An IPv6 datagram (the socket's synthetic header) repeats byte for byte.
        ipv6 = datagram[:1] == b"\x60"
        key = datagram if ipv6 else datagram[:4] + datagram[8:10] + datagram[12:]
        memo = self._memo
        if memo is not None and memo[0] == key:
            self.accepted += 1
            return memo[1]
        result = self._check(datagram)
        if isinstance(result, Drop):
            self.drops[result.reason.value] += 1
        else:
            self.accepted += 1
            self._memo = (key, result) if ipv6 or datagram[0] == 0x45 else None
        return result

    def configure(self, interval: float, auth_pass: str) -> None:
        """Live changes on reload; forgets the remembered advert, which was judged by the old rules."""
        self.interval, self.auth_pass, self._memo = interval, auth_pass, None

    def _check(self, datagram: bytes) -> Advertisement | Drop:
        # the policy checks run on the raw bytes (same order, same messages as on an Advertisement):
        # the address objects and the Advertisement are only built for a packet that passes them all
        parsed = _parse(datagram)
        if isinstance(parsed, Drop):
            return parsed
        msg, ttl, src_b, _dst_b = parsed
        own_b, peers_b = self._packed()
        if src_b in own_b:
            return Drop(DropReason.OWN, f"our own advert from {_dotted(src_b)}")
        if self.peers and src_b not in peers_b:
            return Drop(DropReason.NOT_PEER, f"{_dotted(src_b)} is not a configured unicast peer")
        if not self.peers and ttl != TTL:
            what = "hop limit" if len(src_b) == 16 else "IP TTL"
            return Drop(DropReason.TTL, f"{what} {ttl} from {_dotted(src_b)}, must be 255")
        version = msg[0] >> 4
        if version != self.version:
            return Drop(DropReason.VERSION, f"version {version} from {_dotted(src_b)}, we run {self.version}")
        if msg[1] != self.vrid:
            return Drop(DropReason.VRID, f"VRID {msg[1]} from {_dotted(src_b)}, ours is {self.vrid}")
        if self.version == 2 and float(msg[5]) != self.interval:
            return Drop(DropReason.INTERVAL,
                        f"Adver Int {float(msg[5]):g} s from {_dotted(src_b)}, ours is {self.interval:g} s")
        if self.version == 2 and self.auth_pass and (
            msg[4] != AUTH_PASS or bytes(msg[-8:]) != auth_bytes(self.auth_pass)
        ):
            return Drop(DropReason.AUTH, f"authentication mismatch from {_dotted(src_b)} (type {msg[4]})")
        return _advertisement(msg, ttl, src_b, _dst_b)

    def _packed(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """`own` and `peers` as packed bytes, rebuilt only if either set was replaced."""
        cache = self._packed_cache
        if cache is None or cache[0] is not self.own or cache[1] is not self.peers:
            cache = self._packed_cache = (self.own, self.peers, frozenset(a.packed for a in self.own),
                                          frozenset(a.packed for a in self.peers))
        return cache[2], cache[3]
