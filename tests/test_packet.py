"""`vrrp.packet` against keepalived 2.2.7 captures, against scapy, and against garbage.

The captures live in `tests/fixtures/keepalived-2.2.7/`, made by our own lab from Debian's
keepalived (`python -m tests.lab.capture_keepalived`, see the README there). They pin the exact
bytes keepalived puts on the wire; scapy's VRRP layers are the independent reference for every
other field value.
"""

from __future__ import annotations

import ast
import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.vrrp import VRRP, VRRPv3

from tests.lab.pcap import ip_datagram, read_pcap
from vrrp.checksum import checksum
from vrrp.packet import (
    AUTH_NONE,
    AUTH_PASS,
    GROUP,
    PROTO_VRRP,
    TOS,
    TTL,
    Advertisement,
    Drop,
    DropReason,
    Validator,
    auth_bytes,
    decode,
    encode,
    encode_vrrp,
)
from vrrp.router import Heard, Params, Router, State

VECTORS = Path(__file__).resolve().parent / "fixtures" / "keepalived-2.2.7"

A = IPv4Address("192.0.2.1")
B = IPv4Address("192.0.2.2")
VIP = IPv4Address("192.0.2.100")
PASSWORD = "s3cr3t"


# -- vectors.txt -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vector:
    name: str
    src_mac: str
    dst_mac: str
    ip: bytes
    fields: dict[str, Any]


def vectors_dir(directory: Path = VECTORS, tool: str = "tests.lab.capture_keepalived") -> Path:
    if not (directory / "vectors.txt").is_file():
        pytest.fail(f"keepalived test vectors not found at {directory}: capture them with "
                    f"`python -m {tool} {directory}` (root)", pytrace=False)
    return directory


def load_vectors(directory: Path = VECTORS, tool: str = "tests.lab.capture_keepalived") -> dict[str, Vector]:
    lines = [ln for ln in (vectors_dir(directory, tool) / "vectors.txt").read_text().splitlines() if ln.strip()]
    out: dict[str, Vector] = {}
    for head, wire, fields in zip(lines[0::3], lines[1::3], lines[2::3], strict=True):
        assert head.startswith("== "), head
        name = head[3:].strip()
        src_mac, arrow, dst_mac, hexdata = wire.split()
        assert arrow == "->"
        parsed = ast.literal_eval(fields.strip())
        assert isinstance(parsed, dict)
        out[name] = Vector(name, src_mac, dst_mac, bytes.fromhex(hexdata), parsed)
    return out


def _vector_names(directory: Path = VECTORS) -> list[str]:
    """For parametrization at collection time; missing fixtures become one failing case."""
    path = directory / "vectors.txt"
    if not path.is_file():
        return ["<keepalived vectors missing>"]
    return [ln[3:].strip() for ln in path.read_text().splitlines() if ln.startswith("== ")]


VECTOR_NAMES = _vector_names()


def vector(name: str) -> Vector:
    vectors = load_vectors()
    assert name in vectors, f"{name} not in vectors.txt"
    return vectors[name]


def expected_advert(v: Vector) -> Advertisement:
    """The advertisement vectors.txt describes, field by field."""
    f = v.fields
    addresses = tuple(IPv4Address(a) for a in f["vips"])
    assert f["count_ip"] == len(addresses)
    src, dst, ttl = IPv4Address(f["src"]), IPv4Address(f["dst"]), f["ttl"]
    if f["vrrp_version"] == 2:
        auth = bytes.fromhex(f["auth_data"].split()[0])
        return Advertisement(2, f["vrid"], f["priority"], float(f["adver_int_s"]), addresses, f["auth_type"],
                             auth, src, dst, ttl)
    assert f["vrrp_version"] == 3
    return Advertisement(3, f["vrid"], f["priority"], f["max_adver_int_cs"] / 100, addresses,
                         src=src, dst=dst, ttl=ttl)


