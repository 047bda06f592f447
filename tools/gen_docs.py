"""Render the man pages and the bash completion from ONE source: the argparse parsers and the
config key tables.

    python -m tools.gen_docs            # (re)write man/*.[58] and completion/failoverctl
    python -m tools.gen_docs --check    # exit 1 if a committed file is stale (tests do this)

failover-agent(8) and failoverctl(8) come from the parsers that agent.daemon.main and
agent.cli.main build (captured at parse_args, so nothing runs); failover-agent.toml(5) from
agent.config's key tables (_VRRP_KEYS...), the dataclasses' defaults and KEY_DOCS below, which
must describe every key (a new key without a line here makes --check, and so the tests, fail).
The output is committed so the Debian build needs nothing but Python; the version and date are
left out of the pages so they change only when the interface does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import cli, config, daemon
from nfs.settings import NfsConfig

REPO = Path(__file__).resolve().parents[1]

# section -> (key table, dataclass, one line of description)
@dataclasses.dataclass(frozen=True)
class _Instance:
    """An [[instance]] table's own keys, for their defaults (its sections have their own tables)."""

    name: str
    sync_group: str = ""


SECTIONS: dict[str, tuple[Mapping[str, Callable[[Any], Any]], type[Any], str]] = {
    "vrrp": (config._VRRP_KEYS, config.VrrpConfig, "The VRRP instance (required)."),
    "agent": (config._AGENT_KEYS, config.AgentConfig, "The agent process."),
    "drbd": (config._DRBD_KEYS, config.DrbdConfig, "The DRBD resource promoted first and demoted last."),
    "filesystem": (config._FS_KEYS, config.FilesystemConfig, "The replicated filesystem."),
    "nfs": (config._NFS_KEYS, NfsConfig, "The NFS server (needs [filesystem])."),
    "peer": (config._PEER_KEYS, config.PeerConfig, "The peer channel (UDP, HMAC-SHA256) and its heartbeats."),
    "guard": (config._GUARD_KEYS, config.GuardConfig, "The bound an isolated master keeps (self-fencing)."),
    "track": (config._TRACK_KEYS, config.TrackConfig, "Reachability tracking."),
    "track.check": (config._CHECK_KEYS, config.CheckConfig, "[[track.check]]: any number of check programs."),
    "monitor": (config._MONITOR_KEYS, config.MonitorConfig, "Checks of the held steps while serving."),
    "service": (config._SERVICE_KEYS, config.ServiceConfig, "[[service]]: the admin's services, started after "
                "the filesystem and NFS and before the VIP, stopped in reverse."),
    "instance": (config._INSTANCE_OWN_KEYS, _Instance, "[[instance]]: one table per instance, for an agent that runs "
                 "several: its name and its own sections as [instance.vrrp], [instance.drbd], [[instance.service]] "
                 "and so on (every section above but [agent], which stays at the top with [[notify]]). A file "
                 "without [[instance]] tables is one instance named vrrp-VRID."),
}

