"""The acquire/release chain with a real filesystem: one ext4 on a loop device, two agents, VRRP.

The loop device stands in for DRBD here (only the master mounts it; real DRBD runs in the
user-mode-linux lab). Each node mounts it on its own directory, since namespace nodes share
the host's mount table.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent import fs
from tests.lab.agent import AgentProc, render_agent_conf
from tests.lab.netns import NetnsLab, wait_until

pytestmark = pytest.mark.lab

VIP = "192.0.2.100/24"
FAST = {"version": 3, "advert_interval": 0.1}


def storage_agent(lab: NetnsLab, node: str, tmp_path: Path, device: str, priority: int,
                  **extra: object) -> AgentProc:
    mnt = tmp_path / f"mnt-{node}"
    mnt.mkdir(parents=True, exist_ok=True)
    agent = AgentProc(lab, node, tmp_path, priority=priority, **FAST)
    text = render_agent_conf({"control_socket": str(agent.control_socket)}, priority=priority, **FAST)
    text += f'[filesystem]\ndevice = "{device}"\nmountpoint = "{mnt}"\noptions = ["noatime"]\nkill_grace = 0.5\n'
    text += "[monitor]\ninterval = 0.5\nmax_restarts = 1\nhold_down = 2.0\nstep_timeout = 10\n"
    for key, value in extra.items():
        text += f"{key} = {value}\n"
    agent.write_config(text)
    lab.add_cleanup(agent.close)
    return agent


def mounted_on(tmp_path: Path, node: str) -> bool:
    return any(m.mountpoint == str(tmp_path / f"mnt-{node}") for m in fs.mounts())


def test_master_mounts_then_raises_the_vip_and_hands_over_in_order(lab: NetnsLab, tmp_path: Path,
                                                                   loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, loopdev, 150).start()
    b = storage_agent(lab, "b", tmp_path, loopdev, 100).start()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    assert mounted_on(tmp_path, "a") and not mounted_on(tmp_path, "b")
    assert VIP in lab.addresses("a")
    log = a.log()
    assert log.index("mount acquire done") < log.index("vip acquire done"), "the VIP comes last"
    (tmp_path / "mnt-a" / "written-on-a").write_text("hello")
    code, _ = a.terminate()
    assert code == 0
    assert wait_until(lambda: b.status()["instance"]["phase"] == "SERVING", 5), b.log()
    assert not mounted_on(tmp_path, "a") and mounted_on(tmp_path, "b")
    assert (tmp_path / "mnt-b" / "written-on-a").read_text() == "hello"
    log = a.log()
    assert log.index("vip release done") < log.index("mount release done"), "release is the reverse"


def test_a_failing_step_rolls_back_faults_and_lets_the_peer_serve(lab: NetnsLab, tmp_path: Path,
                                                                  loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, "/dev/no-such-disk", 150).start()
    b = storage_agent(lab, "b", tmp_path, loopdev, 100).start()
    assert wait_until(lambda: "mount acquire FAILED" in a.log(), 5), a.log()
    assert "device /dev/no-such-disk does not exist" in a.log()
    assert wait_until(lambda: b.status()["instance"]["phase"] == "SERVING", 5), b.log()
    assert VIP in lab.addresses("b") and VIP not in lab.addresses("a")
    # a retries after its hold-down (preempting b), fails again, and backs off; it never holds the VIP
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert VIP not in lab.addresses("a")
        time.sleep(0.1)
    assert a.status()["instance"]["counters"]["faults"] >= 2
    assert "hold-down" in a.log() or "silence for" in a.log()
    assert b.alive and a.alive


def test_monitor_remounts_a_vanished_filesystem(lab: NetnsLab, tmp_path: Path, loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, loopdev, 150).start()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    subprocess.run(["umount", str(tmp_path / "mnt-a")], check=True)  # someone unmounts it by hand
    assert wait_until(lambda: "mount check FAILED" in a.log(), 3), a.log()
    assert wait_until(lambda: mounted_on(tmp_path, "a") and a.status()["instance"]["phase"] == "SERVING", 5)
    assert VIP in lab.addresses("a")


def test_startup_adopts_the_chain_up_to_the_vip_a_kill_s_cleanup_removed(lab: NetnsLab, tmp_path: Path,
                                                                         loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, loopdev, 150).start()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    a.kill()
    assert mounted_on(tmp_path, "a") and VIP in lab.addresses("a")
    lab.run("a", ["ip", "addr", "del", VIP, "dev", "eth0"])  # what ExecStopPost's cleanup does without DRBD
    again = AgentProc(lab, "a", tmp_path / "again", priority=150, **FAST)
    again.write_config(a.config_path.read_text().replace(str(a.control_socket), str(again.control_socket)))
    lab.add_cleanup(again.close)
    again.start()
    assert wait_until(lambda: again.status()["instance"]["phase"] == "SERVING", 5), again.log()
    log = again.log()
    assert "adopted mount as the earlier run left them" in log and "acquiring vip on as master" in log, log
    assert "mount release done" not in log and "vip acquire done" in log, log
    assert VIP in lab.addresses("a")


def test_startup_releases_what_a_killed_agent_left_when_it_is_not_the_chain_s_first_steps(
        lab: NetnsLab, tmp_path: Path, loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, loopdev, 150).start()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    a.kill()
    assert mounted_on(tmp_path, "a") and VIP in lab.addresses("a")
    subprocess.run(["umount", str(tmp_path / "mnt-a")], check=True)  # a VIP without its mount: nothing to adopt
    again = AgentProc(lab, "a", tmp_path / "again", priority=150, **FAST)
    again.write_config(a.config_path.read_text().replace(str(a.control_socket), str(again.control_socket)))
    lab.add_cleanup(again.close)
    again.start()
    log = again.log()
    assert "VIP(s) 192.0.2.100/24 left on eth0 by an earlier run: removing" in log and "adopted" not in log, log
    assert log.index("vip release done") < log.index("INITIALIZE -> BACKUP")
    assert wait_until(lambda: again.status()["instance"]["phase"] == "SERVING", 5), again.log()


def test_a_restarted_agent_adopts_the_whole_chain_a_killed_one_left(lab: NetnsLab, tmp_path: Path,
                                                                    loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, loopdev, 150).start()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    a.kill()
    again = AgentProc(lab, "a", tmp_path / "again", priority=150, **FAST)
    again.write_config(a.config_path.read_text().replace(str(a.control_socket), str(again.control_socket)))
    lab.add_cleanup(again.close)
    again.start()
    assert wait_until(lambda: "serving on without a failover" in again.log(), 5), again.log()
    log = again.log()
    assert "adopted mount, vip as the earlier run left them" in log and "missing (killed?)" in log
    assert "release done" not in log and "acquire done" not in log, "nothing released or acquired again"
    assert "INITIALIZE -> MASTER" in log
    status = again.status()["instance"]
    assert status["phase"] == "SERVING" and status["held"] == ["mount", "vip"]
    assert mounted_on(tmp_path, "a") and VIP in lab.addresses("a")
    (tmp_path / "mnt-a" / "after-adoption").write_text("ok")  # the monitor keeps watching it
    time.sleep(1.2)
    assert "check FAILED" not in again.log()


def test_a_peer_that_took_over_meanwhile_is_heard_and_the_chain_released(lab: NetnsLab, tmp_path: Path,
                                                                         loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, loopdev, 150).start()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    a.kill()  # the mount and the VIP stay; the loop device may be mounted twice (one superblock)
    b = storage_agent(lab, "b", tmp_path, loopdev, 100).start()
    assert wait_until(lambda: b.status()["instance"]["phase"] == "SERVING", 5), b.log()
    assert mounted_on(tmp_path, "a") and VIP in lab.addresses("a")
    again = storage_agent(lab, "a", tmp_path, loopdev, 90).start()  # lower: no preemption afterwards
    assert wait_until(lambda: "VIP(s) 192.0.2.100/24 left on eth0 by an earlier run" in again.log(), 3), again.log()
    log = again.log()
    assert "advertises priority 100: another master" in log and "serving on without a failover" not in log
    assert wait_until(lambda: VIP not in lab.addresses("a") and not mounted_on(tmp_path, "a"), 5), again.log()
    assert again.wait_state("BACKUP", 3), again.log()
    assert b.status()["instance"]["phase"] == "SERVING"


def test_reload_changes_tunables_live_and_restarts_only_for_identity_keys(lab: NetnsLab, tmp_path: Path,
                                                                          loopdev: str) -> None:
    a = storage_agent(lab, "a", tmp_path, loopdev, 150).start()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    text = a.config_path.read_text()
    # [monitor] and a [filesystem] tunable: live, nothing released
    a.write_config(text.replace("interval = 0.5", "interval = 1.5").replace("kill_grace = 0.5", "kill_grace = 1.0"))
    a.signal(signal.SIGHUP)
    assert wait_until(lambda: a.status()["instance"]["monitor"]["interval"] == 1.5, 3), a.log()
    assert a.status()["instance"]["phase"] == "SERVING" and "ordered leave" not in a.log()
    assert "mount release done" not in a.log()
    # the mountpoint is what the running mount was made with: ordered leave, then restart
    moved = tmp_path / "mnt-a2"
    moved.mkdir()
    a.write_config(text.replace(f'mountpoint = "{tmp_path / "mnt-a"}"', f'mountpoint = "{moved}"'))
    a.signal(signal.SIGHUP)
    assert wait_until(lambda: "filesystem.mountpoint changed: the instance restarts after an ordered leave"
                      in a.log(), 3), a.log()
    assert wait_until(lambda: a.status()["instance"]["phase"] == "SERVING", 5), a.log()
    log = a.log()
    assert log.rindex("mount release done") < log.rindex("mount acquire done")
