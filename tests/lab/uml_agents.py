"""failover-agent inside user-mode-linux nodes: real DRBD 8.4, kernel nfsd, a kernel NFS client.

Built on tests/lab/uml.py.  Nodes a (priority 150) and b (priority 100) each run the agent
from the working tree exactly as a server would, minus systemd: in the foreground, logging to
stderr (no journald in the guest), with the guest's venv interpreter::

    cd /opt/failover-agent/src && /opt/failover-agent/venv/bin/python3 -m agent.daemon \\
        --config /etc/failover-agent/agent.toml --log-target stderr

Their chain is the whole storage chain: DRBD promote -> mount /dev/drbd0 on /srv/nfs -> NFS
state folder (/srv/nfs/.nfs-state bound on /var/lib/nfs) -> kernel nfsd -> VIP 192.0.2.100.
The client node mounts 192.0.2.100:/srv/nfs (hard mount) and runs tests/lab/uml_nfsload.py,
which writes numbered files whose names carry their sha256.

What the agent relies on and the lab sets up before starting it (as an admin would): the DRBD
resource configured and up on both nodes, in sync, both Secondary (``drbdadm up`` at boot,
never ``primary``), an ext4 on it, the mountpoint present.  UML has no carrier events (a cut
cable is not seen as link down), no systemd and no journald; see tests/lab/uml.py.

Ground truth is read from the nodes (``facts``: /proc/drbd, /proc/mounts, nfsd's thread
count, the addresses on eth0), never taken from the agent's own account.

Used by tests/test_uml_storage.py and ``python -m tests.lab.demo --uml``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

from tests.lab.agent import TRANSITION, Logged, render_agent_conf
from tests.lab.netns import LabError, wait_until
from tests.lab.uml import (
    CLIENT,
    GUEST_PYTHON,
    GUEST_SRC,
    REPLICATION,
    SERVICE,
    DrbdResource,
    DrbdTimings,
    SpawnedProcess,
    UmlLab,
    UmlNode,
    connected_uptodate,
    drbd_bootstrap,
    drbd_up,
    nfs_mount,
    parse_proc_drbd,
    wait_drbd,
)

VIP = "192.0.2.100"
EXPORT = "/srv/nfs"
CLIENT_MNT = "/mnt/nfs"
CLIENT_DIR = f"{CLIENT_MNT}/load"
GUEST_CONF = "/etc/failover-agent/agent.toml"
GUEST_RUN = "/run/failover-agent"
GUEST_SOCKET = f"{GUEST_RUN}/control.sock"
GUEST_LOG = f"{GUEST_RUN}/agent.log"
GUEST_STATE = "/var/lib/failover-agent/state.json"
NFSLOAD = f"{GUEST_SRC}/tests/lab/uml_nfsload.py"
PRIORITIES = {"a": 150, "b": 100}
WITNESS = "192.0.2.10"  # the client node
PEER_SECRET = "/etc/failover-agent/peer.key"
FENCE_PEER_HANDLER = "/usr/local/sbin/failover-fence-peer"
FENCE_PEER_LOG = "/run/lab/fence-peer.log"
SERVING_LOG = re.compile(r"became MASTER: .*\(([\d.]+) ms after the transition\)")

# Three UML guests share two host CPUs: under a DRBD resync a guest stalls for up to ~0.5 s (its
# pings and heartbeats arrive that late), so the peer counts as gone only after 1 s of silence on
# every path, not the default 0.3 s, which would make a loaded backup take over from a live master.
UML_HEARTBEAT: dict[str, Any] = {"heartbeat": 0.1, "dead_after": 10}
# VRRPv2 with 1 s adverts: Master_Down_Interval 3.41 s (a) / 3.61 s (b).  preempt off: a node
# that comes back stays BACKUP instead of taking the data back (a second outage for nothing).
VRRP: dict[str, Any] = {"version": 2, "advert_interval": 1, "preempt": False}
MONITOR: dict[str, Any] = {"interval": 1.0, "max_restarts": 1, "hold_down": 2.0, "step_timeout": 30}


def _table(name: str, values: dict[str, Any]) -> str:
    from tests.lab.agent import _toml_value

    return f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())


def storage_conf(
    priority: int,
    *,
    nfs: bool = True,
    resource: DrbdResource | None = None,
    vrrp: dict[str, Any] | None = None,
    monitor: dict[str, Any] | None = None,
    drbd: dict[str, Any] | None = None,
    track: dict[str, Any] | None = None,
    peer: dict[str, Any] | None = None,
    guard: dict[str, Any] | None = None,
) -> str:
    """The agent's whole config for a storage node (``nfs=False``: DRBD + mount + VIP only).

    ``drbd``, ``track`` and ``monitor`` update the defaults of their sections; ``peer`` adds a
    [peer] section (address, secret_file...).
    """
    res = resource or DrbdResource()
    # the state file (and the heal evidence next to it, agent.healer) on the root disk, as in
    # production: a node that fences itself must find them after its reboot
    text = render_agent_conf({"control_socket": GUEST_SOCKET, "state_file": GUEST_STATE}, priority=priority,
                             **{**VRRP, **(vrrp or {})})
    # Without fencing in DRBD, after a crash of the Primary the survivor can only tell "dead"
    # from "cut off" by a witness beyond its peer (the client node; unknown_peer = witness).
    text += _table("drbd", {"resource": res.name, "unknown_peer": "witness", **(drbd or {})})
    text += _table("filesystem", {"device": res.device, "mountpoint": EXPORT, "fstype": "ext4", "kill_grace": 1.0})
    if nfs:
        text += _table(
            "nfs",
            {
                "backend": "kernel",
                "state_dir": ".nfs-state",
                "grace_time": 10,
                "lease_time": 10,
                "server_scope": "nfs-ha",
                "threads": 8,
                "service": "direct",
            },
        )
        # an inline table, as the [nfs] contract writes it
        text += (
            'exports = [{ path = "/srv/nfs", clients = "192.0.2.0/24", '
            'options = "rw,sync,no_subtree_check,no_root_squash,fsid=1" }]\n'
        )
    text += _table("monitor", {**MONITOR, **(monitor or {})})
    text += _table("track", {"witnesses": [WITNESS], **(track or {})})
    if peer is not None:
        text += _table("peer", peer)
    if guard is not None:
        text += _table("guard", guard)
    return text


# DRBD's fence-peer handler in the guest: `failoverctl fence-peer` against the agent's control
# socket, run from the project tree; each call is logged (guest uptime, exit code, what it said).
_FENCE_PEER_SCRIPT = f"""#!/bin/sh
# DRBD fence-peer handler (drbd.conf handlers section), written by tests/lab/uml_agents.py
cd {GUEST_SRC} || exit 1
out=$({GUEST_PYTHON} -m agent.cli fence-peer --socket {GUEST_SOCKET} 2>&1)
rc=$?
read -r up _ </proc/uptime
printf '%s fence-peer %s exit %s: %s\\n' "$up" "${{DRBD_RESOURCE:-?}}" "$rc" "$(echo "$out" | tr '\\n' ' ')" \\
    >>{FENCE_PEER_LOG}
