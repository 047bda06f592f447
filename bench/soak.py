"""Soak: two agents serving NFS under a seeded random schedule of faults, invariants checked all along.

The lab is the netns nfs-ganesha one (tests/lab/ganesha_agents.py): nodes a (priority 150) and b
(100), each in its own mount namespace, one ext4 on a loop device as the shared disk, ganesha
started by the agents, VRRPv3 at 0.1 s adverts, and a libnfs client on the bridge writing one
acknowledged file after another through the VIP (tests/lab/nfsclient.py).

There is no systemd in the netns lab, so ``Supervisor`` does its part from the shipped unit
(systemd/failover-agent.service, read at start): Type=notify (READY=1 over a NOTIFY_SOCKET it
reads, only from the main PID as NotifyAccess=main), the watchdog (WATCHDOG_USEC given to the
agent; no WATCHDOG=1 within WatchdogSec after READY=1 or the last ping: WatchdogSignal to the
main PID), Restart=on-failure after RestartSec, RestartPreventExitStatus, TimeoutStartSec, and
what happens when the main process died: with KillMode=process (the unit's) the rest of its
"cgroup" (every other process of the node's mount namespace: ganesha) lives on, with mixed or
control-group it gets SIGKILL; then ExecStopPost (``failoverctl cleanup``, with systemd's
SERVICE_RESULT, EXIT_CODE and EXIT_STATUS) runs before the restart.

Faults, one at a time, each followed by a wait until the pair converged again (one node
SERVING, the other idle, one VIP holder, one mount, a write acknowledged after the heal), then
a quiet period:

- agent_kill: SIGKILL of an agent (the supervisor restarts it like systemd)
- stop_short / stop_long: SIGSTOP, SIGCONT after less than WatchdogSec/2 / more than WatchdogSec
  (then the watchdog kills it first)
- link_flap: the node's cable pulled and re-plugged
- partition: the two node ports of the bridge isolated from each other (bridge port isolation),
  the client still reaches both: traffic between the nodes only is dropped
- ganesha_kill: SIGKILL of the master's ganesha (the monitor restarts it, or fails over)
- chain_fail: the backup's view of the disk device made unusable (/dev/null bound over it in
  its mount namespace), then a handover: its mount step fails, it rolls back and the old
  master takes over again
- hup_valid / hup_invalid: SIGHUP after writing a changed valid config / an invalid one (which
  must be refused while the running config is kept)
- handover, maintenance (on, a few seconds, off) through the control socket

Invariants, sampled every 50 ms (disk and VIP from /proc of each node, no subprocess):

- both_mounted: the two nodes never have the disk mounted at once while converged. The loop
  device of this lab cannot refuse a second mount the way DRBD refuses a second Primary (a
  second mount in one kernel shares the first one's superblock), so while a fault is active
  (an agent dead, frozen or restarting, nodes cut apart) both nodes may mount: such episodes
  are counted and timed apart ("excused") and are what the UML lab checks with real DRBD;
  one that outlives the fault into the converged state is a violation.
- two_vip_holders: never two VIP holders for longer than one advert interval once converged.
- lost_writes: every acknowledged file is read back at the end.
- unexpected_exits: no agent exit other than an injected SIGKILL or a watchdog kill of an agent
  the soak had frozen (a watchdog timeout of a running agent counts, so do exit codes).
- reload: a valid SIGHUP is applied, an invalid one refused with the agent still running.
- no_recovery: the pair converges again within 60 s of every fault.
- rss_growth / fd_growth: per node, the longest-lived agent process (at least 60 s): median RSS
  of the last 10 % of its life at most 1 MB above the first 10 %, and its open file descriptor
  count (the minimum of each window, so a control connection in flight does not count) unchanged.

    .venv/bin/python -m bench.soak                       # 10 minutes, random seed (printed)
    .venv/bin/python -m bench.soak --minutes 2 --seed 1 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.control import ControlError, request
from tests.lab.agent import REPO, AgentProc
from tests.lab.ganesha import NodeNamespace
from tests.lab.ganesha_agents import EXPORT, FAST_VRRP, SERVING_LOG, GaneshaAgents
from tests.lab.lock import hold_lab_lock
from tests.lab.netns import CLIENT, LabError, NetnsLab, ProcRef, wait_until
from tests.lab.nfsclient import NfsWriter

VIP = "192.0.2.100"
UNIT_FILE = REPO / "systemd" / "failover-agent.service"
ADVERT = float(FAST_VRRP["advert_interval"])
FAULTS = ("agent_kill", "stop_short", "stop_long", "link_flap", "partition", "ganesha_kill", "chain_fail",
          "hup_valid", "hup_invalid", "handover", "maintenance")
# the UML lab's (bench/soak_uml.py): kernel nfsd instead of ganesha
UML_FAULTS = ("agent_kill", "stop_short", "stop_long", "link_flap", "partition", "nfsd_stop", "chain_fail",
              "hup_valid", "hup_invalid", "handover", "maintenance")
INVARIANTS = ("both_mounted", "two_vip_holders", "lost_writes", "unexpected_exits", "reload", "control",
              "no_recovery", "rss_growth", "fd_growth")
CONTROL_TIMEOUT = 30.0  # a handover or maintenance request is answered once the release is done
SETTLE = 1.0  # after convergence is seen, before the converged-state invariants apply
RECOVERY_TIMEOUT = 60.0
SAMPLE = 0.05
LEAK_MIN_LIFE = 60.0
RSS_GROWTH_MAX_KB = 1024
WRITE_RATE = 10  # files per second at most (writer interval 0.1 s): sizes the disk's inode table


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# systemd's part
# --------------------------------------------------------------------------------------------


def _seconds(value: str) -> float:
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|sec|min)?\s*", value)
    if not m:
        raise ValueError(f"cannot read {value!r} as a systemd time span")
    return float(m[1]) * {"ms": 0.001, "min": 60.0}.get(m[2] or "s", 1.0)


@dataclass(frozen=True)
class Unit:
    """The [Service] settings the supervisor emulates, as the shipped unit has them."""

    restart_sec: float = 0.1  # systemd's defaults where the unit says nothing
    watchdog_sec: float = 0.0
    watchdog_signal: int = signal.SIGABRT
    prevent_exit: frozenset[int] = frozenset()
    start_timeout: float = 90.0
    kill_mode: str = "control-group"

    @classmethod
    def from_file(cls, path: Path) -> Unit:
        kv: dict[str, str] = {}
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith(("#", ";")):
                key, value = line.split("=", 1)
                kv[key.strip()] = value.strip()
        if kv.get("Type") != "notify" or kv.get("Restart") != "on-failure":
            raise ValueError(f"{path}: the supervisor emulates Type=notify with Restart=on-failure")
        return cls(
            restart_sec=_seconds(kv.get("RestartSec", "100ms")),
            watchdog_sec=_seconds(kv.get("WatchdogSec", "0")),
            watchdog_signal=int(signal.Signals[kv.get("WatchdogSignal", "SIGABRT")]),
            prevent_exit=frozenset(int(x) for x in kv.get("RestartPreventExitStatus", "").split() if x.isdigit()),
            start_timeout=_seconds(kv.get("TimeoutStartSec", "90")),
            kill_mode=kv.get("KillMode", "control-group"),
        )


@dataclass
class Incarnation:
    """One agent process: when it ran and its (time, RSS kB, open fds) samples."""

    pid: int
    started: float
    ended: float | None = None
    samples: list[tuple[float, int, int, bool]] = field(default_factory=list)  # time, RSS kB, fds, holds VIP


class AgentFaults:
    """SIGKILL, SIGSTOP and SIGCONT of a supervised agent, as both labs' supervisors apply them
    (here and bench/soak_uml.py); an exit the soak caused is expected, a stop is ``frozen``."""

    lock: threading.RLock
    state: str
    expect_exit: bool
    frozen: bool
    frozen_since: float = 0.0

    def _signal(self, sig: int) -> None:
        raise NotImplementedError

    def kill(self) -> bool:
        with self.lock:
            if self.state != "running":
                return False
            self.expect_exit = True
            self._signal(signal.SIGKILL)
            return True

    def freeze(self) -> bool:
        with self.lock:
            if self.state != "running":
                return False
            self.frozen, self.frozen_since = True, time.monotonic()
            self._signal(signal.SIGSTOP)
            return True

    def thaw(self) -> None:
        with self.lock:
            if self.frozen and self.state == "running":
                self._signal(signal.SIGCONT)
            self.frozen = False


class Supervisor(AgentFaults):
    """systemd for one node's agent (see the module docstring). poll() runs in the watch thread."""

    def __init__(self, node: str, agent: AgentProc, ns: NodeNamespace, unit: Unit, workdir: Path) -> None:
        self.node, self.agent, self.ns, self.unit = node, agent, ns, unit
        self.notify_path = workdir / f"notify-{node}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(self.notify_path))
        self.sock.setblocking(False)
        self.lock = threading.RLock()
        self.state = "dead"  # starting -> running -> stopping (ExecStopPost) -> waiting -> starting; failed
        self.pid = 0
        self.started = self.ready_at = self.last_ping = 0.0
        self.expect_exit = False  # the next exit is one the soak caused
        self.frozen = False
        self.unexpected: list[str] = []
        self.exits: list[dict[str, Any]] = []
        self.watchdog_kills = 0
        self._watchdog_seen = 0  # watchdog_kills when the last exit was handled
        self.restarts = 0
        self.foreign_notify = 0
        self.incarnations: list[Incarnation] = []
        self._cleanup: subprocess.Popen[bytes] | None = None
        self._restart_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self.lock:
            env = {"NOTIFY_SOCKET": str(self.notify_path), "WATCHDOG_USEC": str(int(self.unit.watchdog_sec * 1e6))}
            self.agent.start(env=env, wait=False)
            assert self.agent.proc is not None
            self.pid = self.agent.proc.pid
            self.state, self.started, self.expect_exit, self.frozen = "starting", time.monotonic(), False, False
            self.incarnations.append(Incarnation(self.pid, self.started))

    @property
    def running(self) -> bool:
        """READY=1 received and not exited since."""
        return self.state == "running"

    def poll(self, now: float) -> None:
        with self.lock:
            self._read_notify(now)
            proc = self.agent.proc
            if self.state in ("starting", "running") and proc is not None and proc.poll() is not None:
                self._exited(now, proc.returncode)
            elif self.state == "starting" and now - self.started > self.unit.start_timeout:
                self.unexpected.append(f"{self.node}: no READY=1 within TimeoutStartSec {self.unit.start_timeout:g} s")
                self.expect_exit = True
                self._signal(signal.SIGKILL)
            elif (self.state == "running" and self.unit.watchdog_sec
                  and now - self.last_ping > self.unit.watchdog_sec and not self.expect_exit):
                self.watchdog_kills += 1
                if not self.frozen:
                    self.unexpected.append(f"{self.node}: watchdog timeout of a running agent (pid {self.pid}, "
                                           f"last ping {now - self.last_ping:.2f} s ago)")
                self.expect_exit = True
                self._signal(self.unit.watchdog_signal)
            elif self.state == "stopping" and (self._cleanup is None or self._cleanup.poll() is not None):
                self.state, self._restart_at = "waiting", now + self.unit.restart_sec
            elif self.state == "waiting" and now >= self._restart_at:
                self.restarts += 1
                self.start()

    def _read_notify(self, now: float) -> None:
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            sender = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = struct.unpack("iII", payload[:12])[0]
            if sender != self.pid or self.state not in ("starting", "running"):
                self.foreign_notify += 1  # NotifyAccess=main
                continue
            for line in data.decode(errors="replace").splitlines():
                if line == "READY=1" and self.state == "starting":
                    self.state, self.ready_at, self.last_ping = "running", now, now
                elif line == "WATCHDOG=1":
                    self.last_ping = now

    def _signal(self, sig: int) -> None:
        proc = self.agent.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def _exited(self, now: float, code: int) -> None:
        self.incarnations[-1].ended = now
        cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        self.exits.append({"time": now, "pid": self.pid, "cause": cause, "expected": self.expect_exit})
        if not self.expect_exit:
            tail = "\n".join(self.agent.log().splitlines()[-15:])
            self.unexpected.append(f"{self.node}: agent pid {self.pid} ended ({cause}) without a fault:\n{tail}")
        watchdog = self.expect_exit and self.watchdog_kills > self._watchdog_seen
        self._watchdog_seen = self.watchdog_kills
        self.frozen = False
        if self.unit.kill_mode != "process":
            # mixed / control-group: what is left of the unit (ganesha) gets SIGKILL once the main process is gone
            holder = self.ns.holder_pid if self.ns.running else -1
            for ref in map(ProcRef.of, self.ns.pids()):
                if ref is not None and ref.pid != holder:
                    ref.send_signal(signal.SIGKILL)
            wait_until(lambda: all(p == holder for p in self.ns.pids()), 5, interval=0.01)
        # KillMode=process: ganesha, started by the agent, serves on and the restarted agent finds it
        if code == 0 or -code == signal.SIGTERM or code in self.unit.prevent_exit:
            self.state = "failed"  # Restart=on-failure / RestartPreventExitStatus: no restart
            self.unexpected.append(f"{self.node}: the unit would stay down ({cause})")
            return
        # what systemd tells ExecStopPost= about the main process's end
        result = "watchdog" if watchdog else "signal" if code < 0 else "exit-code"
        exit_code = ("dumped" if -code in (signal.SIGABRT, signal.SIGSEGV) else "killed") if code < 0 else "exited"
        env = {**os.environ, "RUNTIME_DIRECTORY": str(self.agent.control_socket.parent), "SERVICE_RESULT": result,
               "EXIT_CODE": exit_code, "EXIT_STATUS": signal.Signals(-code).name[3:] if code < 0 else str(code)}
        argv = self.ns.argv([sys.executable, "-m", "agent.cli", "cleanup", "--config", str(self.agent.config_path)],
                            cwd=REPO)
        self._cleanup = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.state = "stopping"

    # -- faults --------------------------------------------------------------------------------
    def hup(self) -> None:
        with self.lock:
            self._signal(signal.SIGHUP)

    def sample(self, now: float, serving: bool) -> None:
        """RSS and open fds of the agent once it is READY, for the leak check."""
        with self.lock:
            if self.state != "running" or self.frozen or not self.incarnations:
                return
            pid = self.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if m:
            self.incarnations[-1].samples.append((now, int(m[1]), fds, serving))

    def close(self) -> None:
        with self.lock:
            self.state = "closed"
            if self._cleanup is not None and self._cleanup.poll() is None:
                self._cleanup.kill()
                self._cleanup.wait()
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Watching the invariants
# --------------------------------------------------------------------------------------------


