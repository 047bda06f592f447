"""Partitions, agent crashes and node crashes of the DRBD/NFS pair, agents inside UML nodes.

One lab (prefix ``umlpart``, tests/lab/uml_agents.py): nodes a (priority 150) and b (100) run
failover-agent with VRRPv2 adverts every 1 s, preempt off; ``[track]`` pings the client node
192.0.2.10 (interval 1 s, timeout 0.5 s, fall 3, rise 2); ``[drbd] unknown_peer = "witness"``
(witness_grace 5 s); a ``[peer]`` channel between the agents (shared secret, root-owned, 0600).
DRBD r0 uses fencing through the agents (``fencing resource-and-stonith`` in the disk section,
DRBD 8.4 syntax; ``fence-peer`` runs ``failoverctl fence-peer``), the after-sb policies all
``disconnect``, and the agents' ``demote_escalation`` ends in ``reboot``.

All along, the client writes numbered files through the VIP (NFSv4.2, hard mount, fsync; a
write counts once acknowledged), and a watcher thread reads both nodes' /proc/drbd every
100 ms through the UML command channel and records every moment both are Primary.

Scenarios, RUNS times each (5; UML_PARTITION_RUNS overrides), each from a steady state (both
UpToDate and connected, one node serving, the other idle) back to one:

1. the master's replication link is cut: it keeps serving; DRBD calls the fence-peer handler,
   the agents outdate the peer over the peer channel; after the heal the peer resyncs, no
   failover (the master alternates through ``failoverctl handover`` between runs);
2. the master's service link is cut: it is isolated (track), releases in order (VIP, NFS, state
   folder, unmount, DRBD Secondary) and stays FAULT; the peer promotes (DRBD still connected)
   and serves.  Outage target: Master_Down_Interval + fall x interval + 2 s, on the writer's
   outage and on the time until new TCP connections to the VIP's NFS port work again (a prober
   in the client): reported for every run that misses it, asserted with 4 s more (CI_SLACK,
   for a loaded CI machine; see there).  The writer's own connection is reset by the new
   master's tickle ACKs instead of waiting for its next TCP retransmission (exponential
   backoff: at about +6.5 s, then +13.2 s).  After the heal, no second failover (preempt off);
3. both links of the master are cut for 20 s: DRBD freezes the master's I/O, its fence-peer
   handler answers 6 once the tracker counts it isolated, and the agent takes the VIP off,
   records the evidence and reboots the node (agent.heal); it comes back Secondary with the
   same current UUID (no write after the cut, checked with ``drbdadm get-gi``), the peer
   promotes only after Master_Down_Interval plus the isolation time (witness rule), and after
   the heal DRBD resyncs the old master as sync target by itself: Connected and UpToDate
   within 60 s, no ``Split-Brain`` kernel line, no admin;
4. only the master's agent is killed (SIGKILL; node, DRBD, mount, nfsd stay), and what systemd
   does follows: ExecStopPost's ``failoverctl cleanup`` (with SERVICE_RESULT=signal: DRBD is
   Primary and connected, so the VIP stays and the node serves on), the restart after RestartSec:
   the peer sees the silent master's DRBD Primary and connected and waits for its agent instead
   of taking over, the restarted agent adopts the chain: no failover, no role change, the writer
   goes on;
5. the master node crashes (power cut), reboots, ``drbdadm up``, its agent restarts: it rejoins
   as Secondary and backup.

After every run each acknowledged file must be there with its content (new files read back
and checked; older ones by a listing; everything read back at the end).  The summary prints
per scenario: runs, watcher samples, dual-Primary samples (must be 0), acknowledged writes,
lost writes (must be 0), the writer's outage (longest time without an acknowledged write) and
how long new connections failed, median/max.  Run with -s to see it.  Like the other lab tests
this needs root and never skips.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from agent.heal import Gi
from tests.lab.agent import TRANSITION
from tests.lab.netns import LabError, wait_until
from tests.lab.uml import REPLICATION, SERVICE, DrbdResource, UmlNode, connected_uptodate, drbd_state, wait_drbd
from tests.lab.uml_agents import (
    FENCE_PEER_LOG,
    PRIORITIES,
    VIP,
    VRRP,
    RoleWatcher,
    StorageLab,
    UmlAgent,
    UmlNfsWriter,
    UmlTcpProbe,
    fencing_resource,
    guest_clock,
)

pytestmark = pytest.mark.lab

PREFIX = "umlpart"
RUNS = int(os.environ.get("UML_PARTITION_RUNS", "5"))
# CI's timings leave room for guests that stall under load (a 0.5 s stall must not count as a
# lost witness). UML_PARTITION_TIMING=defaults runs the agent's fast defaults instead ([track]
# 0.2 s / 0.1 s, fall 3; release_deadline 1 s): the benchmark figures of the fast takeover, on an
# otherwise idle machine. Both keep the lab's heartbeat dead_after (UML_HEARTBEAT: 1 s): with the
# default 0.3 s, a guest stalled by a resync made its peer take over from a live master.
FAST = os.environ.get("UML_PARTITION_TIMING") == "defaults"
TRACK = {"interval": 0.2, "timeout": 0.1, "fall": 3, "rise": 2} if FAST else \
    {"interval": 1.0, "timeout": 0.5, "fall": 3, "rise": 2}
WITNESS_GRACE = 5.0  # the agent's default
RESTART_SEC = 1.0  # the unit's RestartSec=
# the isolated master's bounded release (agent.node): VIP, NFS and state folder within this, or it
# reboots; kernel nfsd's stop under a loaded UML guest can take longer than the 1 s default
GUARD = {"release_deadline": 1.0 if FAST else 3.0}
# DRBD's keep-alive with CI timings. The README's ping-int 1 / ping-timeout 0.5 s / timeout 0.5 s
# are too tight for UML guests on a loaded host: a guest stalled ~0.5 s by a resync made DRBD
# drop a live link ("PingAck did not arrive in time") just before a cut, the master's fence-peer
# handler got the peer outdated but never heard the answer and fenced itself (both disks
# Outdated), and reconnects then failed the 0.5 s handshake timeout over and over ("initial
# packet S crossed"). With CI timings the survivor waits its 6.7 s bound anyway, so DRBD noticing
# a dead peer within ping-int 2 + ping-timeout 1 s costs nothing; the fast defaults keep the
# README's values (DRBD must notice a dead peer within their 1.8 s bound).
SLOW_DRBD = {"ping-int": "2", "ping-timeout": "10", "connect-int": "2", "timeout": "15"}
DRBD_NET = DrbdResource().net if FAST else tuple((k, SLOW_DRBD.get(k, v)) for k, v in DrbdResource().net)
CUT_SECONDS = 20.0  # scenario 3: how long both links of the master stay cut
EVIDENCE = "/var/lib/failover-agent/heal-r0.json"  # agent.healer.evidence_path for the lab's config
RELEASE = ["vip", "nfs", "nfs_state", "mount", "drbd"]
STEP = re.compile(r" INFO (\w+) (acquire|release) done in ")
SCENARIOS = {
    1: "replication link cut",
    2: "service link cut",
    3: "both links cut",
    4: "agent SIGKILL + restart",
    5: "node crash + reboot",
}


def mdi(name: str) -> float:
    """Master_Down_Interval of a node (VRRPv2: 3 adverts + skew)."""
    advert = float(VRRP["advert_interval"])
    return 3 * advert + (256 - PRIORITIES[name]) / 256 * advert


def isolation_time() -> float:
    """How long an isolated master needs to notice (track) and release (witness_grace)."""
    return TRACK["fall"] * TRACK["interval"] + TRACK["timeout"] + WITNESS_GRACE


def outage_target(taker: str) -> float:
    """Scenario 2: Master_Down_Interval (of the node taking over) + fall x interval + 2 s."""
    return mdi(taker) + TRACK["fall"] * TRACK["interval"] + 2.0


# The target is a quiet machine's figure (b serves 7.2-7.4 s after the cut, the writer resumes by
# ~8 s): a miss is reported in the summary, as benchmarks report, and fails nothing.  CI asserts
# target + CI_SLACK (a fresh-clone run on a loaded machine took 8.89 s against 8.61 s).  The bound
# stays below the client's TCP retransmission at about +13.2 s, so a writer that waits for it
# (no tickle ACK reset its connection) still fails the scenario.
CI_SLACK = 4.0


def outage_bound(taker: str) -> float:
    """What scenario 2 asserts, for both the writer and new connections (see CI_SLACK)."""
    return outage_target(taker) + CI_SLACK


@dataclass
class Run:
    scenario: int
    index: int
    master: str
    serving_after: str = ""
    outage: float | None = None  # longest time without an acknowledged write (the writer's view)
    fresh: float | None = None  # how long new TCP connections to the VIP failed (the prober's view)
    acked: int = 0
    lost: int = 0
    rounds: int = 0
    dual: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # checked after the verification, not before `not_before` (time.monotonic()): "nothing else
    # happens" checks that need a Master_Down_Interval to pass, overlapped with the read-back
    final: Callable[[], None] | None = None
    not_before: float = 0.0

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass
class Partition:
    lab: StorageLab
    watcher: RoleWatcher
    writer: UmlNfsWriter | None = None
    probe: UmlTcpProbe | None = None
    runs: list[Run] = field(default_factory=list)
    verified: int = 0  # acknowledged files read back so far (in ack order)
    lost: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # bounds exceeded: reported, fail the scenario at its end
    notes: list[str] = field(default_factory=list)  # for the summary
    timings: dict[str, float] = field(default_factory=dict)
    final_check: str = ""

    @property
    def w(self) -> UmlNfsWriter:
        assert self.writer is not None
        return self.writer

    def agent(self, name: str) -> UmlAgent:
        return self.lab.agents[name]

    def node(self, name: str) -> UmlNode:
        return self.lab.nodes[name]


def other(name: str) -> str:
    return next(n for n in PRIORITIES if n != name)


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def part() -> Iterator[Partition]:
    t0 = time.monotonic()
    # demote_escalation ends in reboot: a frozen Primary leaves through it (agent.heal); the lab
    # completes UML's sysrq reboot as a power cycle (see fenced)
    with StorageLab(PREFIX, resource=fencing_resource(net=DRBD_NET), track=TRACK, peer=True,
                    drbd={"demote_escalation": ["retry", "force", "reboot"]}, guard=GUARD) as lab:
        _ = lab.lab.image  # a first run builds the image here (minutes); not part of the timings
        t1 = time.monotonic()
        lab.setup()
        p = Partition(lab, RoleWatcher(lab.nodes).start())
        try:
            lab.start_agents(first="a")
            lab.mount_client()
            # small files: ~15 minutes of writing must fit the 128 MB DRBD disk
            p.writer = UmlNfsWriter(lab.client, size=4096, interval=0.1, max_seconds=3600).start()
            assert p.w.wait_acked(20, 60), f"client cannot write through the VIP: {p.w.errors()[-3:]}"
            p.probe = UmlTcpProbe(lab.client).start()
            p.timings["lab_setup"] = round(time.monotonic() - t1, 1)
            yield p
        finally:
            p.watcher.stop()
            if p.probe is not None:
                with contextlib.suppress(AssertionError, LabError):
                    p.probe.stop()
            if p.writer is not None and lab.master():
                with contextlib.suppress(AssertionError, LabError):
                    p.w.stop(timeout=20)
            p.timings["module_total"] = round(time.monotonic() - t0, 1)
            print("\n" + summary(p), flush=True)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def marks(p: Partition) -> dict[str, int]:
    return {name: len(agent.log()) if agent.node.running else 0 for name, agent in p.lab.agents.items()}


def transitions(agent: UmlAgent, since: int) -> list[str]:
    return [f"{m[2]} -> {m[3]}" for m in TRANSITION.finditer(agent.log()[since:])]


def step_line(agent: UmlAgent, step: str, op: str, since: int) -> str:
    found = re.findall(rf"^.* {step} {op} (?:done|FAILED) in .*$", agent.log()[since:], re.M)
    return found[-1] if found else ""


def released_in_order(agent: UmlAgent, since: int) -> list[str]:
    return [step for step, op in STEP.findall(agent.log()[since:]) if op == "release"]


def fence_log(node: UmlNode) -> list[str]:
    """The fence-peer handler's calls on a node (tests/lab/uml_agents.py writes them)."""
    text = node.run(["cat", FENCE_PEER_LOG], check=False).stdout
    return [line for line in text.splitlines() if line.strip()]


