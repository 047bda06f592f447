"""`failoverctl sniff` without a socket: keepalived's captured adverts decoded with scapy and judged by
our Validator; scapy stays out of the daemon's imports."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from agent import cli
from agent import config as configmod
from agent.sniff import describe, printable, structural, validator_for, vrid_of
from tests.test_packet import load_vectors, vector
from tests.test_packet6 import VECTORS as VECTORS6
from vrrp.packet import Advertisement, Drop, Validator, encode

REPO = Path(__file__).resolve().parents[1]
CONFIG = """\
[vrrp]
interface = "eth0"
vrid = {vrid}
version = {version}
advert_interval = {interval}
vips = ["192.0.2.100/24"]
{extra}
"""


def vrrp(vrid: int = 51, version: int = 2, interval: float = 1, extra: str = 'auth_pass = "s3cr3t"') -> \
        configmod.VrrpConfig:
    return configmod.parse(CONFIG.format(vrid=vrid, version=version, interval=interval, extra=extra)).vrrp


def line(data: bytes, validator: Validator | None, when: float | None = None, ifname: str = "",
         outgoing: bool = False) -> str:
    text = describe(data, validator, when, ifname, outgoing)
    assert text is not None
    return text


def with_ttl(datagram: bytes, ttl: int) -> bytes:
    return datagram[:8] + bytes([ttl]) + datagram[9:]


def test_scapy_stays_out_of_the_daemon() -> None:
    """scapy costs ~1 s and tens of MB: only `failoverctl sniff` may import it."""
    code = "import sys, agent.daemon, agent.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'scapy'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_keepalived_ipv6_advert_decoded_and_judged() -> None:
    data = load_vectors(VECTORS6, "tests.lab.capture_keepalived6")["v6_A_prio150"].ip
    cfg = configmod.parse('[vrrp]\ninterface = "eth0"\nvrid = 51\nversion = 3\nvips = ["2001:db8::100/64"]\n').vrrp
    assert line(data, validator_for(cfg, IPv6Address("fe80::ff:fe00:b"))) == (
        "fe80::ff:fe00:a > ff02::12 hop limit 255 VRRPv3 VRID 51 priority 150 interval 0.1 s "
        "addresses 2001:db8::100: accepted")
    assert vrid_of(data) == 51
    low = data[:7] + bytes([64]) + data[8:]
    assert line(low, None).endswith("hop limit 64 VRRPv3 VRID 51 priority 150 interval 0.1 s addresses 2001:db8::100: "
                                    "dropped: ttl (hop limit 64 from fe80::ff:fe00:a, must be 255)")


def test_keepalived_v2_advert_decoded_and_judged() -> None:
    data = vector("v2_A_prio150").ip
    own = IPv4Address("192.0.2.2")
    assert line(data, validator_for(vrrp(), own)) == (
        '192.0.2.1 > 224.0.0.18 TTL 255 VRRPv2 VRID 51 priority 150 interval 1 s auth PASS "s3cr3t" '
        "addresses 192.0.2.100: accepted")
    assert line(data, validator_for(vrrp(vrid=52), own)).endswith(
        ": dropped: vrid (VRID 51 from 192.0.2.1, ours is 52)")
    assert line(data, validator_for(vrrp(extra='auth_pass = "other"'), own)).endswith(
        ": dropped: auth (authentication mismatch from 192.0.2.1 (type 1))")
    assert line(data, validator_for(vrrp(interval=2), own)).endswith(
        ": dropped: interval (Adver Int 1 s from 192.0.2.1, ours is 2 s)")
    assert line(data, validator_for(vrrp(), IPv4Address("192.0.2.1"))).endswith(
        ": dropped: own (our own advert from 192.0.2.1)")
    assert "priority 0 (master leaving)" in line(vector("v2_A_prio0").ip, validator_for(vrrp(), own))


def test_keepalived_v3_advert() -> None:
    data = vector("v3_A_prio150").ip
    v3 = line(data, validator_for(vrrp(version=3, interval=0.1, extra=""), None), when=1.5, ifname="eth0")
    assert v3.endswith(".500 eth0 192.0.2.1 > 224.0.0.18 TTL 255 VRRPv3 VRID 51 priority 150 interval 0.1 s "
                       "addresses 192.0.2.100: accepted")
    assert "auth" not in v3
    assert line(data, validator_for(vrrp(), None)).endswith(
        ": dropped: version (version 3 from 192.0.2.1, we run 2)")


def test_structural_checks_without_a_config() -> None:
    data = vector("v2_B_prio100").ip
    assert isinstance(structural(data), Advertisement)
    assert line(data, None, outgoing=True).endswith(
        " (sent by this host): well-formed (no config: VRID, interval, auth not judged)")
    ttl = line(with_ttl(data, 254), None)
    assert "TTL 254" in ttl and ttl.endswith(": dropped: ttl (IP TTL 254 from 192.0.2.2, must be 255)")
    broken = data[:-1] + bytes([data[-1] ^ 0xFF])
    assert isinstance(structural(broken), Drop)
    assert line(broken, None).endswith(": dropped: checksum (checksum does not verify)")
    short = data[:24]
    short = short[:2] + len(short).to_bytes(2, "big") + short[4:]
    assert line(short, None).endswith(": dropped: length (VRRP message of 4 bytes)")


def test_unicast_advert_with_a_lower_ttl_is_not_a_ttl_drop() -> None:
    """A routed unicast advert arrives with TTL < 255; the agent accepts it from a configured peer."""
    adv = Advertisement(2, 51, 100, 1.0, (IPv4Address("192.0.2.100"),), 1, b"s3cr3t\0\0")
    data = with_ttl(encode(adv, IPv4Address("198.51.100.2"), IPv4Address("192.0.2.1"), 7), 60)
    assert isinstance(structural(data), Advertisement)
    cfg = vrrp(extra='auth_pass = "s3cr3t"\nunicast_peers = ["198.51.100.2"]')
    assert line(data, validator_for(cfg, IPv4Address("192.0.2.1"))).endswith(": accepted")


def test_not_vrrp_and_helpers() -> None:
    udp = bytes.fromhex("4500001c0001000040110000c0000201c000020200350035000800000000")
    assert describe(udp, None) is None
    assert vrid_of(vector("v2_A_prio150").ip) == 51
    assert printable(b"ab\x01\"\\\0\0") == 'ab\\x01\\x22\\x5c'


@pytest.mark.parametrize("argv", [["sniff", "--vrid", "300"], ["sniff", "--count", "-1"], ["sniff", "--vrid", "x"]])
def test_usage_errors_exit_64(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 64
