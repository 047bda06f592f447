"""Storage failover end to end with the agent inside user-mode-linux nodes (tests/lab/uml_agents.py).

Nodes a (priority 150) and b (100) each run failover-agent in the foreground (no systemd, no
journald), over real DRBD 8.4 (r0, protocol C, no fencing) and kernel nfsd; the agent's chain
is DRBD promote -> mount /srv/nfs -> NFS state folder -> kernel nfsd -> VIP 192.0.2.100.  A
third node mounts 192.0.2.100:/srv/nfs over NFSv4.2 (hard) and writes numbered files with
fsync the whole time; every acknowledged file is read back and its sha256 checked.

The phases share one lab and run in file order:
(a) a becomes master and serves; the client writes through the VIP;
(a2) DRBD is followed, not polled: while idle no process is started on either node (the kernel's
    fork counter stays flat), a replication link dropped by `drbdadm disconnect` reaches both agents
    as a DRBD state change within seconds, and a killed `drbdsetup events2` is started again;
(b) planned switches: `failoverctl handover` a -> b, then SIGTERM of b's agent (b -> a), b's
    agent restarted and staying backup;
(c) power cut of a (SIGKILL of its UML process): b takes over; a reboots, `drbdadm up`, its
    agent starts, and it rejoins as Secondary and backup (preempt = false: no second outage).
Each phase asserts the kernel's view (DRBD role, mounts, nfsd threads, addresses), not only
the agent's.  Timings, including the longest time the client saw no acknowledged write, are
printed (run with -s).  Like the other lab tests these need root and never skip: a machine
that cannot build the UML lab fails here with the reason.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.lab.netns import LabError, wait_until
from tests.lab.uml import UmlNode, connected_uptodate, drbd_state, wait_drbd
from tests.lab.uml_agents import (
    Facts,
    StorageLab,
    UmlAgent,
    UmlNfsWriter,
    guest_clock,
)

pytestmark = pytest.mark.lab

ACQUIRE = ["drbd", "mount", "nfs_state", "nfs", "vip"]
RELEASE = list(reversed(ACQUIRE))
STEP = re.compile(r" INFO (\w+) (acquire|release) done in ")


@dataclass
class Scenario:
    lab: StorageLab
    writer: UmlNfsWriter | None = None
    timings: dict[str, float] = field(default_factory=dict)
    failed: str = ""  # the first phase that failed: later phases say so instead of failing obscurely

    def note(self, key: str, value: float) -> None:
        self.timings[key] = round(value, 3)
        print(f"  {key}: {value:.3f}")

    def require(self, what: str) -> None:
        if self.failed:
            pytest.fail(f"{what} needs the earlier phase that failed: {self.failed}")


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    t0 = time.monotonic()
    with StorageLab("umlstor") as lab:
        _ = lab.lab.image  # a first run builds the image here (minutes); not part of the timings
        s = Scenario(lab)
        t1 = time.monotonic()
        boots = lab.setup()
        s.note("boot_3_nodes", max(boots.values()))
        assert lab.drbd_timings is not None
        s.note("drbd_bootstrap", sum(vars(lab.drbd_timings).values()))
        s.note("lab_setup", time.monotonic() - t1)
        yield s
        if s.writer is not None and lab.master():
            with contextlib.suppress(AssertionError, LabError):
                s.writer.stop(timeout=20)  # without a server the hard mount blocks it: the lab's close kills it
    s.timings["module_total"] = round(time.monotonic() - t0, 3)
    print("\nUML storage failover timings (s):\n" + json.dumps(s.timings, indent=1))


def steps(agent: UmlAgent, since: int = 0) -> list[tuple[str, str]]:
    return STEP.findall(agent.log()[since:])


def marks(s: Scenario) -> dict[str, int]:
    return {name: len(agent.log()) if agent.node.running else 0 for name, agent in s.lab.agents.items()}


def check_roles(s: Scenario, master: str) -> dict[str, Facts]:
    """``master`` holds everything, every other storage node nothing (kernel's view)."""
    found = s.lab.facts()
    assert found[master].serving, f"{master} should serve: {s.lab.describe()}"
    for name, f in found.items():
        if name != master:
            assert f.idle, f"{name} should hold nothing while {master} serves: {s.lab.describe()}"
    return found


def verify_all(s: Scenario, what: str) -> None:
    assert s.writer is not None
    t0 = time.monotonic()
    report = s.writer.verify()
    s.note(f"verify_{what}", time.monotonic() - t0)
    assert report.passed, f"after {what}: {report.describe()}"
    print(f"  {what}: {report.describe()}")


def resumed(s: Scenario, since: float, what: str, timeout: float = 90.0) -> None:
    """Writes are acknowledged again once the new master serves; records the outage.

    ``since`` is the client's clock before the event.  Acks are awaited after *now* (the new
    master already serves): a write blocked across the switch completes only then, so the
    longest gap since ``since`` is the whole outage, not a part of it.
    """
    assert s.writer is not None
    served = guest_clock(s.lab.client)
    if not s.writer.wait_acked(10, timeout, after=served):
        pytest.fail(
            f"client writes did not resume within {timeout:g} s after {what}; {s.lab.describe()}; "
            f"writer errors {s.writer.errors()[-3:]}"
        )
    s.note(f"client_outage_{what}", s.writer.max_gap(since - 0.5))


def ensure_a_serves(s: Scenario) -> None:
    """Phase (a)'s end state, whether or not (a) ran in this session (pytest -k)."""
    if s.writer is not None:
        return
    lab = s.lab
    t0 = time.monotonic()
    lab.start_agents(first="a")
    s.note("a_agent_start_to_serving", time.monotonic() - t0)
    s.note("a_acquire_ms", lab.agents["a"].acquire_ms() or -1)
    s.note("client_mount", lab.mount_client())
    s.writer = UmlNfsWriter(lab.client).start()
    assert s.writer.wait_acked(20, 60), f"client cannot write through the VIP: {s.writer.errors()[-3:]}"


def test_a_serves_drbd_mount_nfs_vip_and_the_client_writes(scenario: Scenario) -> None:
    s = scenario
    try:
        ensure_a_serves(s)
        a, b = s.lab.agents["a"], s.lab.agents["b"]
        assert [step for step, op in steps(a) if op == "acquire"] == ACQUIRE, a.log()
        for line in a.log().splitlines():
            if " acquire done " in line:
                print("  a:", line.split(" ", 2)[-1][:200])
        check_roles(s, "a")
        # the control socket answers inside the node (failoverctl status)
        st = a.status()
        assert st["instance"]["state"] == "MASTER", st
        assert st["storage"]["phase"] == "SERVING" and st["storage"]["held"] == ACQUIRE, st
        human = a.ctl("status").stdout
        assert "state     MASTER" in human, human
        assert "DRBD      r0: Primary, disk UpToDate, Connected; peer Secondary, disk UpToDate" in human, human
        assert "  drbd      held" in human and "last acquire" in human, human
        assert wait_until(lambda: b.vrrp_state() == "BACKUP", 10), b.log()
        st_b = b.status()
        assert st_b["instance"]["state"] == "BACKUP" and st_b["storage"]["held"] == [], st_b
        state = drbd_state(a.node)
        assert state is not None and (state.role, state.peer_role) == ("Primary", "Secondary"), state
        verify_all(s, "initial_writes")
    except BaseException as e:
        s.failed = s.failed or f"(a) a serving: {e}"[:300]
        raise


def forks(node: UmlNode) -> int:
    """Processes the node's kernel has created since boot (/proc/stat, read without a fork)."""
    text = node.read_kernel_file("/proc/stat") or ""
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("processes ")))


