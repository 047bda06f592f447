"""`failoverctl check-config` beyond the schema: does this host have what the config names?

A file can be valid TOML with every value in range and still fail at the first takeover: the
interface renamed, drbd-utils not installed, the resource spelt differently in drbd.conf, a
check script that is not executable. Those are found here, before a failover needs them. Each
check is a small function of what it inspects (a path, a lookup, a runner) and returns one
`Finding`, so the tests need neither root nor the real programs.

The worst-case takeover time is derived from the same code the daemon runs (the router's
Master_Down_Interval, the tracker's lowest priority, the guard's isolation time), so the
number printed here cannot drift from what the agent does.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from agent.config import Config
from agent.guard import CLOCK_ERROR, isolation_bound
from agent.peerwire import load_secret
from agent.track import Tracker
from drbd.runner import Runner
from nfs.settings import NfsConfig
from vrrp.packet import Address
from vrrp.router import Params, Router

#: how long `drbdadm dump` may take; it only parses drbd.conf
DRBD_TIMEOUT = 10.0


@dataclass(frozen=True)
class Finding:
    """One host check: what was looked at, and why it fails ('' = it passes)."""

    what: str
    problem: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    def line(self) -> str:
        if self.problem:
            return f"{self.what}: FAILED: {self.problem}"
        return f"{self.what}: ok" + (f" ({self.detail})" if self.detail else "")


# -- host checks ------------------------------------------------------------------------------
PrimaryOf = Callable[[str], Awaitable[Address | None]]


async def check_interface(name: str, primary_of: PrimaryOf, ipv6: bool = False) -> Finding:
    """`primary_of` gives the interface's own address (not a VIP) that adverts come from, IPv4 or
    (`ipv6`) link-local IPv6, None, or raises LookupError."""
    what = f"interface {name}"
    try:
        primary = await primary_of(name)
    except LookupError:
        return Finding(what, "no such interface on this host (see `ip -br link`)")
    if primary is None:
        own = "IPv6 link-local address" if ipv6 else "IPv4 address of its own"
        return Finding(what, f"has no {own}: adverts need a source address that is not a VIP")
    return Finding(what, detail=f"IPv{primary.version} {primary}")


def check_secret_file(path: str, load: Callable[[str], bytes] = load_secret) -> Finding:
    """The peer channel's secret, read the way the agent reads it (root's own, 0600, >= 16 bytes)."""
    what = f"peer secret {path}"
    try:
        secret = load(path)
    except FileNotFoundError:
        return Finding(what, "does not exist (the same secret on both nodes: head -c 32 /dev/urandom | base64 "
                             f"> {path}; chmod 600 {path})")
    except (PermissionError, ValueError) as e:
        return Finding(what, str(e))
    except OSError as e:
        return Finding(what, f"cannot read it: {e.strerror or e}")
    return Finding(what, detail=f"{len(secret)} bytes, private to root")


def check_executable(path: str, what: str) -> Finding:
    """An absolute program path: exists, is a file, and may be executed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Finding(what, "does not exist")
    except OSError as e:
        return Finding(what, f"cannot stat it: {e.strerror or e}")
    if not stat.S_ISREG(st.st_mode):
        return Finding(what, "is not a regular file")
    if not os.access(path, os.X_OK):
        return Finding(what, f"is not executable (mode {st.st_mode & 0o777:o}; chmod +x it)")
    return Finding(what)


def check_programs(what: str, programs: Iterable[str], hint: str = "",
                   which: Callable[[str], str | None] = shutil.which) -> Finding:
    """Programs the agent runs by name (a PATH lookup, as the agent's subprocesses do)."""
    names = list(programs)
    missing = [p for p in names if which(p) is None]
    if missing:
        return Finding(what, f"{', '.join(missing)} not found in PATH" + (f" ({hint})" if hint else ""))
    return Finding(what, detail=", ".join(names))


def check_mountpoint(path: str) -> Finding:
    what = f"mountpoint {path}"
    if os.path.isdir(path):
        return Finding(what)
    if os.path.lexists(path):
        return Finding(what, "exists but is not a directory")
    return Finding(what, f"does not exist (mkdir -p {path}, on both nodes)")


