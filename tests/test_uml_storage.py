"""Storage failover end to end with the agent inside user-mode-linux nodes (tests/lab/uml_agents.py).

Nodes a (priority 150) and b (100) each run failover-agent in the foreground (no systemd, no
journald), over real DRBD 8.4 (r0, protocol C, no fencing) and kernel nfsd; the agent's chain
is DRBD promote -> mount /srv/nfs -> NFS state folder -> kernel nfsd -> VIP 192.0.2.100.  A
third node mounts 192.0.2.100:/srv/nfs over NFSv4.2 (hard) and writes numbered files with
fsync the whole time; every acknowledged file is read back and its sha256 checked.

The phases share one lab and run in file order:
(a) a becomes master and serves; the client writes through the VIP;
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
from tests.lab.uml import connected_uptodate, drbd_state, wait_drbd
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
