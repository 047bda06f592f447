"""Takeover time, idle CPU and RSS: failover-agent next to keepalived 2.2.7, in one run.

Same topology for both (bridge, node a priority 150, node b priority 100, a client pinging the
VIP every 10 ms from its own namespace), same settings, alternating which implementation goes
first in each repetition. Reported: medians over the repetitions and the ratio agent/keepalived.

- crash takeover: a's cable pulled and its daemon SIGKILLed at t0; time until the client gets a
  reply from b's MAC to an echo request sent after t0.
- SIGTERM takeover: a's daemon gets SIGTERM at t0; same measure.
- idle: both nodes running, CPU seconds used over the idle window per node, and RSS (summed
  over a daemon's processes: keepalived runs a parent and a VRRP child).

    python -m bench.takeover              # 10 repetitions; idle: 5 windows of 60 s; v2 1 s and v3 0.1 s
    python -m bench.takeover --reps 1 --idle 2 --idle-reps 1 --modes v3   # smoke run
    python -m bench.takeover --modes v6,v6f   # VRRPv3 over IPv6 at 1 s and 0.1 s (takeovers only)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.lab.agent import AgentProc
from tests.lab.keepalived import Keepalived, render_keepalived_conf
from tests.lab.lock import hold_lab_lock
from tests.lab.netns import CLIENT, NetnsLab
from tests.lab.probe import Pinger

VIP = "192.0.2.100"
VIP6 = "2001:db8::100"
MODES = {"v2": (2, 1.0), "v3": (3, 0.1), "v6": (3, 1.0), "v6f": (3, 0.1)}
IPV6_MODES = ("v6", "v6f")  # VRRPv3 over IPv6 (RFC 5798): VIP6, adverts from link-local addresses
IMPLS = ("keepalived", "agent")


class Daemon:
    """The few operations the benchmark needs, for either implementation."""

    def __init__(self, impl: str, lab: NetnsLab, node: str, workdir: Path, priority: int,
                 version: int, interval: float, auth_pass: str = "", vip: str = f"{VIP}/24") -> None:
        self.impl, self.lab, self.node = impl, lab, node
        self.agent: AgentProc | None = None
        self.ka: Keepalived | None = None
        if impl == "agent":
            auth = {"auth_pass": auth_pass} if auth_pass else {}
            self.agent = AgentProc(lab, node, workdir, priority=priority, version=version,
                                   advert_interval=interval, vips=[vip], **auth)
            lab.add_cleanup(self.agent.close)
        else:
            conf = render_keepalived_conf(name=f"bench_{node}", interface="eth0", vrid=51, priority=priority,
                                          advert_int=interval, version=version, vips=[vip],
                                          auth_pass=auth_pass)
            self.ka = Keepalived(lab, node, conf, workdir=workdir / f"ka-{node}")

    def start(self) -> Daemon:
        if self.agent:
            self.agent.start()
        else:
            assert self.ka
            self.ka.start()
        return self

    def wait_state(self, state: str, timeout: float) -> bool:
        if self.agent:
            return self.agent.wait_state(state, timeout)
        assert self.ka
        return self.ka.wait_state(state, timeout)

    def crash(self) -> None:
        if self.agent:
            self.agent.kill()
        else:
            assert self.ka
            self.ka.kill()

    def terminate(self) -> None:
        if self.agent:
            self.agent.terminate()
        else:
            assert self.ka
            self.ka.stop()

    def processes(self) -> list[psutil.Process]:
        pid = self.agent.pid if self.agent else (self.ka.pid if self.ka else None)
        assert pid is not None
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]


@dataclass
class Sample:
    impl: str
    mode: str
    crash: float | None = None
    sigterm: float | None = None


def _pair(impl: str, lab: NetnsLab, work: Path, version: int, interval: float,
          auth_pass: str = "", vip: str = f"{VIP}/24") -> tuple[Daemon, Daemon]:
    a = Daemon(impl, lab, "a", work, 150, version, interval, auth_pass, vip).start()
    b = Daemon(impl, lab, "b", work, 100, version, interval, auth_pass, vip).start()
    if not a.wait_state("MASTER", 10) or not b.wait_state("BACKUP", 2):
        raise RuntimeError(f"{impl}: no election in the lab")
    return a, b


WATCHER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("=4s4si", socket.inet_aton("224.0.0.18"), b"\0" * 4, int(sys.argv[1])))
while True:
    data = s.recv(2048)
    print(f"{time.monotonic():.6f} {socket.inet_ntoa(data[12:16])} {data[22]}", flush=True)
"""