KEY_DOCS: dict[str, str] = {
    "instance.name": "letters, digits, '-', '.' and '_': what failoverctl, the journal (INSTANCE=) and the "
                     "metrics (instance=) call the instance; unique in the file",
    "instance.sync_group": "instances of one group are master together: when one goes to FAULT or leaves MASTER, "
                           "the others of its group that are MASTER here hand over (never forced to MASTER); "
                           "a group needs two instances or more",
    "vrrp.interface": "the VRRP interface (FAULT while it is down)",
    "vrrp.vrid": "virtual router id, 1..255",
    "vrrp.vips": "one or more virtual addresses ADDRESS/PREFIX, all IPv4 or all IPv6 (IPv6 needs version 3); "
                 "a bare address means /32 (/128)",
    "vrrp.priority": "1..255; 255 = address owner: master at once",
    "vrrp.version": "2 (RFC 3768) or 3 (RFC 5798)",
    "vrrp.advert_interval": "seconds; v2 whole seconds 1..255, v3 0.01..40.95",
    "vrrp.preempt": "false = keepalived's nopreempt",
    "vrrp.preempt_delay": "seconds a higher-priority backup waits after seeing a lower master",
    "vrrp.unicast_peers": "empty = multicast 224.0.0.18 (IPv6: ff02::12); else adverts go to, and are accepted only "
                          "from, these (IPv6: the peers' link-local addresses)",
    "vrrp.auth_pass": "v2 only, at most 8 characters (keepalived auth_type PASS compatibility; not security)",
    "vrrp.garp_count": "gratuitous ARP (IPv6: unsolicited Neighbor Advertisement) rounds on becoming master",
    "vrrp.garp_interval": "seconds between those rounds",
    "vrrp.garp_refresh": "seconds between refresh GARPs (NAs) while master; 0 = off",
    "agent.control_socket": "failoverctl talks to the agent here (root only)",
    "agent.metrics": "IPV4:PORT on a local address serves Prometheus text; empty = off",
    "agent.state_file": "maintenance mode, kept across restarts and reboots",
    "agent.realtime_priority": "SCHED_RR priority 1..99 of the agent (not of what it starts), so a busy CPU "
                               "does not delay adverts; 0 = the ordinary scheduler",
    "drbd.resource": "promoted before the mount, demoted after the unmount",
    "drbd.demote_escalation": "before the last entry: retry | force; last: none | reboot | poweroff",
    "drbd.unknown_peer": "replication link down, peer state unknown: refuse | witness",
    "drbd.witness_grace": "extra seconds on top of the peer's isolation bound before a witness-based promotion",
    "filesystem.device": "block device; must be /dev/drbdN when [drbd] is configured",
    "filesystem.mountpoint": "absolute path",
    "filesystem.fstype": "filesystem type",
    "filesystem.options": "mount options, one per entry",
    "filesystem.kill_holders": "a busy unmount: SIGTERM the holders, SIGKILL after kill_grace, retry",
    "filesystem.kill_grace": "seconds between SIGTERM and SIGKILL",
    "nfs.backend": "kernel (nfsd) | ganesha (nfs-ganesha, run by the agent)",
    "nfs.state_dir": "relative to the mountpoint: kernel: bound onto state_target; ganesha: its RecoveryRoot",
    "nfs.grace_time": "seconds; kernel: 10..3600, ganesha: 0..180",
    "nfs.lease_time": "seconds; kernel: 10..3600, ganesha: 0..120",
    "nfs.exports": "list of { path, clients, options } tables; fsid= required, the same on both nodes",
    "nfs.versions": "NFS versions served",
    "nfs.server_scope": "NFSv4 server scope, the same on both nodes",
    "nfs.service": "kernel: direct (rpc.mountd, rpc.nfsd) | systemd (nfs-server.service)",
    "nfs.threads": "kernel: nfsd threads",
    "nfs.state_target": "kernel: where the state folder is bound",
    "nfs.exports_file": "kernel: written on start, removed on stop",
    "nfs.graceless": "ganesha: skip the grace period",
    "nfs.run_dir": "ganesha: its config, log and pid file",
    "nfs.ganesha_binary": "ganesha: the server program",
    "peer.address": "the other node's service address",
    "peer.port": "UDP port",
    "peer.secret_file": "shared secret, root-owned, mode 0600, at least 16 bytes",
    "peer.timeout": "seconds to wait for the peer's answer",
    "peer.window": "messages older or newer than this (clock difference) are refused",
    "peer.addresses": "the other node's address on each network (service, replication); heartbeats go to each",
    "peer.heartbeat": "seconds between heartbeats on each path; 0 = off (RFC timing only)",
    "peer.dead_after": "heartbeats missed on every path before the peer counts as gone and we take over",
    "guard.release_deadline": "an isolated master stops serving within this, or fences itself (escalation)",
    "guard.fence_record": "labs only: self-fencing writes a line here and exits instead of rebooting",
    "track.witnesses": "addresses pinged out of the VRRP interface",
    "track.interval": "seconds between probes (0.2 with [peer], else 1)",
    "track.timeout": "per probe, shorter than interval (0.1 with [peer], else 0.5)",
    "track.fall": "failures in a row before a witness counts as unreachable",
    "track.rise": "answers in a row before it counts as reachable again",
    "track.min_reachable": "fewer reachable witnesses = isolated: release, FAULT, never take over",
    "track.check": "[[track.check]] tables, below",
    "track.check.argv": "argument list with an absolute program path; no shell",
    "track.check.interval": "seconds between runs",
    "track.check.timeout": "killed after this; exit 0 = pass",
    "track.check.fall": "failures in a row before it counts as failing",
    "track.check.rise": "passes in a row before it counts as passing again",
    "track.check.weight": "0: failing = FAULT; negative: lowers the advertised priority",
    "monitor.interval": "seconds between checks of every held step while serving",
    "monitor.max_restarts": "restarts of a failed step before failing over",
    "monitor.hold_down": "after a failed takeover: silent this long (doubling per failure, at most 60 s)",
    "monitor.step_timeout": "seconds per step",
    "service.name": "letters, digits, '-', '.' and '_'; the step is service:NAME in status and journal",
    "service.unit": "a systemd unit: systemctl start / stop, up while systemctl is-active says active",
    "service.start": "instead of unit: argument list, no shell; must exit 0, then check must pass",
    "service.stop": "argument list; then check must fail (the service is verified down)",
    "service.check": "argument list; exit 0 = running (acquire, release, the monitor and startup use it)",
    "service.timeout": "seconds for each start, stop or check with its verification (default monitor.step_timeout)",
}


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def capture(main: Callable[[list[str]], int]) -> argparse.ArgumentParser:
    """The parser `main` builds, taken at parse_args (before anything runs)."""
    original = argparse.ArgumentParser.parse_args

    def grab(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = grab  # type: ignore[method-assign]
    try:
        main([])
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError(f"{main} returned without parsing arguments")


def _esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]


