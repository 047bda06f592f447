"""Running the agent as admins do, with real packets in namespaces: reload, failoverctl, cleanup."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.lab.agent import AgentProc, render_agent_conf
from tests.lab.netns import NetnsLab, wait_until

pytestmark = pytest.mark.lab

VIP = "192.0.2.100/24"
FAST = {"version": 3, "advert_interval": 0.1}


def pair(lab: NetnsLab, tmp_path: Path, **extra: object) -> tuple[AgentProc, AgentProc]:
    a = AgentProc(lab, "a", tmp_path, priority=150, **FAST, **extra)
    b = AgentProc(lab, "b", tmp_path, priority=100, **FAST, **extra)
    lab.add_cleanup(a.close)
    lab.add_cleanup(b.close)
    a.start()
    b.start()
    assert a.wait_state("MASTER", 3), a.log()
    assert b.wait_state("BACKUP", 1), b.log()
    return a, b


def reload(agent: AgentProc, marker: str) -> None:
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: marker in agent.log(), 3), agent.log()


def test_reload_applies_priority_and_vips_without_transitions(lab: NetnsLab, tmp_path: Path) -> None:
    a, b = pair(lab, tmp_path)
    before_a, before_b = len(a.transitions()), len(b.transitions())
    a.write_config(priority=160, vips=[VIP, "192.0.2.101/24"])
    reload(a, "vrrp.priority: 150 -> 160")
    assert "vrrp.vips: [192.0.2.100/24] -> [192.0.2.100/24, 192.0.2.101/24]" in a.log()
    assert wait_until(lambda: "192.0.2.101/24" in lab.addresses("a"), 2)
    status = a.status()
    assert status["instance"]["priority"] == 160 and status["agent"]["reloads"] == 1
    time.sleep(1.0)
    assert len(a.transitions()) == before_a and len(b.transitions()) == before_b, (a.log(), b.log())
    # and back: the extra VIP goes at once, still no transition
    a.write_config(priority=150, vips=[VIP])
    reload(a, "vrrp.priority: 160 -> 150")
    assert wait_until(lambda: "192.0.2.101/24" not in lab.addresses("a"), 2)
    assert len(a.transitions()) == before_a


def test_reload_of_a_broken_file_keeps_the_running_config(lab: NetnsLab, tmp_path: Path) -> None:
    a, _ = pair(lab, tmp_path)
    good = a.config_path.read_text()
    a.write_config(good.replace("priority = 150", "priority = 999"))
    reload(a, "reload refused, keeping the running config")
    assert f"{a.config_path}: vrrp.priority: must be in 1..255, got 999" in a.log()
    a.write_config("[vrrp\nnot toml")
    a.signal(signal.SIGHUP)
    assert wait_until(lambda: a.log().count("reload refused") == 2, 3)
    assert a.alive and a.state() == "MASTER"
    status = a.status()
    assert status["instance"]["priority"] == 150 and status["agent"]["reload_failures"] == 2


def test_reload_of_a_restart_key_leaves_in_order_and_restarts(lab: NetnsLab, tmp_path: Path) -> None:
    a, b = pair(lab, tmp_path)
    a.write_config(vrid=52)
    reload(a, "the instance restarts after an ordered leave")
    # b (still VRID 51) takes the VIP when a leaves; a comes back as master of VRID 52 alone
    assert b.wait_state("MASTER", 2), b.log()
    assert wait_until(lambda: a.status()["instance"]["vrid"] == 52, 3)
    assert a.wait_state("MASTER", 3)


def test_failoverctl_handover_and_maintenance(lab: NetnsLab, tmp_path: Path) -> None:
    a, b = pair(lab, tmp_path)
    out = a.ctl("handover").stdout
    assert "released" in out
    assert b.wait_state("MASTER", 1), b.log()
    assert VIP not in lab.addresses("a")
    time.sleep(1.5)  # a is higher and preempts normally: after a handover it must not
    assert a.state() == "BACKUP" and b.state() == "MASTER"
    assert a.status()["instance"]["yielding"] is True
    # maintenance on a, then b goes away: a must not take over
    assert "maintenance on" in a.ctl("maintenance", "on").stdout
    b.terminate()
    time.sleep(1.5)
    assert a.state() == "BACKUP" and VIP not in lab.addresses("a")
    human = a.ctl("status").stdout
    assert "state     BACKUP, priority 150 (preempt) [maintenance" in human
    a.ctl("maintenance", "off")
    assert a.wait_state("MASTER", 1), a.log()
    assert wait_until(lambda: VIP in lab.addresses("a"), 1)


def test_status_reports_counters_and_drops(lab: NetnsLab, tmp_path: Path) -> None:
    a, b = pair(lab, tmp_path)
    s = b.status()["instance"]
    assert s["state"] == "BACKUP" and s["master"] == "192.0.2.1" and s["vips_held"] is False
    time.sleep(0.5)
    assert b.status()["instance"]["counters"]["adverts_received"] > 0
    sa = a.status()
    assert sa["instance"]["counters"]["adverts_sent"] > 0 and sa["steps"]["vip_acquire"] > 0
    human = a.ctl("status").stdout
    for words in ("state     MASTER", "master    192.0.2.1 (this node)", "VIPs      192.0.2.100/24 held here"):
        assert words in human, human


def test_cleanup_after_a_crash_removes_only_our_vips(lab: NetnsLab, tmp_path: Path) -> None:
    a, _ = pair(lab, tmp_path)
    lab.run("a", ["ip", "addr", "add", "192.0.2.77/24", "dev", "eth0"])
    out = lab.run("a", [*_ctl(), "cleanup", "--config", str(a.config_path)]).stdout
    assert "running" in out and VIP in lab.addresses("a"), "cleanup must not touch a live agent's VIPs"
    a.kill()
    assert VIP in lab.addresses("a")
    out = lab.run("a", [*_ctl(), "cleanup", "--config", str(a.config_path)]).stdout
    assert "removed 192.0.2.100/24" in out
    assert lab.addresses("a") == {"192.0.2.1/24", "192.0.2.77/24"}


def _ctl() -> list[str]:
    import sys

    from tests.lab.agent import REPO

    return ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "agent.cli"]


def test_a_second_agent_for_the_same_config_refuses_and_touches_nothing(lab: NetnsLab, tmp_path: Path) -> None:
    a, _ = pair(lab, tmp_path)
    twin = AgentProc(lab, "a", tmp_path / "twin", priority=150, **FAST)
    twin.control_socket = a.control_socket
    twin.write_config()
    lab.add_cleanup(twin.close)
    with pytest.raises(AssertionError):
        twin.start()
    assert twin.proc is not None and twin.proc.wait(5) == 1
    assert "already listening" in twin.log()
    assert VIP in lab.addresses("a") and a.state() == "MASTER"


def test_metrics_endpoint(lab: NetnsLab, tmp_path: Path) -> None:
    a = AgentProc(lab, "a", tmp_path, priority=150, **FAST)
    a.write_config(render_agent_conf({"control_socket": str(a.control_socket), "metrics": "127.0.0.1:9477"},
                                     priority=150, **FAST))
    lab.add_cleanup(a.close)
    a.start()
    assert a.wait_state("MASTER", 3)
    code = ("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9477/metrics', timeout=5)"
            ".read().decode())")
    import sys

    text = lab.run("a", [sys.executable, "-c", code]).stdout
    assert 'failover_agent_state{instance="vrrp-51",vrid="51",interface="eth0",state="MASTER"} 1' in text
    assert "failover_agent_adverts_sent_total" in text