# -- keepalived 2.2.7 captures -----------------------------------------------------------------
def test_every_vrrp_capture_has_a_vector() -> None:
    vectors = load_vectors()
    vrrp_captures = set()
    for pcap in sorted(vectors_dir().glob("*.pcap")):
        frames = read_pcap(pcap)
        assert frames, f"{pcap.name} holds no frame"
        if any(f.ethertype == 0x0800 and f.payload[9] == PROTO_VRRP for f in frames):
            vrrp_captures.add(pcap.stem)
    assert vrrp_captures == set(vectors), "captures and vectors.txt disagree"
    assert len(vrrp_captures) >= 5


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_capture_is_what_vectors_txt_lists(name: str) -> None:
    v = vector(name)
    (frame,) = read_pcap(vectors_dir() / f"{name}.pcap")
    assert (frame.src_mac, frame.dst_mac) == (v.src_mac, v.dst_mac)
    assert frame.dst_mac == "01:00:5e:00:00:12"  # the 224.0.0.18 group MAC
    assert ip_datagram(frame) == v.ip
    ip = v.ip
    assert int(v.fields["tos"], 16) == ip[1] == TOS
    assert v.fields["ttl"] == ip[8] == TTL
    assert v.fields["ip_checksum_ok"] is True and checksum(ip[:20]) == 0
    assert v.fields["checksum_ok"] is True
    assert int(v.fields["checksum"], 16) == struct.unpack_from("!H", ip, 26)[0]


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_decode_keepalived_capture(name: str) -> None:
    v = vector(name)
    assert decode(v.ip) == expected_advert(v)


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_encode_reproduces_keepalived_bytes(name: str) -> None:
    v = vector(name)
    adv = expected_advert(v)
    ip_id = int(v.fields["id"], 16)
    assert encode(adv, adv.src, adv.dst, ip_id).hex() == v.ip.hex()
    assert encode_vrrp(adv, adv.src, adv.dst) == v.ip[20:]


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_keepalived_adverts_pass_our_validator(name: str) -> None:
    v = vector(name)
    version = v.fields["vrrp_version"]
    val = Validator(version, 51, 1.0, auth_pass=PASSWORD if version == 2 else "",
                    own=frozenset({IPv4Address("192.0.2.3")}))
    assert val.check(v.ip) == expected_advert(v)
    assert val.accepted == 1 and not val.drops


def test_keepalived_password_padding() -> None:
    assert auth_bytes(PASSWORD) == b"s3cr3t\0\0"
    assert auth_bytes("") == b"\0" * 8
    assert auth_bytes("0123456789") == b"01234567"  # cut to 8, as keepalived does


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (ones' complement 220d)
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(bytes.fromhex("0001f203f4f5f6")) == checksum(bytes.fromhex("0001f203f4f5f600"))
    assert checksum(b"") == 0xFFFF


# -- scapy as the reference --------------------------------------------------------------------
ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)


@st.composite
def adverts(draw: st.DrawFn) -> tuple[Advertisement, int]:
    """Any well-formed advertisement with its src/dst, and an IP ID."""
    version = draw(st.sampled_from([2, 3]))
    vrid = draw(st.integers(1, 255))
    priority = draw(st.integers(0, 255))
    addresses = tuple(draw(st.lists(ipv4, max_size=20)))
    src = draw(ipv4)
    dst = draw(st.one_of(st.just(GROUP), ipv4))
    if version == 2:
        auth_type = draw(st.sampled_from([AUTH_NONE, AUTH_PASS]))
        auth_data = b"\0" * 8 if auth_type == AUTH_NONE else draw(st.binary(min_size=8, max_size=8))
        adv = Advertisement(2, vrid, priority, float(draw(st.integers(1, 255))), addresses, auth_type,
                            auth_data, src, dst)
    else:
        adv = Advertisement(3, vrid, priority, draw(st.integers(1, 4095)) / 100, addresses, src=src, dst=dst)
    return adv, draw(st.integers(0, 0xFFFF))


def scapy_build(adv: Advertisement, ip_id: int) -> bytes:
    ip = IP(src=str(adv.src), dst=str(adv.dst), tos=TOS, ttl=TTL, id=ip_id)
    addrs = [str(a) for a in adv.addresses]
    if adv.version == 2:
        layer = VRRP(vrid=adv.vrid, priority=adv.priority, authtype=adv.auth_type, adv=int(adv.interval),
                     addrlist=addrs, auth1=int.from_bytes(adv.auth_data[:4], "big"),
                     auth2=int.from_bytes(adv.auth_data[4:], "big"))
        return bytes(ip / layer)
    layer3 = VRRPv3(vrid=adv.vrid, priority=adv.priority, adv=round(adv.interval * 100), addrlist=addrs)
    return bytes(ip / layer3)


