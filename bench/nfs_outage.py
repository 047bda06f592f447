"""Client-visible NFS outage at a failover: failover-agent next to keepalived + notify scripts, in one run.

Same storage lab for both (tests/lab/ganesha_agents.py): nodes a (priority 150) and b (100), each
in its own mount namespace, one ext4 on a loop device as the shared disk, nfs-ganesha serving an
NFSv4 export from it, VRRPv3 with 0.1 s adverts, VRID 51, VIP 192.0.2.100/24 on eth0. A libnfs
client writes one acknowledged file after another through the VIP (create, write, COMMIT, close).
Every run builds a fresh lab, lets a become master, waits for 20 acknowledged writes, then either

- crash: a loses power - every process of the node frozen at t0 (so nothing can react or
  release), cable pulled, ext4 shut down without log flush, everything in the node killed;
- graceful: the daemon on a gets SIGTERM (failover-agent releases VIP, ganesha, mount and only
  then sends priority 0; keepalived sends priority 0 at once and runs notify_stop),

and measures
- outage: on the client, the longest gap between acknowledged writes around t0;
- NFS back: NFS NULL calls to the VIP every 5 ms, each on a new TCP connection, give the time
  from t0 (and from the new master's MASTER transition) until NFS answers at the VIP again. The
  writer's outage also contains the client's own TCP/ARP timers: its request in flight to the
  old master is only retried after a retransmission timeout (about 0.2 s, then doubling), or
  given up after the writer's 1 s RPC timeout when the old node's kernel had already acked it
  at TCP level. So the outage moves in steps and hides smaller differences between the two
  servers; this probe shows them;
- MASTER -> first ack, and for the agent its acquire chain (MASTER -> VIP added, from its log);
- lost writes: after the run every acknowledged file is read back through the VIP; missing or
  wrong content counts as lost;
- both mounted: a watcher polls both nodes' mount tables every 3 ms during the failover and
  records any moment both had the disk mounted (which DRBD would refuse; the loop device of
  this lab lets it happen, so it is reported rather than failing the takeover).

The keepalived side is what an admin would build from Debian's keepalived: notify_master mounts
the disk, creates the recovery folder and starts ganesha.nfsd (the exact ganesha.conf the agent
renders from the same [nfs] settings); notify_backup/fault/stop stop ganesha by the PID in its pid
file and unmount. The notify script is a shell file in the lab's workdir, values passed as
arguments; keepalived runs notify scripts concurrently, so the script serialises itself with flock.

`--guarded` measures the fast safe takeover instead (issue: heartbeats, the isolation bound):
VRRPv2 with 1 s adverts as most keepalived pairs run, the client as the agents' witness, the peer
channel with heartbeats every 0.1 s, release_deadline 1 s (a bound of 1.84 s), and the events

- crash, as above;
- partition: a's cable pulled, a alive: it must stop serving and unmount within the bound, and
  b must not mount before the bound has passed (keepalived's a keeps the disk mounted: a double
  mount, which DRBD would have refused and a shared disk would not survive).

    .venv/bin/python -m bench.nfs_outage                  # 10 runs of each kind (about 2 minutes)
    .venv/bin/python -m bench.nfs_outage --runs 1 --json /tmp/nfs-outage.json   # smoke run
    .venv/bin/python -m bench.nfs_outage --guarded --runs 5
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from agent.config import parse as parse_agent_conf
from nfs.ganesha import GaneshaBackend
from tests.lab.agent import AgentProc
from tests.lab.child import LineChild
from tests.lab.ganesha import NFS_PORT, NodeNamespace, SharedDisk, node_namespace, power_cut, rpc_null
from tests.lab.ganesha_agents import EXPORT, FAST_VRRP, STATE, GaneshaAgents, storage_conf
from tests.lab.keepalived import Keepalived, check_keepalived_conf, keepalived_version, render_keepalived_conf
from tests.lab.lock import hold_lab_lock
from tests.lab.netns import CLIENT, LabError, NetnsLab, ProcRef, wait_until
from tests.lab.nfsclient import NfsWriter

VIP = "192.0.2.100"
VRID = 51
PRIORITIES = {"a": 150, "b": 100}
VERSION = int(FAST_VRRP["version"])
ADVERT = float(FAST_VRRP["advert_interval"])
# RFC 5798: Master_Down_Interval = 3 * Advertisement_Interval + Skew_Time of the backup (priority 100)
MASTER_DOWN = 3 * ADVERT + (256 - PRIORITIES["b"]) / 256 * ADVERT
TARGETS = {"crash": MASTER_DOWN + 1.0, "graceful": 1.5, "acquire_ms": 300.0}
IMPLS = ("agent", "keepalived")
EVENTS = ("crash", "graceful")
GUARDED = False
# --guarded: heartbeat 0.1 + witness fall 3 x interval 0.2 + timeout 0.1 + release_deadline 1.0,
# stretched for 1 % clock-rate error (agent.guard.isolation_bound)
BOUND = (0.1 + 3 * 0.2 + 0.1 + 1.0) * 1.01 / 0.99


def use_guarded() -> None:
    """The --guarded profile: VRRPv2 1 s, witness + heartbeats + bounded release; crash and partition."""
    global VERSION, ADVERT, MASTER_DOWN, TARGETS, EVENTS, GUARDED
    VERSION, ADVERT, GUARDED, EVENTS = 2, 1.0, True, ("crash", "partition")
    MASTER_DOWN = 3 * ADVERT + (256 - PRIORITIES["b"]) / 256
    TARGETS = {"crash": 2.5, "partition": 3.5, "acquire_ms": 300.0}
NFS_V4 = 100003
WARMUP_ACKS = 20
AFTER_ACKS = 10  # acknowledged writes after the resume before the run ends

NOTIFY_SCRIPT = r"""#!/bin/sh
# keepalived notify script of bench/nfs_outage.py: the NFS chain an admin would script.
# Runs inside the node's mount namespace (keepalived runs there). keepalived starts notify
# scripts without waiting for the previous one, so one node's scripts take turns (flock).
# usage: nfs-notify.sh EVENT DEVICE MOUNTPOINT RECOVERY_DIR GANESHA_CONF GANESHA_LOG GANESHA_PIDFILE EVENT_LOG
set -u
event=$1 dev=$2 mnt=$3 recovery=$4 conf=$5 glog=$6 gpid=$7 elog=$8
note() { echo "$(date +%s.%N) $event $*" >> "$elog"; }
alive() {  # PID $1 runs and is no zombie
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
note called
exec 9>>/run/nfs-notify.lock  # /run is private to the node
flock 9
note begin
case $event in
master)
    if ! mountpoint -q "$mnt"; then
        mount -t ext4 -o noatime "$dev" "$mnt" || { note mount-failed; exit 1; }
    fi
    note mounted
    mkdir -p "$recovery"
    pid=$(cat "$gpid" 2>/dev/null || true)
    if [ -n "$pid" ] && alive "$pid"; then
        note ganesha-already-running "$pid"
    else
        rm -f "$gpid"
        # 9>&-: a daemon that inherited the lock would block every later script of the node
        ganesha.nfsd -f "$conf" -L "$glog" -p "$gpid" </dev/null >>"$glog.stderr" 2>&1 9>&- \
            || { note ganesha-failed; exit 1; }
        note ganesha-started
    fi
    ;;
