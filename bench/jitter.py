"""Advert timing of the master on the wire, idle, with both CPUs busy and under a flood of bogus VRRP.

failover-agent and keepalived 2.2.7 run side by side in one run, each as a master (a, priority
150) and backup (b, 100) pair in its own lab (bench.takeover's IdleSet: the same pairs, the same
settings, and the bare asyncio floor next to them for the idle CPU). VRRPv2 with 1 s adverts and
PASS authentication (so that an authentication mismatch is one of the flood's drop reasons), and
VRRPv3 with 0.1 s adverts.

The adverts are captured by tcpdump in the bridge namespace (br0, only frames from the nodes'
MACs, nanosecond stamps); the jitter of an advert is |its interval since the previous one -
the advert interval|, and the table gives its median, 99th percentile and maximum. Conditions:

- idle: nothing else runs; the idle CPU and RSS of each node are measured in this window, next
  to a bare asyncio loop with the same wake-ups (bench.takeover's floor);
- busy: one busy-looping process per CPU (nice 0) in the client namespace, while both pairs run;
- flood: a flooder in the client namespace of one lab at a time sends a round robin of bogus
  VRRP packets at a fixed rate (20,000/s by default), one kind per drop reason of
  vrrp.packet.Validator that a packet on the wire can have: bad checksum, other VRID, other
  VRRP version, unknown version, not an advert (type), TTL != 255, too short, address count
  that does not match the length, other advert interval and wrong password (v2), and the
  master's own advert replayed to it by unicast from another MAC (the master's eth0 gets
  accept_local=1 for this: otherwise its kernel drops a packet with one of its own addresses as
  source before any socket sees it; the backup does not get these, it would take them for the
  master's adverts). Every other packet says priority 200, so one that got through would make
  the master step down. Not on the list: malformed IP (the kernel drops those before any
  socket) and "not a unicast peer" (these pairs use multicast). The rate is counted by the
  flooder and checked on the wire (the flooder's bridge port counters).

Each node's VRRP state is checked before and after every window (agent: its transition log and
status counters, which also show the drops per reason; keepalived: its "Entering ... STATE"
lines); the flood must cause no state change and the backup must never send an advert.

    python -m bench.jitter                      # ~9.5 min: v2 100 s and v3 30 s per condition
    python -m bench.jitter --quick              # CI size: a few seconds per condition (~1 min)
    python -m bench.jitter --json /tmp/jitter.json --png docs/jitter.png
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bench.takeover import MODES, VIP, Daemon, IdleSet, cpu_seconds
from tests.lab.keepalived import keepalived_version
from tests.lab.lock import hold_lab_lock
from tests.lab.netns import BRIDGE, CLIENT, CLIENT_IP, LabError, NetnsLab, stop_process, wait_until
from tests.lab.pcap import read_pcap
from vrrp.checksum import checksum
from vrrp.packet import AUTH_PASS, GROUP, Advertisement, auth_bytes, encode

IMPLS = ("agent", "keepalived")
CONDITIONS = ("idle", "busy", "flood")
AUTH = "jit7pass"  # v2 only: VRRPv3 has no authentication
VRID = 51
MASTER_PRIORITY = 150
BOGUS_PRIORITY = 200  # above the master's: a bogus packet taken for an advert would unseat it
RATE = 20_000.0
TARGET_P99_MS = 10.0
TARGET_VS_KEEPALIVED_MS = 2.0
TARGET_IDLE_CPU_PCT = 0.05
TARGET_FLOOR_RATIO = 1.5
TARGET_RSS_MB = 60.0


# --------------------------------------------------------------------------------------------
# The bogus packets
# --------------------------------------------------------------------------------------------


def _ip(payload: bytes, src: IPv4Address, ttl: int = 255) -> bytes:
    """An IPv4 header around `payload` (the kernel fills in ID and checksum: IP_HDRINCL)."""
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, ttl, 112, 0, src.packed, GROUP.packed)
    return head + payload


def bogus_packets(version: int, interval: float, master: IPv4Address, src: IPv4Address) -> dict[str, bytes]:
    """One IPv4 datagram per drop reason (name -> bytes), as the flooder sends them.

    Built with the agent's own encoder and then broken in exactly one way each, so each says
    which check it exercises; tests/test_jitter_bench.py checks every one against
    vrrp.packet.Validator with the master's settings.
    """
    auth = {"auth_type": AUTH_PASS, "auth_data": auth_bytes(AUTH)} if version == 2 else {}
    vip = (IPv4Address(VIP),)

    def adv(**kw: Any) -> Advertisement:
        base: dict[str, Any] = {"version": version, "vrid": VRID, "priority": BOGUS_PRIORITY, "interval": interval,
                                "addresses": vip, **auth}
        base.update(kw)
        return Advertisement(**base)

    good = encode(adv(), src, GROUP, 0)
    out: dict[str, bytes] = {}
    bad = bytearray(good)
    bad[26] ^= 0xFF  # VRRP checksum, high byte
    out["checksum"] = bytes(bad)
    out["vrid"] = encode(adv(vrid=VRID + 1), src, GROUP, 0)
    other = 3 if version == 2 else 2
    out["version"] = encode(adv(version=other, interval=1.0, auth_type=0, auth_data=b"\0" * 8), src, GROUP, 0)
    msg = bytearray(good[20:])
    msg[0] = 0x71  # VRRP version 7
    msg[6:8] = b"\0\0"
    msg[6:8] = struct.pack("!H", _vrrp_checksum(bytes(msg), version, src))
    out["version_unknown"] = _ip(bytes(msg), src)
    msg = bytearray(good[20:])
    msg[0] = (version << 4) | 2  # type 2: not an advertisement
    msg[6:8] = b"\0\0"
    msg[6:8] = struct.pack("!H", _vrrp_checksum(bytes(msg), version, src))
    out["type"] = _ip(bytes(msg), src)
    out["ttl"] = _ip(good[20:], src, ttl=64)
    out["length_short"] = _ip(good[20:26], src)
    msg = bytearray(good[20:])
    msg[3] = 3  # says 3 addresses, carries 1
    msg[6:8] = b"\0\0"
    msg[6:8] = struct.pack("!H", _vrrp_checksum(bytes(msg), version, src))
    out["length_count"] = _ip(bytes(msg), src)
    if version == 2:
        out["interval"] = encode(adv(interval=interval + 1), src, GROUP, 0)
        out["auth"] = encode(adv(auth_data=auth_bytes("wrong")), src, GROUP, 0)
    # the master's own advert, replayed to the master alone (unicast: the backup would take it for
    # the master's advert, which would hide a silent master): same source address and content
    out["own"] = encode(adv(priority=MASTER_PRIORITY), master, master, 0)
    return out


def _vrrp_checksum(msg: bytes, version: int, src: IPv4Address) -> int:
    """The checksum a VRRP message of `version` would carry (v3 covers a pseudo header)."""
    if version == 2:
        return checksum(msg)
    return checksum(src.packed + GROUP.packed + struct.pack("!BBH", 0, 112, len(msg)) + msg)


FLOODER = r"""
import os, signal, socket, struct, sys, threading, time
rate, ifindex = float(sys.argv[1]), int(sys.argv[2])
packets = [bytes.fromhex(h) for h in sys.argv[3].split(",")]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL: our own headers
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, ifindex))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()  # parent gone: stop
print("READY", flush=True)
sent = errors = skipped = 0
n, i = len(packets), 0
dsts = [(socket.inet_ntoa(p[16:20]), 0) for p in packets]  # the group, or one node (unicast)
send = s.sendto
t0 = time.monotonic()
while not stop.is_set():
    due = int((time.monotonic() - t0) * rate)
    if due - sent > rate / 20:  # more than 50 ms behind (we were descheduled): do not burst, skip
        skipped += due - sent
        sent = due
    while sent < due:
        try:
            send(packets[i], dsts[i])
        except OSError:
            errors += 1
        i = (i + 1) % n
        sent += 1
    time.sleep(0.0005)