def kmsg_mark(p: Partition, text: str) -> None:
    for node in p.lab.nodes.values():
        if node.ready:
            node.write_sysfs("/dev/kmsg", f"lab-marker: {text}")


def drbd_kernel_log(node: UmlNode, marker: str, pattern: str) -> list[str]:
    """DRBD kernel messages since ``marker`` that match ``pattern``."""
    script = 'dmesg | sed -n "/lab-marker: $1\\$/,\\$p" | grep -E -e "$2" || true'
    out = node.sh(script, marker, pattern).stdout
    return [line.split("] ", 1)[-1].strip() for line in out.splitlines() if line.strip()]


def diagnose(p: Partition, marker: str, m: dict[str, int]) -> str:
    """What both nodes say about a failed run: DRBD now, its kernel messages, the handler, the agents."""
    parts = []
    for name, node in p.lab.nodes.items():
        if not node.ready:
            parts.append(f"--- {name}: down")
            continue
        st = drbd_state(node)
        parts.append(f"--- {name}: DRBD {st.summary if st else 'down'}")
        parts.append(f"kernel: {drbd_kernel_log(node, marker, 'drbd|lab-marker')}")
        parts.append(f"fence-peer calls: {fence_log(node)[-3:]}")
        parts.append(f"agent log since the run began:\n{p.agent(name).log()[m.get(name, 0) :][-4000:]}")
    parts.extend(node.console_tail(2500) for node in p.lab.nodes.values())
    return "\n".join(parts)