def followers(node: UmlNode) -> list[int]:
    """PIDs of `drbdsetup events2 r0` (the agent's follower, not a one-shot `--now`) in the node."""
    out = node.sh(FOLLOWERS).stdout
    return [int(p) for p in out.split()]


FOLLOWERS = r"""
for p in /proc/[0-9]*; do
  c=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)
  case "$c" in *"events2 r0 "*) case "$c" in *--now*) ;; *) echo "${p#/proc/}" ;; esac ;; esac
done
"""
DRBD_LOG = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) INFO DRBD (r0: .*)$", re.M)


def drbd_lines(agent: UmlAgent, since: int = 0) -> list[tuple[float, str]]:
    """The DRBD state changes an agent logged (seconds of the day, summary), from its follower."""
    return [(int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000, text)
            for h, m, sec, ms, text in DRBD_LOG.findall(agent.log()[since:])]


def test_drbd_is_followed_not_polled(scenario: Scenario) -> None:
    s = scenario
    s.require("(a2) DRBD followed")
    ensure_a_serves(s)
    lab = s.lab
    a, b = lab.agents["a"], lab.agents["b"]
    try:
        assert wait_until(lambda: b.vrrp_state() == "BACKUP", 10), b.log()
        # idle: a serves (monitor every 1 s: DRBD, mount, state folder, nfsd), b is backup (witness pings)
        time.sleep(2)
        before = {name: forks(node) for name, node in lab.nodes.items()}
        time.sleep(10)
        spawned = {name: forks(node) - before[name] for name, node in lab.nodes.items()}
        s.note("idle_10s_processes_started_a", spawned["a"])
        s.note("idle_10s_processes_started_b", spawned["b"])
        # the monitor used to start `drbdsetup events2 --now` every second on the master; kernel
        # threads count here too (a kworker now and then), hence not strictly zero
        assert spawned["a"] <= 3 and spawned["b"] <= 3, f"processes started in 10 s while idle: {spawned}"
        assert len(followers(a.node)) == 1 and len(followers(b.node)) == 1
        assert drbd_lines(a) and "Primary/Secondary UpToDate/UpToDate Connected" in drbd_lines(a)[-1][1]

        # the replication link dropped (b disconnects): a state change on both, not a poll later
        m = marks(s)
        t0 = time.monotonic()
        when = b.node.sh("date +%s.%N; drbdadm disconnect r0").stdout.split()[0]
        t_cmd = float(when) % 86400
        assert a.wait_log(re.compile(r"INFO DRBD r0: Primary/Unknown .* (Connecting|NetworkFailure|Unconnected)"),
                          10, since=m["a"]), a.log()[m["a"] :]
        assert b.wait_log(re.compile(r"INFO DRBD r0: Secondary/Unknown .* StandAlone"), 10, since=m["b"]), b.log()
        s.note("disconnect_seen_by_both_agents_s", time.monotonic() - t0)
        first_a = drbd_lines(a, m["a"])[0][0]
        s.note("disconnect_to_a_event_s", first_a - t_cmd)  # guest clocks are the host's
        assert first_a - t_cmd < 5.0, drbd_lines(a, m["a"])
        assert a.vrrp_state() == "MASTER" and lab.facts()["a"].serving, "a lost its peer's replica, not its data"
        b.node.run(["drbdadm", "connect", "r0"])
        for node in lab.nodes.values():
            wait_drbd(node, connected_uptodate, 60, "Connected UpToDate again")
        assert a.wait_log(re.compile(r"INFO DRBD r0: Primary/Secondary UpToDate/UpToDate Connected"), 10,
                          since=m["a"]), a.log()[m["a"] :]

        # the follower's process killed: started again after its backoff, and the state still flows
        (old,) = followers(b.node)
        m = marks(s)
        b.node.run(["kill", "-9", str(old)])
        assert b.wait_log("drbdsetup events2 r0 stopped", 10, since=m["b"]), b.log()[m["b"] :]
        assert wait_until(lambda: len(new := followers(b.node)) == 1 and new[0] != old, 15, 0.5), b.log()
        check_roles(s, "a")
    except BaseException as e:
        s.failed = s.failed or f"(a2) DRBD followed: {e}"[:300]
        raise