def scapy_dissect(raw: bytes) -> Advertisement:
    pkt = IP(raw)
    assert pkt.version == 4 and pkt.ihl == 5 and pkt.len == len(raw)
    assert pkt.tos == TOS and pkt.ttl == TTL and pkt.proto == PROTO_VRRP
    assert pkt.flags == 0 and pkt.frag == 0
    if VRRPv3 in pkt:
        v3 = pkt[VRRPv3]
    elif VRRP in pkt:
        v2 = pkt[VRRP]
        assert v2.version == 2 and v2.type == 1 and v2.ipcount == len(v2.addrlist)
        auth = struct.pack("!II", v2.auth1, v2.auth2)
        return Advertisement(2, v2.vrid, v2.priority, float(v2.adv), tuple(map(IPv4Address, v2.addrlist)),
                             v2.authtype, auth, IPv4Address(pkt.src), IPv4Address(pkt.dst), pkt.ttl)
    else:
        # scapy quirk: an 8-byte VRRPv3 message (no address) is too short for its dispatch
        # hooks and stays Raw; dissect it explicitly on top of the IP layer.
        v3 = VRRPv3(bytes(pkt.payload), _underlayer=pkt)
    assert v3.version == 3 and v3.type == 1 and v3.res == 0 and v3.ipcount == len(v3.addrlist)
    return Advertisement(3, v3.vrid, v3.priority, v3.adv / 100, tuple(map(IPv4Address, v3.addrlist)),
                         src=IPv4Address(pkt.src), dst=IPv4Address(pkt.dst), ttl=pkt.ttl)


@settings(max_examples=400, deadline=None)
@given(adverts())
def test_encode_matches_scapy(case: tuple[Advertisement, int]) -> None:
    adv, ip_id = case
    ours = encode(adv, adv.src, adv.dst, ip_id)
    assert ours.hex() == scapy_build(adv, ip_id).hex()
    assert scapy_dissect(ours) == adv


@settings(max_examples=400, deadline=None)
@given(adverts())
def test_decode_round_trips(case: tuple[Advertisement, int]) -> None:
    adv, ip_id = case
    raw = encode(adv, adv.src, adv.dst, ip_id)
    assert len(raw) == 20 + 8 + 4 * len(adv.addresses) + (8 if adv.version == 2 else 0)
    assert decode(raw) == adv
    assert decode(scapy_build(adv, ip_id)) == adv
    assert checksum(raw[:20]) == 0


def test_v3_centisecond_intervals_survive_float_rounding() -> None:
    for cs in range(1, 4096):
        adv = Advertisement(3, 1, 100, cs / 100, ())
        raw = encode(adv, A, GROUP, 0)
        assert struct.unpack_from("!H", raw, 24)[0] == cs
        decoded = decode(raw)
        assert isinstance(decoded, Advertisement) and decoded.interval == cs / 100


def test_v3_reserved_bits_are_ignored_on_receipt() -> None:
    """RFC 5798 5.2.5: Rsvd MUST be zero on transmission and is ignored on reception."""
    adv = Advertisement(3, 51, 100, 1.0, (VIP,), src=B)
    raw = encode(adv, B, GROUP, 1)
    assert raw[24] >> 4 == 0  # sent as zero
    for rsvd in range(1, 16):
        patched = bytearray(raw)
        patched[24] |= rsvd << 4
        patched[26:28] = b"\0\0"
        pseudo = B.packed + GROUP.packed + struct.pack("!BBH", 0, PROTO_VRRP, len(patched) - 20)
        patched[26:28] = struct.pack("!H", checksum(pseudo + bytes(patched[20:])))
        assert decode(bytes(patched)) == adv


# -- the validator, one drop reason at a time ---------------------------------------------------
def v2adv(**kw: Any) -> Advertisement:
    return replace(Advertisement(2, 51, 100, 1.0, (VIP,), AUTH_PASS, auth_bytes(PASSWORD)), **kw)


def v3adv(**kw: Any) -> Advertisement:
    return replace(Advertisement(3, 51, 100, 1.0, (VIP,)), **kw)


def wire(adv: Advertisement, src: IPv4Address = B, dst: IPv4Address = GROUP) -> bytes:
    return encode(adv, src, dst, 1)


def with_ip(raw: bytes, offset: int, value: bytes) -> bytes:
    """Patch the IP header and fix its checksum."""
    out = bytearray(raw)
    out[offset:offset + len(value)] = value
    out[10:12] = b"\0\0"
    out[10:12] = struct.pack("!H", checksum(bytes(out[:20])))
    return bytes(out)


