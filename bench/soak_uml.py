"""Soak on the user-mode-linux lab (``python -m bench.soak --uml``): real DRBD 8.4 and kernel nfsd.

The same seeded schedule as the netns soak (bench/soak.py: FaultLoop), on the lab of
tests/test_uml_partition.py (tests/lab/uml_agents.py, its settings imported from there: CI
timings, or its fast defaults under UML_PARTITION_TIMING=defaults): nodes a (priority 150) and b
(100) run the agent with VRRPv2 1 s adverts, preempt off, [track] pinging the client node,
[peer] heartbeats on both networks, [guard], DRBD r0 with ``fencing resource-and-stonith``
through the agents' fence-peer handler; the client node mounts the VIP (NFSv4.2, hard) and
writes a 4 KB file every 0.1 s (tests/lab/uml_nfsload.py), each one acknowledged after fsync.

There is no systemd in the guests, and the agent's NOTIFY_SOCKET would be a guest socket the
host cannot read, so ``GuestSupervisor`` applies the shipped unit's rules from the host
(systemd/failover-agent.service, read at start): the agent counts as started (READY) once it
logged ``failover-agent running`` within TimeoutStartSec; WatchdogSec is applied to what the
host can see, an agent stopped (SIGSTOP, /proc state T) for longer than WatchdogSec gets
WatchdogSignal, as it could not have pinged; when the main process is gone, ExecStopPost's
``failoverctl cleanup`` runs with systemd's SERVICE_RESULT/EXIT_CODE/EXIT_STATUS, then the
restart after RestartSec (KillMode=process: nothing else of the unit is killed, as
tests/test_uml_partition.py scenario 4 does it).  A running agent that hangs without being
stopped is not detected here (the netns soak's supervisor reads the real pings).

Faults (the netns soak's, as they apply to real DRBD):

- agent_kill, stop_short, stop_long, hup_valid, hup_invalid, handover, maintenance: as there;
- link_flap: the node's service cable (eth0) cut for 0.3-3 s (UML has no carrier events: the
  tap leaves its bridge, frames vanish);
- partition: the node's replication cable (eth1) cut for 1-5 s: DRBD disconnects (the Primary
  freezes I/O until the fence-peer handler has the peer outdated over the peer channel, which
  runs on the service network too), then resyncs;
- nfsd_stop (for ganesha_kill): the master's kernel nfsd stopped under the agent (0 written to
  /proc/fs/nfsd/threads, what ``rpc.nfsd 0`` does; SIGKILL to its kernel threads changed
  nothing the agent could see in a first run): the monitor restarts it or fails over;
- chain_fail: /dev/null bound over /dev/drbd0 on the backup, then a handover: its promote
  works, its mount fails, it rolls back and the old master takes over again.

Not here: ganesha_kill (kernel nfsd instead: nfsd_stop); a cut of both cables of a node (the
isolated Primary freezes and fences itself by a sysrq reboot, which UML turns into a power
cycle the lab completes: tests/test_uml_partition.py scenario 3; a reboot, DRBD's resync and
the agent's start cost a UML node about a minute and a half per fault, the whole of a short
soak); node crashes (scenario 5, same cost).

Invariants, from the guests' ground truth (the guests' init reads /proc/drbd, /proc/mounts and
/proc/net/fib_trie without a fork; a round reads a, b, then a again, so a hand-off between two
reads a few ms apart is not an overlap; rounds start every SAMPLE s, slower when the command
channel is busy: the report gives the rounds, the median and longest gap):

- two_primaries: both nodes ro:Primary in one round: always a violation;
- both_mounted: /dev/drbd0 mounted on both: always a violation (DRBD cannot let that happen);
- two_vip_holders: two holders for longer than one advert interval (1 s) once converged;
- lost_writes, unexpected_exits, reload, control, no_recovery (RECOVERY_TIMEOUT, 120 s: a guest
  needs ~10 s to start the agent), rss_growth, fd_growth (RSS from /proc/PID/status, open fds by
  listing /proc/PID/fd in the guest, every LEAK_EVERY s), as in the netns soak.

Converged: both agents started and not stopped, one node Primary with the disk mounted and the
VIP, its agent MASTER, the other Secondary with neither, its agent BACKUP, DRBD Connected and
UpToDate on both, and a write acknowledged after the heal.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.soak import (
    CONTROL_TIMEOUT,
    SETTLE,
    UML_FAULTS,
    UNIT_FILE,
    AgentFaults,
    Episodes,
    FaultLoop,
    Incarnation,
    Result,
    Unit,
    vip_local,
)
from tests.lab.netns import LabError, wait_until
from tests.lab.uml import GUEST_PYTHON, GUEST_SRC, REPLICATION, SERVICE, UmlNode, parse_proc_drbd
from tests.lab.uml_agents import (
    EXPORT,
    GUEST_CONF,
    GUEST_SOCKET,
    SERVING_LOG,
    VIP,
    VRRP,
    StorageLab,
    UmlAgent,
    UmlNfsWriter,
    fencing_resource,
    guest_clock,
)
from tests.test_uml_partition import DRBD_NET, GUARD, TRACK

UML_INVARIANTS = ("two_primaries", "both_mounted", "two_vip_holders", "lost_writes", "unexpected_exits", "reload",
                  "control", "no_recovery", "rss_growth", "fd_growth")
NOT_IN_UML = {
    "ganesha_kill": "the UML nodes serve kernel nfsd: nfsd_stop instead",
    "both links of a node cut": "the isolated Primary fences itself (sysrq reboot, a power cycle in UML): "
                                "~90 s of reboot, resync and agent start per fault; tests/test_uml_partition.py "
                                "scenario 3",
    "node crash": "a reboot per fault, as above; tests/test_uml_partition.py scenario 5",
}
ADVERT = float(VRRP["advert_interval"])
SAMPLE = 0.25  # the watch's period when the command channels are free
RECOVERY_TIMEOUT = 120.0
POLL = 0.3  # the supervisors' period
LEAK_EVERY = 3.0
DRBD_DEV = "/dev/drbd0"
NFSD_THREADS = "/proc/fs/nfsd/threads"
_RELOADED = re.compile(r" reload: ")
_REFUSED = re.compile(r"reload refused")


def proc_state(node: UmlNode, pid: int) -> str | None:
    """The state letter of a guest process, read by the guest's init without a fork: None when it
    is gone, "?" when the node did not answer (that is no proof of an exit)."""
    if not node.ready:
        return "?"
    try:
        text = node.read_kernel_file(f"/proc/{pid}/stat", timeout=10)
    except (LabError, OSError, subprocess.SubprocessError):
        return "?"
    if text is None or ")" not in text:
        return None
    return text[text.rindex(")") + 2 :].split()[0]


def guest_call(node: UmlNode, argv: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``argv`` in the guest in the background and wait for it: (exit status or None on timeout,
    output).  A ``run`` would hold the node's command channel (one request at a time) for as long
    as the command takes, and the watch could not read the node meanwhile."""
    out = f"/run/lab/call-{os.urandom(4).hex()}.log"
    proc = node.spawn(["sh", "-c", '"$@"; echo "exit=$?"', "sh", *argv], log_path=out, cwd=GUEST_SRC)
    done = wait_until(lambda: proc_state(node, proc.pid) in (None, "Z", "X"), timeout, 0.3)
    text = node.run(["cat", out], check=False, timeout=20).stdout
    node.run(["rm", "-f", out], check=False, timeout=20)
    m = re.search(r"^exit=(\d+)$", text, re.M)
    return (int(m[1]) if done and m else None), text


