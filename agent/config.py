"""The agent's TOML configuration: parsing, validation with messages that name file and key.

Every section is a dataclass built from a table of key specs, so unknown keys, wrong types
and out-of-range values are all caught in one place and reported the same way. Sections are
kept separate (`[vrrp]` today; storage sections later) so new groups can be added without
breaking existing files.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from ipaddress import AddressValueError, IPv4Address, NetmaskValueError, ip_address, ip_interface
from pathlib import Path
from typing import Any

from agent.journal import Event
from agent.machine import ORDER, ChainStep, Service, Step
from nfs.exports import ExportError, parse_export
from nfs.settings import NfsConfig
from vrrp.packet import Address, Interface

DEFAULT_PATH = Path("/etc/failover-agent/agent.toml")


class ConfigError(Exception):
    """A configuration problem, located by file and dotted key."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")
        self.file, self.key, self.reason = file, key, reason


class _Invalid(ValueError):
    pass


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(f"must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise _Invalid(f"must be in {lo}..{hi}, got {v}")
        return v

    return check


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            raise _Invalid(f"must be a number, got {v!r}")
        if not lo <= v <= hi:
            raise _Invalid(f"must be in {lo:g}..{hi:g}, got {v:g}")
        return float(v)

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid(f"must be true or false, got {v!r}")
    return v


def _str(max_len: int = 4096) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise _Invalid(f"must be a string, got {v!r}")
        if len(v) > max_len:
            raise _Invalid(f"must be at most {max_len} characters")
        return v

    return check


def _ifname(v: Any) -> str:
    name = _str(15)(v)
    if not name or "/" in name or name.strip() != name or name in (".", ".."):
        raise _Invalid(f"{name!r} is not an interface name")
    return name


def _list_of(item: Callable[[Any], Any], min_len: int = 0) -> Callable[[Any], tuple[Any, ...]]:
    def check(v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise _Invalid(f"must be a list, got {v!r}")
        if len(v) < min_len:
            raise _Invalid(f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except _Invalid as e:
                raise _Invalid(f"entry {i + 1}: {e}") from None
        if len(set(out)) != len(out):
            raise _Invalid("has duplicate entries")
        return tuple(out)

    return check


def _ipv4(v: Any) -> IPv4Address:
    try:
        return IPv4Address(_str()(v))
    except AddressValueError as e:
        raise _Invalid(f"{v!r} is not an IPv4 address") from e


def _ip(v: Any) -> Address:
    """An IPv4 or IPv6 address (a VRRP peer: [vrrp] checks that the family is the instance's)."""
    try:
        return ip_address(_str()(v))
    except ValueError as e:
        raise _Invalid(f"{v!r} is not an IPv4 or IPv6 address") from e


def _vip(v: Any) -> Interface:
    """'192.0.2.100/24' or bare '192.0.2.100' (taken as /32, like keepalived); IPv6 alike (bare: /128)."""
    try:
        iface = ip_interface(_str()(v))
    except (AddressValueError, NetmaskValueError, ValueError) as e:
        raise _Invalid(f"{v!r} is not an IPv4 or IPv6 address with optional /prefix") from e
    if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback:
        raise _Invalid(f"{v!r} cannot be a virtual address")
    return iface


@dataclass(frozen=True)
class VrrpConfig:
    interface: str
    vrid: int
    vips: tuple[Interface, ...]
    priority: int = 100
    version: int = 2
    advert_interval: float = 1.0
    preempt: bool = True
    preempt_delay: float = 0.0
    unicast_peers: tuple[Address, ...] = ()
    auth_pass: str = ""
    garp_count: int = 5
    garp_interval: float = 0.2
    garp_refresh: float = 0.0

    @property
    def ipv6(self) -> bool:
        """An IPv6 instance (VRRPv3 over IPv6, RFC 5798): its VIPs say so, all of one family."""
        return self.vips[0].version == 6


_VRRP_KEYS: dict[str, Callable[[Any], Any]] = {
    "interface": _ifname,
    "vrid": _int(1, 255),
    "priority": _int(1, 255),
    "version": _int(2, 3),
    "advert_interval": _float(0.01, 255),
    "preempt": _bool,
    "preempt_delay": _float(0, 3600),
    "vips": _list_of(_vip, min_len=1),
    "unicast_peers": _list_of(_ip),
    "auth_pass": _str(8),
    "garp_count": _int(0, 100),
    "garp_interval": _float(0.001, 10),
    "garp_refresh": _float(0, 86400),
}


def _listen(v: Any) -> str:
    """'' (off) or 'HOST:PORT' on a local address, for the metrics endpoint."""
    text = _str(64)(v)
    if not text:
        return text
    host, sep, port = text.rpartition(":")
    try:
        ip = IPv4Address(host)
        port_no = int(port)
    except (AddressValueError, ValueError):
        raise _Invalid(f"{text!r} is not IPV4:PORT") from None
    if not sep or not 1 <= port_no <= 65535:
        raise _Invalid(f"{text!r} is not IPV4:PORT")
    if not (ip.is_loopback or ip.is_private):
        raise _Invalid(f"{text!r}: metrics are served on a local or private address only")
    return text


def _abs_path(v: Any) -> str:
    text = _str()(v)
    if not text.startswith("/") or "\0" in text:
        raise _Invalid(f"{text!r} is not an absolute path")
    return text


@dataclass(frozen=True)
class AgentConfig:
    control_socket: str = "/run/failover-agent/control.sock"
    metrics: str = ""
    # what the admin set that must survive restarts and reboots (maintenance mode)
    state_file: str = "/var/lib/failover-agent/state.json"
    # SCHED_RR priority of the agent's loop (agent.sched: why); 0 = the ordinary scheduler
    realtime_priority: int = 10


_AGENT_KEYS: dict[str, Callable[[Any], Any]] = {
    "control_socket": _abs_path,
    "metrics": _listen,
    "state_file": _abs_path,
    "realtime_priority": _int(0, 99),
}


FENCE_ACTIONS = ("none", "reboot", "poweroff")


def _escalation(v: Any) -> tuple[str, ...]:
    steps = _list_of(_str(16), min_len=1)(v)
    *middle, last = steps
    for step in middle:
        if step not in ("retry", "force"):
            raise _Invalid(f"{step!r}: only 'retry' and 'force' may come before the last entry")
    if last not in FENCE_ACTIONS:
        raise _Invalid(f"the last entry is the self-fence action: one of {', '.join(FENCE_ACTIONS)}, got {last!r}")
    return tuple(steps)


def _word(v: Any, what: str) -> str:
    """Letters, digits, '-', '.' and '_': safe as a DRBD resource name, a host name, a config token."""
    text = _str(64)(v)
    if not text or not all(c.isalnum() or c in "_-." for c in text):
        raise _Invalid(f"{text!r} is not {what} (letters, digits, '-', '.' and '_' only)")
    return text


def _resource(v: Any) -> str:
    return _word(v, "a DRBD resource name")


def _mount_option(v: Any) -> str:
    opt = _str(128)(v)
    if not opt or "," in opt or any(c.isspace() for c in opt):
        raise _Invalid(f"{opt!r}: one mount option per entry, without commas or spaces")
    return opt


@dataclass(frozen=True)
class DrbdConfig:
    resource: str
    demote_escalation: tuple[str, ...] = ("retry", "force", "none")
    unknown_peer: str = "refuse"
    # extra seconds on top of the peer's isolation bound (agent.guard.isolation_bound), for a
    # peer that cannot be trusted to meet [guard] release_deadline; 0 with self-fencing
    witness_grace: float = 0.0


_DRBD_KEYS: dict[str, Callable[[Any], Any]] = {
    "resource": _resource,
    "demote_escalation": _escalation,
    "unknown_peer": lambda v: _choice("refuse", "witness")(v),
    "witness_grace": _float(0, 600),
}


@dataclass(frozen=True)
class FilesystemConfig:
    device: str
    mountpoint: str
    fstype: str = "ext4"
    options: tuple[str, ...] = ()
    kill_holders: bool = True
    kill_grace: float = 3.0


_FS_KEYS: dict[str, Callable[[Any], Any]] = {
    "device": _abs_path,
    "mountpoint": _abs_path,
    "fstype": _str(32),
    "options": _list_of(_mount_option),
    "kill_holders": _bool,
    "kill_grace": _float(0, 60),
}


NFS_BACKENDS = ("kernel", "ganesha")


def _choice(*options: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        text = _str(32)(v)
        if text not in options:
            raise _Invalid(f"must be one of {', '.join(options)}, got {text!r}")
        return text

    return check


def _relative_dir(v: Any) -> str:
    text = _str(255)(v)
    parts = text.split("/")
    if not text or text.startswith("/") or "\0" in text or any(p in ("", ".", "..") for p in parts):
        raise _Invalid(f"{text!r} must be a relative path inside the mountpoint, without '.' or '..'")
    return text


def _export_tables(v: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(v, list) or not v:
        raise _Invalid("must be a non-empty list of { path, clients, options } tables")
    for i, x in enumerate(v):
        if not isinstance(x, dict):
            raise _Invalid(f"entry {i + 1} must be a table {{ path, clients, options }}, got {x!r}")
    return tuple(v)


def _scope(v: Any) -> str:
    return _word(v, "an NFSv4 server scope")


_NFS_KEYS: dict[str, Callable[[Any], Any]] = {
    "backend": _choice(*NFS_BACKENDS),
    "state_dir": _relative_dir,
    "grace_time": _int(0, 3600),
    "lease_time": _int(0, 3600),
    "exports": _export_tables,
    "versions": _list_of(_int(3, 4), min_len=1),
    "server_scope": _scope,
    "service": _choice("direct", "systemd"),
    "threads": _int(1, 1024),
    "state_target": _abs_path,
    "exports_file": _abs_path,
    "graceless": _bool,
    "run_dir": _abs_path,
    "ganesha_binary": _str(4096),
}


def _check_nfs(file: str, values: dict[str, Any], fs: FilesystemConfig | None) -> NfsConfig:
    if fs is None:
        raise ConfigError(file, "nfs", "needs a [filesystem] section: the exports live on the replicated filesystem")
    exports = []
    for i, raw in enumerate(values.pop("exports")):
        try:
            exports.append(parse_export(raw, fs.mountpoint))
        except ExportError as e:
            raise ConfigError(file, f"nfs.exports[{i + 1}]", str(e)) from None
    cfg = NfsConfig(exports=tuple(exports), **values)
    state = f"{fs.mountpoint.rstrip('/')}/{cfg.state_dir}"
    if cfg.backend == "kernel":
        for key, value in (("grace_time", cfg.grace_time), ("lease_time", cfg.lease_time)):
            if value < 10:
                raise ConfigError(file, f"nfs.{key}", f"kernel nfsd accepts 10 s at least, got {value}")
    else:
        for key, value, top in (("grace_time", cfg.grace_time, 180), ("lease_time", cfg.lease_time, 120)):
            if value > top:
                raise ConfigError(file, f"nfs.{key}", f"nfs-ganesha accepts 0..{top} s, got {value}")
        inside = [e.path for e in cfg.exports if state == e.path or state.startswith(e.path.rstrip("/") + "/")]
        if inside:
            raise ConfigError(file, "nfs.state_dir", f"{state} is inside the export {inside[0]}: clients could "
                              "read and change ganesha's recovery records; export a subdirectory instead")
    return cfg


@dataclass(frozen=True)
class CheckConfig:
    argv: tuple[str, ...]
    interval: float = 5.0
    timeout: float = 2.0
    fall: int = 2
    rise: int = 1
    weight: int = 0

    @property
    def name(self) -> str:
        return " ".join(self.argv)


def _argv(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        raise _Invalid("must be a list of arguments like [\"/usr/local/bin/check\", \"--quick\"], "
                       "not a shell string")
    if not isinstance(v, list) or not v:
        raise _Invalid(f"must be a non-empty list of arguments, got {v!r}")
    argv = tuple(_str(4096)(x) for x in v)
    if not argv[0].startswith("/"):
        raise _Invalid(f"the program {argv[0]!r} must be an absolute path (no PATH lookup, no shell)")
    return argv


_CHECK_KEYS: dict[str, Callable[[Any], Any]] = {
    "argv": _argv,
    "interval": _float(0.1, 3600),
    "timeout": _float(0.05, 3600),
    "fall": _int(1, 100),
    "rise": _int(1, 100),
    "weight": _int(-253, 0),
}


@dataclass(frozen=True)
class TrackConfig:
    witnesses: tuple[IPv4Address, ...] = ()
    interval: float = 1.0
    timeout: float = 0.5
    fall: int = 3
    rise: int = 2
    min_reachable: int = 1
    checks: tuple[CheckConfig, ...] = ()


_TRACK_KEYS: dict[str, Callable[[Any], Any]] = {
    "witnesses": _list_of(_ipv4),
    "interval": _float(0.05, 3600),
    "timeout": _float(0.01, 60),
    "fall": _int(1, 100),
    "rise": _int(1, 100),
    "min_reachable": _int(1, 64),
    "check": lambda v: v,  # checked table by table in _check_track
}


#: witness timing with a [peer] channel, unless the admin sets interval or timeout: the isolation
#: bound (agent.guard) is built from them, so the defaults are the fast ones (1.8 s with fall 3,
#: the peer's heartbeat 0.1 s and [guard] release_deadline 1.0 s); without a peer the slower,
#: more tolerant ones stay
FAST_TRACK = {"interval": 0.2, "timeout": 0.1}


def _check_track(file: str, values: dict[str, Any], vrrp: VrrpConfig, fast: bool = False) -> TrackConfig:
    if fast and not any(k in values for k in FAST_TRACK):  # one of them set: the admin times it
        values = {**FAST_TRACK, **values}
    raw_checks = values.pop("check", [])
    if not isinstance(raw_checks, list):
        raise ConfigError(file, "track.check", "must be [[track.check]] tables")
    checks = []
    for i, table in enumerate(raw_checks):
        name = f"track.check[{i + 1}]"
        check = CheckConfig(**_section(file, name, table, _CHECK_KEYS, CheckConfig))
        if check.timeout >= check.interval:
            raise ConfigError(file, f"{name}.timeout", f"must be shorter than its interval ({check.interval:g} s)")
        checks.append(check)
    cfg = TrackConfig(checks=tuple(checks), **values)
    if not cfg.witnesses and not cfg.checks:
        raise ConfigError(file, "track", "needs witnesses, [[track.check]] entries, or both")
    if cfg.witnesses:
        if cfg.min_reachable > len(cfg.witnesses):
            raise ConfigError(file, "track.min_reachable", f"is {cfg.min_reachable} but only "
                              f"{len(cfg.witnesses)} witness(es) are listed")
        if cfg.timeout >= cfg.interval:
            raise ConfigError(file, "track.timeout", f"must be shorter than the interval ({cfg.interval:g} s)")
        own = [w for w in cfg.witnesses if any(w == vip.ip for vip in vrrp.vips)]
        if own:
            raise ConfigError(file, "track.witnesses", f"{own[0]} is a VIP: the master would always reach it")
    return cfg


#: journal events a [[notify]] hook may run on: those the node emits (STARTED, STOPPED and the
#: RELOAD pair are the daemon's own lines, with no instance behind them)
NOTIFY_EVENTS: tuple[str, ...] = tuple(
    e.name.lower() for e in Event if e not in (Event.STARTED, Event.STOPPED, Event.RELOAD, Event.RELOAD_FAILED))


@dataclass(frozen=True)
class NotifyConfig:
    """One alert hook: `argv` run (no shell) on each of `events`, killed after `timeout` s."""

    argv: tuple[str, ...]
    events: tuple[str, ...]
    timeout: float = 10.0

    def describe(self) -> str:
        return f"{self.argv[0]} on {'/'.join(self.events)}"


def _notify_event(v: Any) -> str:
    name = _str(32)(v)
    if name not in NOTIFY_EVENTS:
        raise _Invalid(f"{name!r} is not an event a hook can run on (one of {', '.join(NOTIFY_EVENTS)})")
    return name


_NOTIFY_KEYS: dict[str, Callable[[Any], Any]] = {
    "argv": _argv,
    "events": _list_of(_notify_event, min_len=1),
    "timeout": _float(0.1, 600),
}


def _check_notify(file: str, raw: Any) -> tuple[NotifyConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(file, "notify", "must be [[notify]] tables (an array of tables), one per hook")
    return tuple(NotifyConfig(**_section(file, f"notify[{i + 1}]", table, _NOTIFY_KEYS, NotifyConfig))
                 for i, table in enumerate(raw))


@dataclass(frozen=True)
class PeerConfig:
    address: IPv4Address  # the peer's service address: requests go here first
    port: int = 7801
    secret_file: str = "/etc/failover-agent/peer.key"
    timeout: float = 1.0
    window: float = 5.0
    # the peer's address on every network (service, replication): heartbeats go to each, and the
    # peer counts as gone only when it is silent on all of them
    addresses: tuple[IPv4Address, ...] = ()
    heartbeat: float = 0.1  # seconds between heartbeats on each path; 0: no heartbeats
    dead_after: int = 3  # heartbeats missed on every path before the peer counts as gone

    @property
    def paths(self) -> tuple[IPv4Address, ...]:
        return self.addresses or (self.address,)

    @property
    def detection(self) -> float:
        """Seconds of silence on every path after which the peer counts as gone (0: heartbeats off)."""
        return self.heartbeat * self.dead_after


_PEER_KEYS: dict[str, Callable[[Any], Any]] = {
    "address": _ipv4,
    "addresses": _list_of(_ipv4, min_len=1),
    "port": _int(1, 65535),
    "secret_file": _abs_path,
    "timeout": _float(0.05, 30),
    "window": _float(1, 300),
    "heartbeat": lambda v: _float(0, 10)(v) if v == 0 else _float(0.02, 10)(v),
    "dead_after": _int(2, 100),
}


def _check_peer(file: str, values: dict[str, Any]) -> PeerConfig:
    addresses = values.get("addresses", ())
    if len(set(addresses)) != len(addresses):
        raise ConfigError(file, "peer.addresses", "the same address is listed twice")
    if "address" not in values:
        if not addresses:
            raise ConfigError(file, "peer.address", "is required (or peer.addresses, the peer's address on each "
                              "network)")
        values["address"] = addresses[0]
    elif addresses and values["address"] not in addresses:
        raise ConfigError(file, "peer.address", f"{values['address']} must be one of peer.addresses "
                          f"({', '.join(str(a) for a in addresses)})")
    cfg = PeerConfig(**values)
    if cfg.heartbeat and cfg.detection >= cfg.window:
        raise ConfigError(file, "peer.dead_after", f"heartbeat x dead_after ({cfg.detection:g} s) must be shorter "
                          f"than peer.window ({cfg.window:g} s)")
    return cfg


@dataclass(frozen=True)
class GuardConfig:
    """How fast an isolated master must stop serving; the peer's takeover waits on this bound."""

    release_deadline: float = 1.0
    # a lab's stand-in for rebooting: self-fencing appends a line here and the agent exits
    # (agent.fence); never set on a real node
    fence_record: str = ""


_GUARD_KEYS: dict[str, Callable[[Any], Any]] = {
    "release_deadline": _float(0.1, 60),
    "fence_record": _abs_path,
}


@dataclass(frozen=True)
class MonitorConfig:
    interval: float = 2.0
    max_restarts: int = 2
    hold_down: float = 5.0
    step_timeout: float = 30.0


_MONITOR_KEYS: dict[str, Callable[[Any], Any]] = {
    "interval": _float(0.1, 3600),
    "max_restarts": _int(0, 100),
    "hold_down": _float(0.1, 3600),
    "step_timeout": _float(1, 3600),
}


#: unit types `systemctl start` can start (a template "name@.service" cannot be started itself)
UNIT_TYPES = ("service", "socket", "target", "mount", "automount", "swap", "timer", "path")
#: units the [nfs] section starts and stops itself: a [[service]] must not run them a second time
NFS_UNITS = ("nfs-server.service", "nfs-kernel-server.service", "nfs-ganesha.service")


@dataclass(frozen=True)
class ServiceConfig:
    """One `[[service]]` step: a systemd `unit`, or the `start` / `stop` / `check` argument lists.

    Acquire starts it and waits until it is verified running (the unit active, or `check` exiting
    0); release stops it and waits until it is verified stopped; the monitor runs the same check.
    `timeout` bounds each of these operations as a whole (default: [monitor] step_timeout).
    """

    name: str
    unit: str = ""
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    check: tuple[str, ...] = ()
    timeout: float = MonitorConfig.step_timeout

    @property
    def step(self) -> Service:
        return Service(self.name)

    def describe(self) -> str:
        return f"unit {self.unit}" if self.unit else f"{self.start[0]} (start/stop/check)"


def _unit(v: Any) -> str:
    text = _str(256)(v)
    stem, dot, kind = text.rpartition(".")
    if not dot or not stem or kind not in UNIT_TYPES or stem.endswith("@") or \
            not all(c.isalnum() or c in ":_.@-\\" for c in text):
        raise _Invalid(f"{text!r} is not a unit systemctl can start: a full name such as \"mariadb.service\" "
                       f"(one of the types {', '.join(UNIT_TYPES)}; a template needs its instance: name@x.service)")
    return text


_SERVICE_KEYS: dict[str, Callable[[Any], Any]] = {
    "name": lambda v: _word(v, "a service name"),
    "unit": _unit,
    "start": _argv,
    "stop": _argv,
    "check": _argv,
    "timeout": _float(1, 3600),
}

_SERVICE_ARGV = ("start", "stop", "check")


def _check_services(file: str, raw: Any, monitor: MonitorConfig, nfs: NfsConfig | None) -> tuple[ServiceConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError(file, "service", "must be [[service]] tables (an array of tables), one per service")
    out: list[ServiceConfig] = []
    for i, table in enumerate(raw):
        key = f"service[{i + 1}]"
        values = _section(file, key, table, _SERVICE_KEYS, ServiceConfig)
        values.setdefault("timeout", monitor.step_timeout)
        given = [k for k in _SERVICE_ARGV if k in values]
        if "unit" in values and given:
            raise ConfigError(file, f"{key}.{given[0]}", "a service is either a systemd `unit` or `start`/`stop`/"
                              "`check` argument lists, not both")
        if "unit" not in values and len(given) < len(_SERVICE_ARGV):
            missing = next(k for k in _SERVICE_ARGV if k not in values)
            raise ConfigError(file, f"{key}.{missing}" if given else key,
                              "is required: a service without `unit` needs `start`, `stop` and `check` (the agent "
                              "verifies every start and stop with `check`)" if given else
                              "needs a systemd `unit`, or `start`, `stop` and `check` argument lists")
        svc = ServiceConfig(**values)
        twin = next((j for j, other in enumerate(out) if other.name == svc.name), None)
        if twin is not None:
            raise ConfigError(file, f"{key}.name", f"{svc.name!r} is already the name of service[{twin + 1}]")
        same = next((j for j, other in enumerate(out) if svc.unit and other.unit == svc.unit), None)
        if same is not None:
            raise ConfigError(file, f"{key}.unit", f"{svc.unit} is already started by service[{same + 1}]")
        if nfs is not None and svc.unit in NFS_UNITS:
            raise ConfigError(file, f"{key}.unit", f"{svc.unit} is the NFS server the [nfs] section starts and "
                              "stops already")
        out.append(svc)
    return tuple(out)


@dataclass(frozen=True)
class Config:
    """One instance: its VRRP router and its chain, what the core (agent.node) and an `Instance` run.

    `agent` and `notify` are the process's [agent] and [[notify]] (`ProcessConfig`), handed to
    every instance so the code that runs one reads them where it always did; `agent.state_file`
    is this instance's own in a file of [[instance]] tables (`instance_state_file`).
    """

    file: str
    vrrp: VrrpConfig
    name: str = ""  # set by the parser: [[instance]] name, else default_name(vrrp)
    sync_group: str = ""  # instances of one group are master together (agent.syncgroup)
    agent: AgentConfig = AgentConfig()
    drbd: DrbdConfig | None = None
    filesystem: FilesystemConfig | None = None
    monitor: MonitorConfig = MonitorConfig()
    nfs: NfsConfig | None = None
    track: TrackConfig | None = None
    peer: PeerConfig | None = None
    notify: tuple[NotifyConfig, ...] = ()
    guard: GuardConfig = GuardConfig()
    services: tuple[ServiceConfig, ...] = ()

    @property
    def steps(self) -> tuple[ChainStep, ...]:
        """The acquire chain this config asks for, in order (VIP-only without storage sections and services):
        the admin's services come after the filesystem and NFS, and before the VIP."""
        wanted = {Step.DRBD: self.drbd, Step.MOUNT: self.filesystem, Step.NFS_STATE: self.nfs, Step.NFS: self.nfs,
                  Step.VIP: True}
        *storage, vip = (s for s in ORDER if wanted[s])
        return (*storage, *(svc.step for svc in self.services), vip)

    def timeout(self, step: ChainStep) -> float:
        """How long one operation of `step` may take: a service's own timeout, else [monitor] step_timeout."""
        svc = self.service(step)
        return svc.timeout if svc is not None else self.monitor.step_timeout

    def service(self, step: ChainStep) -> ServiceConfig | None:
        return next((svc for svc in self.services if svc.step == step), None) if isinstance(step, Service) else None

    @property
    def state_path(self) -> str:
        """The NFS state directory on the replicated filesystem (absolute)."""
        assert self.nfs is not None and self.filesystem is not None
        return f"{self.filesystem.mountpoint.rstrip('/')}/{self.nfs.state_dir}"


def _section(file: str, name: str, table: Any, specs: Mapping[str, Callable[[Any], Any]],
             cls: type[Any], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(file, name, "must be a table")
    for key in table:
        if key not in specs:
            raise ConfigError(file, f"{name}.{key}", f"unknown key (known: {', '.join(specs)})")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING} - optional
    values: dict[str, Any] = {}
    for key, check in specs.items():
        if key not in table:
            if key in required:
                raise ConfigError(file, f"{name}.{key}", "is required")
            continue
        try:
            values[key] = check(table[key])
        except _Invalid as e:
            raise ConfigError(file, f"{name}.{key}", str(e)) from None
    return values


def _check_vrrp(file: str, v: dict[str, Any]) -> VrrpConfig:
    cfg = VrrpConfig(**v)
    key = "vrrp.advert_interval"
    if cfg.version == 2:
        if cfg.advert_interval != int(cfg.advert_interval) or cfg.advert_interval < 1:
            raise ConfigError(file, key, f"VRRPv2 needs whole seconds 1..255, got {cfg.advert_interval:g}")
    else:
        cs = cfg.advert_interval * 100
        if abs(cs - round(cs)) > 1e-6 or not 1 <= round(cs) <= 4095:
            raise ConfigError(file, key,
                              f"VRRPv3 needs 0.01..40.95 s in steps of 0.01, got {cfg.advert_interval:g}")
    if cfg.auth_pass and cfg.version == 3:
        raise ConfigError(file, "vrrp.auth_pass", "VRRPv3 has no authentication; remove auth_pass")
    if cfg.preempt_delay and not cfg.preempt:
        raise ConfigError(file, "vrrp.preempt_delay", "has no effect with preempt = false")
    ips = [v.ip for v in cfg.vips]
    if len(set(ips)) != len(ips):
        raise ConfigError(file, "vrrp.vips", "the same address is listed twice")
    family = ips[0].version
    other = next((ip for ip in ips if ip.version != family), None)
    if other is not None:
        raise ConfigError(file, "vrrp.vips", f"mixes IPv{family} ({ips[0]}) and IPv{other.version} ({other}): a VRRP "
                          "instance is one address family (RFC 5798); run one instance per family")
    if family == 6 and cfg.version == 2:
        raise ConfigError(file, "vrrp.version", f"VRRPv2 (RFC 3768) is IPv4 only; the IPv6 VIPs ({ips[0]}) need "
                          "version = 3")
    peer = next((p for p in cfg.unicast_peers if p.version != family), None)
    if peer is not None:
        raise ConfigError(file, "vrrp.unicast_peers", f"{peer} is IPv{peer.version}, the VIPs are IPv{family}: "
                          "an instance is one address family")
    if family == 6:
        peer = next((p for p in cfg.unicast_peers if not p.is_link_local), None)
        if peer is not None:
            raise ConfigError(file, "vrrp.unicast_peers", f"{peer} is not link-local: IPv6 adverts come from the "
                              "peer's link-local address (RFC 5798 5.1.2.1), list that one (fe80::...)")
    return cfg


#: the sections of one instance: inside each [[instance]] table, or at the top of a file of one instance
INSTANCE_SECTIONS = ("vrrp", "drbd", "filesystem", "monitor", "nfs", "track", "peer", "guard", "service")
#: the instance sections that are one table each ([[service]] is an array of them)
_TABLE_SECTIONS = tuple(s for s in INSTANCE_SECTIONS if s != "service")
#: the process's sections, always at the top: one control socket, metrics endpoint and scheduling
#: for the one process, and [[notify]] hooks that share one bound on what runs at once (agent.alerts)
PROCESS_SECTIONS = ("agent", "notify")


@dataclass(frozen=True)
class ProcessConfig:
    """What one agent process runs: its own [agent] and [[notify]], and its instances in file order.

    A file with the sections of one instance at the top (the format before [[instance]]) is one
    instance named `default_name`; with [[instance]] tables each has its `name`.
    """

    file: str
    instances: tuple[Config, ...]
    agent: AgentConfig = AgentConfig()
    notify: tuple[NotifyConfig, ...] = ()
    at_top: bool = False  # the file has its one instance's sections at the top, no [[instance]] tables

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.instances)

    def instance(self, name: str) -> Config | None:
        return next((c for c in self.instances if c.name == name), None)

    def single(self) -> Config:
        """The one instance of a file that holds one (tools and tests written for one instance)."""
        if len(self.instances) != 1:
            raise ConfigError(self.file, "instance", f"holds {len(self.instances)} instances "
                              f"({', '.join(self.names)}); this needs a file of one instance")
        return self.instances[0]


def default_name(vrrp: VrrpConfig) -> str:
    """The name of the one instance of a file without [[instance]] tables: after its VRID."""
    return f"vrrp-{vrrp.vrid}"


def instance_state_file(state_file: str, name: str) -> str:
    """An instance's own state file beside [agent] state_file (state.json -> state-NAME.json): its
    maintenance mode and its restart hand-off (agent.handoff) are its own, not the process's."""
    path = Path(state_file)
    return str(path.with_name(f"{path.stem}-{name}{path.suffix}"))


def _instance_name(v: Any) -> str:
    return _word(v, "an instance name")


#: an [[instance]] table's own keys (beside its sections)
_INSTANCE_OWN_KEYS: dict[str, Callable[[Any], Any]] = {
    "name": _instance_name,
    "sync_group": lambda v: _word(v, "a sync group name"),
}
_INSTANCE_KEYS = (*_INSTANCE_OWN_KEYS, *INSTANCE_SECTIONS)


def parse_process(text: str, file: str = "<config>") -> ProcessConfig:
    """The whole file: the process's sections and every instance, checked alone and against each other."""
    try:
        doc = tomllib.loads(text)
    except (ValueError, RecursionError) as e:
        # TOMLDecodeError, and what tomllib lets through: integers of over 4300 digits, nesting deeper than the stack
        raise ConfigError(file, "", f"not valid TOML: {e}") from None
    huge = _beyond_64_bits(doc)
    if huge is not None:
        raise ConfigError(file, huge, "integer out of TOML's 64-bit range")
    known = {*INSTANCE_SECTIONS, *PROCESS_SECTIONS, "instance"}
    for name in doc:
        if name not in known:
            raise ConfigError(file, name, f"unknown section (known: {', '.join(sorted(known))})")
    agent = AgentConfig(**_section(file, "agent", doc.get("agent", {}), _AGENT_KEYS, AgentConfig))
    notify = _check_notify(file, doc.get("notify", []))
    if "instance" not in doc:
        one = _parse_instance(file, doc, agent, notify, "")
        return ProcessConfig(file=file, instances=(one,), agent=agent, notify=notify, at_top=True)
    top = next((s for s in INSTANCE_SECTIONS if s in doc), None)
    if top is not None:
        raise ConfigError(file, top, "is a section of one instance: with [[instance]] tables, it goes inside "
                          "the instance it belongs to ([instance.vrrp], [[instance.service]], ...)")
    tables = doc["instance"]
    if not isinstance(tables, list) or not tables:
        raise ConfigError(file, "instance", "must be [[instance]] tables (an array of tables), one per instance")
    instances: list[Config] = []
    for i, table in enumerate(tables):
        key = f"instance[{i + 1}]"
        if not isinstance(table, dict):
            raise ConfigError(file, key, "must be a table")
        bad = next((k for k in table if k not in _INSTANCE_KEYS), None)
        if bad is not None:
            where = " ([agent] and [[notify]] are the process's, at the top of the file)" \
                if bad in PROCESS_SECTIONS else ""
            raise ConfigError(file, f"{key}.{bad}", f"unknown key (known: {', '.join(_INSTANCE_KEYS)}){where}")
        if "name" not in table:
            raise ConfigError(file, f"{key}.name", "is required")
        try:
            name = _INSTANCE_OWN_KEYS["name"](table["name"])
        except _Invalid as e:
            raise ConfigError(file, f"{key}.name", str(e)) from None
        try:
            group = _INSTANCE_OWN_KEYS["sync_group"](table["sync_group"]) if "sync_group" in table else ""
        except _Invalid as e:
            raise ConfigError(file, f"{key}.sync_group", str(e)) from None
        try:
            cfg = _parse_instance(file, table, replace(agent, state_file=instance_state_file(agent.state_file, name)),
                                  notify, name)
        except ConfigError as e:
            raise ConfigError(e.file, f"{key}.{e.key}" if e.key else key, e.reason) from None
        instances.append(replace(cfg, sync_group=group))
    _check_apart(file, instances)
    return ProcessConfig(file=file, instances=tuple(instances), agent=agent, notify=notify)


def _check_apart(file: str, instances: list[Config]) -> None:
    """What two instances of one process must not share: a name, a VRRP router (interface, VRID and
    family: the adverts of both would be one router's), a VIP, a DRBD resource, a device or
    mountpoint, a service's unit, a peer channel's port; and one NFS server per host."""
    def owners(what: Callable[[Config], list[Any]], key: str, why: Callable[[Any], str]) -> None:
        seen: dict[Any, int] = {}
        for j, cfg in enumerate(instances):
            for value in what(cfg):
                if value in seen:
                    first = seen[value]
                    raise ConfigError(file, f"instance[{j + 1}].{key}", f"{why(value)} is already instance[{first + 1}]"
                                      f"'s ({instances[first].name})")
                seen[value] = j

    owners(lambda c: [c.name], "name", lambda n: f'the name "{n}"')
    owners(lambda c: [(c.vrrp.interface, c.vrrp.vrid, c.vrrp.vips[0].version)], "vrrp.vrid",
           lambda k: f"VRID {k[1]} on {k[0]} (IPv{k[2]}: one VRRP router)")
    owners(lambda c: [v.ip for v in c.vrrp.vips], "vrrp.vips", lambda ip: f"the VIP {ip}")
    owners(lambda c: [c.drbd.resource] if c.drbd else [], "drbd.resource", lambda r: f"the DRBD resource {r}")
    owners(lambda c: [c.filesystem.device] if c.filesystem else [], "filesystem.device", lambda d: f"the device {d}")
    owners(lambda c: [c.filesystem.mountpoint] if c.filesystem else [], "filesystem.mountpoint",
           lambda m: f"the mountpoint {m}")
    owners(lambda c: [s.unit for s in c.services if s.unit], "service", lambda u: f"the unit {u}")
    owners(lambda c: [c.peer.port] if c.peer else [], "peer.port", lambda p: f"the peer channel's port {p}")
    # the kernel's nfsd (or the one ganesha) serves every export of the host: two instances
    # starting and stopping it would take each other's clients down (active/active comes later)
    owners(lambda c: [True] if c.nfs else [], "nfs", lambda _: "the host's one NFS server")
    groups = sync_groups(instances)
    alone = next((j for j, c in enumerate(instances) if c.sync_group and len(groups[c.sync_group]) == 1), None)
    if alone is not None:
        raise ConfigError(file, f"instance[{alone + 1}].sync_group", f"no other instance is in the sync group "
                          f"{instances[alone].sync_group}: a group is two instances or more")


def sync_groups(instances: Sequence[Config]) -> dict[str, tuple[str, ...]]:
    """Each sync group's members (instance names), in file order."""
    out: dict[str, tuple[str, ...]] = {}
    for c in instances:
        if c.sync_group:
            out[c.sync_group] = (*out.get(c.sync_group, ()), c.name)
    return out


def _parse_instance(file: str, doc: dict[str, Any], agent: AgentConfig, notify: tuple[NotifyConfig, ...],
                    name: str) -> Config:
    """One instance's sections (keys in errors relative to the instance: "vrrp.vrid")."""
    if "vrrp" not in doc:
        raise ConfigError(file, "vrrp", "section is required")
    vrrp = _check_vrrp(file, _section(file, "vrrp", doc["vrrp"], _VRRP_KEYS, VrrpConfig))
    drbd = DrbdConfig(**_section(file, "drbd", doc["drbd"], _DRBD_KEYS, DrbdConfig)) if "drbd" in doc else None
    fs = (FilesystemConfig(**_section(file, "filesystem", doc["filesystem"], _FS_KEYS, FilesystemConfig))
          if "filesystem" in doc else None)
    monitor = MonitorConfig(**_section(file, "monitor", doc.get("monitor", {}), _MONITOR_KEYS, MonitorConfig))
    if drbd and fs and not fs.device.startswith("/dev/drbd"):
        raise ConfigError(file, "filesystem.device", f"{fs.device} is not a DRBD device (/dev/drbdN) "
                          "although [drbd] is configured")
    nfs = _check_nfs(file, _section(file, "nfs", doc["nfs"], _NFS_KEYS, NfsConfig), fs) if "nfs" in doc else None
    track = (_check_track(file, _section(file, "track", doc["track"], _TRACK_KEYS, TrackConfig), vrrp,
                          fast="peer" in doc)
             if "track" in doc else None)
    if drbd and drbd.unknown_peer == "witness" and not (track and track.witnesses):
        raise ConfigError(file, "drbd.unknown_peer", "'witness' needs [track] witnesses to ask")
    peer = _check_peer(file, _section(file, "peer", doc["peer"], _PEER_KEYS, PeerConfig,
                                                frozenset({"address"}))) if "peer" in doc else None
    if peer is not None and vrrp.ipv6:
        raise ConfigError(file, "peer", "the peer channel runs over IPv4 from the VRRP interface's IPv4 address; "
                          "an IPv6 instance cannot use it yet")
    guard = GuardConfig(**_section(file, "guard", doc.get("guard", {}), _GUARD_KEYS, GuardConfig))
    services = _check_services(file, doc.get("service", []), monitor, nfs)
    return Config(file=file, vrrp=vrrp, name=name or default_name(vrrp), agent=agent, drbd=drbd, filesystem=fs,
                  monitor=monitor, nfs=nfs, track=track, peer=peer, notify=notify, guard=guard, services=services)


def parse(text: str, file: str = "<config>") -> Config:
    """A file of one instance (`ProcessConfig.single`); the agent itself reads `parse_process`."""
    return parse_process(text, file).single()


def _beyond_64_bits(doc: dict[str, Any]) -> str | None:
    """The dotted key of an integer TOML does not allow (tomllib reads any size; our checks print them)."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{key}.{k}" if key else k, v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{key}[{i + 1}]", v) for i, v in enumerate(value)]
        elif isinstance(value, int) and not -(2**63) <= value < 2**63:
            return key
    return None


def load(path: str | Path) -> Config:
    """A file of one instance (`ProcessConfig.single`)."""
    return load_process(path).single()


def load_process(path: str | Path) -> ProcessConfig:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(str(path), "", f"cannot read: {e}") from None
    return loads_process(data, str(path))


def loads(data: bytes, file: str = "<config>") -> Config:
    """A file of one instance, from its bytes."""
    return loads_process(data, file).single()


def loads_process(data: bytes, file: str = "<config>") -> ProcessConfig:
    """`load_process` after the read: the file's bytes as they are, so a fuzzer reaches everything it does."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(file, "", f"cannot read: {e}") from None
    return parse_process(text, file)


def describe_changes(old: Config, new: Config) -> list[str]:
    """Human-readable 'section.key: old -> new' lines, for the reload log."""
    return _section_changes(old, new, ("vrrp", "agent", "drbd", "filesystem", "monitor", "nfs", "track", "peer",
                                       "guard")) + _notify_changes(old.notify, new.notify) + \
        _service_changes(old, new, every=True)


def describe_process_changes(old: ProcessConfig, new: ProcessConfig) -> list[str]:
    """`describe_changes` for the whole process: [agent] and [[notify]], instances added and removed,
    and each instance's own lines, after its name when the process runs several."""
    out = _section_changes(old, new, ("agent",)) + _notify_changes(old.notify, new.notify)
    several = len(old.instances) > 1 or len(new.instances) > 1
    for name in dict.fromkeys([*old.names, *new.names]):
        a, b = old.instance(name), new.instance(name)
        if a is None or b is None:
            out.append(f"[[instance]] {name} {'added' if a is None else 'removed'}")
            continue
        own = _section_changes(a, b, _TABLE_SECTIONS) + _service_changes(a, b, every=True)
        if a.sync_group != b.sync_group:
            own.append(f"sync_group: {a.sync_group or 'none'} -> {b.sync_group or 'none'}")
        out += [f"{name}: {line}" if several else line for line in own]
    if [n for n in old.names if n in new.names] != [n for n in new.names if n in old.names]:
        out.append(f"[[instance]] order: {', '.join(old.names)} -> {', '.join(new.names)}")
    return out


def _section_changes(old: Any, new: Any, sections: tuple[str, ...]) -> list[str]:
    out = []
    for section in sections:
        before, after = getattr(old, section), getattr(new, section)
        if before is None or after is None:
            if before != after:
                out.append(f"[{section}] {'added' if before is None else 'removed'}")
            continue
        for f in fields(before):
            a, b = getattr(before, f.name), getattr(after, f.name)
            if a != b:
                if f.name == "auth_pass":
                    a, b = "***" if a else "''", "***" if b else "''"
                out.append(f"{section}.{f.name}: {_show(a)} -> {_show(b)}")
    return out


def _notify_changes(old: tuple[NotifyConfig, ...], new: tuple[NotifyConfig, ...]) -> list[str]:
    if old == new:
        return []
    return [f"notify: [{', '.join(h.describe() for h in old)}] -> [{', '.join(h.describe() for h in new)}]"]


def _service_changes(old: Config, new: Config, every: bool) -> list[str]:
    """`[[service]]` entries added, removed, reordered or changed (`every`: timeouts too, which apply live)."""
    before, after = {s.name: s for s in old.services}, {s.name: s for s in new.services}
    out = []
    for name in dict.fromkeys([*before, *after]):
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            out.append(f"[[service]] {name} {'added' if a is None else 'removed'}")
            continue
        out += [f"service.{name}.{f.name}: {_show(getattr(a, f.name))} -> {_show(getattr(b, f.name))}"
                for f in fields(a) if getattr(a, f.name) != getattr(b, f.name) and (every or f.name != "timeout")]
    common = [n for n in before if n in after]
    if common != [n for n in after if n in before]:
        out.append(f"[[service]] order: {', '.join(common)} -> {', '.join(n for n in after if n in before)}")
    return out


#: keys whose change needs an ordered leave (release, then the new instance): what the VRRP
#: instance is, and what a running NFS server, mount or DRBD resource was started with (and
#: every [[service]] key but timeout, see identity_changes); every other key applies live on
#: the master without releasing anything
IDENTITY_KEYS: dict[str, tuple[str, ...]] = {
    "vrrp": ("interface", "vrid", "version", "unicast_peers"),
    "drbd": ("resource",),
    "filesystem": ("device", "mountpoint", "fstype"),
    "nfs": ("backend", "versions", "server_scope", "state_dir", "service", "state_target", "exports_file",
            "run_dir", "ganesha_binary"),
}


def identity_changes(old: Config, new: Config) -> list[str]:
    """The identity keys that differ (a storage section added or removed counts as a whole)."""
    out: list[str] = []
    for section, keys in IDENTITY_KEYS.items():
        a, b = getattr(old, section), getattr(new, section)
        if (a is None) != (b is None):
            out.append(f"[{section}] {'added' if a is None else 'removed'}")
        elif a is not None:
            out += [f"{section}.{k}" for k in keys if getattr(a, k) != getattr(b, k)]
    if old.vrrp.ipv6 != new.vrrp.ipv6:  # the sockets, the advert source and the announcements are of one family
        out.append("vrrp.vips (address family)")
    # a service is a step of the chain: adding, removing or reordering one (or changing what runs it)
    # changes the chain itself, which only a new instance takes; its timeout applies live
    return out + [line.split(":")[0] for line in _service_changes(old, new, every=False)]


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return str(v)