def describe(p: Partition) -> str:
    states = {name: agent.vrrp_state() for name, agent in p.lab.agents.items() if agent.node.running}
    return f"{p.lab.describe()}; VRRP {states}"


def steady(p: Partition, timeout: float = 90.0) -> str:
    """Until both nodes are connected and UpToDate, one serves (MASTER) and the other holds
    nothing (BACKUP); returns the serving node."""
    found: list[str] = []

    def check() -> bool:
        found.clear()
        facts = p.lab.facts()
        serving = [n for n, f in facts.items() if f.serving]
        if len(facts) != 2 or len(serving) != 1:
            return False
        master = serving[0]
        backup = other(master)
        if not facts[backup].idle or not all(f.cs == "Connected" and f.disk == "UpToDate" for f in facts.values()):
            return False
        if p.agent(master).vrrp_state() != "MASTER" or p.agent(backup).vrrp_state() != "BACKUP":
            return False
        found.append(master)
        return True

    if not wait_until(check, timeout, 0.5):
        consoles = "\n".join(node.console_tail(2500) for node in p.lab.nodes.values())
        pytest.fail(f"no steady state within {timeout:g} s: {describe(p)}\n{consoles}")
    return found[0]


def resumed(p: Partition, since: float, what: str, timeout: float = 90.0) -> float:
    """Writes are acknowledged again; the longest gap since ``since`` (client clock) is the outage.

    Acks are awaited after *now*: a write blocked across the switch completes only then, so the
    gap since ``since`` covers the whole outage.
    """
    served = guest_clock(p.lab.client)
    if not p.w.wait_acked(10, timeout, after=served):
        pytest.fail(f"client writes did not resume within {timeout:g} s after {what}; {describe(p)}; "
                    f"writer errors {p.w.errors()[-3:]}")  # fmt: skip
    return p.w.max_gap(since - 0.5)