# --------------------------------------------------------------------------------------------
# systemd's part, from the host
# --------------------------------------------------------------------------------------------


class GuestSupervisor(AgentFaults):
    """The shipped unit's rules for one node's agent (see the module docstring), in a thread."""

    def __init__(self, name: str, agent: UmlAgent, unit: Unit) -> None:
        self.name, self.agent, self.unit = name, agent, unit
        self.node = agent.node
        self.lock = threading.RLock()
        self.state = "dead"  # starting -> running -> stopping (ExecStopPost, RestartSec) -> starting
        self.pid = 0
        self.expect_exit = False
        self.frozen = False
        self.watchdog_fired = False  # the next exit is the watchdog's
        self.unexpected: list[str] = []
        self.exits: list[dict[str, Any]] = []
        self.watchdog_kills = 0
        self.restarts = 0
        self.incarnations: list[Incarnation] = []
        self.serving = False  # the watch's latest word: holds the VIP (for the leak samples)
        self._next_sample = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"supervise-{name}", daemon=True)

    @property
    def running(self) -> bool:
        """Started, not stopped, and no exit pending: a killed agent counts as down at once, not
        only when the next poll finds it gone (or the pair would look converged in between)."""
        return self.state == "running" and not self.frozen and not self.expect_exit

    def start(self) -> GuestSupervisor:
        self._start()
        self._thread.start()
        return self

    def _start(self) -> None:
        self.state = "starting"
        try:
            self.agent.start(timeout=self.unit.start_timeout)
        except AssertionError as exc:  # no READY within TimeoutStartSec, or it exited
            self.unexpected.append(f"{self.name}: the agent did not start: {str(exc)[-1500:]}")
            if self.agent.proc is not None:
                self.agent.proc.signal(signal.SIGKILL)
        assert self.agent.proc is not None
        with self.lock:
            self.pid, self.expect_exit, self.frozen = self.agent.proc.pid, False, False
            self.incarnations.append(Incarnation(self.pid, time.monotonic()))
            self.state = "running"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self._poll(time.monotonic())
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                if self.node.ready:
                    self.unexpected.append(f"{self.name}: supervisor: {type(exc).__name__}: {str(exc)[:300]}")

    def _poll(self, now: float) -> None:
        if self.state != "running" or not self.node.ready:
            return
        st = proc_state(self.node, self.pid)
        if st is None or st in "ZX":
            self._exited(now)
            return
        with self.lock:
            if st == "T" and self.frozen and now - self.frozen_since > self.unit.watchdog_sec:
                # stopped, it cannot have pinged: systemd's watchdog fires
                self.watchdog_kills += 1
                self.expect_exit = self.watchdog_fired = True
                self._signal(self.unit.watchdog_signal)
        if now >= self._next_sample and st != "T":
            self._next_sample = now + LEAK_EVERY
            self._sample(now)

    def _exited(self, now: float) -> None:
        with self.lock:
            self.state = "stopping"
            self.incarnations[-1].ended = now
            watchdog, self.watchdog_fired = self.watchdog_fired, False
            self.exits.append({"time": now, "pid": self.pid, "expected": self.expect_exit, "watchdog": watchdog})
            if not self.expect_exit:
                tail = "\n".join(self.agent.log().splitlines()[-15:])
                self.unexpected.append(f"{self.name}: agent pid {self.pid} ended without a fault:\n{tail}")
            self.frozen = False
        # what systemd tells ExecStopPost= about a main process that died of a signal (the guest's
        # init reaps it, so the host never learns an exit code; every expected end is a SIGKILL)
        env = [f"SERVICE_RESULT={'watchdog' if watchdog else 'signal'}", "EXIT_CODE=killed", "EXIT_STATUS=KILL"]
        argv = ["env", *env, GUEST_PYTHON, "-m", "agent.cli", "cleanup", "--config", GUEST_CONF]
        rc, out = guest_call(self.node, argv, 60)
        if rc != 0:
            self.unexpected.append(f"{self.name}: ExecStopPost failed (exit {rc}): {out[-500:]}")
        time.sleep(self.unit.restart_sec)
        if self._stop.is_set():
            return
        self.restarts += 1
        self._start()

    def _signal(self, sig: int) -> None:
        self.node.run(["kill", f"-{int(sig)}", str(self.pid)], check=False, timeout=10)

    def _sample(self, now: float) -> None:
        status = self.node.read_kernel_file(f"/proc/{self.pid}/status", timeout=10) or ""
        listing = self.node.run(["ls", "-U1", f"/proc/{self.pid}/fd"], check=False, timeout=10)
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if m and listing.returncode == 0:
            with self.lock:
                if self.running:
                    self.incarnations[-1].samples.append((now, int(m[1]), len(listing.stdout.split()), self.serving))

    # -- faults (kill, freeze, thaw: AgentFaults) ------------------------------------------------
    def hup(self) -> None:
        self._signal(signal.SIGHUP)