def test_planned_handover_a_to_b_and_sigterm_back_to_a(scenario: Scenario) -> None:
    s = scenario
    s.require("(b) planned switches")
    ensure_a_serves(s)
    lab, writer = s.lab, s.writer
    assert writer is not None
    a, b = lab.agents["a"], lab.agents["b"]
    try:
        # a -> b: failoverctl handover (release in reverse order, then priority 0)
        m = marks(s)
        since = guest_clock(lab.client)
        t0 = time.monotonic()
        answer = a.ctl("handover", timeout=120).stdout
        assert "released" in answer, answer
        s.note("handover_a_command", time.monotonic() - t0)
        lab.wait_serving("b", 60, since=m["b"])
        s.note("handover_a_to_b_serving", time.monotonic() - t0)
        lab.wait_idle("a", 30)
        check_roles(s, "b")
        assert [step for step, op in steps(a, m["a"]) if op == "release"] == RELEASE, a.log()[m["a"] :]
        assert [step for step, op in steps(b, m["b"]) if op == "acquire"] == ACQUIRE, b.log()[m["b"] :]
        assert a.vrrp_state() == "BACKUP" and b.vrrp_state() == "MASTER"
        # the peer's promotion reached a as a DRBD state change (its follower), not a poll later
        promoted = [t for t, text in drbd_lines(a, m["a"]) if "Secondary/Primary" in text]
        b_done = [t for t, text in drbd_lines(b, m["b"]) if text.startswith("r0: Primary/")]
        assert promoted and b_done, (drbd_lines(a, m["a"]), drbd_lines(b, m["b"]))
        s.note("handover_peer_promotion_to_a_event_s", promoted[0] - b_done[0])
        assert promoted[0] - b_done[0] < 5.0
        resumed(s, since, "handover_a_to_b")
        verify_all(s, "handover_a_to_b")

        # b -> a: SIGTERM of b's agent (systemctl stop): ordered release, priority 0, exit
        m = marks(s)
        since = guest_clock(lab.client)
        s.note("sigterm_b_agent_exit", b.terminate())
        assert "stopped (SIGTERM received)" in b.log(), b.log()[m["b"] :]
        assert [step for step, op in steps(b, m["b"]) if op == "release"] == RELEASE, b.log()[m["b"] :]
        lab.wait_idle("b", 10)
        lab.wait_serving("a", 60, since=m["a"])
        check_roles(s, "a")
        resumed(s, since, "sigterm_b_to_a")
        verify_all(s, "sigterm_b_to_a")

        # b's agent comes back: it joins as backup and a keeps serving (preempt = false)
        m = marks(s)
        b.start()
        assert wait_until(lambda: b.vrrp_state() == "BACKUP", 15), b.log()
        time.sleep(8)  # two of b's Master_Down_Intervals: a rival master would have shown by now
        assert b.vrrp_state() == "BACKUP" and "became MASTER" not in b.log(), b.log()
        assert "->" not in a.log()[m["a"] :], f"a changed state when b's agent came back:\n{a.log()[m['a'] :]}"
        check_roles(s, "a")
    except BaseException as e:
        s.failed = s.failed or f"(b) planned switches: {e}"[:300]
        raise