async def check_drbd_resource(resource: str, runner: Runner, timeout: float = DRBD_TIMEOUT) -> Finding:
    """Ask drbdadm itself: `drbdadm dump RES` parses drbd.conf as the agent's drbdadm calls will.

    drbd-utils 9.22 answers an unknown name with "'r9' not defined in your config (for this host)."
    and exit 1 (tests/fixtures/drbd); a resource defined only for other hosts is dumped with
    "ignored" in its first comment line, and every later `drbdadm primary` would refuse it.
    """
    what = f"DRBD resource {resource}"
    try:
        code, out, err = await runner(["drbdadm", "dump", resource], timeout)
    except FileNotFoundError:
        return Finding(what, "drbdadm not found in PATH: install drbd-utils")
    except OSError as e:
        return Finding(what, f"cannot run drbdadm: {e.strerror or e}")
    if code == 124 and "timed out" in err:
        return Finding(what, f"drbdadm dump {resource} did not finish within {timeout:g} s")
    if code != 0:
        text = " ".join((err.strip() or out.strip() or "no message").split())
        return Finding(what, f"drbdadm dump {resource} exit {code}: {text[:300]}")
    head = re.search(r"^# resource \S+ on (\S+): (ignored|not ignored)", out, re.MULTILINE)
    if head and head.group(2) == "ignored":
        return Finding(what, f"defined in drbd.conf, but not for this host ({head.group(1)}): "
                             "no 'on' section names it")
    where = re.search(r"^# defined at (\S+)", out, re.MULTILINE)
    return Finding(what, detail=f"defined at {where.group(1)}" if where else "known to drbdadm")


async def check_unit(unit: str, runner: Runner, timeout: float = DRBD_TIMEOUT) -> Finding:
    """A `[[service]]` unit: known to systemd (`LoadState=loaded`), and not enabled to start at boot,
    where it would run on both nodes at once (the agent starts it on the master only)."""
    what = f"service unit {unit}"
    try:
        code, out, err = await runner(["systemctl", "show", "--property=LoadState,UnitFileState", unit], timeout)
    except FileNotFoundError:
        return Finding(what, "systemctl not found in PATH: a unit needs systemd (or use start/stop/check)")
    except OSError as e:
        return Finding(what, f"cannot run systemctl: {e.strerror or e}")
    props = dict(line.partition("=")[::2] for line in out.splitlines())
    if code != 0 or "LoadState" not in props:
        text = " ".join((err.strip() or out.strip() or "no message").split())
        return Finding(what, f"systemctl show {unit} exit {code}: {text[:300]}")
    load, state = props["LoadState"], props.get("UnitFileState", "")
    if load != "loaded":
        return Finding(what, f"systemd does not know it (LoadState={load}): install its package, or check the "
                             "name (systemctl list-unit-files)")
    if state in ("enabled", "enabled-runtime"):
        return Finding(what, f"is {state}: systemd would start it at boot beside the agent, on both nodes; "
                             f"`systemctl disable {unit}`, the agent starts it on the master")
    return Finding(what, detail=f"loaded, {state or 'static'}")


def nfs_programs(cfg: NfsConfig) -> tuple[str, list[str], str]:
    """What the NFS backend runs by name, as nfs/kernel.py and nfs/ganesha.py do: (label, programs, hint)."""
    if cfg.backend == "ganesha":
        return "nfs-ganesha", [cfg.ganesha_binary], "Debian: apt install nfs-ganesha nfs-ganesha-vfs"
    nfsv3 = ["rpcbind", "rpc.statd", "sm-notify"] if 3 in cfg.versions else []
    if cfg.service == "systemd":
        return "kernel nfsd (nfs-server.service)", ["exportfs", "systemctl", *nfsv3], \
            "Debian: apt install nfs-kernel-server"
    return "kernel nfsd (direct)", ["modprobe", "exportfs", "rpc.mountd", "rpc.nfsd", "unshare", *nfsv3], \
        "Debian: apt install nfs-kernel-server"


async def host_findings(cfg: Config, primary_of: PrimaryOf, runner: Runner,
                        load: Callable[[str], bytes] = load_secret,
                        which: Callable[[str], str | None] = shutil.which) -> list[Finding]:
    """Every host check the config calls for, in the order the agent would need them."""
    out = [await check_interface(cfg.vrrp.interface, primary_of, cfg.vrrp.ipv6)]
    if cfg.peer is not None:
        out.append(check_secret_file(cfg.peer.secret_file, load))
    if cfg.track is not None:
        for path in dict.fromkeys(c.argv[0] for c in cfg.track.checks):
            out.append(check_executable(path, f"check program {path}"))
    if cfg.drbd is not None:
        out.append(await check_drbd_resource(cfg.drbd.resource, runner))
    if cfg.filesystem is not None:
        out.append(check_mountpoint(cfg.filesystem.mountpoint))
    if cfg.nfs is not None:
        label, programs, hint = nfs_programs(cfg.nfs)
        out.append(check_programs(f"NFS programs, {label}", programs, hint, which))
    for svc in cfg.services:
        if svc.unit:
            out.append(await check_unit(svc.unit, runner))
        for path in dict.fromkeys(argv[0] for argv in (svc.start, svc.stop, svc.check) if argv):
            out.append(check_executable(path, f"service {svc.name} program {path}"))
    return out


