"""VRRPv3 over IPv6 (RFC 5798) between network namespaces: two agents (keepalived 2.2.7 in both
roles: tests/test_keepalived_interop.py, modes v3-ipv6*).

The lab's nodes keep their kernel link-local addresses (from their MACs: a fe80::ff:fe00:a, b
fe80::ff:fe00:b), the advert sources, and get 2001:db8::1, ::2 (client ::10) for the client's
pings; the VIP is 2001:db8::100/64. Takeover times are held to ci_bound (twice the protocol's time
plus 1 s) and printed (run with -s to see them).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.agent import AgentProc
from tests.lab.capture_keepalived6 import describe, ipv6_datagram
from tests.lab.netns import CLIENT, NetnsLab, ci_bound, stop_process, wait_until
from tests.lab.pcap import read_pcap
from tests.test_keepalived_interop import client_reaches, master_down

pytestmark = pytest.mark.lab

VIP = "2001:db8::100"
VIP_CIDR = "2001:db8::100/64"


def agent(lab: NetnsLab, node: str, tmp_path: Path, priority: int, interval: float) -> AgentProc:
    p = AgentProc(lab, node, tmp_path, priority=priority, version=3, advert_interval=interval, vips=[VIP_CIDR])
    lab.add_cleanup(p.close)
    return p


def holders(lab: NetnsLab) -> list[str]:
    return [n for n in ("a", "b") if VIP_CIDR in lab.addresses(n, ipv6=True)]


def vip_flags(lab: NetnsLab, node: str) -> set[str]:
    """The flags `ip -j` reports for the VIP on `node` (nodad, tentative...)."""
    out = lab.run(node, ["ip", "-j", "-6", "addr", "show", "dev", "eth0"]).stdout
    found = [a for link in json.loads(out) for a in link.get("addr_info", ()) if a.get("local") == VIP]
    assert found, out
    return {k for k, v in found[0].items() if v is True}


class NaCapture:
    """tcpdump on the client's port for Neighbor Advertisements (ICMPv6 type 136)."""

    def __init__(self, lab: NetnsLab, path: Path) -> None:
        self.path = path
        self.proc = lab.popen(CLIENT, ["tcpdump", "-i", "eth0", "-n", "-U", "-w", str(path), "icmp6 and ip6[40] = 136"],
                              stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()
        assert "listening on" in first, first

    def frames_from(self, mac: str) -> list[dict[str, Any]]:
        stop_process(self.proc, grace=5)
        return [describe(ipv6_datagram(f)) for f in read_pcap(self.path) if f.src_mac == mac]


def test_two_agents_elect_hold_announce_and_take_over(lab: NetnsLab, tmp_path: Path) -> None:
    lab.enable_ipv6()
    interval = 1.0
    pa = agent(lab, "a", tmp_path, 150, interval)
    pb = agent(lab, "b", tmp_path, 100, interval)
    pa.start()
    pb.start()
    assert pa.wait_state("MASTER", 8), pa.log()
    assert pb.state() == "BACKUP", pb.log()
    assert wait_until(lambda: holders(lab) == ["a"], 2), holders(lab)
    # nobody had asked for the VIP: the master's unsolicited NAs created no entry in the client
    assert lab.neigh_mac(CLIENT, VIP) is None
    assert client_reaches(lab, "a", VIP)
    time.sleep(3 * interval)
    assert [t.new for t in pa.transitions()] == ["BACKUP", "MASTER"]
    assert [t.new for t in pb.transitions()] == ["BACKUP"]
    assert "dropped VRRP packet" not in pa.log() + pb.log()
    status = pb.status()["instance"]
    assert (status["address"], status["master"]) == (lab.link_local("b"), lab.link_local("a")), status
    shown = pb.ctl("status").stdout  # failoverctl status prints the IPv6 addresses as they are
    assert lab.link_local("a") in shown and VIP_CIDR in shown, shown
    # the VIP went on without DAD (usable at once), and one deleted by hand is noticed and put back
    assert not vip_flags(lab, "a") & {"tentative", "dadfailed"}, vip_flags(lab, "a")
    lab.run("a", ["ip", "-6", "addr", "del", VIP_CIDR, "dev", "eth0"])
    assert wait_until(lambda: VIP_CIDR in lab.addresses("a", ipv6=True), 2.0), pa.log()
    assert "was removed from eth0 by someone else" in pa.log()
    # a's node crashes (agent killed, cable pulled): b takes over after its Master_Down_Interval
    capture = NaCapture(lab, tmp_path / "na.pcap")
    pa.kill()
    lab.set_link("a", False)
    t0 = time.monotonic()
    bound = ci_bound(master_down(100, interval, 3))
    assert pb.wait_state("MASTER", bound), pb.log()
    took = time.monotonic() - t0
    print(f"\nIPv6 agent->agent crash takeover at {interval:g} s adverts: {took:.3f} s "
          f"(Master_Down_Interval {master_down(100, interval, 3):.3f} s)")
    assert took < bound
    assert f"master {lab.link_local('a')} silent for" in pb.transitions()[-1].reason
    assert VIP_CIDR in lab.addresses("b", ipv6=True)
    # the client's entry (from its pings of a) follows the unsolicited NA with Override: no
    # Neighbor Solicitation needed, the next packet goes to b
    assert wait_until(lambda: lab.neigh_mac(CLIENT, VIP) == lab.mac("b"), 2), lab.neigh_mac(CLIENT, VIP)
    time.sleep(0.5)
    nas = capture.frames_from(lab.mac("b"))
    assert nas, "no Neighbor Advertisement from b on the wire"
    na = nas[0]
    assert (na["src"], na["dst"], na["hop_limit"], na["target"]) == (VIP, "ff02::1", 255, VIP)
    assert na["override"] and not na["solicited"] and na["checksum_ok"]
    assert na["options"] == "0201" + lab.mac("b").replace(":", "")  # Target Link-Layer Address option
    assert client_reaches(lab, "b", VIP)
