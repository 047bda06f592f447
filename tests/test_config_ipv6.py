"""IPv6 instances in the config: `version = 3` with IPv6 VIPs selects VRRPv3 over IPv6 (RFC 5798);
an instance is one address family, and every way of mixing them is refused by name."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Interface

import pytest

from agent import config
from agent.config import ConfigError

V6 = """
[vrrp]
interface = "eth0"
vrid = 51
version = 3
advert_interval = 0.5
vips = ["2001:db8::100/64", "2001:db8::101"]
"""


def test_ipv6_vips_select_an_ipv6_instance() -> None:
    v = config.parse(V6 + 'unicast_peers = ["fe80::ff:fe00:b"]\n', "agent.toml").vrrp
    assert v.ipv6 and v.version == 3
    assert v.vips == (IPv6Interface("2001:db8::100/64"), IPv6Interface("2001:db8::101/128"))  # bare: /128
    assert v.unicast_peers == (IPv6Address("fe80::ff:fe00:b"),)
    assert not config.parse('[vrrp]\ninterface = "eth0"\nvrid = 1\nvips = ["192.0.2.5"]\n').vrrp.ipv6


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nvips = ["2001:db8::100/64"]\n', "vrrp.version",
     "VRRPv2 (RFC 3768) is IPv4 only; the IPv6 VIPs (2001:db8::100) need version = 3"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nversion = 3\nvips = ["192.0.2.100/24", "2001:db8::100/64"]\n',
     "vrrp.vips", "mixes IPv4 (192.0.2.100) and IPv6 (2001:db8::100): a VRRP instance is one address family"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nversion = 3\nvips = ["2001:db8::100/64", "192.0.2.100/24"]\n',
     "vrrp.vips", "mixes IPv6 (2001:db8::100) and IPv4 (192.0.2.100)"),
    (V6 + 'unicast_peers = ["192.0.2.2"]\n', "vrrp.unicast_peers", "192.0.2.2 is IPv4, the VIPs are IPv6"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nvips = ["192.0.2.100"]\nunicast_peers = ["fe80::1"]\n',
     "vrrp.unicast_peers", "fe80::1 is IPv6, the VIPs are IPv4"),
    (V6 + 'unicast_peers = ["2001:db8::2"]\n', "vrrp.unicast_peers", "is not link-local"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nversion = 3\nvips = ["ff02::12"]\n', "vrrp.vips", "cannot be a virtual"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nversion = 3\nvips = ["::1"]\n', "vrrp.vips", "cannot be a virtual"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nversion = 3\nvips = ["2001:db8::1/64", "2001:db8::1/128"]\n',
     "vrrp.vips", "twice"),
    (V6 + '[peer]\naddress = "192.0.2.2"\n', "peer", "an IPv6 instance cannot use it yet"),
])
def test_family_errors_name_the_key(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "agent.toml")
    assert info.value.key == key
    assert words in str(info.value)


def test_a_change_of_address_family_needs_a_new_instance() -> None:
    """v3 over IPv4 to v3 over IPv6 keeps interface, VRID and version, but not one socket."""
    four = config.parse('[vrrp]\ninterface = "eth0"\nvrid = 51\nversion = 3\nadvert_interval = 0.5\n'
                        'vips = ["192.0.2.100/24"]\n')
    six = config.parse(V6)
    assert config.identity_changes(four, six) == ["vrrp.vips (address family)"]
    assert config.identity_changes(six, config.parse(V6.replace("::101", "::102"))) == []