def client_tcp(p: Partition) -> str:
    """The client's TCP connection(s) to the VIP's NFS port: state, retransmission timer, backoff."""
    out = p.lab.client.run(["ss", "-tnoi", "dst", f"{VIP}:2049"], check=False).stdout.split()
    keep = ("ESTAB", "SYN-SENT", "timer:", "backoff:", "rto:", "retrans:", "lastsnd:", "unacked:")
    return " ".join(w for w in out if w.startswith(keep)) or "none"


def acks_after(p: Partition, since: float, count: int = 4) -> str:
    """When the first writes after an event were acknowledged (seconds after it, client clock)."""
    acks = [a for a in p.w.acks() if a.ack > since][:count]
    times = ", ".join(f"+{a.ack - since:.2f} (started +{a.start - since:.2f})" for a in acks)
    return f"first acks after the event: {times}; writer errors {p.w.errors()[-2:]}"


def check_writes(p: Partition) -> tuple[int, list[str]]:
    """Read back what was acknowledged since the last check, and list the directory for the rest."""
    acks = p.w.acks()
    new = acks[p.verified :]
    report = p.w.verify([a.name for a in new]) if new else None
    present = p.w.listing()
    missing = [f"V MISSING {a.name} (read back before)" for a in acks[: p.verified] if a.name not in present]
    p.verified = len(acks)
    bad = (report.bad if report else []) + missing
    lost = (report.checked - report.ok if report else 0) + len(missing)
    return lost, bad


@contextlib.contextmanager
def measured(p: Partition, scenario: int, index: int) -> Iterator[Run]:
    """One run: from a steady state, the body, then the writes checked and the watcher's count."""
    master = steady(p)
    run = Run(scenario, index, master)
    kmsg_mark(p, f"scenario {scenario} run {index}")
    count0 = p.watcher.count()
    acked0 = len(p.w.acks())
    since = guest_clock(p.lab.client)
    t0 = time.monotonic()
    try:
        yield run
        assert p.probe is not None
        gap = p.probe.restored_after(since)
        run.fresh = gap[1] - gap[0] if gap is not None else 0.0
        lost, bad = check_writes(p)
        run.lost = lost
        p.lost += bad
        if run.final is not None:
            time.sleep(max(0.0, run.not_before - time.monotonic()))
            run.final()
    finally:
        run.seconds = time.monotonic() - t0
        count1 = p.watcher.count()
        run.rounds, run.dual = count1.rounds - count0.rounds, count1.dual - count0.dual
        with contextlib.suppress(AssertionError, LabError):
            run.acked = len(p.w.acks()) - acked0
        p.runs.append(run)
        outage = f"{run.outage:.2f} s" if run.outage is not None else "-"
        fresh = f"{run.fresh:.2f} s" if run.fresh is not None else "-"
        print(f"[{scenario}.{index + 1}] {SCENARIOS[scenario]}: master {run.master} -> {run.serving_after or '?'}; "
              f"outage {outage} (new connections {fresh}); acked {run.acked}, lost {run.lost}; watcher "
              f"{run.rounds} samples, {run.dual} dual Primary; {run.seconds:.1f} s", flush=True)  # fmt: skip
        for n in run.notes:
            print(f"      {n}", flush=True)
    assert run.dual == 0, f"two Primaries seen: {p.watcher.describe()}"
    assert run.lost == 0, f"acknowledged writes lost or damaged: {bad[:5]}"


def no_second_failover(p: Partition, master: str, m: dict[str, int], backup_events: list[str]) -> Callable[[], None]:
    """After a heal: ``master`` (the new one) kept serving, the old one stayed backup (preempt off)."""
    old = other(master)

    def check() -> None:
        assert transitions(p.agent(master), m[master]) == ["BACKUP -> MASTER"], (
            f"{master} changed state again after the heal:\n{p.agent(master).log()[m[master] :]}"
        )
        seen = transitions(p.agent(old), m[old])
        assert seen == backup_events, f"{old}: expected {backup_events}, saw {seen}:\n{p.agent(old).log()[m[old] :]}"
        assert "became MASTER" not in p.agent(old).log()[m[old] :]
        facts = p.lab.facts()
        assert facts[master].serving and facts[old].idle, describe(p)

    return check


