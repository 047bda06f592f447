"""Storage failover driven by failover-agent: nfs-ganesha on a shared disk, a libnfs client writing.

Two nodes, each with its own mount namespace and an agent inside it (tests/lab/ganesha_agents.py);
the client writes acknowledged files through the VIP all along (every libnfs call checked).
After every failover each acknowledged file must be there with its content, read back
through the VIP from the new master, and the agents must have acquired and released in the
documented order. Outages are printed (run with -s), the bench measures them properly.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.lab.ganesha_agents import EXPORT, GaneshaAgents
from tests.lab.netns import CLIENT, NetnsLab, wait_until
from tests.lab.nfsclient import NfsWriter

pytestmark = pytest.mark.lab

VIP = "192.0.2.100"
ACQUIRE = ["mount acquire done", "nfs_state acquire done", "nfs acquire done", "vip acquire done"]
RELEASE = ["vip release done", "nfs release done", "nfs_state release done", "mount release done"]


def in_order(log: str, needles: list[str], start: int = 0) -> bool:
    """The needles appear in this order after `start`."""
    pos = start
    for needle in needles:
        pos = log.find(needle, pos)
        if pos < 0:
            return False
    return True


def writer_for(g: GaneshaAgents) -> NfsWriter:
    w = NfsWriter(g.lab, CLIENT, VIP, export=g.disk.path(EXPORT)).start()
    g.lab.add_cleanup(w.stop)
    assert w.wait_acked(20, timeout=20), f"no writes through the VIP: {w.errors[-5:]} {w.stderr_text()}"
    return w


def resumes(w: NfsWriter, t0: float, what: str) -> float:
    resumed = w.wait_first_ack_after(t0, timeout=30)
    assert resumed is not None, f"{what}: writes did not resume: {w.errors[-5:]}"
    assert w.wait_acked(10, timeout=20, after=t0 + resumed), f"{what}: writes stalled after resuming"
    return resumed


def all_acked_present(w: NfsWriter) -> None:
    w.stop()
    report = w.verify()
    assert report.passed, report.describe()
    assert len(w.acks) >= 30  # before and after the failover


def test_crash_of_the_master_keeps_every_acknowledged_write_and_the_node_rejoins(lab: NetnsLab) -> None:
    g = GaneshaAgents(lab)
    g.start()
    assert lab.has_address("a", VIP) and g.disk.mounted_in(g.ns["a"])
    w = writer_for(g)
    t0 = time.monotonic()
    g.crash("a")
    g.wait_serving("b", 20)
    outage_crash = resumes(w, t0, "crash")
    assert in_order(g.agents["b"].log(), ACQUIRE)
    assert lab.has_address("b", VIP) and lab.neigh_mac(CLIENT, VIP) == lab.mac("b")
    # a comes back: it joins, preempts (higher priority) and b hands over in order
    g.reboot("a")
    g.wait_serving("a", 20)
    t1 = time.monotonic()
    resumes(w, t1, "rejoin")
    log_b = g.agents["b"].log()
    assert in_order(log_b, RELEASE, log_b.rfind("higher priority 150"))
    assert not g.disk.mounted_in(g.ns["b"])
    all_acked_present(w)
    print(f"GANESHA-AGENT largest gap {w.max_gap():.3f} s over crash and rejoin (first ack {outage_crash:.3f} s "
          f"after the crash), acquire on b {g.acquire_ms('b'):.1f} ms, {len(w.acks)} acknowledged writes all present")


def test_graceful_stop_releases_in_order_and_the_peer_serves_at_once(lab: NetnsLab) -> None:
    g = GaneshaAgents(lab)
    g.start()
    w = writer_for(g)
    t0 = time.monotonic()
    took = g.stop("a")
    g.wait_serving("b", 10)
    resumes(w, t0, "graceful stop")
    log_a = g.agents["a"].log()
    assert in_order(log_a, ["SIGTERM received", *RELEASE, "stopped (SIGTERM received)"]), log_a[-3000:]
    assert not lab.has_address("a", VIP)
    assert took < 5, f"the ordered release took {took:.2f} s"
    all_acked_present(w)
    outage = w.max_gap()
    print(f"GANESHA-AGENT graceful outage {outage:.3f} s, agent exit {took:.3f} s, acquire {g.acquire_ms('b'):.1f} ms")
    assert outage < 5


def test_nfs_that_cannot_start_rolls_back_faults_and_the_peer_serves(lab: NetnsLab) -> None:
    g = GaneshaAgents(lab)
    a = g.agents["a"]
    a.write_config(a.config_path.read_text().replace('run_dir = "', 'ganesha_binary = "/nonexistent/ganesha.nfsd"\n'
                                                                   'run_dir = "'))
    a.start()
    assert wait_until(lambda: "nfs acquire FAILED" in a.log(), 10), a.log()
    assert "/nonexistent/ganesha.nfsd" in a.log()
    g.agents["b"].start()
    g.wait_serving("b", 20)
    w = writer_for(g)
    # a rolled back (unmounted) and keeps failing its retries without ever raising the VIP
    log_a = a.log()
    failed = log_a.find("nfs acquire FAILED")
    assert in_order(log_a, ["nfs_state release done", "mount release done"], failed), log_a[-3000:]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert not lab.has_address("a", VIP)
        assert not g.disk.mounted_in(g.ns["a"]) or "mount acquire done" in a.log()[failed:]
        time.sleep(0.1)
    assert a.alive and a.status()["instance"]["counters"]["faults"] >= 1
    all_acked_present(w)


def test_a_restarted_agent_adopts_the_ganesha_its_killed_predecessor_left_and_adds_the_vip(lab: NetnsLab) -> None:
    """A kill under systemd without DRBD: ExecStopPost removed the VIP, ganesha (KillMode=process)
    and the mount stayed. The restarted agent, hearing no other master, keeps them and adds the VIP."""
    g = GaneshaAgents(lab, priorities={"a": 150})
    g.start()
    a = g.agents["a"]
    first = re.findall(r"nfs-ganesha pid (\d+) serving", a.log())[-1]
    a.kill()  # the agent only: ganesha, the mount and the VIP stay
    assert g.disk.mounted_in(g.ns["a"]) and lab.has_address("a", VIP)
    lab.run("a", ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"])  # what ExecStopPost's cleanup does here
    a.start()
    assert wait_until(lambda: "acquiring vip on as master without a failover" in a.log(), 10), a.log()[-3000:]
    g.wait_serving("a", 20)
    log = a.log()
    assert "adopted mount, nfs_state, nfs as the earlier run left them" in log, log[-3000:]
    assert "release done" not in log and f"nfs-ganesha pid {first} stopped" not in log, log[-3000:]
    assert lab.has_address("a", VIP)
    writer_for(g)


def test_a_restarted_agent_stops_the_ganesha_its_killed_predecessor_left_when_it_cannot_adopt(
        lab: NetnsLab) -> None:
    g = GaneshaAgents(lab, priorities={"a": 150})
    g.start()
    a = g.agents["a"]
    first = re.findall(r"nfs-ganesha pid (\d+) serving", a.log())[-1]
    a.kill()  # the agent only: ganesha, the mount and the VIP stay
    lab.run("a", ["ip", "link", "set", "eth0", "down"])  # nothing is adopted on an interface that is down
    try:
        a.start()
        log = a.log()
        assert "not adopting what the earlier run left held: the interface is down" in log, log[-3000:]
        assert f"nfs-ganesha pid {first} stopped" in log, log[-3000:]
    finally:
        lab.run("a", ["ip", "link", "set", "eth0", "up"])
    g.wait_serving("a", 20)
    assert re.findall(r"nfs-ganesha pid (\d+) serving", a.log())[-1] != first
    writer_for(g)


def test_a_restart_of_the_master_s_agent_adopts_ganesha_and_the_backup_stays_backup(lab: NetnsLab) -> None:
    """SIGUSR2 (what a systemd restart job means, for a process outside systemd), then a new agent.

    VRRP at one-second adverts: the new agent must be up within the backup's Master_Down_Interval."""
    g = GaneshaAgents(lab, advert_interval=1.0)
    g.start()
    a, b = g.agents["a"], g.agents["b"]
    assert b.wait_state("BACKUP", 5), b.log()
    w = writer_for(g)
    first = re.findall(r"nfs-ganesha pid (\d+) serving", a.log())[-1]
    mark_b = len(b.transitions())
    t0 = time.monotonic()
    a.signal(signal.SIGUSR2)
    assert a.proc is not None and a.proc.wait(5) == 0
    a.start()
    assert wait_until(lambda: "serving on without a failover" in a.log(), 10), a.log()[-3000:]
    log = a.log()
    assert "kept mount, nfs_state, nfs, vip held for the restarted agent to adopt (SIGUSR2" in log, log[-3000:]
    adopted = next(line for line in log.splitlines() if "serving on without a failover" in line)
    print(f"\n{adopted}")
    assert f"nfs-ganesha pid {first} answers" in adopted, adopted
    assert "release done" not in log, "nothing was released"
    time.sleep(4.0)  # past b's Master_Down_Interval
    assert len(b.transitions()) == mark_b and b.state() == "BACKUP", b.log()[-2000:]
    gap = w.max_gap(start=t0, end=time.monotonic())
    print(f"\nrestart with adoption: longest client write gap {gap:.3f} s")
    assert gap < 3.0, gap  # the tight figure: python -m bench.nfs_outage --scenario restart
    all_acked_present(w)