def test_power_cut_of_the_master_then_it_rejoins_as_secondary(scenario: Scenario) -> None:
    s = scenario
    s.require("(c) power cut")
    ensure_a_serves(s)
    lab, writer = s.lab, s.writer
    assert writer is not None
    a, b = lab.agents["a"], lab.agents["b"]
    check_roles(s, "a")
    try:
        m = marks(s)
        acked_before = [ack.name for ack in writer.acks()]
        since = guest_clock(lab.client)
        t0 = time.monotonic()
        lab.crash("a")
        wait_drbd(b.node, lambda st: st.cs == "WFConnection", 20, "peer loss")
        s.note("crash_b_drbd_sees_peer_loss", time.monotonic() - t0)
        try:
            lab.wait_serving("b", 45, since=m["b"])
        except AssertionError:
            refusals = [line for line in b.log()[m["b"] :].splitlines() if "FAILED" in line]
            pytest.fail(
                "after the power cut of the master a, b did not take over within 45 s. b's failed steps:\n"
                + "\n".join(refusals[:3])
                + f"\nkernel: {lab.describe()}"
            )
        s.note("crash_to_b_serving", time.monotonic() - t0)
        s.note("crash_b_acquire_ms", b.acquire_ms() or -1)
        assert lab.facts()["b"].serving, lab.describe()
        resumed(s, since, "crash_a")
        verify_all(s, "crash_a")
        missing = set(acked_before) - {ack.name for ack in writer.acks()}
        assert not missing

        # a reboots: init brings DRBD up (Secondary, resyncs), then the agent starts
        m = marks(s)
        t1 = time.monotonic()
        for key, value in lab.reboot("a").items():
            s.note(f"a_reboot_{key}", value)
        if s.timings.get("a_reboot_drbd_rejoin", 0) > 20:
            print(a.node.sh("dmesg | grep -i drbd | tail -40").stdout)
        state = wait_drbd(a.node, connected_uptodate, 60, "UpToDate after the rejoin")
        assert (state.role, state.peer_role) == ("Secondary", "Primary"), state.raw
        assert wait_until(lambda: a.vrrp_state() == "BACKUP", 15), a.log()
        time.sleep(8)  # two of a's Master_Down_Intervals: no preemption (preempt = false), no flapping
        assert a.vrrp_state() == "BACKUP" and "became MASTER" not in a.log(), a.log()
        assert "->" not in b.log()[m["b"] :], f"b changed state when a came back:\n{b.log()[m['b'] :]}"
        check_roles(s, "b")
        s.note("a_rejoined_as_backup", time.monotonic() - t1)
        writer.stop()
        verify_all(s, "rejoin")
    except BaseException as e:
        s.failed = s.failed or f"(c) power cut: {e}"[:300]
        raise
