"""VRRPv3 over IPv6 (RFC 5798): `vrrp.packet` and the unsolicited Neighbor Advertisement of `vrrp.vip`
against keepalived 2.2.7 captures, a hand-built RFC 5798 message, scapy, and garbage.

The captures live in `tests/fixtures/keepalived-2.2.7-ipv6/` (`python -m tests.lab.capture_keepalived6`,
see the README there). A raw AF_INET6 socket hands us the VRRP message without the IPv6 header;
vrrp.socket puts a synthetic header (`ipv6_header`) in front, so the decoder's input is the
datagram as the wire carries it, and the captures can be fed to it as they are.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRPv3

from tests.lab.capture_keepalived import ones_complement_sum
from tests.lab.pcap import read_pcap
from tests.test_packet import Vector, _vector_names, load_vectors
from vrrp.packet import (
    GROUP6,
    PROTO_VRRP,
    TTL,
    Advertisement,
    Drop,
    DropReason,
    Templates,
    Validator,
    decode,
    encode,
    encode_vrrp,
    ipv6_header,
)
from vrrp.rawsock import run_program
from vrrp.router import Heard, Params, Router, State
from vrrp.socket import doorbell_program
from vrrp.vip import ALL_NODES, announcement, garp_frame, na_frame

VECTORS = Path(__file__).resolve().parent / "fixtures" / "keepalived-2.2.7-ipv6"
TOOL = "tests.lab.capture_keepalived6"
A = IPv6Address("fe80::ff:fe00:a")
B = IPv6Address("fe80::ff:fe00:b")
VIP = IPv6Address("2001:db8::100")
MAC_B = bytes.fromhex("02000000000b")
ADVERTS = [n for n in _vector_names(VECTORS) if n.startswith("v6_")]


def vector(name: str) -> Vector:
    return load_vectors(VECTORS, TOOL)[name]


def expected_advert(v: Vector) -> Advertisement:
    f = v.fields
    addresses = tuple(IPv6Address(a) for a in f["vips"])
    assert f["count_ip"] == len(addresses) and f["vrrp_version"] == 3
    return Advertisement(3, f["vrid"], f["priority"], f["max_adver_int_cs"] / 100, addresses,
                         src=IPv6Address(f["src"]), dst=IPv6Address(f["dst"]), ttl=f["hop_limit"])


# -- keepalived 2.2.7 captures ------------------------------------------------------------------
def test_every_capture_has_a_vector() -> None:
    vectors = load_vectors(VECTORS, TOOL)
    assert {p.stem for p in VECTORS.glob("*.pcap")} == set(vectors)
    assert len(ADVERTS) == 3 and "na_B" in vectors


@pytest.mark.parametrize("name", sorted(load_vectors(VECTORS, TOOL)) if VECTORS.is_dir() else ["<missing>"])
def test_capture_is_what_vectors_txt_lists(name: str) -> None:
    v = vector(name)
    (frame,) = read_pcap(VECTORS / f"{name}.pcap")
    assert (frame.src_mac, frame.dst_mac, frame.ethertype) == (v.src_mac, v.dst_mac, 0x86DD)
    assert frame.payload[:len(v.ip)] == v.ip
    assert v.fields["hop_limit"] == v.ip[7] == TTL  # RFC 5798 5.1.2.3 and RFC 4861 7.1.2 alike
    assert v.fields["checksum_ok"] is True


@pytest.mark.parametrize("name", ADVERTS)
def test_keepalived_advert_layout(name: str) -> None:
    """RFC 5798 5.1 / 5.2 read off the bytes: link-local source, ff02::12, next header 112, hop
    limit 255, 8 bytes of VRRP header and 16 per address, no authentication trailer."""
    v = vector(name)
    ip = v.ip
    assert ip[0] >> 4 == 6 and ip[6] == PROTO_VRRP and ip[7] == 255
    assert IPv6Address(ip[8:24]).is_link_local and IPv6Address(ip[24:40]) == GROUP6
    assert v.dst_mac == "33:33:00:00:00:12"  # RFC 2464: 33:33 and the group's last 32 bits
    msg = ip[40:]
    assert struct.unpack_from("!H", ip, 4)[0] == len(msg) == 8 + 16 * msg[3]
    assert msg[0] == 0x31 and msg[4] >> 4 == 0 and v.fields["trailing"] == ""


@pytest.mark.parametrize("name", ADVERTS)
def test_decode_keepalived_capture(name: str) -> None:
    v = vector(name)
    assert decode(v.ip) == expected_advert(v)


@pytest.mark.parametrize("name", ADVERTS)
def test_encode_reproduces_keepalived_bytes(name: str) -> None:
    """The VRRP message byte for byte; of the header everything but traffic class and flow label,
    which the kernel writes (we set the same traffic class 0xc0 with IPV6_TCLASS)."""
    v = vector(name)
    adv = expected_advert(v)
    assert encode_vrrp(adv, adv.src, adv.dst) == v.ip[40:]
    assert encode(adv, adv.src, adv.dst, 0)[4:] == v.ip[4:]
    assert v.fields["traffic_class"] == "0xc0"


@pytest.mark.parametrize("name", ADVERTS)
def test_keepalived_adverts_pass_our_validator(name: str) -> None:
    v = vector(name)
    val = Validator(3, 51, 1.0, own=frozenset({IPv6Address("fe80::ff:fe00:c")}))
    assert val.check(v.ip) == expected_advert(v)
    assert val.accepted == 1 and not val.drops


def test_our_neighbor_advertisement_is_keepalived_s() -> None:
    """keepalived's unsolicited NA (RFC 4861 4.4): from the VIP to ff02::1, hop limit 255, R=0 S=0
    O=1, target = the VIP, Target Link-Layer Address option = the interface MAC. Ours, whole frame."""
    v = vector("na_B")
    assert v.fields["override"] and not v.fields["solicited"] and not v.fields["router"]
    assert (v.fields["src"], v.fields["dst"], v.fields["target"]) == (str(VIP), str(ALL_NODES), str(VIP))
    (frame,) = read_pcap(VECTORS / "na_B.pcap")
    ours = na_frame(MAC_B, VIP)
    assert ours[:6].hex(":") == frame.dst_mac and ours[6:12] == MAC_B
    assert ours[14:] == v.ip


# -- the message by hand (RFC 5798 5.1, 5.2) ----------------------------------------------------
def test_hand_built_message_and_pseudo_header_checksum() -> None:
    adv = Advertisement(3, 7, 200, 0.35, (VIP, IPv6Address("2001:db8::101")))
    msg = encode_vrrp(adv, A, GROUP6)
    head = bytes([0x31, 7, 200, 2]) + struct.pack("!H", 35)  # version 3 type 1; rsvd 0, Max Adver Int 35 cs
    assert msg[:6] == head and msg[8:] == VIP.packed + IPv6Address("2001:db8::101").packed
    # RFC 8200 8.1: source, destination, upper-layer length (32 bits), 3 zero bytes, next header
    pseudo = A.packed + GROUP6.packed + struct.pack("!I", len(msg)) + b"\0\0\0" + bytes([112])
    assert ones_complement_sum(pseudo + msg) == 0
    # the IPv4-style pseudo-header (or none at all) would not verify
    assert ones_complement_sum(msg) != 0
    # the checksum depends on the source: a template is per source address
    assert encode_vrrp(adv, B, GROUP6)[6:8] != msg[6:8]


def test_ipv6_header_layout() -> None:
    header = ipv6_header(A.packed, GROUP6.packed, 255, 24)
    assert header.hex() == "60000000" + "0018" + "70" + "ff" + A.packed.hex() + GROUP6.packed.hex()


def test_version_2_has_no_ipv6() -> None:
    with pytest.raises(ValueError, match="IPv4 only"):
        encode_vrrp(Advertisement(2, 1, 100, 1.0, (VIP,)), A, GROUP6)
    with pytest.raises(ValueError, match="one family"):
        encode_vrrp(Advertisement(3, 1, 100, 1.0, (IPv4Address("192.0.2.100"),)), A, GROUP6)


# -- against scapy -------------------------------------------------------------------------------
ipv6 = st.integers(0, 2**128 - 1).map(IPv6Address)


@st.composite
def adverts6(draw: st.DrawFn) -> Advertisement:
    src = draw(st.integers(0, 2**64 - 1).map(lambda n: IPv6Address((0xFE80 << 112) | n)))
    dst = draw(st.one_of(st.just(GROUP6), ipv6))
    return Advertisement(3, draw(st.integers(1, 255)), draw(st.integers(0, 255)), draw(st.integers(1, 4095)) / 100,
                         tuple(draw(st.lists(ipv6, max_size=12))), src=src, dst=dst)


@settings(max_examples=150, deadline=None)
@given(adverts6())
def test_encode_matches_scapy_and_round_trips(adv: Advertisement) -> None:
    ours = encode(adv, adv.src, adv.dst, 0)
    ref = IPv6(src=str(adv.src), dst=str(adv.dst), hlim=255) / VRRPv3(
        vrid=adv.vrid, priority=adv.priority, ipcount=len(adv.addresses), adv=round(adv.interval * 100),
        addrlist=[str(a) for a in adv.addresses])
    assert ours == bytes(ref)
    assert decode(ours) == adv


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 255))
def test_random_ipv6_bytes_never_raise(payload: bytes, hop: int) -> None:
    datagram = ipv6_header(A.packed, GROUP6.packed, hop, len(payload)) + payload
    assert isinstance(decode(datagram), Advertisement | Drop)
    assert isinstance(Validator(3, 51, 1.0).check(datagram), Advertisement | Drop)
    assert isinstance(decode(b"\x60" + payload), Advertisement | Drop)


def test_neighbor_advertisement_matches_scapy() -> None:
    mac = "02:00:00:00:00:0a"
    ref = Ether(src=mac, dst="33:33:00:00:00:01") / IPv6(src=str(VIP), dst="ff02::1", hlim=255) / ICMPv6ND_NA(
        R=0, S=0, O=1, tgt=str(VIP)) / ICMPv6NDOptDstLLAddr(lladdr=mac)
    assert na_frame(bytes.fromhex(mac.replace(":", "")), VIP) == bytes(ref)


def test_announcement_by_family() -> None:
    assert announcement(MAC_B, VIP) == na_frame(MAC_B, VIP)
    assert announcement(MAC_B, IPv4Address("192.0.2.100")) == garp_frame(MAC_B, IPv4Address("192.0.2.100"))


# -- receive checks ---------------------------------------------------------------------------------
def _datagram(adv: Advertisement, hop: int = 255) -> bytes:
    msg = encode_vrrp(adv, adv.src, adv.dst)
    return ipv6_header(adv.src.packed, adv.dst.packed, hop, len(msg)) + msg


GOOD = Advertisement(3, 51, 100, 1.0, (VIP,), src=B, dst=GROUP6)


@pytest.mark.parametrize(("datagram", "reason", "words"), [
    (_datagram(GOOD, hop=64), DropReason.TTL, "hop limit 64 from fe80::ff:fe00:b"),
    (_datagram(GOOD)[:40 + 8], DropReason.MALFORMED_IP, "next header 112"),
    (_datagram(GOOD)[:39], DropReason.MALFORMED_IP, "shorter than an IPv6 header"),
    (_datagram(GOOD)[:6] + b"\x3a" + _datagram(GOOD)[7:], DropReason.MALFORMED_IP, "next header 112"),
    (_datagram(GOOD)[:46] + b"\0\0" + _datagram(GOOD)[48:], DropReason.CHECKSUM, "checksum"),
    (_datagram(GOOD)[:40] + b"\x21" + _datagram(GOOD)[41:], DropReason.VERSION, "version 2 over IPv6"),
    (_datagram(GOOD)[:4] + struct.pack("!H", 28) + _datagram(GOOD)[6:] + bytes(4), DropReason.LENGTH, "need 24"),
    (_datagram(Advertisement(3, 52, 100, 1.0, (VIP,), src=B, dst=GROUP6)), DropReason.VRID, "VRID 52"),
    (_datagram(Advertisement(3, 51, 100, 1.0, (VIP,), src=A, dst=GROUP6)), DropReason.OWN, "fe80::ff:fe00:a"),
])
def test_drops(datagram: bytes, reason: DropReason, words: str) -> None:
    val = Validator(3, 51, 1.0, own=frozenset({A}))
    result = val.check(datagram)
    assert isinstance(result, Drop) and result.reason == reason and words in result.detail, result
    assert val.drops[reason.value] == 1


def test_unicast_peers_are_link_local_sources() -> None:
    val = Validator(3, 51, 1.0, own=frozenset({A}), peers=frozenset({B}))
    assert val.check(_datagram(GOOD, hop=1)) == Advertisement(3, 51, 100, 1.0, (VIP,), src=B, dst=GROUP6, ttl=1)
    stranger = Advertisement(3, 51, 100, 1.0, (VIP,), src=IPv6Address("fe80::9"), dst=GROUP6)
    dropped = val.check(_datagram(stranger))
    assert isinstance(dropped, Drop) and dropped.reason == DropReason.NOT_PEER


def test_repeated_advert_is_remembered_whole() -> None:
    val = Validator(3, 51, 1.0)
    first = val.check(_datagram(GOOD))
    assert val.check(_datagram(GOOD)) is first and val.accepted == 2
    louder = val.check(_datagram(Advertisement(3, 51, 101, 1.0, (VIP,), src=B, dst=GROUP6)))
    assert isinstance(louder, Advertisement) and louder.priority == 101
    other = val.check(_datagram(GOOD, hop=254))  # the hop limit is part of what is remembered
    assert isinstance(other, Drop) and other.reason == DropReason.TTL


def test_templates_send_the_message_alone() -> None:
    t = Templates(Advertisement(3, 51, 100, 1.0, (VIP,)), A)
    sent = t.datagram(100, GROUP6)
    assert bytes(sent) == encode_vrrp(Advertisement(3, 51, 100, 1.0, (VIP,)), A, GROUP6)
    assert t.datagram(100, GROUP6) is sent and t.ip_id == 0  # no IP ID to restamp
    assert decode(ipv6_header(A.packed, GROUP6.packed, 255, len(sent)) + bytes(sent)) == \
        Advertisement(3, 51, 100, 1.0, (VIP,), src=A, dst=GROUP6)
    assert t.datagram(0, GROUP6)[2] == 0 and t.datagram(100, GROUP6, 0.5)[4:6] == b"\x00\x32"


@pytest.mark.parametrize(("priority", "wakes"), [(100, False), (0, True), (150, True), (149, False)])
def test_doorbell_over_the_message(priority: int, wakes: bool) -> None:
    """An AF_INET6 raw socket's filter sees the VRRP message at offset 0 (no IPv6 header)."""
    msg = encode_vrrp(Advertisement(3, 51, priority, 1.0, (VIP,)), B, GROUP6)
    assert run_program(doorbell_program(0x31, 51, 150, ip_header=False), msg) is wakes
    assert run_program(doorbell_program(0x31, 52, 150, ip_header=False), msg) is True  # not ours: drained


# -- the router with IPv6 primary addresses ---------------------------------------------------------
def test_equal_priority_tie_break_compares_link_local_addresses() -> None:
    r = Router(Params(vrid=51, priority=100, address=A, version=3))
    r.start(0.0)
    r.tick(10.0)
    assert r.state == State.MASTER
    assert r.receive(Heard(IPv6Address("fe80::1"), 100, 1.0), 10.1) != [] and r.state == State.MASTER
    r.receive(Heard(B, 100, 1.0), 10.2)  # fe80::ff:fe00:b > fe80::ff:fe00:a
    assert r.state == State.BACKUP and r.master == B

