"""One model of a DRBD resource's state, whatever DRBD told us it in.

DRBD 8.4 speaks through /proc/drbd; drbd-utils 9 speaks `drbdsetup events2` (also against an
8.4 kernel, as the fixtures in tests/fixtures/drbd show) and, with a DRBD 9 kernel,
`drbdsetup status --json` (field names from DRBD 9's documented JSON: role, devices[].disk-state,
connections[].connection-state/peer-role, peer_devices[].peer-disk-state/replication-state;
the lab has no DRBD 9 kernel, so that parser is tested on text written after that layout, not on
a capture). The failover logic (and the split-brain guard) must not care which: they read a
`Status`. Parsing is pure and total:
unknown words are kept as they are, and a line that cannot be read is skipped, never raised
on, because this text comes from outside. What a bad line yields: `Events2.feed` returns None
and changes nothing, `parse_proc_drbd` returns None when the minor's line cannot be read, and
`parse_status_json` leaves out a resource it cannot read (an empty dict for text that is not
JSON at all). A number that cannot be read (a minor beyond DRBD's 2^20, a sync percentage
outside 0..100) is treated as absent. `bench.fuzz` holds the parsers to this.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

UPTODATE = "UpToDate"
OUTDATED = "Outdated"
UNKNOWN = "Unknown"
DUNKNOWN = "DUnknown"
PRIMARY = "Primary"
SECONDARY = "Secondary"

#: connection states meaning the replication link is up (8.4 cs: and DRBD 9 replication:)
CONNECTED = frozenset({
    "Connected", "Established", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT",
    "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID", "Ahead", "Behind",
})


@dataclass(frozen=True)
class Status:
    """A resource as seen from this node; fields hold DRBD's own words."""

    name: str
    role: str = UNKNOWN  # Primary | Secondary | Unknown
    disk: str = "Diskless"  # local disk state (worst over volumes)
    connection: str = "StandAlone"  # link state towards the peer (8.4: cs:)
    peer_role: str = UNKNOWN
    peer_disk: str = DUNKNOWN
    replication: str = "Off"  # DRBD 9 replication state (8.4: same as cs: when connected)
    may_promote: bool | None = None  # DRBD 9 events2 only
    suspended: bool = False
    minor: int | None = None
    sync_percent: float | None = None

    @property
    def connected(self) -> bool:
        return self.connection in CONNECTED or self.replication in CONNECTED

    @property
    def primary(self) -> bool:
        return self.role == PRIMARY

    @property
    def peer_primary(self) -> bool:
        return self.peer_role == PRIMARY

    @property
    def uptodate(self) -> bool:
        return self.disk == UPTODATE

    @property
    def standalone(self) -> bool:
        """Not even trying to connect: after `disconnect`, or after a split-brain handshake."""
        return self.connection == "StandAlone"

    def view(self) -> dict[str, str]:
        """For people and JSON: DRBD's own words, by name."""
        return {"resource": self.name, "role": self.role, "disk": self.disk, "connection": self.connection,
                "peer_role": self.peer_role, "peer_disk": self.peer_disk,
                "sync_percent": "" if self.sync_percent is None else f"{self.sync_percent:g}"}

    def summary(self) -> str:
        return (f"{self.name}: {self.role}/{self.peer_role} {self.disk}/{self.peer_disk} {self.connection}"
                + (f" (sync {self.sync_percent:g}%)" if self.sync_percent is not None else ""))


_PROC_LINE = re.compile(r"^\s*(\d+): cs:(\S+) ro:(\S+)/(\S+) ds:(\S+)/(\S+)")
_PROC_SYNC = re.compile(r"sync'ed:\s*([\d.]+)%")
MAX_MINOR = 2**20 - 1  # DRBD's minor numbers are 20 bits


def _minor(value: object) -> int | None:
    """A device minor from text or JSON; None unless it is one (int() also reads '²' and 5000-digit strings)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 7:
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_MINOR else None


def _percent(value: str | float) -> float | None:
    """A sync percentage; None unless it is a number in 0..100 ('1.2.3', 'nan', 1e400 and 256 are not)."""
    try:
        p = float(value)
    except (ValueError, OverflowError):
        return None
    return p if 0 <= p <= 100 else None


def parse_proc_drbd(text: str, minor: int = 0, name: str = "") -> Status | None:
    """The minor's entry in DRBD 8.4's /proc/drbd; None when that minor is not configured."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _PROC_LINE.match(line)
        if not m or _minor(m.group(1)) != minor:
            continue
        cs, role, peer_role, disk, peer_disk = m.group(2, 3, 4, 5, 6)
        sync = None
        for follow in lines[i + 1:i + 4]:
            if _PROC_LINE.match(follow):
                break
            s = _PROC_SYNC.search(follow)
            if s:
                sync = _percent(s.group(1))
        suspended = "s" in (line.split()[-1][:1] if line.split() else "")
        return Status(name=name or f"minor{minor}", role=role, disk=disk, connection=cs, peer_role=peer_role,
                      peer_disk=peer_disk, replication=cs if cs in CONNECTED else "Off", suspended=suspended,
                      minor=minor, sync_percent=sync)
    return None


def _fields(words: list[str]) -> dict[str, str]:
    out = {}
    for w in words:
        k, sep, v = w.partition(":")
        if sep:
            out[k] = v
    return out


_DISK_RANK = ["Diskless", "Attaching", "Detaching", "Failed", "Negotiating", "Inconsistent", OUTDATED, DUNKNOWN,
              "Consistent", UPTODATE]