def test_1_replication_link_cut_outdates_the_peer_and_resyncs(part: Partition) -> None:
    p = part
    for i in range(RUNS):
        if i:  # alternate the master: a planned handover (not part of the run's numbers)
            master = steady(p)
            m = marks(p)
            answer = p.agent(master).ctl("handover", timeout=120).stdout
            assert "released" in answer, answer
            p.lab.wait_serving(other(master), 60, since=m[other(master)])
        with measured(p, 1, i) as run:
            mst, peer = run.master, other(run.master)
            M, P = p.node(mst), p.node(peer)
            m = marks(p)
            fences = len(fence_log(M))
            since = guest_clock(p.lab.client)
            t0 = time.monotonic()
            M.cut(REPLICATION)
            try:
                try:
                    wait_drbd(P, lambda s: s.disk == "Outdated", 30, "the peer's disk Outdated")
                    st = wait_drbd(M, lambda s: s.peer_disk == "Outdated", 10, "the master sees its peer Outdated")
                except LabError as e:
                    pytest.fail(f"{e}\n{diagnose(p, f'scenario 1 run {i}', m)}")
                run.note(f"peer Outdated {time.monotonic() - t0:.2f} s after the cut; master {st.summary}")
                calls = fence_log(M)[fences:]
                run.note(f"fence-peer on {mst}: {calls}")
                assert any(" exit 4: " in c for c in calls), f"fence-peer handler on {mst}: {calls}"
                assert p.agent(peer).wait_log("outdated our DRBD disk at the request of the peer", 5, m[peer])
                # service continues on the master, through the cut
                t_cut = guest_clock(p.lab.client)
                assert p.w.wait_acked(20, 30, after=t_cut), f"writes stopped after the replication cut: {describe(p)}"
                facts = p.lab.facts()
                assert facts[mst].serving and facts[peer].idle, describe(p)
            finally:
                M.restore(REPLICATION)
            t1 = time.monotonic()
            heal = guest_clock(p.lab.client)
            try:
                for node in (M, P):
                    wait_drbd(node, connected_uptodate, 60, "UpToDate after the heal")
            except LabError as e:
                pytest.fail(f"{e}\n{diagnose(p, f'scenario 1 run {i}', m)}")
            resync = time.monotonic() - t1
            run.note(f"resync after the heal: {resync:.2f} s; writes during it: longest gap {p.w.max_gap(heal):.2f} s")
            if resync > 5:
                for name, node in ((mst, M), (peer, P)):
                    run.note(f"{name} DRBD: {drbd_kernel_log(node, f'scenario 1 run {i}', 'drbd')}")
            frozen = drbd_kernel_log(M, f"scenario 1 run {i}", r"susp\(|fence-peer helper")
            run.note(f"{mst}'s I/O while it fenced the peer: {frozen}")
            split = [x for n in (M, P) for x in drbd_kernel_log(n, f"scenario 1 run {i}", "Split-Brain|helper broken")]
            assert not split, split
            for name in (mst, peer):
                assert transitions(p.agent(name), m[name]) == [], (
                    f"{name} changed VRRP state:\n{diagnose(p, f'scenario 1 run {i}', m)}"
                )
            facts = p.lab.facts()
            assert facts[mst].serving and facts[peer].idle, describe(p)
            run.serving_after = mst
            run.outage = resumed(p, since, "replication cut")


def test_1b_fence_peer_says_outdated_only_when_the_peer_is(part: Partition) -> None:
    """The race of scenario 1 made certain.  When the master loses the replication link, its DRBD
    usually notices first and runs the fence-peer handler while the peer's DRBD still shows
    Connected for a moment, and 8.4's `drbdadm outdate` on a Connected disk exits 0 and changes
    nothing.  Here the handler's command runs on the master with the link intact, so the request
    meets a connected peer every time: exit 4 must mean the peer's kernel took its disk to
    Outdated (it then reconnects and resyncs back to UpToDate, which is DRBD's business)."""
    p = part
    mst = steady(p)
    peer = other(mst)
    m = marks(p)
    marker = f"scenario 1b {time.monotonic():.3f}"
    kmsg_mark(p, marker)
    answer = p.agent(mst).ctl("fence-peer", check=False)
    went = drbd_kernel_log(p.node(peer), marker, r"disk\( UpToDate -> Outdated \)")
    said = [line for line in p.agent(peer).log()[m[peer] :].splitlines() if "outdate" in line]
    print(f"  1b: failoverctl fence-peer on {mst}: exit {answer.returncode} {answer.stdout.strip()}"
          f"{answer.stderr.strip()}; {peer}'s kernel: {went}; {peer}'s agent: {said}")  # fmt: skip
    assert answer.returncode == 4, f"fence-peer on {mst}: {answer.stdout}{answer.stderr}; {peer} said {said}"
    assert went, f"fence-peer on {mst} exited 4 but {peer}'s DRBD never went Outdated; {peer}'s agent said: {said}"
    assert any("disconnected, outdated (Outdated), reconnected" in line for line in said), said
    steady(p)  # the peer reconnects and resyncs: the pair is back to normal before the next test