backup|fault|stop)
    pid=$(cat "$gpid" 2>/dev/null || true)
    if [ -n "$pid" ] && alive "$pid"; then
        kill -TERM "$pid"
        i=0
        while alive "$pid" && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
        alive "$pid" && kill -KILL "$pid"
        note ganesha-stopped "$pid"
    fi
    rm -f "$gpid"
    if mountpoint -q "$mnt"; then
        if umount "$mnt"; then note unmounted; else note umount-failed; fi
    fi
    ;;
esac
note end
"""


# --------------------------------------------------------------------------------------------
# Power cut
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Watching the shared disk
# --------------------------------------------------------------------------------------------


class MountWatch:
    """Polls which nodes have the shared disk mounted; records every instant two of them do, and
    when each node's mount came and went."""

    def __init__(self, disk: SharedDisk, ns: dict[str, NodeNamespace], interval: float = 0.003) -> None:
        self.disk, self.ns, self.interval = disk, ns, interval
        self.overlaps: list[float] = []
        self.changes: list[tuple[float, str, bool]] = []  # (monotonic time, node, mounted now)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mount-watch", daemon=True)

    def _mounted(self, node: str) -> bool:
        try:
            return self.disk.mounted_in(self.ns[node])
        except (LabError, OSError):  # the node died between the check and the read
            return False

    def _run(self) -> None:
        last: dict[str, bool] = {}
        while not self._stop.is_set():
            now = {n: self._mounted(n) for n in self.ns}
            at = time.monotonic()
            if sum(now.values()) > 1:
                self.overlaps.append(at)
            self.changes += [(at, n, m) for n, m in now.items() if last.get(n, m) != m]
            last = now
            self._stop.wait(self.interval)

    def first_change(self, node: str, mounted: bool, after: float) -> float | None:
        """Seconds after `after` when `node` first became (un)mounted, None if it did not."""
        return next((t - after for t, n, m in self.changes if n == node and m == mounted and t >= after), None)

    def __enter__(self) -> MountWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def overlap_seconds(self) -> float:
        """Span of the (first) period both nodes had the disk mounted, 0 if never seen."""
        return self.overlaps[-1] - self.overlaps[0] + self.interval if self.overlaps else 0.0


# --------------------------------------------------------------------------------------------
# When does NFS answer at the VIP again (server side, without the writer's TCP timers)
# --------------------------------------------------------------------------------------------

PROBE_CODE = r"""
import os, socket, struct, sys, threading, time
host, port, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()  # parent gone: exit
print("READY", f"{time.monotonic():.6f}", os.readlink("/proc/self/ns/time"), flush=True)

def null_answered():
    # NFSv4 NULL on a fresh TCP connection: SYN, CALL, REPLY with accept_stat SUCCESS
    xid = int.from_bytes(os.urandom(4), "big")
    call = struct.pack("!IIIIIIIIII", xid, 0, 2, 100003, 4, 0, 0, 0, 0, 0)
    with socket.create_connection((host, port), timeout=0.02) as s:
        s.settimeout(0.1)
        s.sendall(struct.pack("!I", 0x80000000 | len(call)) + call)
        data = s.recv(4096)
    if len(data) < 28:
        return False
    rxid, mtype, stat, _flavor, vlen = struct.unpack("!IIIII", data[4:24])
    return (rxid, mtype, stat) == (xid, 1, 0) and data[24 + vlen:28 + vlen] == bytes(4)

up = None
while True:
    try:
        ok = null_answered()
    except OSError:
        ok = False
    if ok != up:
        print("UP" if ok else "DOWN", f"{time.monotonic():.6f}", flush=True)
        up = ok
    time.sleep(every)
"""