exit $rc
"""


def fencing_resource(**changes: Any) -> DrbdResource:
    """r0 with DRBD's fencing through the agents; split-brain policies left at ``disconnect``.

    DRBD 8.4 syntax: ``fencing`` belongs to the disk section (9.x moved it to net).
    ``resource-and-stonith``: a Primary that loses its peer freezes its I/O until the handler
    (the agent's ``failoverctl fence-peer``, FENCE_PEER_HANDLER, written into the nodes by
    StorageLab) says the peer is Outdated (4) or dead (5); its answer 6 keeps it frozen
    (agent.heal).  The after-sb policies stay ``disconnect`` (DrbdResource's): DRBD never picks
    a victim by itself, the agents' heal does, or the admin.
    """
    base = DrbdResource()
    return DrbdResource(disk_options=(*base.disk_options, ("fencing", "resource-and-stonith")),
                        handlers=(("fence-peer", FENCE_PEER_HANDLER),), **changes)  # fmt: skip


# --------------------------------------------------------------------------------------------
# What a node really holds
# --------------------------------------------------------------------------------------------

_FACTS_SCRIPT = r"""
sed -n 's/^ *0: cs:\([^ ]*\) ro:\([^/]*\)\/[^ ]* ds:\([^/]*\)\/.*/drbd \2 \1 \3/p' /proc/drbd 2>/dev/null
grep -q " $1 " /proc/mounts && echo mounted
grep -q " /var/lib/nfs " /proc/mounts && echo state_bound
[ -r /proc/fs/nfsd/threads ] && echo "nfsd $(cat /proc/fs/nfsd/threads)"
ip -4 -o addr show dev eth0 | grep -q " $2/" && echo vip
exit 0
"""


@dataclass(frozen=True)
class Facts:
    """One node's storage state, read from the kernel."""

    role: str  # Primary | Secondary | "" (resource not up)
    cs: str
    disk: str
    mounted: bool
    state_bound: bool
    nfsd_threads: int
    vip: bool

    @property
    def serving(self) -> bool:
        return self.role == "Primary" and self.mounted and self.state_bound and self.nfsd_threads > 0 and self.vip

    @property
    def idle(self) -> bool:
        """Holds nothing: Secondary, nothing mounted, no nfsd, no VIP."""
        return (
            self.role == "Secondary"
            and not self.mounted
            and not self.state_bound
            and self.nfsd_threads == 0
            and not self.vip
        )

    def __str__(self) -> str:
        return (
            f"DRBD {self.role or 'down'} {self.cs} {self.disk}; {'' if self.mounted else 'not '}mounted; "
            f"state {'bound' if self.state_bound else 'unbound'}; nfsd threads {self.nfsd_threads}; "
            f"VIP {'held' if self.vip else 'absent'}"
        )


def facts(node: UmlNode) -> Facts:
    out = node.sh(_FACTS_SCRIPT, EXPORT, VIP, timeout=20).stdout.split("\n")
    words = {line.split()[0]: line.split()[1:] for line in out if line.strip()}
    drbd = words.get("drbd", ["", "", ""])
    threads = words.get("nfsd", ["0"])
    return Facts(
        drbd[0],
        drbd[1],
        drbd[2],
        "mounted" in words,
        "state_bound" in words,
        int(threads[0]) if threads and threads[0].isdigit() else 0,
        "vip" in words,
    )


def failures(log: str, limit: int = 4) -> str:
    """The first failed step of each kind in an agent's log: the cause, before its consequences."""
    seen: dict[str, str] = {}
    for line in log.splitlines():
        m = re.search(r" ERROR (\w+ \w+) FAILED", line)
        if m and m[1] not in seen:
            seen[m[1]] = line
    if not seen:
        return ""
    return "first failures:\n" + "\n".join(list(seen.values())[:limit]) + "\n"


# --------------------------------------------------------------------------------------------
# The agent in a node
# --------------------------------------------------------------------------------------------


class UmlAgent:
    """One failover-agent process in one UML node (its config, process, log and control socket)."""

    def __init__(self, node: UmlNode, conf: str) -> None:
        self.node = node
        self.conf = conf
        self.proc: SpawnedProcess | None = None
        self.started_at = 0.0
        self._log = ""  # last log read: what a crashed node said before it died
        self.earlier: list[str] = []  # the logs of earlier runs (restarts, reboots), oldest first

    def start(self, timeout: float = 60.0) -> UmlAgent:
        node = self.node
        node.run(["mkdir", "-p", "-m", "0700", GUEST_RUN])
        node.write_file(GUEST_CONF, self.conf, mode=0o600)
        if self.proc is not None:
            self.earlier.append(self.log())
        node.run(["rm", "-f", GUEST_LOG])
        self._log = ""
        self.started_at = time.monotonic()
        self.proc = node.spawn([GUEST_PYTHON, "-m", "agent.daemon", "--config", GUEST_CONF, "--log-target", "stderr"],
                               log_path=GUEST_LOG, cwd=GUEST_SRC)  # fmt: skip
        if not wait_until(lambda: "failover-agent running" in self.log() or not self.alive(), timeout, 0.2):
            raise AssertionError(f"agent on {node.name} did not start within {timeout:g} s:\n{self.log()}")
        if not self.alive():
            raise AssertionError(f"agent on {node.name} exited at startup:\n{self.log()}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.node.running and self.proc.alive()

    def log(self, timeout: float = 20) -> str:
        """The agent's output so far; after a crash of the node, what was last read."""
        if self.node.running:
            result = self.node.run(["cat", GUEST_LOG], check=False, timeout=timeout)
            if result.returncode == 0:
                self._log = result.stdout
        return self._log

    def history(self) -> str:
        """Every run's log, for failure messages."""
        runs = [*self.earlier, self.log()]
        return "".join(f"--- run {i + 1}\n{text}" for i, text in enumerate(runs))

    def transitions(self) -> list[Logged]:
        return [Logged(*m.groups()) for m in TRANSITION.finditer(self.log())]

    def vrrp_state(self) -> str | None:
        ts = self.transitions()
        return ts[-1].new if ts else None

    def wait_log(self, needle: str | re.Pattern[str], timeout: float, since: int = 0) -> bool:
        def found() -> bool:
            text = self.log()[since:]
            return bool(needle.search(text)) if isinstance(needle, re.Pattern) else needle in text

        return wait_until(found, timeout, 0.2)

    def acquire_ms(self) -> float | None:
        """MASTER to VIP on this agent's last takeover, as it logged it."""
        found = SERVING_LOG.findall(self.log())
        return float(found[-1]) if found else None

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """failoverctl inside the node, against this agent's control socket."""
        result = self.node.run([GUEST_PYTHON, "-m", "agent.cli", *args, "--socket", GUEST_SOCKET],
                               check=False, timeout=timeout, cwd=GUEST_SRC)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"failoverctl {' '.join(args)} on {self.node.name} failed "
                                 f"(exit {result.returncode}): {result.stderr.strip()}")  # fmt: skip
        return result

    def exec_stop_post(self, result: str = "signal") -> str:
        """What the unit's ExecStopPost= runs after the agent died (`failoverctl cleanup`), with the
        environment systemd gives it for a main process killed by SIGKILL; its output."""
        env = [f"SERVICE_RESULT={result}", "EXIT_CODE=killed", "EXIT_STATUS=KILL"]
        argv = ["env", *env, GUEST_PYTHON, "-m", "agent.cli", "cleanup", "--config", GUEST_CONF]
        result_ = self.node.run(argv, check=False, timeout=60, cwd=GUEST_SRC)
        if result_.returncode != 0:
            raise AssertionError(f"failoverctl cleanup on {self.node.name} failed (exit {result_.returncode}): "
                                 f"{result_.stdout}{result_.stderr}")
        return result_.stdout

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.ctl("status", "--json").stdout)
        return answer

    def terminate(self, timeout: float = 60.0) -> float:
        """SIGTERM (systemctl stop); returns seconds until the process is gone."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.signal(signal.SIGTERM)
        if not wait_until(lambda: not self.proc.alive(), timeout, 0.1):  # type: ignore[union-attr]
            raise AssertionError(f"agent on {self.node.name} still runs {timeout:g} s after SIGTERM:\n{self.log()}")
        return time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# The NFS client's writer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    seq: int
    start: float
    ack: float
    name: str


@dataclass
class VerifyReport:
    ok: int
    checked: int
    bad: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.checked > 0 and self.ok == self.checked

    def describe(self) -> str:
        tail = f"; first problems: {self.bad[:5]}" if self.bad else ""
        return f"{self.ok} of {self.checked} files intact{tail}"


def guest_clock(node: UmlNode) -> float:
    """The node's CLOCK_BOOTTIME (its /proc/uptime), the writer's time axis."""
    return float(node.read_file("/proc/uptime").split()[0])


class _ClientTool:
    """A mode of tests/lab/uml_nfsload.py running in the client in the background, logging to LOG."""

    LOG = ""
    WHAT = ""

    def __init__(self, client: UmlNode, argv: list[str]) -> None:
        self.client = client
        self.argv = argv
        self.proc: SpawnedProcess | None = None
        self._text = ""

    def start(self, timeout: float = 30.0) -> Self:
        self.client.run(["rm", "-f", self.LOG])
        self.proc = self.client.spawn(self.argv, log_path=self.LOG)
        if not wait_until(lambda: "READY" in self.text() or not self.proc.alive(), timeout, 0.2):  # type: ignore[union-attr]
            raise AssertionError(f"{self.WHAT} did not start:\n{self.text()}")
        return self

    def text(self) -> str:
        result = self.client.run(["cat", self.LOG], check=False, timeout=20)
        if result.returncode == 0:
            self._text = result.stdout
        return self._text


class UmlNfsWriter(_ClientTool):
    """tests/lab/uml_nfsload.py writing through the client's NFS mount, in the background."""

    LOG = "/run/lab/nfsload.log"
    WHAT = "NFS writer"

    def __init__(
        self,
        client: UmlNode,
        directory: str = CLIENT_DIR,
        size: int = 16384,
        interval: float = 0.05,
        max_seconds: float = 900.0,
    ) -> None:
        super().__init__(client, ["python3", NFSLOAD, "write", directory, "--size", str(size), "--interval",
                                  f"{interval:g}", "--max-seconds", f"{max_seconds:g}"])  # fmt: skip
        self.directory = directory

    def acks(self) -> list[Ack]:
        out = []
        for line in self.text().splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] == "A":
                out.append(Ack(int(parts[1]), float(parts[2]), float(parts[3]), parts[4]))
        return out

    def errors(self) -> list[str]:
        return [line for line in self.text().splitlines() if line.startswith("E ")]

    def acked_after(self, t: float) -> int:
        return sum(1 for a in self.acks() if a.ack > t)

    def wait_acked(self, count: int, timeout: float, after: float = 0.0) -> bool:
        return wait_until(lambda: self.acked_after(after) >= count, timeout, 0.3)

    def max_gap(self, start: float, end: float | None = None) -> float:
        """Longest time without an acknowledged write between ``start`` and ``end`` (guest clock)."""
        points = [start] + [a.ack for a in self.acks() if a.ack > start and (end is None or a.ack <= end)]
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    def first_ack_after(self, t: float) -> float | None:
        later = [a.ack for a in self.acks() if a.ack > t]
        return min(later) if later else None

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM; the writer finishes the file in flight (a hard mount may make it wait)."""
        if self.proc is None or not self.client.running:
            return
        self.proc.signal(signal.SIGTERM)
        if not wait_until(lambda: "END " in self.text(), timeout, 0.3):
            raise AssertionError(f"NFS writer did not stop within {timeout:g} s:\n{self.text()[-2000:]}")

    def listing(self, timeout: float = 120.0) -> set[str]:
        """The names in the writer's directory as the client sees them now (page cache dropped)."""
        self.client.write_sysfs("/proc/sys/vm/drop_caches", "3")
        return set(self.client.run(["ls", "-U1", self.directory], timeout=timeout).stdout.split())

    def verify(self, names: list[str] | None = None, timeout: float = 300.0) -> VerifyReport:
        """Read every acknowledged file back through the mount (page cache dropped first)."""
        wanted = names if names is not None else [a.name for a in self.acks()]
        self.client.write_sysfs("/proc/sys/vm/drop_caches", "3")
        result = self.client.run(["python3", NFSLOAD, "verify", self.directory], input="\n".join(wanted) + "\n",
                                 check=False, timeout=timeout)  # fmt: skip
        bad = [line for line in result.stdout.splitlines() if line.startswith("V ") and not line.startswith("V OK")]
        end = [line.split() for line in result.stdout.splitlines() if line.startswith("END ")]
        if not end:
            raise AssertionError(f"verifier failed (exit {result.returncode}): {result.stderr[-2000:]}")
        return VerifyReport(int(end[-1][1]), int(end[-1][2]), bad)