# -- the worst-case takeover time --------------------------------------------------------------
def _seconds(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".") + " s"


def takeover_time(cfg: Config) -> list[str]:
    """How long after the master's last advert this node, as backup, may take over at worst.

    Master_Down_Interval comes from the router at the lowest priority the tracker can give
    this node (failing weighted checks lengthen Skew_Time). With DRBD and a peer whose state
    DRBD cannot see (a crash takes the replication link with it), the guard decides: with
    unknown_peer = "witness" it waits until the peer has been silent for Master_Down_Interval
    plus the isolation time; with "refuse" it does not promote at all.
    """
    v = cfg.vrrp
    priority = v.priority
    if cfg.track is not None and any(c.weight < 0 for c in cfg.track.checks):
        tracker = Tracker(cfg.track)
        for target in tracker.targets.values():
            if target.kind == "check" and target.weight < 0:
                target.up = False
        priority = tracker.effective_priority(v.priority)
    router = Router(Params(vrid=v.vrid, priority=priority, address=IPv4Address(0), version=v.version,
                           advert_interval=v.advert_interval))
    mdi = router.master_down_interval
    lowered = f", lowered from {v.priority} by failing weighted checks" if priority != v.priority else ""
    why = (f"Master_Down_Interval {_seconds(mdi)} (3 x advert_interval {_seconds(v.advert_interval)} "
           f"+ Skew_Time {_seconds(router.skew_time)} at priority {priority}{lowered})")
    if cfg.peer is not None and cfg.peer.heartbeat and cfg.drbd is None:
        return [f"takeover: worst case {_seconds(cfg.peer.detection)} after the peer's last heartbeat on any path "
                f"(dead_after {cfg.peer.dead_after} x heartbeat {_seconds(cfg.peer.heartbeat)}; a keepalived peer: "
                f"{why})" + ("; a shared disk is mounted only after the peer's isolation bound "
                             f"{_seconds(isolation_bound(cfg, v.advert_interval))}" if cfg.filesystem else "")]
    if cfg.drbd is None:
        return [f"takeover: worst case {_seconds(mdi)} after the master's last advert: {why}"]
    if cfg.drbd.unknown_peer == "refuse":
        return [f"takeover: worst case {_seconds(mdi)} after the master's last advert while DRBD sees the peer: {why};",
                "          a peer DRBD cannot see (e.g. crashed with its replication link) is never taken over "
                "automatically (drbd.unknown_peer = \"refuse\"): outdate it or power it off, the next retry promotes"]
    track, drbd, peer = cfg.track, cfg.drbd, cfg.peer
    assert track is not None  # config.parse: "witness" needs [track] witnesses
    bound = isolation_bound(cfg, v.advert_interval)
    beat = peer is not None and peer.heartbeat > 0
    detection = peer.detection if beat and peer is not None else mdi
    wait = max(detection, bound)
    if beat and peer is not None:
        gap, notice = f"heartbeat {_seconds(peer.heartbeat)}", max(track.fall * track.interval + track.timeout,
                                                                    peer.heartbeat + peer.detection)
        detected = (f"the peer counts as gone after {_seconds(detection)} of silence on every path "
                    f"({', '.join(str(a) for a in peer.paths)}): dead_after {peer.dead_after} x heartbeat "
                    f"{_seconds(peer.heartbeat)}; VRRP takes over then, without waiting for {why}")
    else:
        gap, notice = f"advert_interval {_seconds(v.advert_interval)}", track.fall * track.interval + track.timeout
        detected = f"the master counts as down after {why} (no peer heartbeats: [peer] heartbeat)"
    grace = f" + drbd.witness_grace {_seconds(drbd.witness_grace)}" if drbd.witness_grace else ""
    lines = [f"takeover: worst case {_seconds(wait)} after the peer's last sign of life when DRBD cannot see it "
             "(e.g. it crashed), plus the acquire chain:",
             f"          {detected};",
             f"          promotion waits for the bound by which an isolated peer has stopped serving: "
             f"{_seconds(bound)} = ({gap} + noticing {_seconds(notice)} + guard.release_deadline "
             f"{_seconds(cfg.guard.release_deadline)}{grace}) x {(1 + CLOCK_ERROR) / (1 - CLOCK_ERROR):.3f} for clock "
             "rate error; the two waits overlap, they do not add",
             f"          the bound relies on the peer's self-fence: drbd.demote_escalation ends with "
             f"{drbd.demote_escalation[-1]!r}" + (" (NONE: an isolated peer that cannot stop serving in time is not "
                                                  "fenced, and two nodes may serve)"
                                                  if drbd.demote_escalation[-1] == "none" else "")]
    inner = max(1.0, cfg.monitor.step_timeout - 2.0)
    if wait >= inner:
        lines.append(f"          note: the wait exceeds what one promotion attempt waits "
                     f"(monitor.step_timeout - 2 s = {_seconds(inner)}): the first attempt gives up and a "
                     f"retry after monitor.hold_down promotes, later than this")
    return lines