def vip_local(fib_trie: str, vip: str = VIP) -> bool:
    """``vip`` is a local address in a kernel's /proc/net/fib_trie text."""
    return re.search(rf"\|-- {re.escape(vip)}\n\s+/32 host LOCAL", fib_trie) is not None


def vip_held(ns: NodeNamespace, vip: str = VIP) -> bool:
    """The node's kernel has ``vip`` as a local address: read from its routing trie, no subprocess.

    /proc/PID/net shows the network namespace of PID: the node's namespace holder never changes.
    """
    try:
        return vip_local(Path(f"/proc/{ns.holder_pid}/net/fib_trie").read_text(), vip)
    except (OSError, LabError):
        return False


@dataclass
class Episode:
    """A stretch of samples where the condition held; ``converged`` if any part was while converged."""

    start: float
    end: float
    converged_for: float = 0.0


class Episodes:
    """Stretches of consecutive samples in which a condition held, per condition.

    Shared by the netns and the UML watch: the invariants are judged on episodes (how long,
    how much of it while it counted), not on single samples, so both labs judge them alike
    whatever their sampling period.
    """

    def __init__(self, *names: str) -> None:
        self.all: dict[str, list[Episode]] = {n: [] for n in names}
        self._open: dict[str, Episode | None] = dict.fromkeys(names)

    def sample(self, name: str, holds: bool, now: float, counts: bool, period: float) -> None:
        """One sample; ``counts``: this sample period of it counts (converged, or strict)."""
        ep = self._open[name]
        if not holds:
            self._open[name] = None
            return
        if ep is None:
            ep = self._open[name] = Episode(now, now)
            self.all[name].append(ep)
        if counts:
            ep.converged_for += period
        ep.end = now