# --------------------------------------------------------------------------------------------
# Watching the invariants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One node in one read: DRBD role, connection and disk states, the disk mounted, the VIP."""

    role: str
    cs: str
    disks: str
    mounted: bool
    vip: bool


class UmlWatch:
    """Rounds of reads of both nodes' ground truth (a, b, a again) in a thread; episodes recorded."""

    def __init__(self, nodes: dict[str, UmlNode], sups: dict[str, GuestSupervisor]) -> None:
        self.nodes, self.sups = nodes, sups
        self.quiet_from = float("inf")
        self.eps = Episodes("two_primaries", "both_mounted", "two_vip_holders")
        self.latest: dict[str, Seen | None] = dict.fromkeys(nodes)
        self.rounds = 0
        self.incomplete = 0
        self.handoffs = 0  # a role or mount moved between the first node's two reads: no overlap
        self.serving: str | None = None  # the last node seen serving alone (Primary, mounted, VIP)
        self.failovers = 0  # how often that changed: the service moved to the other node
        self.gaps: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-uml-watch", daemon=True)

    def _read(self, node: UmlNode) -> Seen | None:
        if not node.ready:
            return None
        try:
            drbd = parse_proc_drbd(node.read_kernel_file("/proc/drbd", timeout=10))
            mounts = node.read_kernel_file("/proc/mounts", timeout=10) or ""
            fib = node.read_kernel_file("/proc/net/fib_trie", timeout=10) or ""
        except (LabError, OSError, subprocess.SubprocessError):
            return None
        if drbd is None:
            return None
        mounted = any(line.split()[:2] == [DRBD_DEV, EXPORT] for line in mounts.splitlines())
        return Seen(drbd.role, drbd.cs, f"{drbd.disk}/{drbd.peer_disk}", mounted, vip_local(fib, VIP))

    def converged(self, now: float) -> bool:
        return now >= self.quiet_from and all(s.running for s in self.sups.values())

    def _run(self) -> None:
        names = list(self.nodes)
        first = names[0]
        last = None
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                reads = [(n, self._read(self.nodes[n])) for n in [*names, first]]
                period = t0 - last if last is not None else SAMPLE
                if last is not None:
                    self.gaps.append(period)
                last = t0
                seen = [r for _, r in reads]
                if any(r is None for r in seen):
                    self.incomplete += 1
                else:
                    self.rounds += 1
                    self._judge(reads, t0, period)
                    alone = [n for n, r in reads[: len(names)] if r is not None and r.role == "Primary" and r.vip]
                    if len(alone) == 1 and alone[0] != self.serving:
                        self.failovers += self.serving is not None
                        self.serving = alone[0]
                for n, r in reads[: len(names)]:
                    self.latest[n] = r
                    self.sups[n].serving = r is not None and r.vip
                self._stop.wait(max(0.0, t0 + SAMPLE - time.monotonic()))
        except Exception as exc:  # the soak must notice a broken watcher, not run blind
            self.error = f"{type(exc).__name__}: {exc}"
            raise

    def _judge(self, reads: list[tuple[str, Seen | None]], now: float, period: float) -> None:
        first, again = reads[0][1], reads[-1][1]
        others = [r for _, r in reads[1:-1]]
        assert first is not None and again is not None
        conv = self.converged(now)
        checks: list[tuple[str, Callable[[Seen], bool], bool]] = [
            ("two_primaries", lambda s: s.role == "Primary", True),
            ("both_mounted", lambda s: s.mounted, True),
            ("two_vip_holders", lambda s: s.vip, conv)]
        for name, held, counts in checks:
            other = any(held(r) for r in others if r is not None)
            both = other and held(first) and held(again)
            if other and held(first) != held(again):
                self.handoffs += 1
            self.eps.sample(name, both, now, counts, period)

    def start(self) -> UmlWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def sampling(self) -> dict[str, Any]:
        gaps = sorted(self.gaps)
        return {"rounds": self.rounds, "incomplete": self.incomplete, "handoffs": self.handoffs,
                "target_s": SAMPLE, "median_gap_s": round(statistics.median(gaps), 3) if gaps else None,
                "p99_gap_s": round(gaps[int(0.99 * (len(gaps) - 1))], 3) if gaps else None,
                "max_gap_s": round(gaps[-1], 3) if gaps else None}