def test_2_service_link_cut_isolates_the_master_and_the_peer_takes_over(part: Partition) -> None:
    p = part
    start = len(p.problems)
    misses: list[str] = []
    for i in range(RUNS):
        with measured(p, 2, i) as run:
            mst, peer = run.master, other(run.master)
            M = p.node(mst)
            m = marks(p)
            since = guest_clock(p.lab.client)
            t0 = time.monotonic()
            M.cut(SERVICE)
            try:
                p.lab.wait_serving(peer, 45, since=m[peer])
                run.note(f"{peer} serves {time.monotonic() - t0:.2f} s after the cut")
                p.lab.wait_idle(mst, 15)
                assert p.agent(mst).vrrp_state() == "FAULT", p.agent(mst).log()[m[mst] :]
                assert "isolated" in p.agent(mst).log()[m[mst] :]
                assert released_in_order(p.agent(mst), m[mst]) == RELEASE, p.agent(mst).log()[m[mst] :]
                acquire = step_line(p.agent(peer), "drbd", "acquire", m[peer])
                assert "connected" in acquire, acquire
                run.note(f"{peer}: {acquire.split(' INFO ', 1)[-1]}")
                tcp = client_tcp(p)  # the writer's connection when the peer serves: in TCP backoff?
                tickled = [line for line in p.agent(peer).log()[m[peer] :].splitlines() if "tickled" in line]
                run.note(f"{peer}: {tickled[0].split(' INFO ', 1)[-1] if tickled else 'no tickle ACKs sent'}")
                run.outage = resumed(p, since, "service cut")
                gap = p.probe.restored_after(since) if p.probe else None
                assert gap is not None and gap[1] < float("inf"), "new connections to the VIP never worked again"
                back = gap[1] - since
                target, bound = outage_target(peer), outage_bound(peer)
                run.note(
                    f"new TCP connections to the VIP work again +{back:.2f} s after the cut; {acks_after(p, since)}"
                )
                if back > bound:
                    p.problems.append(f"scenario 2 run {i + 1}: the service is back for new connections "
                                      f"{back:.2f} s after the cut > bound {bound:.2f} s")  # fmt: skip
                elif back > target:
                    p.notes.append(f"scenario 2 run {i + 1}: new connections back after {back:.2f} s, over the "
                                   f"target {target:.2f} s (a benchmark figure), within the bound {bound:.2f} s")
                if run.outage > bound:
                    misses.append(f"run {i + 1}: writer's outage {run.outage:.2f} s > bound {bound:.2f} s, while "
                                  f"new connections worked again after {back:.2f} s; the writer's NFS connection "
                                  f"when {peer} began serving: {tcp}")  # fmt: skip
                elif run.outage > target:
                    p.notes.append(f"scenario 2 run {i + 1}: writer's outage {run.outage:.2f} s, over the target "
                                   f"{target:.2f} s (a benchmark figure), within the bound {bound:.2f} s")
            finally:
                M.restore(SERVICE)
            run.serving_after = peer
            assert p.agent(mst).wait_log("FAULT -> BACKUP", 20, m[mst]), p.agent(mst).log()[m[mst] :]
            run.not_before = time.monotonic() + mdi(mst) + 0.5
            run.final = no_second_failover(p, peer, m, ["MASTER -> FAULT", "FAULT -> BACKUP"])
    # The writer's own outage also depends on its TCP connection: the client retransmits to the
    # VIP with exponential backoff (RTO 0.21 s doubling: at about +0.2, 0.6, 1.5, 3.1, 6.5, 13.2 s)
    # and would reconnect only when a retransmission reaches the new master (which answers with a
    # reset): a takeover that completes after the +6.5 s one would cost the writer until +13.2 s
    # (measured before the tickle: b serves at 7.2-7.4 s, the writer resumed at ~14.4 s).  The new
    # master's tickle ACKs (agent.tickle) make the client reset at once, so the target holds for
    # the writer too, and the bound (below +13.2 s) catches a tickle that did not work.
    for miss in misses:
        print(f"  scenario 2 bound exceeded by the writer: {miss}")
    p.problems += [f"scenario 2 {m}" for m in misses]
    assert len(p.problems) == start, "\n".join(p.problems[start:])