def _option_lines(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in _options(parser):
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + str(action.metavar or action.dest.upper())
            head = ", ".join(f"\\fB{_esc(o)}\\fR{_esc(str(metavar))}" for o in action.option_strings)
        else:
            choices = "|".join(action.choices) if action.choices else (action.metavar or action.dest)
            head = f"\\fI{_esc(str(choices))}\\fR"
        help_text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
            help_text += f" (default: {action.default})"
        out += [".TP", head, _esc(help_text or "")]
    return out


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            return [(name, helps.get(name, ""), p) for name, p in action.choices.items()]
    return []


def _header(name: str, section: int, summary: str) -> list[str]:
    return [
        '.\\" Generated by tools/gen_docs.py from the argparse parsers and agent.config: do not edit.',
        f'.TH {name.upper()} {section} "" "failover-agent" "failover-agent"',
        ".SH NAME",
        f"{_esc(name)} \\- {_esc(summary)}",
    ]


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def page_for(parser: argparse.ArgumentParser, summary: str, body: list[str]) -> str:
    prog = parser.prog
    lines = _header(prog, 8, summary)
    lines += [".SH SYNOPSIS", f".B {_esc(prog)}", _esc(_usage(parser).removeprefix(prog).strip())]
    lines += [".SH DESCRIPTION", _esc(parser.description or summary)]
    lines += [".SH OPTIONS", *_option_lines(parser)]
    subs = _subcommands(parser)
    if subs:
        lines.append(".SH COMMANDS")
        for name, help_text, sub in subs:
            lines += [".SS " + _esc(f"{prog} {name}"), _esc(help_text), ".PP", "Usage: " + _esc(_usage(sub))]
            opts = [a for a in _options(sub) if not (a.option_strings and a.option_strings[0] in ("-h", "--help"))]
            if opts:
                lines += _option_lines(sub)
    lines += body
    return "\n".join(lines) + "\n"


_SEE_ALSO = [".SH SEE ALSO", "\\fBfailover\\-agent\\fR(8), \\fBfailoverctl\\fR(8), \\fBfailover\\-agent.toml\\fR(5),",
             "/usr/share/doc/failover\\-agent/README.md, /usr/share/doc/failover\\-agent/examples/"]


def daemon_page() -> str:
    body = [
        ".SH EXIT STATUS", "0 clean stop; 1 cannot start (interface missing, no IPv4 address, no privilege, "
        "another agent owns the control socket); 2 config error.",
        ".SH SIGNALS", "SIGTERM, SIGINT: ordered release, priority 0 advert, exit; but SIGTERM during a systemd "
        "restart job of the unit, and SIGUSR2, on a serving master: keep the chain held for the restarted agent "
        "to adopt (no failover). SIGHUP: re\\-read and "
        "validate the config; an invalid file is refused and the running config kept.",
        ".SH FILES", ".TP", "/etc/failover\\-agent/agent.toml", "the configuration, see "
        "\\fBfailover\\-agent.toml\\fR(5)", ".TP", "/run/failover\\-agent/control.sock",
        "the control socket \\fBfailoverctl\\fR(8) uses", ".TP", "/var/lib/failover\\-agent/state.handoff.json",
        "what an agent stopped for a restart kept held, for the next one (read and removed at its start)",
        *_SEE_ALSO,
    ]
    return page_for(capture(daemon.main), "VRRP failover agent for DRBD-replicated NFS pairs", body)


def ctl_page() -> str:
    body = [".SH EXIT STATUS", "0 success; 1 the agent cannot be reached or refused; 2 invalid config "
            "(check\\-config). fence\\-peer: 4 peer outdated, 5 peer dead, 6 peer Primary, 1 not fenced.",
            *_SEE_ALSO]
    return page_for(capture(cli.main), "inspect and steer failover-agent", body)


def _default(cls: type[Any], key: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == key:
            if f.default is not dataclasses.MISSING:
                value = f.default
                if isinstance(value, bool):
                    return "true" if value else "false"
                if isinstance(value, str):
                    return f'"{value}"'
                if isinstance(value, tuple):
                    return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]"
                return str(value)
            return "required"
    return "\\-"  # a key handled outside the dataclass (track.check)


def undocumented() -> list[str]:
    """Config keys without a line in KEY_DOCS, and KEY_DOCS lines for keys that do not exist."""
    keys = {f"{s}.{k}" for s, (table, _cls, _doc) in SECTIONS.items() for k in table}
    return sorted((keys - KEY_DOCS.keys()) | (KEY_DOCS.keys() - keys))


def config_page() -> str:
    missing = undocumented()
    if missing:
        raise SystemExit(f"tools/gen_docs.py: KEY_DOCS and agent.config's key tables differ: {', '.join(missing)}")
    lines = _header("failover-agent.toml", 5, "configuration of failover-agent")
    lines += [".SH SYNOPSIS", "/etc/failover\\-agent/agent.toml",
              ".SH DESCRIPTION",
              "A TOML file. Unknown sections and keys, wrong types and out\\-of\\-range values are errors "
              "that name the file and the key (\\fBfailoverctl check\\-config\\fR). Without [drbd], "
              "[filesystem] and [nfs] the agent runs in VIP\\-only mode. Each key is listed with its "
              "default."]
    for section, (table, cls, doc) in SECTIONS.items():
        lines += [".SH [" + _esc(section) + "]", _esc(doc)]
        for key in table:
            lines += [".TP", f"\\fB{_esc(key)}\\fR = {_esc(_default(cls, key))}", _esc(KEY_DOCS[f"{section}.{key}"])]
    lines += [".SH EXAMPLES", "/usr/share/doc/failover\\-agent/examples/ has VIP\\-only, DRBD + kernel nfsd and "
              "DRBD + nfs\\-ganesha configurations.", *_SEE_ALSO]
    return "\n".join(lines) + "\n"


def completion() -> str:
    parser = capture(cli.main)
    subs = _subcommands(parser)
    cases = []
    for name, _help, sub in subs:
        words: list[str] = []
        for action in _options(sub):
            words += action.option_strings
            if not action.option_strings and action.choices:
                words += list(action.choices)
        files = any(a.dest in ("file", "config", "output", "directory") for a in _options(sub))
        extra = ' COMPREPLY+=($(compgen -f -- "$cur"))' if files else ""
        cases.append(f'        {name}) COMPREPLY=($(compgen -W "{" ".join(words)}" -- "$cur"));{extra} ;;')
    top = " ".join([n for n, _h, _p in subs] + [o for a in _options(parser) for o in a.option_strings])
    return "\n".join([
        "# bash completion for failoverctl",
        "# Generated by tools/gen_docs.py from agent.cli's parser: do not edit.",
        "_failoverctl() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in -*) ;; *) cmd="${COMP_WORDS[i]}"; break ;; esac',
        "    done",
        '    case "$prev" in',
        '        --config|-c|--output|-o|--directory|-D|--socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;',
        "    esac",
        '    case "$cmd" in',
        f'        "") COMPREPLY=($(compgen -W "{top}" -- "$cur")) ;;',
        *cases,
        "    esac",
        "}",
        "complete -F _failoverctl failoverctl",
        "",
    ])


def outputs() -> dict[Path, str]:
    return {
        REPO / "man/failover-agent.8": daemon_page(),
        REPO / "man/failoverctl.8": ctl_page(),
        REPO / "man/failover-agent.toml.5": config_page(),
        REPO / "completion/failoverctl": completion(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen_docs", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only check that the committed files are current")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(str(path.relative_to(REPO)))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run: python -m tools.gen_docs", file=sys.stderr)
        return 1
    print(("rewrote " if stale else "up to date: ") + ", ".join(stale or [str(p.relative_to(REPO)) for p in outputs()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