# --------------------------------------------------------------------------------------------
# The soak
# --------------------------------------------------------------------------------------------


class UmlSoak(FaultLoop):
    MASTER_ONLY = frozenset({"nfsd_stop", "chain_fail", "handover"})
    INJECT_ERRORS = (LabError, OSError, subprocess.SubprocessError, AssertionError)
    recovery_timeout = RECOVERY_TIMEOUT

    def __init__(self, lab: StorageLab, seed: int, minutes: float, max_faults: int,
                 kinds: tuple[str, ...] = UML_FAULTS) -> None:
        super().__init__(seed, minutes, max_faults, kinds, Result.new(seed, minutes, UML_FAULTS, UML_INVARIANTS,
                                                                      guarded=True, lab="uml"))
        self.lab = lab
        self.unit = Unit.from_file(UNIT_FILE)
        self.sups = {n: GuestSupervisor(n, a, self.unit) for n, a in lab.agents.items()}
        self.watch = UmlWatch(lab.nodes, self.sups)
        self.writer: UmlNfsWriter | None = None
        self.keep_logs = False
        self.guest0 = 0.0  # the client's clock when the schedule began

    # -- helpers ------------------------------------------------------------------------------
    def roles(self) -> tuple[str | None, str | None]:
        serving = [n for n, s in self.watch.latest.items() if s is not None and s.role == "Primary" and s.vip]
        if len(serving) != 1:
            return None, None
        return serving[0], next(n for n in self.sups if n != serving[0])

    def heal_mark(self) -> float:
        return guest_clock(self.lab.client)

    def fault_active(self, active: bool) -> None:
        self.watch.quiet_from = float("inf") if active else time.monotonic() + SETTLE

    def converged_now(self, since: float) -> bool:
        if not all(s.running for s in self.sups.values()):
            return False
        seen = self.watch.latest
        serving, other = self.roles()
        if serving is None or other is None:
            return False
        s, o = seen[serving], seen[other]
        if s is None or o is None or not s.mounted or o.role != "Secondary" or o.mounted or o.vip:
            return False
        if s.cs != "Connected" or s.disks != "UpToDate/UpToDate" or o.disks != "UpToDate/UpToDate":
            return False
        if self.lab.agents[serving].vrrp_state() != "MASTER" or self.lab.agents[other].vrrp_state() != "BACKUP":
            return False
        assert self.writer is not None
        return self.writer.first_ack_after(since) is not None

    def wait_converged(self, since: float) -> bool:
        return wait_until(lambda: self.converged_now(since), self.recovery_timeout, 0.5)

    def unconverged(self) -> str:
        sups = {n: s.state + (" (stopped)" if s.frozen else "") for n, s in self.sups.items()}
        return f"supervisors {sups}, seen {self.watch.latest}"

    def ctl(self, node: str, *args: str) -> bool:
        """failoverctl in the node; a request unanswered within CONTROL_TIMEOUT is a violation."""
        argv = [GUEST_PYTHON, "-m", "agent.cli", *args, "--socket", GUEST_SOCKET]
        rc, out = guest_call(self.lab.nodes[node], argv, CONTROL_TIMEOUT + 30)  # + a UML Python's start
        if rc is None:
            self.result.violate("control", f"{' '.join(args)} on {node}: no answer within {CONTROL_TIMEOUT + 30:g} s")
        elif rc != 0:
            self.result.details.append(f"failoverctl {' '.join(args)} on {node}: exit {rc}: {out.strip()[-300:]}")
        return rc == 0

    def reload(self, kind: str, node: str) -> bool:
        agent, sup = self.lab.agents[node], self.sups[node]
        if not sup.running:
            return False
        pattern = _RELOADED if kind == "hup_valid" else _REFUSED
        before = len(pattern.findall(agent.log()))
        base = agent.conf
        if kind == "hup_valid":
            garp = self.rng.randint(2, 4)
            text = base.replace("[vrrp]\n", f"[vrrp]\ngarp_count = {garp}\n", 1)
        else:
            text = base.replace("vrid = 51", "vrid = 999", 1)
        agent.node.write_file(GUEST_CONF, text, mode=0o600)
        sup.hup()
        applied = wait_until(lambda: len(pattern.findall(agent.log())) > before, 20, 0.5)
        agent.node.write_file(GUEST_CONF, base, mode=0o600)  # what a restart would read anyway
        if not applied:
            self.result.violate("reload", f"{kind} on {node}: no {pattern.pattern!r} line within 20 s")
        elif kind == "hup_invalid" and not sup.running:
            self.result.violate("reload", f"hup_invalid on {node}: the agent stopped")
        return True

    # -- faults -------------------------------------------------------------------------------
    def inject(self, kind: str, node: str, other: str) -> bool:
        rng, guest = self.rng, self.lab.nodes[node]
        common = self.inject_agent_fault(kind, node, self.unit.watchdog_sec)
        if common is not None:
            return common
        if kind in ("link_flap", "partition"):
            net, lo, hi = (SERVICE, 0.3, 3.0) if kind == "link_flap" else (REPLICATION, 1.0, 5.0)
            guest.cut(net)
            try:
                time.sleep(rng.uniform(lo, hi))
            finally:
                guest.restore(net)
            return True
        if kind == "nfsd_stop":
            if (guest.read_kernel_file(NFSD_THREADS) or "0").strip() == "0":
                return False
            guest.write_sysfs(NFSD_THREADS, "0")
            return True
        if kind == "chain_fail":
            backup = self.lab.nodes[other]
            backup.run(["mount", "--bind", "/dev/null", DRBD_DEV], timeout=20)
            try:
                self.ctl(node, "handover")
                time.sleep(rng.uniform(3.0, 6.0))
            finally:
                backup.run(["umount", DRBD_DEV], check=False, timeout=20)
            return True
        if kind in ("hup_valid", "hup_invalid"):
            return self.reload(kind, node)
        raise ValueError(kind)

    def supervised(self, node: str) -> GuestSupervisor:
        return self.sups[node]

    def control(self, node: str, command: str, on: bool | None = None) -> bool:
        return self.ctl(node, command, *(() if on is None else ("on" if on else "off",)))

    def watchdog_due(self, node: str) -> None:
        """The supervisor polls every POLL s through the command channel: let its rule fire first."""
        sup = self.sups[node]
        wait_until(lambda: sup.expect_exit, 2 * POLL + 5, 0.1)

    # -- run ----------------------------------------------------------------------------------
    def start_pair(self) -> float:
        t_boot = time.monotonic()
        self.lab.setup()
        # a first, then b: a serves before b's agent exists (StorageLab.start_agents, supervised)
        self.sups["a"].start()
        self.lab.wait_serving("a", 90)
        self.sups["b"].start()
        self.watch.start()
        self.lab.mount_client()
        # small files: the run's writes must fit the 128 MB DRBD disk
        self.writer = UmlNfsWriter(self.lab.client, size=4096, interval=0.1,
                                   max_seconds=self.minutes * 60 + 900).start()
        if not self.writer.wait_acked(10, 60):
            raise LabError(f"the client cannot write through the VIP: {self.writer.errors()[-3:]}")
        if not self.wait_converged(0.0):
            raise LabError(f"the pair did not settle before the first fault: {self.unconverged()}")
        self.result.sampling["setup_s"] = round(time.monotonic() - t_boot, 1)
        self.guest0 = guest_clock(self.lab.client)
        return time.monotonic()

    def finish(self, t_start: float) -> None:
        res, writer = self.result, self.writer
        assert writer is not None
        writer.stop()
        for sup in self.sups.values():
            sup.stop()
        self.watch.stop()
        if self.watch.error:
            res.details.append(f"watcher died: {self.watch.error}")
        res.wall_seconds = round(time.monotonic() - t_start, 1)
        acks = writer.acks()
        report = writer.verify()
        if not report.passed or report.checked != len(acks):
            res.violate("lost_writes", report.describe())
        gap, at = 0.0, 0.0  # the writer's longest wait for an acknowledgement, and when it began
        for x, y in itertools.pairwise([self.guest0, *(a.ack for a in acks if a.ack > self.guest0)]):
            if y - x > gap:
                gap, at = y - x, x - self.guest0
        res.writes = {"acked": len(acks), "errors": len(writer.errors()), "verified_ok": report.ok,
                      "max_gap_s": round(gap, 3), "max_gap_from_s": round(at, 1)}
        for name in ("two_primaries", "both_mounted"):  # real DRBD: never, fault or not
            self.judge_episodes(name, self.watch.eps.all[name], 0.0, t_start, SAMPLE, "at all")
        self.judge_episodes("two_vip_holders", self.watch.eps.all["two_vip_holders"], ADVERT, t_start, SAMPLE)
        for name in ("two_primaries", "both_mounted"):
            res.excused.pop(name, None)  # nothing is excused there: the episodes are the violations
        logs: dict[str, str] = {}
        for node, sup in self.sups.items():
            for text in sup.unexpected:
                res.violate("unexpected_exits", text)
            res.supervisor[node] = {"restarts": sup.restarts, "watchdog_kills": sup.watchdog_kills,
                                    "exits": len(sup.exits)}
            res.leaks[node] = self.leak(node, sup.incarnations, min_samples=10)
            history = self.lab.agents[node].history()
            logs[f"agent-{node}.log"] = history
            res.takeovers[node] = len(SERVING_LOG.findall(history))
            console = self.lab.nodes[node].console_path.read_text(errors="replace")
            res.self_fences[node] = len(re.findall(r"sysrq: (?:Resetting|Power Off)", console))
        res.failovers = self.watch.failovers  # "became MASTER" lines count a chain's restart in place too
        self.summarize_recovery()
        sampling = self.watch.sampling()
        res.watch = sampling
        res.sampling["report"] = [
            f"watch: {sampling['rounds']} complete rounds (a, b, a: /proc/drbd, /proc/mounts, fib_trie), "
            f"{sampling['incomplete']} with a node not answering; gap between rounds median "
            f"{sampling['median_gap_s']} s, p99 {sampling['p99_gap_s']} s, max {sampling['max_gap_s']} s "
            f"(target {SAMPLE} s); {sampling['handoffs']} hand-offs between two reads",
            f"self-fences (sysrq on the consoles): {res.self_fences}; lab setup {res.sampling.get('setup_s')} s",
            "failovers: how often the watch saw the service move to the other node; takeovers: the agents' "
            "'became MASTER' lines (a chain the monitor restarted in place logs one too)",
            "not in the UML lab: " + "; ".join(f"{k} ({v})" for k, v in NOT_IN_UML.items()),
        ]
        self.keep(logs, self.keep_logs)


def run_uml_soak(seed: int, minutes: float, max_faults: int | None = None, prefix: str | None = None,
                 kinds: tuple[str, ...] = UML_FAULTS, keep_logs: bool = False) -> Result:
    """Build the UML lab (the partition scenarios' settings, CI timings), soak, tear down."""
    faults = max_faults if max_faults is not None else max(1, int(minutes * 6))
    # demote_escalation ends in reboot, as in the partition scenarios: a frozen Primary leaves through it
    with StorageLab(prefix or f"us{os.getpid() % 100000}", resource=fencing_resource(net=DRBD_NET), track=TRACK,
                    peer=True, drbd={"demote_escalation": ["retry", "force", "reboot"]}, guard=GUARD) as lab:
        soak = UmlSoak(lab, seed, minutes, faults, kinds)
        soak.keep_logs = keep_logs
        try:
            return soak.run()
        finally:
            for sup in soak.sups.values():
                sup.stop()