def with_vrrp(raw: bytes, offset: int, value: bytes) -> bytes:
    """Patch the VRRP message (offset from its start) and fix its checksum."""
    out = bytearray(raw)
    out[20 + offset:20 + offset + len(value)] = value
    out[26:28] = b"\0\0"
    msg = bytes(out[20:])
    if msg[0] >> 4 == 3:
        pseudo = bytes(out[12:20]) + struct.pack("!BBH", 0, PROTO_VRRP, len(msg))
        ck = checksum(pseudo + msg)
    else:
        ck = checksum(msg)
    out[26:28] = struct.pack("!H", ck)
    return bytes(out)


def multicast(version: int = 2, peers: frozenset[IPv4Address] = frozenset()) -> Validator:
    """Our instance: VRID 51, 1 s, the keepalived password for v2, our address A."""
    return Validator(version, 51, 1.0, auth_pass=PASSWORD if version == 2 else "", own=frozenset({A}),
                     peers=peers)


def resized(raw: bytes, total: int) -> bytes:
    return with_ip(raw, 2, struct.pack("!H", total))


DropCase = Callable[[], tuple[Validator, bytes]]
DROP_CASES: list[tuple[DropReason, str, DropCase]] = [
    (DropReason.MALFORMED_IP, "shorter than an IP header", lambda: (multicast(), wire(v2adv())[:19])),
    (DropReason.MALFORMED_IP, "IP version 6", lambda: (multicast(), with_ip(wire(v2adv()), 0, b"\x65"))),
    (DropReason.MALFORMED_IP, "IHL below 5", lambda: (multicast(), with_ip(wire(v2adv()), 0, b"\x44"))),
    (DropReason.MALFORMED_IP, "not protocol 112", lambda: (multicast(), with_ip(wire(v2adv()), 9, b"\x11"))),
    (DropReason.MALFORMED_IP, "total length beyond the data",
     lambda: (multicast(), wire(v2adv())[:-1])),
    (DropReason.MALFORMED_IP, "total length below the header", lambda: (multicast(), resized(wire(v2adv()), 19))),
    (DropReason.TTL, "TTL 254 in multicast mode", lambda: (multicast(), with_ip(wire(v2adv()), 8, b"\xfe"))),
    (DropReason.TTL, "TTL 1, v3", lambda: (multicast(3), with_ip(wire(v3adv()), 8, b"\x01"))),
    (DropReason.VERSION, "VRRP version 4", lambda: (multicast(), with_vrrp(wire(v2adv()), 0, b"\x41"))),
    (DropReason.VERSION, "VRRP version 1", lambda: (multicast(), with_vrrp(wire(v2adv()), 0, b"\x11"))),
    (DropReason.VERSION, "v3 advert to a v2 instance", lambda: (multicast(2), wire(v3adv()))),
    (DropReason.VERSION, "v2 advert to a v3 instance", lambda: (multicast(3), wire(v2adv()))),
    (DropReason.TYPE, "type 2", lambda: (multicast(), with_vrrp(wire(v2adv()), 0, b"\x22"))),
    (DropReason.TYPE, "type 0, v3", lambda: (multicast(3), with_vrrp(wire(v3adv()), 0, b"\x30"))),
    (DropReason.CHECKSUM, "v2 checksum off by one",
     lambda: (multicast(), with_ip(wire(v2adv()), 20 + 7, bytes([wire(v2adv())[27] ^ 1])))),
    (DropReason.CHECKSUM, "v2 payload changed", lambda: (multicast(), with_ip(wire(v2adv()), 20 + 2, b"\x65"))),
    (DropReason.CHECKSUM, "v3 pseudo-header src changed",
     lambda: (multicast(3), with_ip(wire(v3adv(), src=B), 12, IPv4Address("192.0.2.9").packed))),
    (DropReason.CHECKSUM, "v3 checksum over the message alone",
     lambda: (multicast(3), with_ip(wire(v3adv()), 26, struct.pack(
         "!H", checksum(wire(v3adv())[20:26] + b"\0\0" + wire(v3adv())[28:]))))),
    (DropReason.VRID, "VRID 52", lambda: (multicast(), wire(v2adv(vrid=52)))),
    (DropReason.VRID, "VRID 50, v3", lambda: (multicast(3), wire(v3adv(vrid=50)))),
    (DropReason.LENGTH, "count 2, one address", lambda: (multicast(), with_vrrp(wire(v2adv()), 3, b"\x02"))),
    (DropReason.LENGTH, "count 0, one address, v3",
     lambda: (multicast(3), with_vrrp(wire(v3adv()), 3, b"\x00"))),
    (DropReason.LENGTH, "message shorter than 8 bytes",
     lambda: (multicast(), resized(wire(v2adv())[:26], 26))),
    (DropReason.LENGTH, "v2 message without its auth data",
     lambda: (multicast(), resized(wire(v2adv())[:-8], 32))),
    (DropReason.LENGTH, "trailing bytes after the addresses, v3",
     lambda: (multicast(3), resized(wire(v3adv()) + b"\0\0\0\0", 36))),
    (DropReason.INTERVAL, "v2 Adver Int 2 s, ours 1 s", lambda: (multicast(), wire(v2adv(interval=2.0)))),
    (DropReason.AUTH, "wrong password", lambda: (multicast(), wire(v2adv(auth_data=auth_bytes("secret"))))),
    (DropReason.AUTH, "no authentication", lambda: (multicast(), wire(v2adv(auth_type=AUTH_NONE)))),
    (DropReason.AUTH, "right password, wrong type",
     lambda: (multicast(), wire(v2adv(auth_type=2)))),
    (DropReason.NOT_PEER, "unicast: not a configured peer",
     lambda: (multicast(peers=frozenset({IPv4Address("192.0.2.7")})), wire(v2adv(), dst=A))),
    (DropReason.OWN, "our own advert", lambda: (multicast(), wire(v2adv(), src=A))),
    (DropReason.OWN, "our own advert, v3", lambda: (multicast(3), wire(v3adv(), src=A))),
]