class UmlTcpProbe(_ClientTool):
    """tests/lab/uml_nfsload.py probe in the client: a new TCP connection to HOST:PORT every
    ``interval`` s, logging only UP/DOWN changes (client's CLOCK_BOOTTIME, like the writer)."""

    LOG = "/run/lab/tcpprobe.log"
    WHAT = "TCP probe"

    def __init__(self, client: UmlNode, host: str = VIP, port: int = 2049, interval: float = 0.1,
                 max_seconds: float = 3600.0) -> None:  # fmt: skip
        super().__init__(client, ["python3", NFSLOAD, "probe", host, str(port), "--interval", f"{interval:g}",
                                  "--max-seconds", f"{max_seconds:g}"])  # fmt: skip

    def changes(self) -> list[tuple[str, float, str]]:
        out = []
        for line in self.text().splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) >= 2 and parts[0] in ("UP", "DOWN"):
                out.append((parts[0], float(parts[1]), parts[2] if len(parts) > 2 else ""))
        return out

    def restored_after(self, t: float) -> tuple[float, float] | None:
        """(first DOWN, first UP after it) after ``t``; None if the service never went down."""
        down = next(((kind, at) for kind, at, _ in self.changes() if kind == "DOWN" and at > t), None)
        if down is None:
            return None
        up = next((at for kind, at, _ in self.changes() if kind == "UP" and at > down[1]), None)
        return (down[1], up) if up is not None else (down[1], float("inf"))

    def stop(self) -> None:
        if self.proc is not None and self.client.running:
            self.proc.signal(signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# Dual-Primary watcher
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleSample:
    """One round of the watcher: each node's DRBD role, read in order (host monotonic times)."""

    at: float
    roles: tuple[tuple[str, str], ...]  # (node, role) in read order, the first node read again last
    states: tuple[str, ...] = ()  # the /proc/drbd lines of a suspicious round, for the report


@dataclass(frozen=True)
class WatchCount:
    rounds: int = 0  # rounds in which every running node answered
    dual: int = 0  # rounds in which two nodes were Primary at once


class RoleWatcher:
    """Samples every storage node's DRBD role from /proc/drbd (through the UML command channel,
    read by the guest's init without a fork) every ``interval`` s, in a thread.

    A round reads the nodes in order and then the first one again.  Two Primaries count only
    when the first node was Primary at both of its reads, with the other one Primary in
    between: the two roles really overlapped, rather than a demotion on one side and the
    promotion it allowed on the other falling between two reads a few ms apart (those rounds
    are counted as ``handoffs``).  A crashed node reads as ``down``, one that does not answer
    as ``?``.
    """

    def __init__(self, nodes: dict[str, UmlNode], interval: float = 0.1) -> None:
        self.nodes = nodes
        self.interval = interval
        self.rounds = 0
        self.incomplete = 0
        self.dual: list[RoleSample] = []
        self.handoffs: list[RoleSample] = []
        self.max_round = 0.0  # longest round (s): how fine the sampling really was
        self.max_gap = 0.0  # longest time between the starts of two rounds
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drbd-role-watcher", daemon=True)

    def start(self) -> RoleWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def count(self) -> WatchCount:
        with self._lock:
            return WatchCount(self.rounds, len(self.dual))

    def _read(self, node: UmlNode) -> tuple[str, str]:
        """(role, /proc/drbd line) of one node."""
        if not node.ready:  # crashed, or booting (its init holds the channel until ready)
            return "down", ""
        try:
            text = node.read_kernel_file("/proc/drbd", timeout=5)
        except (LabError, OSError, subprocess.SubprocessError) as e:
            if len(self.errors) < 20:
                self.errors.append(f"{node.name}: {e}"[:300])
            return "?", ""
        state = parse_proc_drbd(text)
        if state is None:
            return "unconfigured", ""
        return state.role, _drbd_line(state.raw)

    def _run(self) -> None:
        names = list(self.nodes)
        next_at = time.monotonic()
        last_start = None
        while not self._stop.is_set():
            t0 = time.monotonic()
            reads = [(name, *self._read(self.nodes[name])) for name in names]
            first = names[0]
            reads.append((first, *self._read(self.nodes[first])))
            took = time.monotonic() - t0
            roles = [role for _, role, _ in reads]
            primaries = {name for name, role, _ in reads[:-1] if role == "Primary"}
            sample = RoleSample(t0, tuple((n, r) for n, r, _ in reads), tuple(line for _, _, line in reads))
            with self._lock:
                if last_start is not None:
                    self.max_gap = max(self.max_gap, t0 - last_start)
                last_start = t0
                self.max_round = max(self.max_round, took)
                if "?" in roles:
                    self.incomplete += 1
                else:
                    self.rounds += 1
                if len(primaries) >= 2:
                    # every node but the first is read once, between the first one's two reads
                    if first not in primaries or reads[-1][1] == "Primary":
                        self.dual.append(sample)
                    else:
                        self.handoffs.append(sample)
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:
                next_at = now
            self._stop.wait(next_at - now)

    def describe(self) -> str:
        with self._lock:
            text = (
                f"{self.rounds} complete rounds ({self.incomplete} with a node not answering), every "
                f"{self.interval * 1000:.0f} ms (longest round {self.max_round * 1000:.0f} ms, longest gap "
                f"{self.max_gap * 1000:.0f} ms); two Primaries in {len(self.dual)}"
            )
            if self.handoffs:
                text += f"; {len(self.handoffs)} handoff(s) between two reads (not overlaps)"
            for sample in self.dual[:5]:
                text += f"\n  at {sample.at:.3f}: {sample.roles} {sample.states}"
            return text


def _drbd_line(raw: str) -> str:
    """The ``0: cs:... ro:... ds:...`` line of a /proc/drbd text."""
    for line in raw.splitlines():
        if " cs:" in line:
            return line.strip()
    return ""


# --------------------------------------------------------------------------------------------
# The whole lab
# --------------------------------------------------------------------------------------------


class StorageLab:
    """UML nodes a, b, client; DRBD r0 between a and b; an agent per storage node (not started).

    ``setup()`` boots, bootstraps DRBD (in sync, both Secondary, ext4 on it) and prepares the
    mountpoints; ``start_agents()`` starts a's agent alone until it serves, then b's.
    """

    def __init__(
        self,
        prefix: str = "umlstor",
        *,
        nfs: bool = True,
        disk_mb: int = 128,
        vrrp: dict[str, Any] | None = None,
        monitor: dict[str, Any] | None = None,
        resource: DrbdResource | None = None,
        drbd: dict[str, Any] | None = None,
        track: dict[str, Any] | None = None,
        peer: bool | dict[str, Any] = False,
        guard: dict[str, Any] | None = None,
    ) -> None:
        """``resource``: e.g. fencing_resource(); ``drbd``/``track``: extra keys of those agent
        sections; ``peer``: a [peer] section on both agents, with a fresh shared secret (a dict:
        keys that replace UML_HEARTBEAT's)."""
        self.resource = resource or DrbdResource()
        self.nfs = nfs
        self.lab = UmlLab(prefix, nodes=tuple(PRIORITIES), client=True, disk_mb=disk_mb)
        self.nodes = {name: self.lab[name] for name in PRIORITIES}
        self.client = self.lab[CLIENT]
        self.peer_secret = base64.b64encode(os.urandom(24)).decode() + "\n" if peer else None
        self.agents: dict[str, UmlAgent] = {}
        for name, prio in PRIORITIES.items():
            other = next(n for n in PRIORITIES if n != name)
            beats = {**UML_HEARTBEAT, **(peer if isinstance(peer, dict) else {})}
            # both networks, as the README recommends: a cut of one is a link cut, not a dead peer
            paths = [self.lab[other].ip(net) for net in (SERVICE, REPLICATION)]
            peer_section: dict[str, Any] | None = None
            if peer:
                peer_section = {"address": paths[0], "addresses": paths, "secret_file": PEER_SECRET, **beats}
            conf = storage_conf(
                prio,
                nfs=nfs,
                resource=self.resource,
                vrrp=vrrp,
                monitor=monitor,
                drbd=drbd,
                track=track,
                peer=peer_section,
                guard=guard,
            )
            self.agents[name] = UmlAgent(self.lab[name], conf)
        self.drbd_timings: DrbdTimings | None = None

    def __enter__(self) -> StorageLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lab.close()

    def setup(self) -> dict[str, float]:
        boots = self.lab.boot()
        self.drbd_timings = drbd_bootstrap(self.lab, self.resource, mkfs=True)
        for node in self.nodes.values():
            self._prepare(node)
        return boots

    def _prepare(self, node: UmlNode) -> None:
        """What a storage node's admin sets up once: the mountpoint and a name for the VIP.

        sm-notify (run by the agent after nfsd starts, for NFSv3 lock recovery) refuses a
        ``-v`` address it cannot resolve, and the lab has no DNS.
        """
        node.run(["mkdir", "-p", EXPORT])
        node.sh('grep -q " nfs-vip$" /etc/hosts || echo "$1 nfs-vip" >>/etc/hosts', VIP)
        if self.peer_secret is not None:  # root-owned (install runs as root), 0600: as load_secret demands
            node.write_file(PEER_SECRET, self.peer_secret, mode=0o600)
        # what agent.fence.can_fence asks of a node whose demote_escalation ends in reboot/poweroff
        node.write_sysfs("/proc/sys/kernel/sysrq", "1")
        if any(value == FENCE_PEER_HANDLER for _, value in self.resource.handlers):
            node.write_file(FENCE_PEER_HANDLER, _FENCE_PEER_SCRIPT, mode=0o755)
        node.run(["sync"])  # a power cut must not take them

    def start_agents(self, first: str = "a", timeout: float = 90.0) -> None:
        self.agents[first].start()
        self.wait_serving(first, timeout)
        for name, agent in self.agents.items():
            if name != first:
                agent.start()

    def facts(self) -> dict[str, Facts]:
        return {name: facts(node) for name, node in self.nodes.items() if node.running}

    def wait_serving(self, name: str, timeout: float, since: int = 0) -> float:
        """Until ``name`` logged SERVING and the kernel shows it holding everything; seconds."""
        t0 = time.monotonic()
        agent = self.agents[name]
        logged = agent.wait_log("became MASTER", timeout, since=since)
        if logged and wait_until(lambda: facts(agent.node).serving, max(1.0, timeout - (time.monotonic() - t0)), 0.2):
            return time.monotonic() - t0
        raise AssertionError(f"{name} does not serve after {timeout:g} s: {self.describe()}\n"
                             f"{failures(agent.log()[since:])}--- agent log of {name} (tail):\n"
                             f"{agent.log()[-3000:]}")  # fmt: skip

    def wait_idle(self, name: str, timeout: float) -> float:
        t0 = time.monotonic()
        if wait_until(lambda: facts(self.nodes[name]).idle, timeout, 0.2):
            return time.monotonic() - t0
        raise AssertionError(f"{name} still holds something after {timeout:g} s: {self.describe()}\n"
                             f"--- agent log of {name}:\n{self.agents[name].log()[-5000:]}")  # fmt: skip

    def describe(self) -> str:
        return "; ".join(f"{name}: {f}" for name, f in self.facts().items())

    def mount_client(self) -> float:
        took = nfs_mount(self.client, VIP, EXPORT, CLIENT_MNT, "4.2", options="hard,timeo=10,retrans=3")
        self.client.run(["mkdir", "-p", CLIENT_DIR])
        return took

    def crash(self, name: str) -> None:
        """Power cut of a storage node (SIGKILL of its UML process tree); its agent log is kept."""
        self.agents[name].log()
        self.nodes[name].crash()

    def reboot(self, name: str, start_agent: bool = True) -> dict[str, float]:
        """Boot a crashed node, ``drbdadm up`` (as its init would), then its agent."""
        steps: dict[str, float] = {}
        node = self.nodes[name]
        t0 = time.monotonic()
        node.boot()
        steps["boot"] = time.monotonic() - t0
        t0 = time.monotonic()
        drbd_up(node, self.resource, self.lab)
        self._prepare(node)
        wait_drbd(node, connected_uptodate, 120, "Connected UpToDate/UpToDate after the reboot")
        steps["drbd_rejoin"] = time.monotonic() - t0
        if start_agent:
            t0 = time.monotonic()
            self.agents[name].start()
            steps["agent_start"] = time.monotonic() - t0
        return steps

    def power_on(self, name: str) -> dict[str, float]:
        """A node that fenced itself (sysrq reboot or power-off) comes back as after a power cycle:
        its UML process killed, then boot, ``drbdadm up`` and the agent (what its init and systemd
        would start), without waiting for DRBD to connect (its links may still be cut)."""
        steps: dict[str, float] = {}
        node = self.nodes[name]
        # keep what the agent said before it went; a kernel already resetting (sysrq 'b' re-executes
        # UML in the same process) answers no request any more: then what was read last stays
        with contextlib.suppress(LabError):
            self.agents[name].log(timeout=3)
        node.crash()  # reap the exited UML process and its channel
        t0 = time.monotonic()
        node.boot()
        steps["boot"] = time.monotonic() - t0
        t0 = time.monotonic()
        drbd_up(node, self.resource, self.lab)
        self._prepare(node)
        steps["drbd_up"] = time.monotonic() - t0
        t0 = time.monotonic()
        self.agents[name].start()
        steps["agent_start"] = time.monotonic() - t0
        return steps

    def master(self) -> list[str]:
        return [name for name, f in self.facts().items() if f.serving]


# --------------------------------------------------------------------------------------------
# README demo: python -m tests.lab.demo --uml
# --------------------------------------------------------------------------------------------


def demo() -> int:
    """The storage demo on UML nodes: agents in the nodes, real DRBD and kernel nfsd."""
    t_start = time.monotonic()

    def say(what: str) -> None:
        print(f"  {time.monotonic() - t_start:8.3f} s  {what}", flush=True)

    def chain(agent: UmlAgent, since: int) -> None:
        keep = ("acquire done", "release done", "FAILED", "became MASTER", "released:", "->", "refuses")
        for line in agent.log()[since:].splitlines():
            if any(k in line for k in keep):
                print(f"             {agent.node.name}: {line.split(' ', 2)[-1][:160]}")

    print("failover-agent storage demo on user-mode-linux: agents in nodes a (priority 150) and b (100), "
          f"VRRPv2 advert 1 s, VIP {VIP};\nreal DRBD 8.4 (r0) between them, kernel nfsd started by the agent; "
          "a client node writes files through the VIP\n")  # fmt: skip
    try:
        with StorageLab("umldemo") as s:
            s.setup()
            say("nodes booted; DRBD r0 in sync, both Secondary, ext4 on it")
            s.start_agents()
            say(f"a serves ({s.agents['a'].acquire_ms():.0f} ms from MASTER to VIP); {s.describe()}")
            chain(s.agents["a"], 0)
            s.mount_client()
            writer = UmlNfsWriter(s.client).start()
            writer.wait_acked(20, 60)
            say(f"client: {len(writer.acks())} files acknowledged through the VIP")

            print("\n-- planned switch: failoverctl handover on a")
            marks = {n: len(a.log()) for n, a in s.agents.items()}
            t0 = guest_clock(s.client)
            print("            ", s.agents["a"].ctl("handover").stdout.strip())
            s.wait_serving("b", 60, since=marks["b"])
            s.wait_idle("a", 30)
            say("b serves, a holds nothing")
            chain(s.agents["a"], marks["a"])
            chain(s.agents["b"], marks["b"])
            writer.wait_acked(10, 120, after=t0)
            print(f"   => longest time without an acknowledged write: {writer.max_gap(t0 - 1):.3f} s")

            print("\n-- crash: power cut of b (SIGKILL of its UML process)")
            marks = {n: len(a.log()) for n, a in s.agents.items()}
            t0 = guest_clock(s.client)
            s.crash("b")
            try:
                s.wait_serving("a", 60, since=marks["a"])
                say("a serves")
            except AssertionError:
                say("a does NOT serve after 60 s")
            chain(s.agents["a"], marks["a"])
            if writer.wait_acked(5, 60, after=t0):
                print(f"   => longest time without an acknowledged write: {writer.max_gap(t0 - 1):.3f} s")
            writer.stop()
            report = writer.verify()
            print(f"\nclient: {len(writer.acks())} files acknowledged; read back through the VIP: {report.describe()}")
    except (LabError, AssertionError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print("\nlab removed (UML nodes, namespace, disks)")
    return 0