elapsed = time.monotonic() - t0
print("DONE", sent - skipped, errors, skipped, f"{elapsed:.6f}", flush=True)
"""

BURNER = "while True: pass"
KEEPALIVED_STATE = re.compile(r"Entering [A-Z]+ STATE")


@dataclass
class FloodResult:
    rate_target: float
    sent: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    wire_packets: int = 0  # counted by the bridge port the flooder is plugged into
    kinds: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.sent - self.errors) / self.seconds if self.seconds else 0.0

    @property
    def wire_rate(self) -> float:
        return self.wire_packets / self.seconds if self.seconds else 0.0


def _port_rx_packets(lab: NetnsLab, member: str) -> int:
    """Frames the bridge got from `member` (the rx counter of its bridge-side veth end)."""
    out = lab.run(BRIDGE, ["ip", "-s", "-j", "link", "show", "dev", f"v-{member}"]).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


class Flooder:
    """The flooder process in the lab's client namespace (see FLOODER)."""

    def __init__(self, lab: NetnsLab, version: int, interval: float, rate: float) -> None:
        self.lab = lab
        packets = bogus_packets(version, interval, IPv4Address(lab.ipv4("a")), IPv4Address(CLIENT_IP))
        self.result = FloodResult(rate, kinds=sorted(packets))
        ifindex = json.loads(lab.run(CLIENT, ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["ifindex"]
        self._wire0 = _port_rx_packets(lab, CLIENT)
        self.proc = lab.popen(CLIENT, [sys.executable, "-c", FLOODER, repr(rate), str(ifindex),
                                       ",".join(p.hex() for p in packets.values())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            raise LabError(f"flooder did not start (exit {self.proc.poll()})")

    def stop(self) -> FloodResult:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        self.result.wire_packets = _port_rx_packets(self.lab, CLIENT) - self._wire0
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "DONE":
                self.result.sent, self.result.errors, self.result.skipped = map(int, parts[1:4])
                self.result.seconds = float(parts[4])
        if not self.result.seconds:
            raise LabError(f"flooder gave no count (exit {self.proc.returncode}): {out!r}")
        return self.result


@contextlib.contextmanager
def burners(lab: NetnsLab, count: int) -> Iterator[None]:
    """`count` busy-looping processes at nice 0 in the client namespace (a CPU each)."""
    procs = [lab.popen(CLIENT, [sys.executable, "-c", BURNER]) for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            stop_process(p)


# --------------------------------------------------------------------------------------------
# Capture and state
# --------------------------------------------------------------------------------------------


class Capture:
    """tcpdump on the lab's bridge: the VRRP frames the nodes send, with nanosecond stamps."""

    def __init__(self, lab: NetnsLab, path: Path) -> None:
        self.lab, self.path = lab, path
        macs = " or ".join(f"ether src {lab.configured_mac(n)}" for n in lab.nodes)
        self.err = path.with_suffix(".err")
        with self.err.open("wb") as err:
            self.proc = lab.popen(BRIDGE, ["tcpdump", "-i", "br0", "-n", "-U", "-s", "256",
                                           "--time-stamp-precision=nano",
                                           "-w", str(path), f"ip proto 112 and ({macs})"],
                                  stdout=subprocess.DEVNULL, stderr=err)
        if not wait_until(lambda: "listening on" in self._stderr() or self.proc.poll() is not None, 10):
            raise LabError(f"tcpdump did not start: {self._stderr()}")
        if self.proc.poll() is not None:
            raise LabError(f"tcpdump exited: {self._stderr()}")

    def _stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> dict[str, list[tuple[float, int]]]:
        """(time, priority) of every advert, per sending node."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        if "0 packets dropped by kernel" not in self._stderr():
            raise LabError(f"tcpdump lost packets: {self._stderr()}")
        by_mac = {self.lab.configured_mac(n): n for n in self.lab.nodes}
        out: dict[str, list[tuple[float, int]]] = {n: [] for n in self.lab.nodes}
        for frame in read_pcap(self.path):
            node = by_mac.get(frame.src_mac)
            if node is not None and frame.ethertype == 0x0800 and len(frame.payload) >= 23:
                ihl = (frame.payload[0] & 0x0F) * 4
                out[node].append((frame.time, frame.payload[ihl + 2]))
        return out


def state_marks(pair: tuple[Daemon, Daemon]) -> dict[str, Any]:
    """What each node of a pair says of its VRRP state now: its state and how many changes so far."""
    marks: dict[str, Any] = {}
    for role, d in zip(("master", "backup"), pair, strict=True):
        if d.agent is not None:
            marks[role] = {"state": d.agent.state(), "changes": len(d.agent.transitions())}
            counters = d.agent.status()["instance"]["counters"]
            marks[role]["drops"] = dict(counters["drops"])
            marks[role]["wakeups"] = counters["doorbell_wakeups"]
        else:
            assert d.ka is not None
            log = d.ka.log()
            marks[role] = {"state": d.ka.state(), "changes": len(KEEPALIVED_STATE.findall(log))}
    return marks


def pair_cpu(pair: tuple[Daemon, Daemon]) -> dict[str, float]:
    return {role: sum(cpu_seconds(p.pid) for p in d.processes()) for role, d in zip(("master", "backup"), pair,
                                                                                      strict=True)}


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100): a value that occurred, no interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Window:
    """One implementation in one condition at one advert interval."""

    impl: str
    mode: str
    condition: str
    seconds: float
    interval: float
    jitter_ms: list[float] = field(default_factory=list)
    adverts: int = 0
    master_priorities: list[int] = field(default_factory=list)
    backup_adverts: int = 0
    state_changes: dict[str, int] = field(default_factory=dict)
    states_after: dict[str, str | None] = field(default_factory=dict)
    cpu_pct: dict[str, float] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)  # agent master: drops per reason in this window
    backup_drops: dict[str, int] = field(default_factory=dict)
    flood: dict[str, Any] | None = None

    def stats(self) -> dict[str, float | int | None]:
        return {"n": len(self.jitter_ms), "p50": percentile(self.jitter_ms, 50),
                "p99": percentile(self.jitter_ms, 99), "max": max(self.jitter_ms) if self.jitter_ms else None}

    @property
    def disturbed(self) -> bool:
        """A state change, an advert from the backup, or the master saying anything but its priority."""
        return (any(self.state_changes.values()) or self.backup_adverts > 0
                or any(p != MASTER_PRIORITY for p in self.master_priorities)
                or self.states_after.get("master") != "MASTER" or self.states_after.get("backup") != "BACKUP")


def measure(lab: NetnsLab, pair: tuple[Daemon, Daemon], impl: str, mode: str, condition: str,
            capture: Capture, before: dict[str, Any], cpu0: dict[str, float], t0: float) -> Window:
    """Close one window: the capture's adverts, the state and CPU since `before`/`cpu0`/`t0`."""
    seconds = time.monotonic() - t0
    cpu1 = pair_cpu(pair)
    adverts = capture.stop()
    after = state_marks(pair)
    interval = MODES[mode][1]
    w = Window(impl, mode, condition, seconds, interval)
    stamps = [t for t, _ in adverts["a"]]
    w.adverts = len(stamps)
    w.master_priorities = sorted({p for _, p in adverts["a"]})
    w.jitter_ms = [abs((b - a) - interval) * 1000 for a, b in itertools.pairwise(stamps)]
    w.backup_adverts = len(adverts["b"])
    for role in ("master", "backup"):
        w.state_changes[role] = after[role]["changes"] - before[role]["changes"]
        w.states_after[role] = after[role]["state"]
        w.cpu_pct[role] = 100 * (cpu1[role] - cpu0[role]) / seconds
    if impl == "agent":
        for role, target in (("master", w.drops), ("backup", w.backup_drops)):
            for reason, n in after[role]["drops"].items():
                if n - before[role]["drops"].get(reason, 0):
                    target[reason] = n - before[role]["drops"].get(reason, 0)
    return w


class Run:
    """One advert interval: the IdleSet of bench.takeover, and the three conditions in turn."""

    def __init__(self, mode: str, seconds: float, rate: float, work: Path, order: tuple[str, ...],
                 conditions: tuple[str, ...] = CONDITIONS) -> None:
        self.mode, self.seconds, self.rate, self.work, self.order = mode, seconds, rate, work, order
        self.conditions = conditions
        self.windows: list[Window] = []
        self.idle: dict[str, dict[str, float]] = {}

    def _open(self, pairs: IdleSet, impls: tuple[str, ...], condition: str) -> dict[str, Any]:
        # the status request (a failoverctl process, and work in the agent) before the capture starts
        marks = {impl: state_marks(pairs.pairs[impl]) for impl in impls}
        time.sleep(0.5)
        opened = {}
        for impl in impls:
            capture = Capture(pairs.labs[impl], self.work / f"{self.mode}-{condition}-{impl}.pcap")
            opened[impl] = (capture, marks[impl], pair_cpu(pairs.pairs[impl]), time.monotonic())
        return opened

    def _close(self, pairs: IdleSet, opened: dict[str, Any], condition: str) -> list[Window]:
        out = []
        for impl, (capture, before, cpu0, t0) in opened.items():
            w = measure(pairs.labs[impl], pairs.pairs[impl], impl, self.mode, condition, capture, before, cpu0, t0)
            out.append(w)
            s = w.stats()
            print(f"{self.mode} {condition:5s} {impl:10s} adverts {w.adverts:4d} jitter p50 {_ms(s['p50'])} "
                  f"p99 {_ms(s['p99'])} max {_ms(s['max'])}; state changes {w.state_changes}, backup adverts "
                  f"{w.backup_adverts}; CPU master {w.cpu_pct['master']:.2f}% backup {w.cpu_pct['backup']:.2f}%"
                  + (f"; flood {w.flood['rate']:.0f}/s (wire {w.flood['wire_rate']:.0f}/s)" if w.flood else ""),
                  file=sys.stderr, flush=True)
        self.windows += out
        return out

    def run(self) -> None:
        version, interval = MODES[self.mode]
        auth = AUTH if version == 2 else ""
        with IdleSet(self.mode, self.work / "pairs", prefix="fj", client=True, auth_pass=auth) as pairs:
            for impl in IMPLS:  # so the flood's own-address packets reach the daemon (see the module doc)
                pairs.labs[impl].run("a", ["sysctl", "-q", "-w", "net.ipv4.conf.eth0.accept_local=1"])
            time.sleep(max(2.0, 2 * interval))
            if "idle" in self.conditions:
                # both pairs captured at once, the idle CPU of all three pairs measured meanwhile
                opened = self._open(pairs, IMPLS, "idle")
                windows = max(1, round(self.seconds / 20))
                self.idle = pairs.measure(self.seconds / windows, windows)
                self._close(pairs, opened, "idle")
            if "busy" in self.conditions:
                # one burner per CPU, both pairs captured at once
                with burners(pairs.labs["agent"], _cpus()):
                    opened = self._open(pairs, IMPLS, "busy")
                    time.sleep(self.seconds)
                    self._close(pairs, opened, "busy")
            # flood: one lab at a time, so the flood is the only extra load
            for impl in self.order if "flood" in self.conditions else ():
                lab = pairs.labs[impl]
                opened = self._open(pairs, (impl,), "flood")
                flooder = Flooder(lab, version, interval, self.rate)
                try:
                    time.sleep(self.seconds)
                finally:
                    result = flooder.stop()
                (w,) = self._close(pairs, opened, "flood")
                w.flood = {**asdict(result), "rate": result.rate, "wire_rate": result.wire_rate}
                time.sleep(max(1.0, 4 * interval))  # the queues drain before the next window


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _ms(x: float | int | None) -> str:
    return "n/a" if x is None else f"{x:.3f} ms"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def verdicts(runs: list[Run]) -> list[tuple[str, str, bool]]:
    """(target, what was measured, met) for every number the issue sets."""
    out: list[tuple[str, str, bool]] = []
    for run in runs:
        label = f"{run.mode} ({MODES[run.mode][1]:g} s)"
        by = {(w.impl, w.condition): w for w in run.windows}
        for cond in CONDITIONS:
            a, k = by.get(("agent", cond)), by.get(("keepalived", cond))
            if a is None or k is None:
                continue
            ap, kp = a.stats()["p99"], k.stats()["p99"]
            if ap is None or kp is None:
                out.append((f"{label} {cond}: jitter measured", "no intervals captured", False))
                continue
            out.append((f"{label} {cond}: agent jitter p99 <= {TARGET_P99_MS:g} ms", _ms(ap), ap <= TARGET_P99_MS))
            out.append((f"{label} {cond}: agent p99 <= keepalived p99 + {TARGET_VS_KEEPALIVED_MS:g} ms",
                        f"{_ms(ap)} vs {_ms(kp)}", ap <= kp + TARGET_VS_KEEPALIVED_MS))
            if cond == "flood":
                out.append((f"{label} flood: 0 state changes, backup silent (agent)",
                            f"{sum(a.state_changes.values())} changes, {a.backup_adverts} backup adverts",
                            not a.disturbed))
                out.append((f"{label} flood: rate >= 95% of {run.rate:,.0f}/s (agent's window)",
                            f"{(a.flood or {}).get('wire_rate', 0):,.0f}/s on the wire",
                            (a.flood or {}).get("wire_rate", 0) >= 0.95 * run.rate))
        if run.mode == "v2" and run.idle:
            ai, fi = run.idle["agent"], run.idle["floor"]
            for role in ("master", "backup"):
                cpu, floor = ai[f"{role}_cpu_pct"], fi[f"{role}_cpu_pct"]
                out.append((f"{label} idle CPU {role} <= {TARGET_IDLE_CPU_PCT:g} %", f"{cpu:.4f} %",
                            cpu <= TARGET_IDLE_CPU_PCT))
                out.append((f"{label} idle CPU {role} <= {TARGET_FLOOR_RATIO:g} x asyncio floor",
                            f"{cpu:.4f} % vs {floor:.4f} % ({cpu / floor if floor else float('inf'):.2f} x)",
                            floor > 0 and cpu <= TARGET_FLOOR_RATIO * floor))
                rss = ai[f"{role}_rss_mb"]
                out.append((f"{label} RSS {role} <= {TARGET_RSS_MB:g} MB", f"{rss:.1f} MB", rss <= TARGET_RSS_MB))
    return out


def report(runs: list[Run]) -> dict[str, Any]:
    print(f"\n{keepalived_version()} vs failover-agent; jitter = |advert interval on the wire - nominal|, "
          "nearest-rank percentiles\n")
    print("| advert | condition | adverts (agent/ka) | agent p50 / p99 / max | keepalived p50 / p99 / max "
          "| flood achieved | state changes (agent/ka) |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        by = {(w.impl, w.condition): w for w in run.windows}
        for cond in CONDITIONS:
            a, k = by.get(("agent", cond)), by.get(("keepalived", cond))
            if a is None or k is None:
                continue
            sa, sk = a.stats(), k.stats()
            flood = "" if cond != "flood" else "{:,.0f} / {:,.0f} pps".format(
                (a.flood or {}).get("wire_rate", 0), (k.flood or {}).get("wire_rate", 0))
            changes = (f"{sum(a.state_changes.values())} / {sum(k.state_changes.values())}"
                       + (f" (backup adverts {a.backup_adverts} / {k.backup_adverts})"
                          if a.backup_adverts or k.backup_adverts else ""))
            print(f"| {MODES[run.mode][1]:g} s | {cond} | {a.adverts} / {k.adverts} | "
                  f"{_ms(sa['p50'])} / {_ms(sa['p99'])} / {_ms(sa['max'])} | "
                  f"{_ms(sk['p50'])} / {_ms(sk['p99'])} / {_ms(sk['max'])} | {flood} | {changes} |")
    print("\n| CPU during the window, master / backup | idle | busy | flood |")
    print("|---|---|---|---|")
    for run in runs:
        for impl in IMPLS:
            cells = []
            for cond in CONDITIONS:
                w = next((w for w in run.windows if w.impl == impl and w.condition == cond), None)
                cells.append("n/a" if w is None else f"{w.cpu_pct['master']:.3f} % / {w.cpu_pct['backup']:.3f} %")
            print(f"| {impl}, {MODES[run.mode][1]:g} s | " + " | ".join(cells) + " |")
    for run in runs:
        if run.idle:
            print(f"\nIdle, {MODES[run.mode][1]:g} s adverts: CPU % of one core and RSS, master / backup")
            for impl in ("keepalived", "agent", "floor"):
                d = run.idle[impl]
                print(f"  {impl:10s} {d['master_cpu_pct']:.4f} % / {d['backup_cpu_pct']:.4f} %   "
                      f"{d['master_rss_mb']:.1f} MB / {d['backup_rss_mb']:.1f} MB")
    drops = [(run.mode, w.drops, w.backup_drops) for run in runs for w in run.windows
             if w.impl == "agent" and w.condition == "flood"]
    for mode, master_drops, backup_drops in drops:
        print(f"\nagent drops under the flood, {MODES[mode][1]:g} s: master {dict(sorted(master_drops.items()))}; "
              f"backup {dict(sorted(backup_drops.items()))}")
    checks = verdicts(runs)
    print("\n| target | measured | met |")
    print("|---|---|---|")
    for target, measured, met in checks:
        print(f"| {target} | {measured} | {'yes' if met else 'NO'} |")
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "keepalived": keepalived_version(),
            "runs": [{"mode": r.mode, "interval": MODES[r.mode][1], "seconds": r.seconds, "rate": r.rate,
                      "idle": r.idle, "windows": [{**asdict(w), "stats": w.stats(), "disturbed": w.disturbed}
                                                  for w in r.windows]} for r in runs],
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in checks]}


def plot(result: dict[str, Any], path: Path) -> None:
    """Jitter histograms, agent next to keepalived: one row per advert interval, one column per condition."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    shown = [c for c in CONDITIONS if any(w["condition"] == c for r in runs for w in r["windows"])]
    fig, axes = plt.subplots(len(runs), len(shown), figsize=(4.2 * max(len(shown), 2), 3.0 * len(runs)),
                             squeeze=False)
    colours = {"agent": "tab:blue", "keepalived": "tab:orange"}
    for row, run in enumerate(runs):
        for col, cond in enumerate(shown):
            ax = axes[row][col]
            windows = sorted((w for w in run["windows"] if w["condition"] == cond), key=lambda w: w["impl"])
            top = max([max(w["jitter_ms"], default=0.0) for w in windows] + [0.5])
            bins = [top * 1.02 * i / 40 for i in range(41)]
            for w in windows:
                st = w["stats"]
                label = (f"{w['impl']}: p50 {st['p50']:.2f}, p99 {st['p99']:.2f}, max {st['max']:.2f} ms"
                         if st["p99"] is not None else f"{w['impl']}: no adverts")
                ax.hist(w["jitter_ms"], bins=bins, histtype="step", linewidth=1.5, color=colours[w["impl"]],
                        label=label)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            title = f"{run['interval']:g} s adverts, {cond}"
            flood = next((w["flood"] for w in windows if w["flood"] and w["impl"] == "agent"), None)
            if flood:
                title += f" ({flood['wire_rate'] / 1000:.1f}k bogus pps)"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("|interval - nominal| (ms)")
            if col == 0:
                ax.set_ylabel("adverts")
            ax.legend(fontsize=8)
    fig.suptitle(f"Master advert jitter on the wire: failover-agent vs {result['keepalived']} ({result['date'][:10]})",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--modes", default="v2,v3", help="comma list of v2 (1 s adverts), v3 (0.1 s adverts)")
    parser.add_argument("--seconds-v2", type=float, default=100.0, help="seconds per condition at 1 s adverts")
    parser.add_argument("--seconds-v3", type=float, default=30.0, help="seconds per condition at 0.1 s adverts")
    parser.add_argument("--rate", type=float, default=RATE, help="bogus packets per second in the flood")
    parser.add_argument("--quick", action="store_true", help="CI size: 6 s (v2) and 3 s (v3) per condition")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma list of idle, busy, flood")
    parser.add_argument("--json", type=Path, help="write the results (every interval) here")
    parser.add_argument("--png", type=Path, help="write the jitter histograms here (needs matplotlib: .[bench])")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds_v2, args.seconds_v3 = 6.0, 3.0
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    conditions = tuple(c for c in CONDITIONS if c in args.conditions.split(","))
    if not conditions or set(args.conditions.split(",")) - set(CONDITIONS):
        parser.error(f"--conditions: choose from {', '.join(CONDITIONS)}")
    hold_lab_lock("bench.jitter")  # nothing else may load the machine while it measures
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so labs are torn down on kill
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="failover-jitter-") as tmp:
        for i, mode in enumerate(modes):
            seconds = args.seconds_v2 if mode == "v2" else args.seconds_v3
            work = Path(tmp) / mode
            work.mkdir()
            run = Run(mode, seconds, args.rate, work, IMPLS if i % 2 == 0 else IMPLS[::-1], conditions)
            run.run()
            runs.append(run)
    result = report(runs)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nresults written to {args.json}")
    if args.png:
        plot(result, args.png)
        print(f"histograms written to {args.png}")
    return 0 if all(ok for _, _, ok in verdicts(runs)) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