def test_every_drop_reason_has_a_case() -> None:
    assert {reason for reason, _, _ in DROP_CASES} == set(DropReason)


@pytest.mark.parametrize(("reason", "make"), [(r, m) for r, _, m in DROP_CASES],
                         ids=[f"{r.value}: {why}" for r, why, _ in DROP_CASES])
def test_drop_reason(reason: DropReason, make: DropCase) -> None:
    validator, datagram = make()
    result = validator.check(datagram)
    assert isinstance(result, Drop), result
    assert result.reason == reason, result
    assert result.detail
    assert validator.drops == Counter({reason.value: 1})
    assert validator.accepted == 0
    validator.check(datagram)
    assert validator.drops == Counter({reason.value: 2})


def test_matching_v2_auth_passes() -> None:
    val = multicast()
    result = val.check(wire(v2adv(priority=150)))
    assert result == v2adv(priority=150, src=B, dst=GROUP)
    assert val.accepted == 1 and not val.drops


def test_no_password_configured_accepts_any_auth() -> None:
    val = Validator(2, 51, 1.0)
    for adv in (v2adv(), v2adv(auth_type=AUTH_NONE, auth_data=b"\0" * 8), v2adv(auth_data=b"whatever")):
        assert isinstance(val.check(wire(adv)), Advertisement)
    assert val.accepted == 3


def test_v3_accepts_any_interval() -> None:
    val = multicast(3)
    result = val.check(wire(v3adv(interval=0.37)))
    assert isinstance(result, Advertisement) and result.interval == 0.37


def test_unicast_peer_accepted_without_ttl_check() -> None:
    val = multicast(peers=frozenset({B}))
    raw = with_ip(wire(v2adv(), dst=A), 8, b"\x3f")  # TTL 63: routed unicast
    result = val.check(raw)
    assert isinstance(result, Advertisement) and result.ttl == 63


# -- garbage -----------------------------------------------------------------------------------
def _assert_total(validator: Validator, calls: int) -> None:
    assert validator.accepted + sum(validator.drops.values()) == calls
    assert set(validator.drops) <= {r.value for r in DropReason}


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    for val in (multicast(2), multicast(3), Validator(2, 51, 1.0, peers=frozenset({B}))):
        result = val.check(data)
        assert isinstance(result, Advertisement | Drop)
        _assert_total(val, 1)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 400), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 64), st.integers(0, 255)),
)