def test_a_reload_that_adds_an_export_releases_nothing_and_the_writer_goes_on(lab: NetnsLab) -> None:
    """Routine work is no failover: a new export (and new grace settings) reach the running ganesha live."""
    g = GaneshaAgents(lab)
    g.start()
    w = writer_for(g)
    a = g.agents["a"]
    g.ns["a"].run(["mkdir", "-p", g.disk.path("more")])
    one = 'options = "rw,sync,no_root_squash,fsid=1" }]'
    text = a.config_path.read_text()
    assert one in text
    second = f'{{ path = "{g.disk.path("more")}", clients = "192.0.2.0/24", options = "rw,no_root_squash,fsid=2" }}'
    a.write_config(text.replace(one, one[:-1] + ", " + second + "]").replace("grace_time = 10", "grace_time = 20"))
    transitions, mark = len(a.transitions()), len(a.log())
    t0 = time.monotonic()
    a.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload: [nfs] applied" in a.log(), 10), a.log()[-3000:]
    assert w.wait_acked(10, timeout=20, after=time.monotonic() - t0)
    assert len(a.transitions()) == transitions and g.phase("a") == "SERVING"
    after = a.log()[mark:]
    assert "release done" not in after and "acquire done" not in after, after
    more = NfsWriter(lab, CLIENT, VIP, export=g.disk.path("more")).start()
    lab.add_cleanup(more.stop)
    assert more.wait_acked(3, timeout=20), f"the new export is not served: {more.errors[-5:]}"
    gap = w.max_gap(start=t0)
    assert gap < 1.0, f"the writer stalled {gap:.3f} s over a reload"  # its normal pacing is 0.1 s
    more.stop()
    all_acked_present(w)
    print(f"RELOAD with a new export on the master: 0 transitions, largest gap {gap:.3f} s")
