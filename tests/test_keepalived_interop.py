"""Interop with keepalived 2.2.7 (Debian package) in both roles: v2, v2 with auth PASS, v3, and v3
over IPv6 (RFC 5798; VIP 2001:db8::100/64, adverts from the nodes' link-local addresses).

Takeover times are held to ci_bound (twice the protocol's time plus 1 s, for a loaded CI
machine) and printed (-s shows them); the tight figures next to keepalived's are bench/takeover.py's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.agent import AgentProc
from tests.lab.keepalived import Keepalived, render_keepalived_conf
from tests.lab.netns import CLIENT, NetnsLab, ci_bound, wait_until

pytestmark = pytest.mark.lab

VIP = "192.0.2.100"
VIP6 = "2001:db8::100"

MODES: dict[str, dict[str, Any]] = {
    "v2": {"version": 2, "advert_interval": 1.0},
    "v2-auth": {"version": 2, "advert_interval": 1.0, "auth_pass": "s3cr3t"},
    "v3": {"version": 3, "advert_interval": 0.2},
    "v3-ipv6": {"version": 3, "advert_interval": 1.0, "vips": [f"{VIP6}/64"]},
    "v3-ipv6-0.2s": {"version": 3, "advert_interval": 0.2, "vips": [f"{VIP6}/64"]},
}


def master_down(priority: int, interval: float, version: int) -> float:
    skew = (256 - priority) / 256 * (interval if version == 3 else 1)
    return 3 * interval + skew


def vip_of(mode: dict[str, Any]) -> str:
    return str(mode.get("vips", [VIP])[0]).split("/")[0]


def prepare(lab: NetnsLab, mode: dict[str, Any]) -> None:
    """An IPv6 mode: the 2001:db8:: addresses, and link-local addresses done with DAD."""
    if ":" in vip_of(mode):
        lab.enable_ipv6()


def keepalived(lab: NetnsLab, node: str, tmp_path: Path, priority: int, mode: dict[str, Any]) -> Keepalived:
    conf = render_keepalived_conf(name=f"ka_{node}", interface="eth0", vrid=51, priority=priority,
                                  advert_int=mode["advert_interval"], version=mode["version"],
                                  vips=mode.get("vips", [f"{VIP}/24"]), auth_pass=mode.get("auth_pass", ""))
    return Keepalived(lab, node, conf, workdir=tmp_path / f"ka-{node}")


def agent(lab: NetnsLab, node: str, tmp_path: Path, priority: int, mode: dict[str, Any]) -> AgentProc:
    p = AgentProc(lab, node, tmp_path, priority=priority, **mode)
    lab.add_cleanup(p.close)
    return p


def client_reaches(lab: NetnsLab, node: str, vip: str = VIP) -> bool:
    ping = ["ping", "-6" if ":" in vip else "-4", "-n", "-c", "2", "-i", "0.2", "-W", "1", vip]
    ok = lab.run(CLIENT, ping, check=False).returncode == 0
    return ok and lab.neigh_mac(CLIENT, vip) == lab.mac(node)


@pytest.mark.parametrize("mode", MODES)
def test_keepalived_master_agent_backup(lab: NetnsLab, tmp_path: Path, mode: str) -> None:
    m, vip = MODES[mode], vip_of(MODES[mode])
    prepare(lab, m)
    ka = keepalived(lab, "a", tmp_path, 150, m).start()
    ag = agent(lab, "b", tmp_path, 100, m)
    ag.start(["--verbose"])
    assert ka.wait_state("MASTER", 8), ka.log()
    time.sleep(4 * m["advert_interval"] + 0.5)
    assert ag.state() == "BACKUP", ag.log()
    assert "MASTER" not in [t.new for t in ag.transitions()], ag.log()
    assert "dropped VRRP packet" not in ag.log(), ag.log()
    assert client_reaches(lab, "a", vip)
    # keepalived's node crashes: our agent takes over after its Master_Down_Interval
    t0 = time.monotonic()
    lab.set_link("a", False)
    ka.kill()
    expected = master_down(100, m["advert_interval"], m["version"])
    assert ag.wait_state("MASTER", ci_bound(expected)), ag.log()
    took = time.monotonic() - t0
    print(f"\n{mode}: keepalived master crashed, agent MASTER after {took:.3f} s "
          f"(Master_Down_Interval {expected:.3f} s)")
    assert took < ci_bound(expected)
    # the announcement (GARP or unsolicited NA) moved the client's entry before it sent anything
    assert wait_until(lambda: lab.neigh_mac(CLIENT, vip) == lab.mac("b"), 2), lab.neigh_mac(CLIENT, vip)
    assert wait_until(lambda: client_reaches(lab, "b", vip), 3)


@pytest.mark.parametrize("mode", MODES)
def test_agent_master_keepalived_backup(lab: NetnsLab, tmp_path: Path, mode: str) -> None:
    m, vip = MODES[mode], vip_of(MODES[mode])
    prepare(lab, m)
    ag = agent(lab, "a", tmp_path, 150, m)
    ag.start()
    ka = keepalived(lab, "b", tmp_path, 100, m).start()
    assert ag.wait_state("MASTER", 8), ag.log()
    assert ka.wait_state("BACKUP", 3), ka.log()
    time.sleep(4 * m["advert_interval"] + 0.5)
    assert ka.state() == "BACKUP", ka.log()
    assert client_reaches(lab, "a", vip)
    # graceful stop: keepalived understands our priority 0 and takes over after Skew_Time
    t0 = time.monotonic()
    code, _ = ag.terminate()
    assert code == 0
    skew = (256 - 100) / 256 * (m["advert_interval"] if m["version"] == 3 else 1)
    assert ka.wait_state("MASTER", ci_bound(skew)), ka.log()
    took = time.monotonic() - t0
    print(f"\n{mode}: agent master stopped, keepalived MASTER after {took:.3f} s (Skew_Time {skew:.3f} s)")
    assert took < ci_bound(skew)
    # the bound alone cannot tell Skew_Time from a silent Master_Down_Interval at 0.2 s adverts
    assert "Backup received priority 0 advertisement" in ka.log(), ka.log()
    assert wait_until(lambda: client_reaches(lab, "b", vip), 3)


def test_auth_mismatch_is_dropped_and_counted(lab: NetnsLab, tmp_path: Path) -> None:
    ka = keepalived(lab, "a", tmp_path, 150, MODES["v2-auth"]).start()
    ag = agent(lab, "b", tmp_path, 100, {**MODES["v2-auth"], "auth_pass": "wrong"})
    ag.start(["--verbose"])
    assert ka.wait_state("MASTER", 8)
    assert wait_until(lambda: "dropped VRRP packet: auth" in ag.log(), 5), ag.log()
    # with every advert refused, the agent believes the master is gone (a misconfiguration
    # that the drop log and counters make visible)
    assert ag.wait_state("MASTER", 5), ag.log()