class NullProbe(LineChild):
    """NFS NULL calls to the VIP every few ms, each on a new TCP connection; reports UP/DOWN changes.

    The writer's outage also contains the client's TCP and ARP timers (its request in flight
    to the old master is only retried after an RTO); a fresh connection per call shows when the
    new master actually serves NFS at the VIP.
    """

    what = "NFS NULL probe"

    def __init__(self, lab: NetnsLab, name: str, host: str, every: float = 0.005) -> None:
        super().__init__(lab, name)
        self.host, self.every = host, every
        self.changes: list[tuple[str, float]] = []

    def argv(self) -> list[str]:
        return [sys.executable, "-c", PROBE_CODE, self.host, str(NFS_PORT), repr(self.every)]

    def parse(self, parts: list[str]) -> None:
        if parts[0] in ("UP", "DOWN") and len(parts) >= 2:
            self.changes.append((parts[0], float(parts[1])))

    def _ready_after(self, t0: float) -> float | None:
        down = next((t for state, t in self.changes if state == "DOWN" and t >= t0), None)
        up = next((t for state, t in self.changes if state == "UP" and down is not None and t > down), None)
        return None if up is None else up - t0

    def wait_up(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self.changes) and self.changes[-1][0] == "UP", timeout)

    def wait_ready_after(self, t0: float, timeout: float) -> float | None:
        """Seconds from ``t0`` to the first answer after the service went away at or after t0."""
        with self._cond:
            self._cond.wait_for(lambda: self._ended or self._ready_after(t0) is not None, timeout)
            return self._ready_after(t0)


# --------------------------------------------------------------------------------------------
# The two implementations
# --------------------------------------------------------------------------------------------


class _InNode:
    """Looks like the NetnsLab to Keepalived, but starts its process in the node's mount namespace too.

    Keepalived only calls ``lab.popen(node, argv, ...)``, ``lab.ns``, ``lab.workdir`` and
    ``lab.add_cleanup``; popen is redirected to NodeNamespace.popen (nsenter --net --mount, no
    fork: the PID is keepalived's own), so its notify scripts mount and start ganesha on the node.
    """

    def __init__(self, lab: NetnsLab, ns: NodeNamespace) -> None:
        self._lab, self._ns = lab, ns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lab, name)

    def popen(self, name: str, argv: list[str], **kwargs: Any) -> Any:
        if name != self._ns.node:
            raise LabError(f"{name}: this proxy starts processes on node {self._ns.node} only")
        return self._ns.popen(argv, **kwargs)


def ganesha_conf(lab: NetnsLab, disk: SharedDisk, node: str) -> str:
    """The ganesha.conf failover-agent renders on ``node`` in GaneshaAgents (same [nfs] section, same code)."""
    reference = AgentProc(lab, node, lab.workdir / "reference-agent", priority=PRIORITIES[node], **FAST_VRRP)
    text = storage_conf(reference, disk, lab.workdir / f"ganesha-{node}", priority=PRIORITIES[node], **FAST_VRRP)
    cfg = parse_agent_conf(text, str(reference.config_path))
    assert cfg.nfs is not None
    return GaneshaBackend(cfg.nfs, cfg.state_path).render()