# the same for IPv6: an AF_INET6 raw socket gets the VRRP message alone and the source beside it
WATCHER6 = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 112)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
             socket.inet_pton(socket.AF_INET6, "ff02::12") + struct.pack("=i", int(sys.argv[1])))
while True:
    data, addr = s.recvfrom(2048)
    print(f"{time.monotonic():.6f} {addr[0].partition('%')[0]} {data[2]}", flush=True)
"""


class AdvertWatcher:
    """Sees the adverts on the client's segment, so a crash can be timed to the advert phase.

    Without this, the crash falls at whatever phase the harness happens to hit, and that phase
    (0 to one interval) dominates the comparison instead of the daemons' reaction.
    """

    def __init__(self, lab: NetnsLab, ipv6: bool = False) -> None:
        ifindex = json.loads(lab.run(CLIENT, ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["ifindex"]
        self.proc = lab.popen(CLIENT, [sys.executable, "-c", WATCHER6 if ipv6 else WATCHER, str(ifindex)],
                              stdout=subprocess.PIPE, text=True, bufsize=1)
        self.seen: list[tuple[float, str, int]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            at, src, prio = line.split()
            with self._cond:
                self.seen.append((float(at), src, int(prio)))
                self._cond.notify_all()

    def next_advert(self, src: str, timeout: float) -> float | None:
        """Block until the next advert from `src`; its arrival time."""
        with self._cond:
            start = len(self.seen)
            self._cond.wait_for(lambda: any(s == src for _, s, _ in self.seen[start:]), timeout)
            return next((t for t, s, _ in self.seen[start:] if s == src), None)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _takeover(pinger: Pinger, lab: NetnsLab, action: Callable[[], None]) -> float | None:
    t0 = time.monotonic()
    action()
    return pinger.wait_first_reply_after(t0, timeout=15, mac=lab.mac("b"))


def one_rep(impl: str, mode: str, rep: int, work: Path) -> Sample:
    version, interval = MODES[mode]
    six = mode in IPV6_MODES
    vip, cidr = (VIP6, f"{VIP6}/64") if six else (VIP, f"{VIP}/24")
    sample = Sample(impl, mode)
    with NetnsLab(f"fb{impl[0]}{mode}{rep}", nodes=("a", "b")) as lab:
        if six:
            lab.enable_ipv6()
        a, b = _pair(impl, lab, work / "1", version, interval, vip=cidr)
        watcher = AdvertWatcher(lab, ipv6=six)
        lab.add_cleanup(watcher.close)
        with Pinger(lab, CLIENT, vip, interval=0.01) as pinger:
            if not pinger.wait_replies(20, timeout=5):
                raise RuntimeError(f"{impl}: client cannot reach the VIP")
            # crash half an interval after an advert from a, the same phase for both daemons
            seen = watcher.next_advert(lab.link_local("a") if six else lab.ipv4("a"), timeout=5)
            if seen is None:
                raise RuntimeError(f"{impl}: no advert from a seen at the client")
            time.sleep(max(0.0, seen + interval / 2 - time.monotonic()))

            def crash() -> None:
                lab.set_link("a", False)
                a.crash()

            sample.crash = _takeover(pinger, lab, crash)
            # bring a back as a fresh daemon; it preempts b, then leave gracefully
            lab.set_link("a", True)
            lab.run("a", ["ip", "addr", "del", cidr, "dev", "eth0"], check=False)
            a2 = Daemon(impl, lab, "a", work / "2", 150, version, interval, vip=cidr).start()
            if not a2.wait_state("MASTER", 10) or not b.wait_state("BACKUP", 3):
                raise RuntimeError(f"{impl}: restarted node did not preempt")
            t_back = time.monotonic()
            if pinger.wait_first_reply_after(t_back, timeout=5, mac=lab.mac("a")) is None:
                raise RuntimeError(f"{impl}: client does not reach the restarted master")
            time.sleep(0.5)
            sample.sigterm = _takeover(pinger, lab, a2.terminate)
    return sample


FLOOR = r"""
import asyncio, socket, struct, sys
role, ifindex, interval, wake_every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.setsockopt(socket.IPPROTO_IP, 49, 0)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, ifindex))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("=4s4si", socket.inet_aton("224.0.0.18"), b"\0" * 4, ifindex))
s.setblocking(False)
packet = bytes.fromhex(sys.argv[5])
async def main():
    loop = asyncio.get_running_loop()
    def tick():
        if role == "master":
            s.sendto(packet, ("224.0.0.18", 0))
        else:
            while True:
                try:
                    s.recv(2048)
                except BlockingIOError:
                    break
        loop.call_later(wake_every, tick)
    tick()
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Floor:
    """A bare asyncio process with the agent's wake-up schedule and nothing else.

    Master: wake every interval and send a prepared advert. Backup: wake every
    Master_Down_Interval - interval (what the agent's doorbell design achieves) and drain.
    Its CPU is what any asyncio daemon pays for those wake-ups, before doing any work.
    """

    def __init__(self, lab: NetnsLab, node: str, role: str, version: int, interval: float) -> None:
        from ipaddress import IPv4Address

        from vrrp.packet import GROUP, Advertisement, encode

        ifindex = json.loads(lab.run(node, ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["ifindex"]
        adv = Advertisement(version, 51, 150, interval, (IPv4Address(VIP),))
        packet = encode(adv, IPv4Address(lab.ipv4(node)), GROUP, 1).hex()
        skew = (256 - 100) / 256 * (interval if version == 3 else 1.0)
        wake = interval if role == "master" else 2 * interval + skew
        self.proc = lab.popen(node, [sys.executable, "-c", FLOOR, role, str(ifindex), str(interval), str(wake),
                                     packet])

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(self.proc.pid)]


class IdleSet:
    """keepalived, the agent and the bare floor, each as a master/backup pair in its own lab, all running.

    Used for the idle window here and, with a client namespace and authentication, by
    bench.jitter, which captures the adverts on these same pairs while it measures idle CPU, so
    both benchmarks compute idle CPU the same way. Together the pairs use well under 1 % of a
    core, so they do not disturb each other.
    """

    def __init__(self, mode: str, work: Path, prefix: str = "fi", client: bool = False, auth_pass: str = "") -> None:
        self.mode = mode
        version, interval = MODES[mode]
        self.labs: dict[str, NetnsLab] = {}
        self.pairs: dict[str, tuple[Daemon, Daemon]] = {}
        self.procs: dict[str, dict[str, list[psutil.Process]]] = {}
        self._stack = contextlib.ExitStack()
        try:
            for impl in (*IMPLS, "floor"):
                lab = self._stack.enter_context(NetnsLab(f"{prefix}{impl[0]}{mode}", nodes=("a", "b"),
                                                         client=client and impl != "floor"))
                self.labs[impl] = lab
                if impl == "floor":
                    fa, fb = Floor(lab, "a", "master", version, interval), Floor(lab, "b", "backup", version, interval)
                    self.procs[impl] = {"master": fa.processes(), "backup": fb.processes()}
                else:
                    a, b = _pair(impl, lab, work / impl, version, interval, auth_pass)
                    self.pairs[impl] = (a, b)
                    self.procs[impl] = {"master": a.processes(), "backup": b.processes()}
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> IdleSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def measure(self, seconds: float, reps: int) -> dict[str, dict[str, float]]:
        """CPU (% of one core) and RSS (MB) per implementation and role: medians over `reps` windows."""
        samples: dict[str, dict[str, list[float]]] = {impl: {} for impl in self.procs}
        for _ in range(reps):
            cpu0 = {(i, r): sum(cpu_seconds(p.pid) for p in ps)
                    for i, roles in self.procs.items() for r, ps in roles.items()}
            t0 = time.monotonic()
            time.sleep(seconds)
            wall = time.monotonic() - t0
            for (impl, role), before in cpu0.items():
                cpu = sum(cpu_seconds(p.pid) for p in self.procs[impl][role]) - before
                samples[impl].setdefault(f"{role}_cpu_pct", []).append(100 * cpu / wall)
                samples[impl].setdefault(f"{role}_rss_mb", []).append(
                    sum(p.memory_info().rss for p in self.procs[impl][role]) / 2**20)
        for impl, (a, b) in self.pairs.items():
            if not (a.wait_state("MASTER", 0) and b.wait_state("BACKUP", 0)):
                raise RuntimeError(f"{impl}: state changed while idle")
        return {impl: {k: statistics.median(v) for k, v in d.items()} for impl, d in samples.items()}


def idle(mode: str, seconds: float, reps: int, work: Path) -> dict[str, dict[str, float]]:
    """Idle CPU and RSS of keepalived, the agent and the bare floor, side by side in one window.

    All three pairs run at once in their own labs, each window is `seconds` long, and the figure
    per implementation and role is the median over `reps` windows.
    """
    with IdleSet(mode, work) as pairs:
        time.sleep(2.0)
        return pairs.measure(seconds, reps)


def cpu_seconds(pid: int) -> float:
    """On-CPU time of every thread of a process, in ns resolution (schedstat), as seconds.

    /proc/PID/stat counts in 10 ms ticks, far too coarse for daemons that use a few ms a second.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _fmt(x: float | None, unit: str = "s", digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def _ratio(a: float | None, k: float | None) -> str:
    return "n/a" if a is None or not k else f"{a / k:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0, help="idle measurement window, seconds")
    parser.add_argument("--idle-reps", type=int, default=5, help="idle windows; medians are reported")
    parser.add_argument("--modes", default="v2,v3", help="comma list of v2 (1 s adverts), v3 (0.1 s adverts), "
                        "v6 and v6f (VRRPv3 over IPv6 at 1 s and 0.1 s; takeovers only, no idle window)")
    parser.add_argument("--json", type=Path, help="also write raw results here")
    args = parser.parse_args(argv)
    hold_lab_lock("bench.takeover")  # nothing else may load the machine while it measures
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so labs are torn down on kill
    modes = [m for m in args.modes.split(",") if m]
    results: dict[str, object] = {"reps": args.reps, "idle_seconds": args.idle, "modes": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
        work = Path(tmp)
        for mode in modes:
            samples: list[Sample] = []
            for rep in range(args.reps):
                order = IMPLS if rep % 2 == 0 else IMPLS[::-1]
                for impl in order:
                    s = one_rep(impl, mode, rep, work / f"{mode}-{rep}-{impl}")
                    samples.append(s)
                    print(f"{mode} rep {rep + 1}/{args.reps} {impl:10s} crash {_fmt(s.crash)} "
                          f"sigterm {_fmt(s.sigterm)}", file=sys.stderr, flush=True)
            idles = None if mode in IPV6_MODES else idle(mode, args.idle, args.idle_reps, work / f"idle-{mode}")
            med = {impl: {"crash": _median([s.crash for s in samples if s.impl == impl]),
                          "sigterm": _median([s.sigterm for s in samples if s.impl == impl])} for impl in IMPLS}
            failures = {impl: sum(1 for s in samples if s.impl == impl and (s.crash is None or s.sigterm is None))
                        for impl in IMPLS}
            modes_out = results["modes"]
            assert isinstance(modes_out, dict)
            modes_out[mode] = {"median": med, "idle": idles, "failures": failures,
                               "samples": [s.__dict__ for s in samples]}
            k, a = med["keepalived"], med["agent"]
            label = f"{mode} ({MODES[mode][1]:g} s{', IPv6' if mode in IPV6_MODES else ''})"
            rows += [
                (label, "crash takeover (median)", _fmt(k["crash"]), _fmt(a["crash"]), _ratio(a["crash"], k["crash"])),
                (label, "SIGTERM takeover (median)", _fmt(k["sigterm"]), _fmt(a["sigterm"]),
                 _ratio(a["sigterm"], k["sigterm"])),
            ]
            ki, ai, fi = (idles["keepalived"], idles["agent"], idles["floor"]) if idles else ({}, {}, {})
            for role in ("master", "backup") if idles else ():
                rows.append((label, f"idle CPU, {role}", _fmt(ki[f"{role}_cpu_pct"], "%", 3),
                             _fmt(ai[f"{role}_cpu_pct"], "%", 3),
                             _ratio(ai[f"{role}_cpu_pct"], ki[f"{role}_cpu_pct"])))
                rows.append((label, f"idle CPU, {role}: bare asyncio floor", _fmt(ki[f"{role}_cpu_pct"], "%", 3),
                             _fmt(fi[f"{role}_cpu_pct"], "%", 3),
                             _ratio(fi[f"{role}_cpu_pct"], ki[f"{role}_cpu_pct"])))
                rows.append((label, f"RSS, {role}", _fmt(ki[f"{role}_rss_mb"], " MB", 1),
                             _fmt(ai[f"{role}_rss_mb"], " MB", 1),
                             _ratio(ai[f"{role}_rss_mb"], ki[f"{role}_rss_mb"])))
            if any(failures.values()):
                rows.append((label, "runs without a takeover", str(failures["keepalived"]), str(failures["agent"]), ""))
    print(f"\n{args.reps} repetitions; idle: median of {args.idle_reps} windows of {args.idle:g} s; "
          "keepalived 2.2.7 vs failover-agent\n")
    print("| mode | measure | keepalived | failover-agent | agent/keepalived |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