# -- where in the file a key is ----------------------------------------------------------------
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")
_INDEXED = re.compile(r"^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\[(\d+)\](?:\.([A-Za-z0-9_-]+))?$")
_INSTANCE = re.compile(r"^instance\[(\d+)\](?:\.(.+))?$")  # [[instance]] tables: their keys inside
_TOP_INDEXED = re.compile(r"^([A-Za-z0-9_-]+)\[(\d+)\](?:\.([A-Za-z0-9_-]+))?$")  # [[service]], [[notify]]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside multi-line strings, so a key inside a string is not found."""
    out, inside = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        if inside:
            if line.count(inside) % 2 == 1:
                inside = ""
            continue
        out.append((number, line))
        for quote in ('"""', "'''"):
            if line.count(quote) % 2 == 1:
                inside = quote
                break
    return out


def _find(lines: list[tuple[int, str]], table: str, nth: int, key: str | None) -> tuple[int | None, int | None]:
    """(header line of the nth [table] or [[table]], line of `key =` inside it)."""
    header, seen, inside = None, 0, False
    for number, line in lines:
        h = _HEADER.match(line)
        if h:
            inside = False
            if _table(line) == table:
                seen += 1
                if seen == nth:
                    header, inside = number, True
            continue
        if inside and key is not None:
            k = _KEY.match(line)
            if k and k.group(1).strip("\"'") == key:
                return header, number
    return header, None


def key_line(text: str, key: str) -> int | None:
    """The line of a ConfigError's dotted key ("vrrp.priority", "track.check[2].timeout",
    "nfs.exports[1]", "service[2].start"): `name =` inside its [section], else the section's header (a required
    key, a whole section), else None.

    tomllib keeps no positions, so this reads the text the way an admin does; keys written as
    dotted keys or inline tables elsewhere are not found, and the caller prints no line then.
    """
    lines = _logical_lines(text)
    inst = _INSTANCE.match(key)
    if inst:
        return _instance_key_line(lines, int(inst.group(1)), inst.group(2))
    return _key_line(lines, key)


def _instance_key_line(lines: list[tuple[int, str]], nth: int, key: str | None) -> int | None:
    """`key_line` of "instance[N].KEY": KEY in the Nth [[instance]] table, whose own sections are
    [instance.vrrp], [[instance.service]], ... up to the next [[instance]]."""
    starts = [i for i, (_, line) in enumerate(lines) if _table(line) == "instance"]
    if nth > len(starts):
        return None
    first = starts[nth - 1]
    end = starts[nth] if nth < len(starts) else len(lines)
    header = lines[first][0]
    if key is None:
        return header
    own = lines[first + 1:end]
    for n, line in own:  # the table's own keys (name, sync_group), before its first section
        if _HEADER.match(line):
            break
        k = _KEY.match(line)
        if k and k.group(1).strip("\"'") == key:
            return n
    inner = [(n, line.replace("instance.", "", 1) if _HEADER.match(line) else line) for n, line in own]
    return _key_line(inner, key) or header


def _table(line: str) -> str | None:
    h = _HEADER.match(line)
    return ".".join(p.strip().strip("\"'") for p in h.group(1).split(".")) if h else None


def _key_line(lines: list[tuple[int, str]], key: str) -> int | None:
    top = _TOP_INDEXED.match(key)
    if top:
        header, line = _find(lines, top.group(1), int(top.group(2)), top.group(3))
        return line or header
    m = _INDEXED.match(key)
    if m:
        section, name, nth, sub = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        header, line = _find(lines, f"{section}.{name}", nth, sub)  # [[track.check]] tables
        if header is not None:
            return line or header
        header, line = _find(lines, section, 1, name)  # an array value: exports = [...]
        return line or header
    section, _, name = key.partition(".")
    if not section or "." in name:
        return None
    header, line = _find(lines, section, 1, name or None)
    return line or header