class KeepalivedNfs:
    """keepalived + notify scripts on nodes a and b of ``lab``, sharing one disk; nothing started yet."""

    def __init__(self, lab: NetnsLab) -> None:
        self.lab = lab
        self.disk = SharedDisk(lab)
        self.ns: dict[str, NodeNamespace] = {n: node_namespace(lab, n) for n in PRIORITIES}
        first = self.ns["a"]
        self.disk.mount(first)
        first.run(["mkdir", "-p", self.disk.path(EXPORT)])
        self.disk.unmount(first)
        script = lab.workdir / "nfs-notify.sh"
        script.write_text(NOTIFY_SCRIPT)
        script.chmod(0o755)  # keepalived's script security: root-owned, writable by root only
        self.events: dict[str, Path] = {}
        self.pidfiles: dict[str, Path] = {}
        self.ka: dict[str, Keepalived] = {}
        recovery = self.disk.path(STATE)  # the agent's [nfs] state_dir: ganesha's RecoveryRoot
        for node, prio in PRIORITIES.items():
            gdir = lab.workdir / f"ka-ganesha-{node}"
            gdir.mkdir()
            conf = gdir / "ganesha.conf"
            conf.write_text(ganesha_conf(lab, self.disk, node))
            self.events[node] = lab.workdir / f"notify-{node}.log"
            self.pidfiles[node] = gdir / "ganesha.pid"
            args = [self.disk.dev, str(self.disk.mountpoint), recovery, str(conf), str(gdir / "ganesha.log"),
                    str(self.pidfiles[node]), str(self.events[node])]
            for arg in args:
                if not arg.startswith("/") or any(c.isspace() or c in "\"'\\" for c in arg):
                    raise LabError(f"{arg!r} cannot be passed to a keepalived notify script")
            text = render_keepalived_conf(name=f"nfs_{node}", interface="eth0", vrid=VRID, priority=prio,
                                          advert_int=ADVERT, version=VERSION, vips=[f"{VIP}/24"])
            notify = "".join(f'    notify_{ev} "{script} {ev} {" ".join(args)}"\n'
                             for ev in ("master", "backup", "fault", "stop"))
            end = text.rstrip().rfind("}")  # the vrrp_instance block's closing brace
            text = text[:end] + notify + text[end:]
            check_keepalived_conf(lab, node, text)
            proxy = cast(NetnsLab, _InNode(lab, self.ns[node]))
            self.ka[node] = Keepalived(proxy, node, text, workdir=lab.workdir / f"keepalived-{node}")

    def serving(self, node: str) -> bool:
        """keepalived MASTER, disk mounted and ganesha answering NFS NULL inside the node."""
        ns = self.ns[node]
        return (self.ka[node].state() == "MASTER" and self.disk.mounted_in(ns)
                and rpc_null(self.lab, node, "127.0.0.1", NFS_PORT, NFS_V4, 4, timeout=1.0))

    def start(self, first: str = "a", timeout: float = 20.0) -> None:
        self.ka[first].start()
        if not wait_until(lambda: self.serving(first), timeout, interval=0.05):
            raise LabError(f"keepalived on {first} does not serve NFS after {timeout:g} s:\n"
                           f"{self.notes(first)}\n{self.ka[first].log()[-2000:]}")
        for node, ka in self.ka.items():
            if node != first:
                ka.start()
                if not ka.wait_state("BACKUP", 5):
                    raise LabError(f"keepalived on {node} did not become BACKUP:\n{ka.log()[-2000:]}")

    def notes(self, node: str) -> str:
        try:
            return self.events[node].read_text()
        except FileNotFoundError:
            return ""

    def last_master_at(self, node: str) -> float | None:
        """Monotonic time the last notify_master script on ``node`` started (it logs wall-clock time)."""
        times = [float(line.split()[0]) for line in self.notes(node).splitlines()
                 if line.split()[1:3] == ["master", "called"]]
        return times[-1] - (time.time() - time.monotonic()) if times else None

    def ganesha_pid(self, node: str) -> int | None:
        try:
            pid = int(self.pidfiles[node].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        ref = ProcRef.of(pid)
        return pid if ref is not None and ref.alive() else None


def log_clock_to_monotonic(clock: str) -> float:
    """Our monotonic time of an agent log clock (local hh:mm:ss.mmm, no date)."""
    now = datetime.datetime.now()
    parsed = datetime.time.fromisoformat(clock)
    # the log carries no date: take the candidate closest to now (a run spans seconds, not days)
    stamp = min((datetime.datetime.combine(now.date() + datetime.timedelta(days=d), parsed) for d in (-1, 0)),
                key=lambda c: abs((now - c).total_seconds()))
    return stamp.timestamp() - (time.time() - time.monotonic())


def agent_master_at(agents: GaneshaAgents, node: str) -> float | None:
    """Monotonic time of the agent's last transition to MASTER (its log has local hh:mm:ss.mmm)."""
    masters = [t for t in agents.agents[node].transitions() if t.new == "MASTER"]
    return log_clock_to_monotonic(masters[-1].clock) if masters else None


STEP_LOG = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \w+ (\w+) (acquire|release) (done|FAILED) in ([\d.]+) ms", re.M)


def timeline(sample: Sample, t0: float, t_end: float, writer: NfsWriter, probe: NullProbe,
             ga: GaneshaAgents | None, ka: KeepalivedNfs | None) -> dict[str, Any]:
    """What the chart of one run shows, in seconds from t0: acks, NFS back, VRRP states, chain steps.

    The agent's states and steps come from its log (a step line is logged when it ends and says
    how long it took); keepalived's MASTER is when its notify_master script was called, and its
    chain is the notify script's own notes (it adds the VIP itself on entering MASTER).
    """
    start = t0 - 1.0

    def rel(t: float) -> float:
        return round(t - t0, 4)

    out: dict[str, Any] = {
        "event": sample.event, "end": rel(t_end),
        "acks": [rel(a.acked) for a in writer.acks if start <= a.acked <= t_end],
        "write_errors": [rel(e.time) for e in writer.errors if start <= e.time <= t_end],
        "nfs_ready": sample.ready, "states": [], "steps": []}
    states: list[tuple[str, str, float]] = []
    steps: list[tuple[str, str, float, float, bool]] = []
    if ga is not None:
        for node, agent in ga.agents.items():
            for t in agent.transitions():
                at = log_clock_to_monotonic(t.clock)
                if start - 60 <= at <= t_end:
                    states.append((node, t.new, rel(at)))
            for m in STEP_LOG.finditer(agent.log()):
                end = log_clock_to_monotonic(m[1])
                if start <= end <= t_end:
                    steps.append((node, f"{m[2]} {m[3]}", rel(end - float(m[5]) / 1000), rel(end), m[4] == "done"))
    elif ka is not None:
        offset = time.time() - time.monotonic()
        for node in PRIORITIES:
            notes = [(float(f[0]) - offset, f[1], f[2]) for f in
                     (line.split() for line in ka.notes(node).splitlines()) if len(f) >= 3]
            for at, event, what in notes:
                if what == "called" and event in ("master", "backup", "fault", "stop") and start - 60 <= at <= t_end:
                    states.append((node, event.upper(), rel(at)))
            marks = [(at, event, what) for at, event, what in notes if start <= at <= t_end]
            for (t1, ev1, what1), (t2, ev2, what2) in itertools.pairwise(marks):
                if ev1 == ev2 and what1 != "end":
                    label = {"called": "wait for lock", "begin": ev1 + " script"}.get(what1, what1)
                    steps.append((node, f"{label} -> {what2}", rel(t1), rel(t2), "failed" not in what2))
    out["states"] = sorted(states, key=lambda x: x[2])
    out["steps"] = steps
    return out


def plot_timelines(result: dict[str, Any], path: Path) -> None:
    """The crash run closest to each implementation's median outage, side by side on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen: dict[str, dict[str, Any]] = {}
    for impl in IMPLS:
        runs = [s for s in result["samples"] if s["impl"] == impl and s["event"] == "crash" and s["timeline"]
                and s["outage"] is not None]
        if runs:
            med = statistics.median(s["outage"] for s in runs)
            chosen[impl] = min(runs, key=lambda s: abs(s["outage"] - med))
    if not chosen:
        raise ValueError("no crash run with a timeline to draw")
    lanes = max(len([st for st in s["timeline"]["steps"] if st[0] == "b"]) for s in chosen.values()) or 1
    fig, axes = plt.subplots(1, len(chosen), figsize=(7.5 * len(chosen), 3.2 + 0.32 * lanes), squeeze=False,
                             sharex=True)
    colours = {"MASTER": "tab:green", "BACKUP": "tab:blue", "FAULT": "tab:red", "INITIALIZE": "tab:gray",
               "STOP": "tab:gray"}
    span = max(s["timeline"]["end"] for s in chosen.values())
    right = min(span, max(max(s["timeline"]["acks"] or [0.0]) for s in chosen.values())) + 0.1
    right = max(right, max(s["first_ack"] or 0.0 for s in chosen.values()) + 0.4)
    for ax, (impl, sample) in zip(axes[0], chosen.items(), strict=False):
        tl = sample["timeline"]
        y = {"client writes": lanes + 3.0, "a: VRRP": lanes + 2.0, "b: VRRP": lanes + 1.0}
        ax.vlines(tl["acks"], y["client writes"] - 0.3, y["client writes"] + 0.3, color="black", linewidth=0.8)
        if tl["write_errors"]:
            ax.plot(tl["write_errors"], [y["client writes"]] * len(tl["write_errors"]), "x", color="tab:red",
                    label="write error")
        gap_end = sample["first_ack"]
        if gap_end is not None:
            ax.axvspan(gap_end - sample["outage"], gap_end, color="tab:red", alpha=0.08,
                       label=f"no acknowledged write: {sample['outage']:.3f} s")
        if tl["nfs_ready"] is not None:
            ax.axvline(tl["nfs_ready"], color="tab:purple", linestyle="--", linewidth=1,
                       label=f"NFS answers at the VIP: {tl['nfs_ready']:.3f} s")
        ax.axvline(0, color="black", linestyle=":", linewidth=1)
        for node in PRIORITIES:
            changes = [(t, st) for n, st, t in tl["states"] if n == node]
            row = y[f"{node}: VRRP"]
            for i, (t, st) in enumerate(changes):
                t_next = changes[i + 1][0] if i + 1 < len(changes) else (0.0 if node == "a" else right)
                lo, hi = max(t, -1.0), min(t_next, right)
                if hi > lo:
                    ax.barh(row, hi - lo, left=lo, height=0.5, color=colours.get(st, "tab:gray"), alpha=0.7)
                    ax.text(lo + 0.01, row, st, va="center", fontsize=7, color="white")
            if node == "a":
                ax.barh(row, right, left=0.0, height=0.5, color="black", alpha=0.25)
                ax.text(0.01, row, "power cut", va="center", fontsize=7)
        chain = sorted((st for st in tl["steps"] if st[0] == "b" and st[3] >= -1.0), key=lambda st: st[2])
        if impl == "keepalived":  # keepalived adds the VIP itself on entering MASTER, before any script
            master = next((t for n, st, t in tl["states"] if n == "b" and st == "MASTER" and t >= -1.0), None)
            if master is not None:
                chain.insert(0, ["b", "VIP (keepalived, at MASTER)", master, master, True])
        for i, (_node, label, t1, t2, ok) in enumerate(chain):
            lane = lanes - i
            ax.barh(lane, max(t2 - t1, 0.003), left=t1, height=0.6, color="tab:olive" if ok else "tab:red")
            ax.text(t2 + 0.01, lane, f"{label} {1000 * (t2 - t1):.0f} ms", va="center", fontsize=6.5)
        ticks = [(y[r], r) for r in y] + [(lanes - i, "b: chain" if i == 0 else "") for i in range(len(chain))]
        ax.set_yticks([t for t, _ in ticks], [name for _, name in ticks], fontsize=8)
        ax.set_ylim(lanes - max(len(chain), 1) + 0.4, lanes + 3.6)
        ax.set_xlim(-1.0, right)
        ax.set_xlabel("seconds after the power cut of master a")
        title = "failover-agent" if impl == "agent" else "keepalived + notify scripts"
        ax.set_title(f"{title}: crash run {sample['run'] + 1} (median outage)", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.suptitle(f"NFS failover timeline, VRRPv{VERSION} {ADVERT:g} s adverts ({result.get('date', '')[:10]})",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    impl: str
    event: str
    run: int
    outage: float | None = None  # s, longest gap between acknowledged writes from t0 - 1 s to the end
    first_ack: float | None = None  # s from t0 to the ack that ended the outage
    master_to_ack: float | None = None  # s from the new master's MASTER transition to that ack
    ready: float | None = None  # s from t0 until NFS answers at the VIP again (NullProbe)
    master_to_ready: float | None = None  # s from the new master's MASTER transition to that answer
    acquire_ms: float | None = None  # agent only: MASTER -> VIP added
    event_took: float | None = None  # s the crash / stop call took in the harness
    acked: int = 0
    lost: int | None = None  # acknowledged files missing or with wrong content
    unreadable: int = 0  # acknowledged files the verifier could not read (transport errors)
    write_errors: int = 0
    errors: list[str] = field(default_factory=list)  # the writer's failures: "seconds after t0, step, errno"
    both_mounted_s: float = 0.0  # both nodes had the disk mounted for this long (watcher)
    old_unmounted: float | None = None  # partition: s from t0 until a no longer had the disk mounted
    new_mounted: float | None = None  # s from t0 until b had the disk mounted
    anomalies: list[str] = field(default_factory=list)
    error: str | None = None
    timeline: dict[str, Any] = field(default_factory=dict)  # for the chart: see timeline()


def _prefix(impl: str, event: str, run: int) -> str:
    return f"no{os.getpid() % 100000}{impl[0]}{event[0]}{run}"


def one_run(impl: str, event: str, run: int) -> Sample:
    sample = Sample(impl, event, run)
    with NetnsLab(_prefix(impl, event, run), nodes=tuple(PRIORITIES)) as lab:
        ga: GaneshaAgents | None = None
        ka: KeepalivedNfs | None = None
        if impl == "agent":
            ga = GaneshaAgents(lab, guarded=GUARDED, version=VERSION, advert_interval=ADVERT)
            disk, ns = ga.disk, ga.ns
            ga.start("a")
        else:
            ka = KeepalivedNfs(lab)
            disk, ns = ka.disk, ka.ns
            ka.start("a")
        writer = NfsWriter(lab, CLIENT, VIP, export=disk.path(EXPORT)).start()
        lab.add_cleanup(writer.stop)
        if not writer.wait_acked(WARMUP_ACKS, timeout=20):
            raise LabError(f"no writes through the VIP: {writer.errors[-3:]} {writer.stderr_text()[-500:]}")
        probe = NullProbe(lab, CLIENT, VIP).start()
        lab.add_cleanup(probe.stop)
        if not probe.wait_up(10):
            raise LabError(f"NFS does not answer at the VIP: {probe.stderr_text()[-500:]}")
        with MountWatch(disk, ns) as watch:
            t0 = time.monotonic()
            if event == "crash":
                if not power_cut(lab, disk, ns["a"]):
                    sample.anomalies.append("a no longer had the disk mounted when it lost power")
            elif event == "partition":
                lab.set_link("a", False, wait=0)  # a's cable: a lives on, cut off from client, witness and b
            elif ga is not None:
                ga.stop("a")  # SIGTERM; returns once the agent exited
            else:
                assert ka is not None
                ka.ka["a"].stop(timeout=30)  # SIGTERM by PID; returns once keepalived exited
            sample.event_took = time.monotonic() - t0
            sample.ready = probe.wait_ready_after(t0, timeout=30)
            # (the old master may still acknowledge a write or two right after t0)
            if writer.wait_first_ack_after(t0 + (sample.ready or 0.0), timeout=30) is not None:
                writer.wait_acked(AFTER_ACKS, timeout=20, after=t0 + (sample.ready or 0.0))
            # the old master may still be releasing (keepalived's notify_stop): give it time to finish
            wait_until(lambda: not disk.mounted_in(ns["a"]), 10 if event != "partition" or ga else 1, interval=0.02)
        sample.old_unmounted = watch.first_change("a", False, t0)
        sample.new_mounted = watch.first_change("b", True, t0)
        if event == "partition" and ga is not None:
            if sample.old_unmounted is None or sample.old_unmounted > BOUND:
                sample.anomalies.append(f"a unmounted {_s(sample.old_unmounted)} after the cut, not within the "
                                        f"bound {BOUND:.3f} s")
            if sample.new_mounted is not None and sample.new_mounted < BOUND - 0.1:
                sample.anomalies.append(f"b mounted {sample.new_mounted:.3f} s after the cut, before the bound "
                                        f"{BOUND:.3f} s (less one heartbeat) had passed")
        t_end = time.monotonic()
        writer.stop()
        probe.stop()
        # the longest gap between acks from the last second before t0 (from its first ack, not from
        # t0 - 1 itself: the writer may have started less than a second before) to the end; an outage
        # still going on at the end counts up to t_end
        window = sorted(a.acked for a in writer.acks if a.acked >= t0 - 1.0)
        last_before, first_after = max(itertools.pairwise([*window[:1], *window, t_end]), key=lambda p: p[1] - p[0])
        sample.outage = first_after - last_before
        resumed = first_after - t0 if first_after < t_end else None
        sample.first_ack = resumed
        sample.acked = len(writer.acks)
        sample.write_errors = len(writer.errors)
        sample.errors = [f"{e.time - t0:+.3f} {e.stage} {e.errno}" for e in writer.errors if e.time >= t0 - 1.0]
        if resumed is not None and sample.ready is not None and resumed - sample.ready > 0.3:
            sample.anomalies.append(
                f"the writer resumed {resumed - sample.ready:.2f} s after NFS answered at the VIP again (its request "
                f"in flight waited for a TCP retransmission or the RPC timeout; errors: {', '.join(sample.errors)})")
        sample.timeline = timeline(sample, t0, t_end, writer, probe, ga, ka)
        sample.both_mounted_s = watch.overlap_seconds()
        if watch.overlaps:
            sample.anomalies.append(f"both nodes had the disk mounted for ~{1000 * watch.overlap_seconds():.0f} ms")
        if resumed is None:
            sample.anomalies.append("writes did not resume within 30 s")
        # who serves now
        if ga is not None:
            if ga.phase("b") != "SERVING":
                sample.anomalies.append(f"b is {ga.phase('b')}, not SERVING")
            sample.acquire_ms = ga.acquire_ms("b")
            master_at = agent_master_at(ga, "b")
            masters = sum(1 for t in ga.agents["b"].transitions() if t.new == "MASTER")
        else:
            assert ka is not None
            if not ka.serving("b"):
                sample.anomalies.append(f"b does not serve (keepalived {ka.ka['b'].state()})")
            if event == "graceful" and ka.ganesha_pid("a") is not None:
                sample.anomalies.append("ganesha still runs on a after keepalived stopped")
            for line in ka.notes("a").splitlines() + ka.notes("b").splitlines():
                if "failed" in line:
                    sample.anomalies.append(f"notify script: {line.split(maxsplit=1)[1]}")
            master_at = ka.last_master_at("b")
            masters = ka.ka["b"].log().count("Entering MASTER STATE")
        if masters != 1:
            sample.anomalies.append(f"b became MASTER {masters} times")
        if disk.mounted_in(ns["a"]):
            sample.anomalies.append("a still has the disk mounted")
        if master_at is not None:
            if resumed is not None:
                sample.master_to_ack = t0 + resumed - master_at
            if sample.ready is not None:
                sample.master_to_ready = t0 + sample.ready - master_at
        report = writer.verify()
        sample.lost = len(report.missing) + len(report.corrupt) if report.complete else None
        sample.unreadable = len(report.errors)
        if not report.passed:
            sample.anomalies.append(f"verify: {report.describe()}")
    return sample


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _vals(samples: list[Sample], impl: str, event: str | None, attr: str) -> list[float]:
    out = []
    for s in samples:
        if s.impl == impl and (event is None or s.event == event) and s.error is None:
            value = getattr(s, attr)
            if value is not None:
                out.append(float(value))
    return out


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(st: dict[str, float | int | None], scale: float = 1.0, unit: str = " s", digits: int = 3) -> str:
    med, lo, hi = st["median"], st["min"], st["max"]
    if med is None or lo is None or hi is None:
        return "n/a"
    return f"{med * scale:.{digits}f}{unit} ({lo * scale:.{digits}f}-{hi * scale:.{digits}f})"


def _ratio(a: dict[str, float | int | None], k: dict[str, float | int | None]) -> str:
    am, km = a["median"], k["median"]
    return "n/a" if am is None or not km else f"{am / km:.2f}"


def _verdict(st: dict[str, float | int | None], limit: float) -> str:
    hi = st["max"]
    return "n/a" if hi is None else ("met" if hi <= limit else f"missed (max {hi:.3f})")


def report(samples: list[Sample], runs: int) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for impl in IMPLS:
        table[impl] = {
            **{f"{ev}_{attr}": _stats(_vals(samples, impl, ev, attr)) for ev in EVENTS
               for attr in ("outage", "master_to_ack", "ready", "old_unmounted", "new_mounted")},
            "master_to_ready": _stats(_vals(samples, impl, None, "master_to_ready")),
            "acquire_ms": _stats(_vals(samples, impl, None, "acquire_ms")),
            "both_mounted_s": _stats(_vals(samples, impl, None, "both_mounted_s")),
        }
    lost = {impl: sum(s.lost or 0 for s in samples if s.impl == impl) for impl in IMPLS}
    unverified = {impl: sum(1 for s in samples if s.impl == impl and (s.lost is None or s.error)) for impl in IMPLS}
    overlaps = {impl: sum(1 for s in samples if s.impl == impl and s.both_mounted_s > 0) for impl in IMPLS}
    failed = {impl: sum(1 for s in samples if s.impl == impl and s.error) for impl in IMPLS}
    acked = {impl: sum(s.acked for s in samples if s.impl == impl) for impl in IMPLS}
    a, k = table["agent"], table["keepalived"]
    names = {"crash": "crash", "graceful": "graceful (SIGTERM)", "partition": "partition (a's cable)"}

    def row(label: str, key: str) -> tuple[str, str, str, str]:
        return label, _fmt(a[key]), _fmt(k[key]), _ratio(a[key], k[key])

    rows = [row(f"{names[ev]} outage", f"{ev}_outage") for ev in EVENTS]
    rows += [row(f"{ev}: t0 -> NFS answers at the VIP (fresh connection)", f"{ev}_ready") for ev in EVENTS]
    rows += [row("new MASTER -> NFS answers at the VIP (both events)", "master_to_ready")]
    rows += [row(f"{ev}: new MASTER -> first ack", f"{ev}_master_to_ack") for ev in EVENTS]
    if "partition" in EVENTS:
        rows += [row("partition: t0 -> a unmounted", "partition_old_unmounted"),
                 row(f"partition: t0 -> b mounted (bound {BOUND:.3f} s)", "partition_new_mounted")]
    rows += [
        ("acquire chain MASTER -> VIP (agent log)", _fmt(a["acquire_ms"], 1.0, " ms", 1),
         "n/a (VIP first, scripts after)", ""),
        ("lost acknowledged writes (total)", f"{lost['agent']} of {acked['agent']}",
         f"{lost['keepalived']} of {acked['keepalived']}", ""),
        ("runs with both nodes mounting the disk", f"{overlaps['agent']} of {2 * runs}",
         f"{overlaps['keepalived']} of {2 * runs}", ""),
        ("runs failed / not verified", f"{failed['agent']} / {unverified['agent']}",
         f"{failed['keepalived']} / {unverified['keepalived']}", ""),
    ]
    targets = [(f"{names[ev]} outage <= {TARGETS[ev]:.3f} s", _verdict(a[f"{ev}_outage"], TARGETS[ev]),
                _verdict(k[f"{ev}_outage"], TARGETS[ev])) for ev in EVENTS]
    targets += [
        (f"acquire <= {TARGETS['acquire_ms']:.0f} ms", _verdict(a["acquire_ms"], TARGETS["acquire_ms"]), "n/a"),
        ("zero lost writes", "met" if lost["agent"] == 0 and not unverified["agent"] else "missed",
         "met" if lost["keepalived"] == 0 and not unverified["keepalived"] else "missed"),
    ]
    print(f"\n{runs} runs per implementation and event; median (min-max); {keepalived_version()} vs failover-agent")
    print(f"VRRPv{VERSION}, advert {ADVERT:g} s, priorities {PRIORITIES['a']}/{PRIORITIES['b']}: "
          f"Master_Down_Interval of b = {MASTER_DOWN:.4f} s"
          + (f"; agents: witness, heartbeats 0.1 s, release_deadline 1 s: bound {BOUND:.3f} s" if GUARDED else "")
          + "\n")
    print("| measure | failover-agent | keepalived + notify scripts | agent/keepalived |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\n| target (max over runs) | failover-agent | keepalived + notify scripts |")
    print("|---|---|---|")
    for t in targets:
        print("| " + " | ".join(t) + " |")
    odd = [s for s in samples if s.anomalies or s.error]
    if odd:
        print("\nAnomalies:")
        for s in odd:
            print(f"- {s.impl} {s.event} run {s.run + 1}: {'; '.join(s.anomalies + ([s.error] if s.error else []))}")
    return {"runs": runs, "vip": VIP, "advert_interval": ADVERT, "priorities": PRIORITIES,
            "master_down_interval": MASTER_DOWN, "targets": TARGETS, "keepalived": keepalived_version(),
            "summary": table, "lost_writes": lost, "acked_writes": acked, "runs_not_verified": unverified,
            "runs_both_mounted": overlaps, "runs_failed": failed,
            "table": [dict(zip(("measure", "agent", "keepalived", "ratio"), r, strict=True)) for r in rows],
            "targets_met": [dict(zip(("target", "agent", "keepalived"), t, strict=True)) for t in targets],
            "samples": [asdict(s) for s in samples]}


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per implementation and event (default 10)")
    parser.add_argument("--json", type=Path, help="also write the results (every sample) here")
    parser.add_argument("--png", type=Path, help="draw one representative crash run of each side by side here "
                        "(needs matplotlib: pip install .[bench])")
    parser.add_argument("--guarded", action="store_true", help="VRRPv2 1 s, witness, heartbeats, bounded release; "
                        "crash and partition")
    args = parser.parse_args(argv)
    if args.guarded:
        use_guarded()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    hold_lab_lock("bench.nfs_outage")  # nothing else may load the machine while it measures
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so labs are torn down on kill
    samples: list[Sample] = []
    started = time.monotonic()
    for run in range(args.runs):
        order = IMPLS if run % 2 == 0 else IMPLS[::-1]
        for impl in order:
            for event in EVENTS:
                try:
                    s = one_run(impl, event, run)
                except Exception as exc:  # one broken run must not lose the others
                    s = Sample(impl, event, run, error=f"{type(exc).__name__}: {str(exc)[-800:]}")
                samples.append(s)
                print(f"run {run + 1}/{args.runs} {impl:10s} {event:8s} outage {_s(s.outage)}, "
                      f"NFS back {_s(s.ready)}, MASTER->NFS {_s(s.master_to_ready)}, "
                      f"MASTER->ack {_s(s.master_to_ack)}, "
                      f"acquire {'n/a' if s.acquire_ms is None else f'{s.acquire_ms:.1f} ms'}, lost {s.lost}, "
                      f"acked {s.acked}{'; ' + '; '.join(s.anomalies) if s.anomalies else ''}"
                      f"{'; ERROR ' + s.error if s.error else ''}", file=sys.stderr, flush=True)
    result = report(samples, args.runs)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nresults written to {args.json}")
    if args.png:
        plot_timelines(result, args.png)
        print(f"timelines drawn in {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
