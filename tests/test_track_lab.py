"""Reachability tracking with real ICMP between network namespaces and two agents.

The client (192.0.2.10) is the witness: "another host on the service network". Cutting a
node's path to it without touching VRRP is a blackhole route on the witness for that node's
address (the witness's replies vanish); cutting everything while the NIC keeps carrier is
taking the node's port off the bridge (a dead switch beyond the NIC, which link monitoring
cannot see).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab.agent import AgentProc, render_agent_conf
from tests.lab.netns import CLIENT, CLIENT_IP, NetnsLab, wait_until

pytestmark = pytest.mark.lab

VIP = "192.0.2.100/24"
FAST = {"version": 3, "advert_interval": 0.1}
TRACK = {"interval": 0.2, "timeout": 0.15, "fall": 3, "rise": 2}


def tracked_agent(lab: NetnsLab, node: str, tmp_path: Path, priority: int, *, checks: str = "",
                  witnesses: tuple[str, ...] = (CLIENT_IP,), track: dict[str, float] | None = None) -> AgentProc:
    agent = AgentProc(lab, node, tmp_path, priority=priority, **FAST)
    text = render_agent_conf({"control_socket": str(agent.control_socket)}, priority=priority, **FAST)
    settings = {**TRACK, **(track or {})}
    text += "[track]\n" + (f"witnesses = {list(witnesses)!r}\n".replace("'", '"') if witnesses else "")
    text += "".join(f"{k} = {v}\n" for k, v in settings.items()) + checks
    agent.write_config(text)
    lab.add_cleanup(agent.close)
    return agent


def blackhole(lab: NetnsLab, node: str, on: bool) -> None:
    """The witness stops (or resumes) answering `node`; VRRP between the nodes is untouched."""
    lab.run(CLIENT, ["ip", "route", "add" if on else "del", "blackhole", f"{lab.ipv4(node)}/32"])


def holds(lab: NetnsLab, node: str) -> bool:
    return VIP in lab.addresses(node)


def phase(agent: AgentProc) -> str:
    return str(agent.status()["instance"]["state"])


def pair(lab: NetnsLab, tmp_path: Path, **track: float) -> tuple[AgentProc, AgentProc]:
    a = tracked_agent(lab, "a", tmp_path, 150, track=track).start()
    b = tracked_agent(lab, "b", tmp_path, 100, track=track).start()
    assert wait_until(lambda: holds(lab, "a") and phase(b) == "BACKUP", 10), a.log() + b.log()
    return a, b


def test_master_that_loses_its_witness_steps_down_while_vrrp_still_flows(lab: NetnsLab, tmp_path: Path) -> None:
    a, _b = pair(lab, tmp_path)
    t0 = time.monotonic()
    blackhole(lab, "a", True)
    assert wait_until(lambda: holds(lab, "b") and not holds(lab, "a"), 5), a.log()[-3000:]
    took = time.monotonic() - t0
    assert phase(a) == "FAULT"
    log = a.log()
    assert f"witness {CLIENT_IP} DOWN (0 ok / 3 failed in a row (rise 2, fall 3)" in log
    assert "node must not serve: isolated: 0 of 1 witness(es) reachable, 1 needed" in log
    assert a.status()["instance"]["track"]["isolated"] is True
    # held in FAULT: a never comes back while it cannot reach the witness, although it has the higher priority
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert not holds(lab, "a") and holds(lab, "b")
        time.sleep(0.05)
    blackhole(lab, "a", False)
    assert wait_until(lambda: holds(lab, "a") and not holds(lab, "b"), 5), a.log()[-3000:]  # preempt says so
    assert "node may serve again" in a.log()
    print(f"TRACK step-down after cutting the witness: {took:.3f} s (fall 3 x 0.2 s + timeout)")


def test_master_cut_off_behind_a_live_link_steps_down_and_the_peer_serves(lab: NetnsLab, tmp_path: Path) -> None:
    a, _b = pair(lab, tmp_path)
    lab.set_bridged("a", False)  # no VRRP, no witness; eth0 keeps its carrier
    assert lab.link_state("a").carrier
    assert wait_until(lambda: holds(lab, "b") and not holds(lab, "a"), 5), a.log()[-3000:]
    assert phase(a) == "FAULT" and "interface eth0 is down" not in a.log()
    lab.set_bridged("a", True)
    assert wait_until(lambda: holds(lab, "a") and not holds(lab, "b"), 5), a.log()[-3000:]


def test_isolated_backup_never_takes_over(lab: NetnsLab, tmp_path: Path) -> None:
    a, b = pair(lab, tmp_path)
    blackhole(lab, "b", True)
    assert wait_until(lambda: phase(b) == "FAULT", 5), b.log()[-3000:]
    lab.set_link("a", False)
    a.kill()
    deadline = time.monotonic() + 2  # well past Master_Down_Interval
    while time.monotonic() < deadline:
        assert not holds(lab, "b"), "an isolated backup took over"
        time.sleep(0.05)
    blackhole(lab, "b", False)
    assert wait_until(lambda: holds(lab, "b"), 5), b.log()[-3000:]


def test_a_flapping_witness_does_not_flap_the_failover(lab: NetnsLab, tmp_path: Path) -> None:
    a, _b = pair(lab, tmp_path, fall=4)
    before = len(a.transitions())
    end = time.monotonic() + 5
    while time.monotonic() < end:  # at most two probes in a row lost, four needed
        blackhole(lab, "a", True)
        time.sleep(0.3)
        blackhole(lab, "a", False)
        time.sleep(0.5)
        assert holds(lab, "a") and not holds(lab, "b")
    assert len(a.transitions()) == before, a.log()[-3000:]
    assert a.status()["instance"]["track"]["targets"][CLIENT_IP]["up"] is True


def test_weighted_check_lowers_the_priority_and_the_peer_preempts(lab: NetnsLab, tmp_path: Path) -> None:
    flag = tmp_path / "unhealthy"
    check = (f'[[track.check]]\nargv = ["/usr/bin/test", "!", "-e", "{flag}"]\ninterval = 0.2\ntimeout = 0.15\n'
             "fall = 1\nrise = 1\nweight = -60\n")
    a = tracked_agent(lab, "a", tmp_path, 150, checks=check, witnesses=()).start()
    b = tracked_agent(lab, "b", tmp_path, 100, witnesses=(), checks=check.replace("unhealthy", "fine")).start()
    assert wait_until(lambda: holds(lab, "a"), 10), a.log()
    flag.touch()
    assert wait_until(lambda: holds(lab, "b") and not holds(lab, "a"), 5), a.log()[-3000:]
    st = a.status()["instance"]
    assert st["priority"] == 90 and st["track"]["priority_delta"] == -60 and st["state"] == "BACKUP"
    assert "priority delta now -60" in a.log()
    flag.unlink()
    assert wait_until(lambda: holds(lab, "a") and not holds(lab, "b"), 5), a.log()[-3000:]
    assert a.status()["instance"]["priority"] == 150
    assert b.alive


def test_failing_weight_zero_check_faults_the_master(lab: NetnsLab, tmp_path: Path) -> None:
    flag = tmp_path / "broken"
    check = (f'[[track.check]]\nargv = ["/usr/bin/test", "!", "-e", "{flag}"]\ninterval = 0.2\ntimeout = 0.15\n'
             "fall = 2\nrise = 1\nweight = 0\n")
    a = tracked_agent(lab, "a", tmp_path, 150, checks=check, witnesses=()).start()
    tracked_agent(lab, "b", tmp_path, 100, witnesses=(), checks=check.replace("broken", "ok")).start()
    assert wait_until(lambda: holds(lab, "a"), 10), a.log()
    flag.touch()
    assert wait_until(lambda: holds(lab, "b") and phase(a) == "FAULT", 5), a.log()[-3000:]
    assert "failing" in a.status()["instance"]["track"]["fault"]
    flag.unlink()
    assert wait_until(lambda: holds(lab, "a"), 5), a.log()[-3000:]