def _worse(a: str, b: str) -> str:
    rank = {d: i for i, d in enumerate(_DISK_RANK)}
    return a if rank.get(a, -1) <= rank.get(b, -1) else b


def _worst(states: Iterable[object], default: str) -> str:
    """The worst of several volumes' disk states (`default` when there are none)."""
    words = [s for s in states if isinstance(s, str)]
    return functools.reduce(_worse, words) if words else default


@dataclass
class Events2:
    """Follows `drbdsetup events2` lines (`exists`/`change`/`create`/`destroy`), per resource.

    Single-peer view: the first peer seen is "the peer". Volumes are folded into the worst
    local and peer disk state, which is what promotion safety depends on.
    """

    resources: dict[str, Status] = field(default_factory=dict)
    disks: dict[str, dict[str, str]] = field(default_factory=dict)
    peer_disks: dict[str, dict[str, str]] = field(default_factory=dict)
    initial_done: bool = False

    def feed(self, line: str) -> str | None:
        """Apply one line; returns the resource name it changed, if any."""
        words = line.split()
        if words and re.match(r"^\d{4}-\d\d-\d\dT", words[0]):
            words = words[1:]  # --timestamps
        if len(words) < 2:
            return None
        verb, obj = words[0], words[1]
        if verb == "exists" and obj == "-":
            self.initial_done = True
            return None
        if verb not in ("exists", "change", "create", "destroy"):
            return None  # call/response helper lines
        f = _fields(words[2:])
        name = f.get("name")
        if not name:
            return None
        if obj == "resource" and verb == "destroy":
            self.resources.pop(name, None)
            return name
        st = self.resources.get(name) or Status(name)
        if obj == "resource":
            st = replace(st, role=f.get("role", st.role),
                         suspended=f.get("suspended", "yes" if st.suspended else "no") != "no",
                         may_promote=_yes(f["may_promote"]) if "may_promote" in f else st.may_promote)
        elif obj == "connection":
            if verb == "destroy":
                st = replace(st, connection="StandAlone", peer_role=UNKNOWN)
            else:
                st = replace(st, connection=f.get("connection", st.connection), peer_role=f.get("role", st.peer_role))
        elif obj == "device":
            vols = self.disks.setdefault(name, {})
            if verb == "destroy":
                vols.pop(f.get("volume", "0"), None)
            elif "disk" in f:
                vols[f.get("volume", "0")] = f["disk"]
            worst = _worst(vols.values(), "Diskless")
            minor = _minor(f.get("minor"))
            st = replace(st, disk=worst, minor=st.minor if minor is None else minor)
        elif obj == "peer-device":
            vols = self.peer_disks.setdefault(name, {})
            if verb == "destroy":
                vols.pop(f.get("volume", "0"), None)
            elif "peer-disk" in f:
                vols[f.get("volume", "0")] = f["peer-disk"]
            worst = _worst(vols.values(), DUNKNOWN)
            done = _percent(f.get("done", ""))
            st = replace(st, peer_disk=worst, replication=f.get("replication", st.replication),
                         sync_percent=st.sync_percent if done is None else done)
        else:
            return None
        self.resources[name] = st
        return name


def _yes(v: str) -> bool:
    return v in ("yes", "true", "1")


def parse_events2(text: str) -> dict[str, Status]:
    ev = Events2()
    for line in text.splitlines():
        ev.feed(line)
    return ev.resources


def parse_status_json(text: str) -> dict[str, Status]:
    """DRBD 9 `drbdsetup status --json`: a list of resources; anything malformed is skipped."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # nesting deeper than the stack
        return {}
    out: dict[str, Status] = {}
    for res in doc if isinstance(doc, list) else []:
        if not isinstance(res, dict) or not isinstance(res.get("name"), str):
            continue
        devices = _dicts(res.get("devices"))
        disk = _worst((d.get("disk-state") for d in devices), "Diskless")
        minors = [d.get("minor") for d in devices]
        st = Status(res["name"], role=str(res.get("role", UNKNOWN)), disk=disk,
                    suspended=bool(res.get("suspended", False)),
                    minor=_minor(minors[0]) if minors else None)
        conns = _dicts(res.get("connections"))
        if conns:  # single-peer view: the first connection is "the peer"
            c = conns[0]
            peers = _dicts(c.get("peer_devices"))
            peer_disk = _worst((q.get("peer-disk-state") for q in peers), DUNKNOWN)
            repl = peers[0].get("replication-state") if peers else None
            sync = peers[0].get("percent-in-sync") if peers else None
            st = replace(st, connection=str(c.get("connection-state", "StandAlone")),
                         peer_role=str(c.get("peer-role", UNKNOWN)), peer_disk=peer_disk,
                         replication=str(repl) if isinstance(repl, str) else st.replication,
                         sync_percent=_in_progress(sync))
        out[st.name] = st
    return out


def _in_progress(sync: object) -> float | None:
    """percent-in-sync while a resync runs; 100 (in sync) and anything that is not a JSON number say none runs."""
    p = _percent(sync) if isinstance(sync, int | float) and not isinstance(sync, bool) else None
    return p if p is not None and p < 100 else None


def _dicts(v: object) -> list[dict[str, object]]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def auto_promote_on(show: str) -> bool:
    """`drbdsetup show --show-defaults RES` (DRBD 9) says `auto-promote yes;`: opening the
    device promotes it, behind the agent's back. 8.4 has no such option and prints none."""
    return re.search(r"^\s*auto-promote\s+yes\s*;", show, re.M) is not None