def test_3_both_links_cut_the_peer_waits_then_promotes(part: Partition) -> None:
    p = part
    for i in range(RUNS):
        with measured(p, 3, i) as run:
            mst, peer = run.master, other(run.master)
            M, P = p.node(mst), p.node(peer)
            m = marks(p)
            marker = f"scenario 3 run {i}"
            fences = len(fence_log(P))
            gi0 = get_gi(M)
            since = guest_clock(p.lab.client)
            t0 = time.monotonic()
            M.cut(REPLICATION)
            M.cut(SERVICE)
            try:
                # DRBD freezes the isolated master's I/O; its fence-peer handler answers 6 once the
                # tracker counts it isolated; the agent takes the VIP off, records the evidence and
                # reboots the node (sysrq 'b'; the lab completes it as a power cycle, see fenced)
                if not wait_until(lambda: fenced(M, marker), 45, 0.1):  # noqa: B023
                    pytest.fail(f"the isolated master {mst} did not fence itself: {diagnose(p, marker, m)}")
                off = time.monotonic() - t0
                frozen = console_since(M, marker, r"susp\( 0 -> 1 \)|fence-peer|State change failed|self-fence")
                run.note(f"{mst} fenced itself {off:.2f} s after the cut; its kernel: {frozen}")
                assert any("susp( 0 -> 1 )" in line for line in frozen), frozen
                # the handler's 6, or the agent's self-fence while the handler still waited for it
                answered = ("fence-peer helper returned 6", "failover-agent: self-fence")
                assert any(a in x for x in frozen for a in answered), frozen
                assert not any("helper broken" in line for line in frozen), frozen
                steps = p.lab.power_on(mst)
                m[mst] = 0
                run.note(f"{mst} rebooted (the lab's power cycle): "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
                # the proof, in DRBD's own words: the isolated master's data generation did not move
                # (a write after the lost peer would have started a new one); and the agent's record
                gi1 = get_gi(M)
                evidence = M.run(["cat", EVIDENCE], check=False).stdout
                said = [x for x in p.agent(mst).history().splitlines() if "fence-peer" in x or "recorded" in x]
                run.note(f"{mst}'s agent before it went: {said[-3:]}")
                run.note(f"{mst}'s evidence record: {' '.join(evidence.split())[:500]}")
                # the fence-peer verdict records the evidence before its fence; the release deadline
                # (agent.node: a disconnected Primary past it) may fence first, with nothing to record:
                # then DRBD's unchanged UUIDs below are the whole proof
                deadline = any("self-fence (" in x and "): isolated (" in x for x in frozen)
                assert deadline or '"frozen_at"' in evidence, f"{mst} recorded no evidence: {evidence!r}"
                p.lab.wait_serving(peer, 60, since=m[peer])
                took = time.monotonic() - t0
                run.note(f"{peer} serves {took:.2f} s after the cut (Master_Down_Interval {mdi(peer):.2f} s + "
                         f"isolation time {isolation_time():.1f} s)")  # fmt: skip
                acquire = step_line(p.agent(peer), "drbd", "acquire", m[peer])
                assert "stopped serving or fenced itself (unknown_peer = witness)" in acquire, acquire
                run.note(f"{peer}: {acquire.split(' INFO ', 1)[-1]}")
                run.note(f"fence-peer on {peer}: {fence_log(P)[fences:]}")
                run.outage = resumed(p, since, "both links cut")
                while time.monotonic() - t0 < CUT_SECONDS:
                    time.sleep(0.2)
            finally:
                M.restore(REPLICATION)
                M.restore(SERVICE)
            run.serving_after = peer
            # and the survivor's bitmap UUID (where its changes since the split start) is that generation
            gi_peer = get_gi(P)
            run.note(f"GI of {mst}: before the cut {gi0}, after its reboot {gi1}; {peer}: {gi_peer}")
            assert gi0 is not None and gi1 is not None and gi_peer is not None
            assert gi0.same_data(gi1), f"{mst} wrote after it lost the peer: current UUID {gi0} -> {gi1}"
            assert int(gi_peer.bitmap, 16) & ~1 == gi0.data, f"{peer}'s bitmap UUID is not {mst}'s data: {gi_peer}"
            t1 = time.monotonic()
            try:
                for node in (M, P):
                    wait_drbd(node, connected_uptodate, 60, "Connected UpToDate after the heal, without an admin")
            except LabError as e:
                pytest.fail(f"{e}\n{diagnose(p, marker, m)}")
            run.note(f"both UpToDate {time.monotonic() - t1:.2f} s after the heal")
            split = [*drbd_kernel_log(P, marker, "Split-Brain"),
                     *[line for line in M.sh("dmesg").stdout.splitlines() if "Split-Brain" in line]]
            resolved = drbd_kernel_log(P, marker, "uuid_compare|SyncSource|Split-Brain")
            run.note(f"{peer}'s DRBD at the heal: {resolved[:4]}")
            assert not split, f"Split-Brain lines: {split}"
            assert p.agent(mst).wait_log("-> BACKUP", 30), p.agent(mst).log()
            if '"frozen_at"' in evidence:
                assert p.agent(mst).wait_log("healed:", 20), p.agent(mst).log()
            run.not_before = time.monotonic() + mdi(mst) + 0.5
            run.final = no_second_failover(p, peer, m, ["INITIALIZE -> FAULT", "FAULT -> BACKUP"])


def fenced(node: UmlNode, marker: str) -> bool:
    """The node fenced itself: its UML process ended, or its kernel took the sysrq reboot.

    Under UML a sysrq reboot re-executes the kernel binary while the old taps are still held
    (the new kernel comes up without network) and a sysrq power-off stalls in device shutdown
    behind the frozen DRBD device; so the lab completes either as a power cycle (power_on: the
    UML process killed, booted afresh).  A real machine resets at once on sysrq 'b'.
    """
    return not node.running or bool(console_since(node, marker, r"sysrq: (Resetting|Power Off)"))


def get_gi(node: UmlNode) -> Gi | None:
    """DRBD's generation identifiers of r0 on a node (what the agent's heal compares)."""
    return Gi.parse(node.run(["drbdadm", "get-gi", "r0"], check=False).stdout)


def console_since(node: UmlNode, marker: str, pattern: str) -> list[str]:
    """Kernel lines on a node's console (kept by the host across its power-off) since ``marker``."""
    text = node.console_path.read_text(errors="replace")
    at = text.rfind(f"lab-marker: {marker}")
    return [line.strip() for line in text[max(at, 0) :].splitlines() if re.search(pattern, line)]


def test_4_agent_killed_on_the_master_then_restarted_adopts_without_a_failover(part: Partition) -> None:
    p = part
    for i in range(RUNS):
        with measured(p, 4, i) as run:
            mst, peer = run.master, other(run.master)
            A = p.agent(mst)
            assert A.proc is not None
            m = marks(p)
            since = guest_clock(p.lab.client)
            t0 = time.monotonic()
            proc = A.proc
            proc.signal(signal.SIGKILL)
            assert wait_until(lambda: not proc.alive(), 10, 0.1), "the agent survived SIGKILL"  # noqa: B023
            cleanup = A.exec_stop_post()
            run.note(f"{mst} ExecStopPost: {cleanup.strip().splitlines()[-1]}")
            assert "the VIPs stay" in cleanup, cleanup
            facts = p.lab.facts()
            assert facts[mst].serving, f"the node should still hold everything with its agent dead: {describe(p)}"
            time.sleep(RESTART_SEC)
            A.start()
            m[mst] = 0
            assert A.wait_log("without a failover", 60), A.log()
            adopted = next(line for line in A.log().splitlines() if "without a failover" in line)
            how = adopted.split(" INFO ", 1)[-1][:240]
            run.note(f"{mst} adopted {time.monotonic() - t0:.1f} s after the kill: {how}")
            run.outage = resumed(p, since, "agent restart")
            run.serving_after = mst
            peer_log = p.agent(peer).log()[m[peer] :]
            assert not transitions(p.agent(peer), m[peer]), f"{peer} changed state:\n{peer_log}"
            waited = [line for line in peer_log.splitlines() if "waits for its agent" in line]
            assert waited, f"{peer} should have waited for the silent master's agent:\n{peer_log}"
            run.note(f"{peer}: {waited[0].split(' WARNING ', 1)[-1]}"[:300])
            run.not_before = time.monotonic() + mdi(mst) + 0.5

            run.final = functools.partial(adopted_for_good, p, mst, dict(m))


def adopted_for_good(p: Partition, mst: str, m: dict[str, int]) -> None:
    """After scenario 4's restart: the adopting master never left MASTER nor released anything,
    the peer never changed state, and the chain is where it was."""
    peer = other(mst)
    A = p.agent(mst)
    assert transitions(A, 0) == ["INITIALIZE -> MASTER"], A.log()
    assert not transitions(p.agent(peer), m[peer]), p.agent(peer).log()[m[peer] :]
    assert not released_in_order(A, 0), f"{mst} released something:\n{A.log()}"
    facts = p.lab.facts()
    assert facts[mst].serving and facts[peer].idle, describe(p)


def test_5_master_node_crash_then_it_rejoins_as_secondary(part: Partition) -> None:
    p = part
    for i in range(RUNS):
        with measured(p, 5, i) as run:
            mst, peer = run.master, other(run.master)
            P = p.node(peer)
            m = marks(p)
            fences = len(fence_log(P))
            since = guest_clock(p.lab.client)
            t0 = time.monotonic()
            p.lab.crash(mst)
            p.lab.wait_serving(peer, 60, since=m[peer])
            run.note(f"{peer} serves {time.monotonic() - t0:.2f} s after the crash")
            acquire = step_line(p.agent(peer), "drbd", "acquire", m[peer])
            run.note(f"{peer}: {acquire.split(' INFO ', 1)[-1]}")
            run.note(f"fence-peer on {peer}: {fence_log(P)[fences:]}")
            run.outage = resumed(p, since, "crash")
            run.serving_after = peer
            t1 = time.monotonic()
            steps = p.lab.reboot(mst)
            m[mst] = 0
            run.note(f"{mst} back: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
            st = drbd_state(p.node(mst))
            assert st is not None and (st.role, st.peer_role) == ("Secondary", "Primary"), st
            assert p.agent(mst).wait_log("-> BACKUP", 20), p.agent(mst).log()
            run.note(f"rejoined as Secondary and BACKUP {time.monotonic() - t1:.1f} s after the reboot began")
            run.not_before = time.monotonic() + mdi(mst) + 0.5
            run.final = no_second_failover(p, peer, m, ["INITIALIZE -> FAULT", "FAULT -> BACKUP"])


def test_6_no_dual_primary_and_every_acknowledged_write_survived(part: Partition) -> None:
    p = part
    steady(p)
    p.w.stop()
    t0 = time.monotonic()
    report = p.w.verify()
    p.final_check = f"final read-back of every acknowledged file ({time.monotonic() - t0:.1f} s): {report.describe()}"
    print(p.final_check)
    p.watcher.stop()
    print(p.watcher.describe())
    assert not p.watcher.dual, p.watcher.describe()
    assert report.passed, report.describe()
    assert not p.lost, p.lost[:10]


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def summary(p: Partition) -> str:
    head = (f"{'scenario':<28} {'runs':>4} {'samples':>8} {'dual-Primary':>12} {'acked writes':>12} "
            f"{'lost':>5} {'outage median / max (s)':>24} {'new conn. median / max':>23} {'time (s)':>9}")  # fmt: skip
    lines = ["UML partition scenarios (watcher: both nodes' /proc/drbd every 100 ms)", head, "-" * len(head)]
    for number, name in SCENARIOS.items():
        runs = [r for r in p.runs if r.scenario == number]
        if not runs:
            continue
        outages = [r.outage for r in runs if r.outage is not None]
        outage = f"{statistics.median(outages):.2f} / {max(outages):.2f}" if outages else "-"
        fresh_all = [r.fresh for r in runs if r.fresh is not None]
        fresh = f"{statistics.median(fresh_all):.2f} / {max(fresh_all):.2f}" if fresh_all else "-"
        lines.append(f"{f'{number}. {name}':<28} {len(runs):>4} {sum(r.rounds for r in runs):>8} "
                     f"{sum(r.dual for r in runs):>12} {sum(r.acked for r in runs):>12} "
                     f"{sum(r.lost for r in runs):>5} {outage:>24} {fresh:>23} "
                     f"{sum(r.seconds for r in runs):>9.1f}")  # fmt: skip
    lines.append(f"watcher: {p.watcher.describe()}")
    for name, node in p.lab.lab.nodes.items():
        stalls = [n for n in node.nudges if n[1] == ["/proc/drbd"]]
        if node.nudges:
            lines.append(f"command channel of {name}: {len(node.nudges)} request(s) unanswered after 2 s "
                         f"({len(stalls)} of them /proc/drbd reads, which take ms): {node.nudges[:4]}")  # fmt: skip
    if p.final_check:
        lines.append(p.final_check)
    lines += p.notes
    if p.problems:
        lines += ["bounds exceeded:", *p.problems]
    lines.append("timings (s): " + ", ".join(f"{k} {v:g}" for k, v in p.timings.items()))
    return "\n".join(lines)