class Watch:
    """The 50 ms loop: supervisors polled, disk and VIP holders sampled, episodes recorded."""

    def __init__(self, ga: GaneshaAgents, sups: dict[str, Supervisor], strict_mount: bool = False) -> None:
        self.ga, self.sups = ga, sups
        self.quiet_from = math.inf  # converged-state invariants apply from here (the scheduler sets it)
        # guarded lab: both mounted counts unless an agent cannot act (dead, frozen, restarting) or
        # the nodes are cut apart (one network: a cut between them is the peer's death to each)
        self.strict_mount = strict_mount
        self.partitioned = False
        self.mounted: dict[str, bool] = {n: False for n in sups}
        self.vips: dict[str, bool] = {n: False for n in sups}
        self.eps = Episodes("both_mounted", "two_vip_holders")
        self.episodes = self.eps.all
        self.ticks = 0
        self.late = 0  # ticks that started more than one sample period late
        # the node seen serving alone (mounted and the VIP), and how often that moved to the other
        # node: "became MASTER" lines also count a chain the monitor restarted in place
        self.serving: str | None = None
        self.failovers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-watch", daemon=True)
        self.error: str | None = None

    def converged(self, now: float) -> bool:
        return now >= self.quiet_from and all(s.running and not s.frozen for s in self.sups.values())

    def _run(self) -> None:
        next_tick = time.monotonic()
        last_sample = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - next_tick > SAMPLE:
                    self.late += 1
                for sup in self.sups.values():
                    sup.poll(now)
                for node, ns in self.ga.ns.items():
                    try:
                        self.mounted[node] = self.ga.disk.mounted_in(ns)
                    except (OSError, LabError):
                        self.mounted[node] = False
                    self.vips[node] = vip_held(ns)
                conv = self.converged(now)
                helpless = self.partitioned or any(not s.running or s.frozen for s in self.sups.values())
                self.eps.sample("both_mounted", all(self.mounted.values()), now,
                                not helpless if self.strict_mount else conv, SAMPLE)
                self.eps.sample("two_vip_holders", sum(self.vips.values()) > 1, now, conv, SAMPLE)
                alone = [n for n in self.vips if self.vips[n] and self.mounted[n]]
                if len(alone) == 1 and alone[0] != self.serving:
                    self.failovers += self.serving is not None
                    self.serving = alone[0]
                if now - last_sample >= 1.0:
                    last_sample = now
                    for node, sup in self.sups.items():
                        sup.sample(now, self.vips[node])
                self.ticks += 1
                next_tick += SAMPLE
                self._stop.wait(max(0.0, next_tick - time.monotonic()))
        except Exception as exc:  # the soak must notice a broken watcher, not run blind
            self.error = f"{type(exc).__name__}: {exc}"
            raise

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --------------------------------------------------------------------------------------------
# What both soaks share (the UML one: bench/soak_uml.py): result, schedule, fault loop, findings
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    seed: int
    minutes: float
    guarded: bool = False
    lab: str = "netns"
    self_fences: dict[str, int] = field(default_factory=dict)
    started: str = ""
    wall_seconds: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    takeovers: dict[str, int] = field(default_factory=dict)
    failovers: int = 0
    violations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVARIANTS, 0))
    details: list[str] = field(default_factory=list)
    excused: dict[str, Any] = field(default_factory=dict)
    writes: dict[str, Any] = field(default_factory=dict)
    leaks: dict[str, Any] = field(default_factory=dict)
    supervisor: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    watch: dict[str, Any] = field(default_factory=dict)
    schedule: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)  # what the watch achieved, as report lines

    @classmethod
    def new(cls, seed: int, minutes: float, kinds: tuple[str, ...], invariants: tuple[str, ...],
            **more: Any) -> Result:
        """A result whose tables list the lab's own fault kinds and invariants, in that order."""
        return cls(seed, minutes, faults=dict.fromkeys(kinds, 0), skipped=dict.fromkeys(kinds, 0),
                   violations=dict.fromkeys(invariants, 0), **more)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def violate(self, name: str, detail: str) -> None:
        self.violations[name] += 1
        self.details.append(f"{name}: {detail}")
        log(f"VIOLATION {name}: {detail}")


