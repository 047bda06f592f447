"""import-keepalived with IPv6 instances: IPv6 VIPs make a VRRPv3 instance, as keepalived runs them."""

from __future__ import annotations

from agent import config as configmod
from agent import keepalived_import as ki

V6 = """\
global_defs {{
    vrrp_version 2
}}
vrrp_instance VI_6 {{
    interface eth0
    virtual_router_id 52
    priority 150
    advert_int 1
{version}    virtual_ipaddress {{
        2001:db8::100/64
    }}
    unicast_peer {{
        fe80::ff:fe00:b
        2001:db8::2
    }}
}}
"""


def test_ipv6_instance_converts_to_version_3() -> None:
    res = ki.convert(V6.format(version=""))
    v = configmod.parse(res.toml).vrrp
    assert v.ipv6 and v.version == 3 and [str(x) for x in v.vips] == ["2001:db8::100/64"]
    assert [str(p) for p in v.unicast_peers] == ["fe80::ff:fe00:b"]
    assert "IPv6 VIPs -> version = 3 (as keepalived runs an IPv6 instance)" in res.mapped
    assert any("unicast_peer 2001:db8::2: IPv6 adverts come from the peer's link-local" in u for u in res.unmapped)
    assert not any("version 2 with IPv6" in u for u in res.unmapped)


def test_instance_version_2_with_ipv6_is_named() -> None:
    res = ki.convert(V6.format(version="    version 2\n"))
    assert configmod.parse(res.toml).vrrp.version == 3
    assert any(u.startswith("version 2 with IPv6 VIPs: VRRPv2 (RFC 3768) is IPv4 only") for u in res.unmapped)