def mutate(raw: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(raw)
    for op, a, b in ops:
        if op == "flip" and out:
            out[a % len(out)] ^= b
        elif op == "set" and out:
            out[a % len(out)] = b
        elif op == "truncate":
            del out[a % (len(out) + 1):]
        elif op == "extend":
            out += bytes([b]) * a
    return bytes(out)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adverts(), st.lists(mutation, min_size=1, max_size=6))
def test_mutated_packets_never_raise(case: tuple[Advertisement, int], ops: list[tuple[str, int, int]]) -> None:
    adv, ip_id = case
    raw = mutate(encode(adv, adv.src, adv.dst, ip_id), ops)
    val = Validator(adv.version, adv.vrid, adv.interval)
    result = val.check(raw)
    assert isinstance(result, Advertisement | Drop)
    _assert_total(val, 1)
    if isinstance(result, Advertisement):  # whatever passes is a self-consistent advert
        assert decode(encode(result, result.src, result.dst, ip_id)) == replace(result, ttl=TTL)


def flood_packet(rng: random.Random, vrid: int) -> bytes:
    """Random bytes, or an advert of another VRID (any priority, 0 and 255 included), maybe mangled."""
    kind = rng.random()
    if kind < 0.25:
        return rng.randbytes(rng.randrange(0, 120))
    other = rng.choice([v for v in range(1, 256) if v != vrid] if kind < 0.5 else [vrid + 1, vrid - 1])
    version = rng.choice([2, 3])
    addrs = tuple(IPv4Address(rng.getrandbits(32)) for _ in range(rng.randrange(0, 4)))
    priority = rng.choice([0, 255, rng.randrange(0, 256)])
    if version == 2:
        adv = Advertisement(2, other, priority, 1.0, addrs, AUTH_PASS, auth_bytes(PASSWORD))
    else:
        adv = Advertisement(3, other, priority, rng.randrange(1, 4096) / 100, addrs)
    src = IPv4Address(rng.choice([A, IPv4Address(rng.getrandbits(32))]))
    raw = encode(adv, src, GROUP, rng.getrandbits(16))
    if rng.random() < 0.5:
        ops = [(rng.choice(["flip", "set", "truncate", "extend"]), rng.randrange(0, 80), rng.randrange(1, 256))
               for _ in range(rng.randrange(1, 4))]
        raw = mutate(raw, ops)
    return raw


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 3]))
def test_flood_from_other_vrids_never_moves_a_backup(seed: int, version: int) -> None:
    """10,000 hostile packets over 100 s between the master's adverts: the backup stays put."""
    rng = random.Random(seed)
    val = Validator(version, 51, 1.0, auth_pass=PASSWORD if version == 2 else "", own=frozenset({B}))
    router = Router(Params(vrid=51, priority=100, address=B, version=version))
    router.start(0.0)
    master_advert = encode(v2adv(priority=150) if version == 2 else v3adv(priority=150), A, GROUP, 9)

    def feed(raw: bytes, now: float) -> Advertisement | Drop:
        while (d := router.deadline) is not None and d <= now:
            router.tick(d)
        result = val.check(raw)
        if isinstance(result, Advertisement):
            router.receive(Heard(result.src, result.priority, result.interval), now)
        return result

    assert isinstance(feed(master_advert, 0.0), Advertisement)
    for k in range(10_000):
        now = k / 100
        if k % 100 == 0 and k:
            assert isinstance(feed(master_advert, now), Advertisement)
        result = feed(flood_packet(rng, 51), now)
        assert isinstance(result, Drop), f"accepted {result} from the flood"
        assert router.state == State.BACKUP and router.master == A
    assert val.accepted == 100
    assert sum(val.drops.values()) == 10_000


def test_templates_restamp_a_fresh_ip_id_and_keep_the_advert() -> None:
    from vrrp.packet import Templates

    src, dst = IPv4Address("192.0.2.1"), IPv4Address("224.0.0.18")
    adv = Advertisement(version=3, vrid=51, priority=100, interval=0.1, addresses=(IPv4Address("192.0.2.100"),))
    t = Templates(adv, src)
    first = bytes(t.datagram(100, dst))
    second = bytes(t.datagram(0, dst, 0.5))
    assert first[4:6] == b"\x00\x01" and second[4:6] == b"\x00\x02" and first[10:12] == b"\x00\x00"
    back = decode(second[:10] + struct.pack("!H", checksum(second[:20])) + second[12:])
    assert isinstance(back, Advertisement) and back.priority == 0 and back.interval == 0.5