class Supervised(Protocol):
    """What the fault loop does to an agent through its lab's systemd stand-in."""

    def kill(self) -> bool: ...

    def freeze(self) -> bool: ...

    def thaw(self) -> None: ...


class FaultLoop:
    """The seeded schedule both labs run: one fault at a time, healed, then a wait until the pair
    converged again (or ``no_recovery``), then a quiet spell; and the findings both judge alike.

    A lab's soak says how to find the roles, inject a fault, tell convergence and describe a
    pair that did not converge; this class decides what happens when, from the seed alone, so a
    seed names the same sequence of draws in both labs (the kinds drawn differ with the lab's list).
    """

    MASTER_ONLY: frozenset[str] = frozenset()  # kinds that only make sense on the serving node
    INJECT_ERRORS: tuple[type[BaseException], ...] = (ControlError, LabError, OSError, subprocess.SubprocessError)
    QUIET = (2.5, 6.0)  # seconds of converged quiet before each fault
    recovery_timeout = RECOVERY_TIMEOUT

    def __init__(self, seed: int, minutes: float, max_faults: int, kinds: tuple[str, ...], result: Result) -> None:
        self.rng, self.kinds, self.result = random.Random(seed), kinds, result
        self.minutes, self.max_faults = minutes, max_faults
        self.recoveries: list[float] = []
        self._bag: list[str] = []

    # -- what a lab provides ---------------------------------------------------------------------
    def roles(self) -> tuple[str | None, str | None]:
        """(serving node, other node), None when unclear."""
        raise NotImplementedError

    def inject(self, kind: str, node: str, other: str) -> bool:
        """Apply one fault and heal it; False if it could not be applied (counted as skipped)."""
        raise NotImplementedError

    def heal_mark(self) -> float:
        """The moment of the heal on the writer's clock (convergence needs a write after it)."""
        return time.monotonic()

    def wait_converged(self, since: float) -> bool:
        raise NotImplementedError

    def fault_active(self, active: bool) -> None:
        """The converged-state invariants stop applying (a fault begins) or apply again soon."""
        raise NotImplementedError

    def unconverged(self) -> str:
        """What the pair looks like when it did not converge, for the report."""
        return ""

    def start_pair(self) -> float:
        """Agents up, the client writing, the pair converged; returns when the schedule starts."""
        raise NotImplementedError

    def finish(self, t_start: float) -> None:
        raise NotImplementedError

    def supervised(self, node: str) -> Supervised:
        raise NotImplementedError

    def control(self, node: str, command: str, on: bool | None = None) -> bool:
        """A control request to the node's agent (handover, maintenance on/off); False: refused."""
        raise NotImplementedError

    def watchdog_due(self, node: str) -> None:
        """An agent stopped for longer than WatchdogSec is about to be resumed: the lab's watchdog
        may need a moment to have fired (a lab polling from afar)."""

    # -- the faults both labs inject alike ------------------------------------------------------------
    def inject_agent_fault(self, kind: str, node: str, watchdog_sec: float) -> bool | None:
        """agent_kill, stop_short/stop_long, handover, maintenance; None for any other kind."""
        rng, sup = self.rng, self.supervised(node)
        if kind == "agent_kill":
            return sup.kill()
        if kind in ("stop_short", "stop_long"):
            wd = watchdog_sec
            pause = rng.uniform(0.2, wd / 2 - 0.2) if kind == "stop_short" else rng.uniform(wd + 0.5, wd + 2.0)
            if not sup.freeze():
                return False
            time.sleep(pause)
            if kind == "stop_long":
                self.watchdog_due(node)
            sup.thaw()
            return True
        if kind == "handover":
            return self.control(node, "handover")
        if kind == "maintenance":
            if not self.control(node, "maintenance", on=True):
                return False
            try:
                time.sleep(rng.uniform(2.0, 5.0))
            finally:
                self.control(node, "maintenance", on=False)
            return True
        return None

    def run(self) -> Result:
        self.result.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        t_start = self.start_pair()
        self.fault_active(False)
        self.fault_loop(t_start)
        time.sleep(2.0)
        self.finish(t_start)
        return self.result

    # -- the schedule ---------------------------------------------------------------------------
    def pick(self) -> tuple[str, bool]:
        """Next fault and whether it hits the serving node (else the other one); seeded.

        Faults come in rounds, each a shuffle of every kind, so a short run still has them all.
        """
        if not self._bag:
            self._bag = list(self.kinds)
            self.rng.shuffle(self._bag)
        kind = self._bag.pop()
        on_master = kind in self.MASTER_ONLY or self.rng.random() < 0.6
        return kind, on_master

    def fault_loop(self, t_start: float) -> None:
        res = self.result
        deadline = t_start + self.minutes * 60
        count = 0
        while time.monotonic() < deadline and count < self.max_faults:
            time.sleep(self.rng.uniform(*self.QUIET))  # quiet, converged
            if time.monotonic() >= deadline:
                break
            kind, on_master = self.pick()
            serving, other = self.roles()
            if serving is None or other is None:
                res.skipped[kind] += 1
                continue
            node, peer = (serving, other) if on_master else (other, serving)
            count += 1
            self.fault_active(True)
            t0 = time.monotonic()
            res.schedule.append(f"{t0 - t_start:7.1f} {kind} on {node} ({'master' if on_master else 'backup'})")
            log(f"fault {count}: {kind} on {node} ({'master' if on_master else 'backup'})")
            try:
                applied = self.inject(kind, node, peer)
            except self.INJECT_ERRORS as exc:
                applied = False
                res.details.append(f"injector: {kind} on {node}: {type(exc).__name__}: {exc}")
            res.faults[kind] += applied
            res.skipped[kind] += not applied
            healed, mark = time.monotonic(), self.heal_mark()
            if self.wait_converged(mark):
                self.recoveries.append(time.monotonic() - healed)
                res.schedule[-1] += f": converged {self.recoveries[-1]:.2f} s after the heal"
            else:
                res.violate("no_recovery", f"{kind} on {node}: not converged {self.recovery_timeout:g} s after the "
                            f"heal ({self.unconverged()})")
            self.fault_active(False)

    # -- the findings ---------------------------------------------------------------------------
    def judge_episodes(self, name: str, episodes: list[Episode], limit: float, t_start: float, period: float,
                       when: str = "converged") -> None:
        """Episodes longer than ``limit`` where they counted are violations; the rest are reported."""
        res = self.result
        bad = [e for e in episodes if e.converged_for > limit]
        for e in bad:
            res.violate(name, f"{e.end - e.start:.2f} s from {e.start - t_start:.1f} s into the run, "
                        f"{e.converged_for:.2f} s of it {when}")
        res.excused[name] = {"episodes": len(episodes) - len(bad),
                             "max_s": round(max((e.end - e.start + period for e in episodes), default=0.0), 3)}

    def summarize_recovery(self) -> None:
        rec = self.recoveries
        self.result.recovery = {"n": len(rec), "median_s": round(statistics.median(rec), 2) if rec else None,
                                "max_s": round(max(rec), 2) if rec else None}

    def keep(self, logs: dict[str, str], always: bool) -> None:
        """The lab's workdir goes with the lab: keep what explains a violation (or everything)."""
        res = self.result
        if res.ok and not always:
            return
        keep = Path(f"/var/tmp/failover-agent-soak-{'' if res.lab == 'netns' else res.lab + '-'}{res.seed}-logs")
        keep.mkdir(parents=True, exist_ok=True)
        for name, text in logs.items():
            (keep / name).write_text(text)
        (keep / "schedule.txt").write_text("\n".join(res.schedule) + "\n")
        res.details.append(f"logs and schedule kept in {keep}")

    def leak(self, node: str, incarnations: list[Incarnation], min_samples: int = 20) -> dict[str, Any]:
        lives = [i for i in incarnations if len(i.samples) >= min_samples]
        if not lives:
            return {"checked": False, "why": f"no agent process was sampled {min_samples} times"}
        inc = max(lives, key=lambda i: i.samples[-1][0] - i.samples[0][0])
        t0, t1 = inc.samples[0][0], inc.samples[-1][0]
        life = t1 - t0
        span = max(1.0, 0.1 * life)
        first = [s for s in inc.samples if s[0] <= t0 + span]
        last = [s for s in inc.samples if s[0] >= t1 - span]
        rss_growth = statistics.median(s[1] for s in last) - statistics.median(s[1] for s in first)
        # fds compared like with like: a serving agent has more open (ganesha's pipes), so the first
        # and last 10 % of the samples taken in each role, the minimum of each (a control connection
        # in flight is not a leak)
        fds: dict[str, list[int]] = {}
        for role in (False, True):
            same = [x[2] for x in inc.samples if x[3] == role]
            if len(same) >= 10:
                n = max(1, len(same) // 10)
                fds["serving" if role else "idle"] = [min(same[:n]), min(same[-n:])]
        fd_growth = max((b - a for a, b in fds.values()), default=0)
        out: dict[str, Any] = {
            "checked": life >= LEAK_MIN_LIFE, "pid": inc.pid, "life_s": round(life, 1),
            "rss_first_kb": statistics.median(s[1] for s in first),
            "rss_last_kb": statistics.median(s[1] for s in last),
            "rss_growth_kb": rss_growth, "fds": fds, "incarnations": len(incarnations)}
        if life < LEAK_MIN_LIFE:
            out["why"] = f"longest-lived agent process ran {life:.0f} s < {LEAK_MIN_LIFE:g} s"
            return out
        if rss_growth > RSS_GROWTH_MAX_KB:
            self.result.violate("rss_growth", f"{node} pid {inc.pid}: RSS +{rss_growth} kB over {life:.0f} s")
        if fd_growth > 0:
            self.result.violate("fd_growth", f"{node} pid {inc.pid}: {fd_growth} more open fds over {life:.0f} s")
        return out


# --------------------------------------------------------------------------------------------
# The netns soak
# --------------------------------------------------------------------------------------------


class Soak(FaultLoop):
    MASTER_ONLY = frozenset({"ganesha_kill", "chain_fail", "handover"})

    def __init__(self, lab: NetnsLab, seed: int, minutes: float, max_faults: int,
                 kinds: tuple[str, ...] = FAULTS, guarded: bool = False) -> None:
        super().__init__(seed, minutes, max_faults, kinds,
                         Result.new(seed, minutes, FAULTS, INVARIANTS, guarded=guarded))
        self.lab = lab
        self.unit = Unit.from_file(UNIT_FILE)
        # one inode per 16 KiB: room for every file the writer can create in the run, twice over
        disk_mb = max(128, math.ceil(minutes * 60 * WRITE_RATE * 16 * 2 / 1024))
        self.guarded = guarded
        self.keep_logs = False
        self.ga = GaneshaAgents(lab, disk_mb=disk_mb, guarded=guarded)
        self.sups = {n: Supervisor(n, a, self.ga.ns[n], self.unit, lab.workdir) for n, a in self.ga.agents.items()}
        for sup in self.sups.values():
            lab.add_cleanup(sup.close)
        self.texts = {n: a.config_path.read_text() for n, a in self.ga.agents.items()}
        self.watch = Watch(self.ga, self.sups, strict_mount=guarded)
        self.writer: NfsWriter | None = None

    # -- helpers ------------------------------------------------------------------------------
    def status(self, node: str) -> dict[str, Any] | None:
        if not self.sups[node].running:
            return None
        try:
            return request(str(self.ga.agents[node].control_socket), "status", timeout=3)
        except (ControlError, OSError, ValueError):
            return None

    def roles(self) -> tuple[str | None, str | None]:
        """(serving node, other node) as the agents say, None when unclear."""
        phases = {n: (s or {}).get("instance", {}).get("phase") for n, s in ((n, self.status(n)) for n in self.sups)}
        serving = [n for n, p in phases.items() if p == "SERVING"]
        if len(serving) != 1:
            return None, None
        other = next(n for n in self.sups if n != serving[0])
        return serving[0], other

    def wait_converged(self, since: float, timeout: float = RECOVERY_TIMEOUT) -> bool:
        """One node SERVING, the other IDLE, one VIP holder, one mount, a write acknowledged after ``since``."""
        assert self.writer is not None
        writer = self.writer
        deadline = time.monotonic() + timeout

        def done() -> bool:
            if not all(s.running and not s.frozen for s in self.sups.values()):
                return False
            if sum(self.watch.vips.values()) != 1 or sum(self.watch.mounted.values()) != 1:
                return False
            phases = [(self.status(n) or {}).get("instance", {}).get("phase") for n in self.sups]
            if sorted(str(p) for p in phases) != ["IDLE", "SERVING"]:
                return False
            return writer.first_ack_after(since) is not None

        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.1)
        return False

    def fault_active(self, active: bool) -> None:
        self.watch.quiet_from = math.inf if active else time.monotonic() + SETTLE
        if not active:
            self.watch.partitioned = False

    def unconverged(self) -> str:
        states = {n: (s.state, (self.status(n) or {}).get("instance", {}).get("phase")) for n, s in self.sups.items()}
        return f"supervisor/phase {states}, VIP {self.watch.vips}, mounted {self.watch.mounted}"

    def ctl(self, node: str, command: str, **args: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            return request(str(self.ga.agents[node].control_socket), command, timeout=CONTROL_TIMEOUT, **args)
        except ControlError as exc:
            if "timed out" in str(exc) or time.monotonic() - t0 >= CONTROL_TIMEOUT:
                self.result.violate("control", f"{command} {args or ''} on {node}: no answer within "
                                    f"{CONTROL_TIMEOUT:g} s")
            raise
        except TimeoutError:
            self.result.violate("control", f"{command} {args or ''} on {node}: no answer within {CONTROL_TIMEOUT:g} s")
            raise

    def set_partition(self, on: bool) -> None:
        for node in self.sups:
            port = f"v-{node}"
            subprocess.run(["ip", "-n", self.lab.ns("br"), "link", "set", "dev", port, "type", "bridge_slave",
                            "isolated", "on" if on else "off"], check=True, capture_output=True, timeout=10)

    def ganesha_pid(self, node: str) -> ProcRef | None:
        for pid in self.ga.ns[node].pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "ganesha.nfsd":
                    return ProcRef.of(pid)
            except OSError:
                continue
        return None

    def wait_counter(self, node: str, key: str, before: int, timeout: float = 10.0) -> bool:
        def grew() -> bool:
            st = self.status(node)
            return st is not None and int(st["agent"][key]) > before

        return wait_until(grew, timeout, interval=0.1)

    # -- faults -------------------------------------------------------------------------------
    def inject(self, kind: str, node: str, other: str) -> bool:
        """Apply one fault and heal it; False if it could not be applied (counted as skipped)."""
        rng, sup = self.rng, self.sups[node]
        common = self.inject_agent_fault(kind, node, self.unit.watchdog_sec)
        if common is not None:
            return common
        if kind == "link_flap":
            self.lab.set_link(node, False)
            time.sleep(rng.uniform(0.3, 3.0))
            self.lab.set_link(node, True)
            return True
        if kind == "partition":
            self.watch.partitioned = True  # until the pair converged again (run())
            self.set_partition(True)
            try:
                time.sleep(rng.uniform(1.0, 5.0))
            finally:
                self.set_partition(False)
            return True
        if kind == "ganesha_kill":
            ref = self.ganesha_pid(node)
            return ref is not None and ref.send_signal(signal.SIGKILL)
        if kind == "chain_fail":
            dev = self.ga.disk.dev
            self.ga.ns[other].run(["mount", "--bind", "/dev/null", dev])
            try:
                self.ctl(node, "handover")
                time.sleep(rng.uniform(3.0, 6.0))
            finally:
                self.ga.ns[other].run(["umount", dev], check=False)
            return True
        if kind in ("hup_valid", "hup_invalid"):
            agent = self.ga.agents[node]
            st = self.status(node)
            if st is None:
                return False
            key = "reloads" if kind == "hup_valid" else "reload_failures"
            before = int(st["agent"][key])
            base = self.texts[node]
            if kind == "hup_valid":
                current = agent.config_path.read_text()
                changed = base.replace("[vrrp]\n", f"[vrrp]\ngarp_count = {rng.randint(2, 4)}\n", 1)
                text = base if current != base else changed
            else:
                text = base.replace("vrid = 51", "vrid = 999", 1)
            agent.config_path.write_text(text)
            sup.hup()
            applied = self.wait_counter(node, key, before)
            if kind == "hup_invalid":
                agent.config_path.write_text(base)
            if not applied:
                self.result.violate("reload", f"{kind} on {node}: {key} did not grow within 10 s "
                                    f"(agent {'running' if sup.running else sup.state})")
            elif kind == "hup_invalid" and not sup.running:
                self.result.violate("reload", f"hup_invalid on {node}: the agent stopped")
            return True
        raise ValueError(kind)

    def supervised(self, node: str) -> Supervised:
        return self.sups[node]

    def control(self, node: str, command: str, on: bool | None = None) -> bool:
        self.ctl(node, command, **({} if on is None else {"on": on}))
        return True

    # -- run ----------------------------------------------------------------------------------
    def start_pair(self) -> float:
        t_start = time.monotonic()
        self.watch.start()
        self.sups["a"].start()
        if not wait_until(lambda: self.ga.phase("a") == "SERVING", 30):
            raise LabError(f"a does not serve:\n{self.ga.agents['a'].log()[-3000:]}")
        self.sups["b"].start()
        writer = self.writer = NfsWriter(self.lab, CLIENT, VIP, export=self.ga.disk.path(EXPORT),
                                         interval=1.0 / WRITE_RATE)
        writer.start()
        self.lab.add_cleanup(writer.stop)
        if not writer.wait_acked(5, timeout=30):
            raise LabError(f"no writes through the VIP: {writer.errors[-3:]} {writer.stderr_text()[-500:]}")
        if not self.wait_converged(t_start):
            raise LabError("the pair did not settle before the first fault")
        return t_start

    def finish(self, t_start: float) -> None:
        res, writer = self.result, self.writer
        assert writer is not None
        writer.stop()
        self.watch.stop()
        if self.watch.error:
            res.details.append(f"watcher died: {self.watch.error}")
        res.wall_seconds = round(time.monotonic() - t_start, 1)
        report = writer.verify(deadline=120)
        lost = len(report.missing) + len(report.corrupt) + len(report.errors) + (0 if report.complete else 1)
        if lost:
            res.violate("lost_writes", report.describe())
        res.writes = {"acked": len(writer.acks), "errors": len(writer.errors), "verified_ok": len(report.ok),
                      "max_gap_s": round(writer.max_gap(), 3)}
        self.judge_episodes("both_mounted", self.watch.episodes["both_mounted"], 0.0, t_start, SAMPLE,
                            "counted" if res.guarded else "converged")
        self.judge_episodes("two_vip_holders", self.watch.episodes["two_vip_holders"], ADVERT, t_start, SAMPLE)
        for node, sup in self.sups.items():
            for text in sup.unexpected:
                res.violate("unexpected_exits", text)
            res.supervisor[node] = {"restarts": sup.restarts, "watchdog_kills": sup.watchdog_kills,
                                    "exits": len(sup.exits), "foreign_notify": sup.foreign_notify}
            res.leaks[node] = self.leak(node, sup.incarnations)
            log_text = self.ga.agents[node].log()
            res.takeovers[node] = len(SERVING_LOG.findall(log_text))
            record = self.lab.workdir / f"fence-{node}.log"  # [guard] fence_record of the guarded lab
            res.self_fences[node] = len(record.read_text().splitlines()) if record.exists() else 0
        res.failovers = self.watch.failovers
        self.summarize_recovery()
        res.watch = {"ticks": self.watch.ticks, "late_ticks": self.watch.late}
        self.keep({f"agent-{node}.log": agent.log() for node, agent in self.ga.agents.items()}, self.keep_logs)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_report(res: Result) -> None:
    print(f"\nsoak ({res.lab} lab): seed {res.seed}, {res.minutes:g} min requested, {res.wall_seconds:.0f} s run, "
          f"started {res.started}")
    print("\n| fault | injected | skipped |\n|---|---|---|")
    for kind in res.faults:
        print(f"| {kind} | {res.faults[kind]} | {res.skipped[kind]} |")
    print(f"| **total** | {sum(res.faults.values())} | {sum(res.skipped.values())} |")
    takes = ", ".join(f"{n} {c}" for n, c in res.takeovers.items())
    print(f"\nfailovers {res.failovers} (takeovers: {takes}); recovery after a fault: median "
          f"{res.recovery.get('median_s')} s, max {res.recovery.get('max_s')} s")
    sup = "; ".join(f"{n}: {v['restarts']} restarts, {v['watchdog_kills']} watchdog kills" for n, v in
                    res.supervisor.items())
    print(f"supervisor: {sup}")
    if res.guarded:
        print(f"guarded lab ([track], [peer] heartbeats, [guard], mount gate); self-fences recorded: {res.self_fences}")
    print(f"writes: {res.writes}")
    for line in res.sampling.get("report", []):
        print(line)
    print("\n| invariant | violations |\n|---|---|")
    for name in res.violations:
        print(f"| {name} | {res.violations[name]} |")
    for name, ex in res.excused.items():
        print(f"(lab, not violations: {name} while a fault was active: {ex['episodes']} episodes, longest "
              f"{ex['max_s']:.2f} s)")
    for node, leak in res.leaks.items():
        if leak.get("checked"):
            print(f"{node}: pid {leak['pid']} over {leak['life_s']:.0f} s: RSS {leak['rss_first_kb']} -> "
                  f"{leak['rss_last_kb']} kB ({leak['rss_growth_kb']:+} kB), open fds first -> last 10 % "
                  + ", ".join(f"{role} {a} -> {b}" for role, (a, b) in leak["fds"].items()))
        else:
            print(f"{node}: leak check not applicable: {leak.get('why')}")
    if res.details:
        print("\ndetails:")
        for d in res.details:
            print(f"- {d}")
    print(f"\n{'PASS' if res.ok else 'FAIL'}: {sum(res.violations.values())} violations")


def run_soak(seed: int, minutes: float, max_faults: int | None = None, prefix: str | None = None,
             kinds: tuple[str, ...] = FAULTS, guarded: bool = False, keep_logs: bool = False) -> Result:
    faults = max_faults if max_faults is not None else max(1, int(minutes * 30))
    with NetnsLab(prefix or f"sk{os.getpid() % 100000}") as lab:
        soak = Soak(lab, seed, minutes, faults, kinds, guarded)
        soak.keep_logs = keep_logs
        return soak.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the fault schedule (default 10)")
    parser.add_argument("--seed", type=int, help="schedule seed (default: random, printed)")
    parser.add_argument("--max-faults", type=int, help="stop after this many faults (default 30 per minute)")
    parser.add_argument("--faults", help=f"comma-separated subset of {','.join(FAULTS)} (default: all)")
    parser.add_argument("--json", type=Path, help="result file (default /var/tmp/failover-agent-soak-SEED.json)")
    parser.add_argument("--guarded", action="store_true",
                        help="the lab's guarded agents ([track], [peer] heartbeats, [guard]): both mounted counts "
                             "whenever both agents run and the nodes are not cut apart")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the agent logs and the schedule (always kept after a violation)")
    parser.add_argument("--uml", action="store_true",
                        help="the user-mode-linux lab: real DRBD 8.4 and kernel nfsd, never two Primaries "
                             f"(faults: {','.join(UML_FAULTS)}; default 1 fault per 10 s at most)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    if args.uml and args.guarded:
        parser.error("--guarded is the netns lab's: the UML lab's agents always run [track], [peer] and [guard]")
    known = UML_FAULTS if args.uml else FAULTS
    kinds = tuple(args.faults.split(",")) if args.faults else known
    if not kinds or set(kinds) - set(known):
        parser.error(f"--faults: choose from {', '.join(known)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    out = args.json or Path(f"/var/tmp/failover-agent-soak-{'uml-' if args.uml else ''}{seed}.json")
    hold_lab_lock("bench.soak")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the lab is torn down on kill
    log(f"soak: seed {seed}, {args.minutes:g} minutes{' (UML lab)' if args.uml else ''}")
    if args.uml:
        from bench.soak_uml import run_uml_soak

        res = run_uml_soak(seed, args.minutes, args.max_faults, kinds=kinds, keep_logs=args.keep_logs)
    else:
        res = run_soak(seed, args.minutes, args.max_faults, kinds=kinds, guarded=args.guarded,
                       keep_logs=args.keep_logs)
    print_report(res)
    out.write_text(json.dumps({**asdict(res), "ok": res.ok}, indent=1))
    print(f"result written to {out}")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
