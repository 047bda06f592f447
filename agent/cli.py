"""`failoverctl`: the admin's command for a running failover-agent and its config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from agent import checkconfig, control, handoff, snapshot
from agent import config as configmod
from agent.heal import ACTIVE as FENCE_NOT_FENCED
from agent.heal import DRBD_FENCE_CODES, fence_verdict
from agent.journal import IDENTIFIER, Event
from agent.keepalived_import import ImportError_, convert, convert_all
from agent.version import version
from drbd import runner
from vrrp.packet import Address

#: exit codes: 2 keeps meaning "invalid config", so usage errors get sysexits' EX_USAGE
EXIT_HOST_CHECK = 1
EXIT_INVALID = 2
EXIT_NEEDS_REVIEW = 3
EXIT_USAGE = 64


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    try:
        return configmod.load_process(args.config).agent.control_socket
    except configmod.ConfigError:
        return configmod.AgentConfig().control_socket


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _ms(v: float) -> str:
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.1f} ms"


def _storage_lines(s: dict[str, Any]) -> list[str]:
    i, st = s["instance"], s["storage"]
    if st is None:
        return ["storage   none configured (VIP-only mode)"]
    lines = [f"storage   phase {st['phase']}; chain {' -> '.join(st['chain'])}"]
    steps = s.get("steps", {})
    longest = max(map(len, st["chain"]), default=0)
    width = 10 if longest < 10 else longest + 2  # the built-in steps' column; service:NAME steps are longer
    for step in st["chain"]:
        took = "; ".join(f"{op} {_ms(steps[f'{step}_{op}'])}" for op in ("acquire", "release")
                         if f"{step}_{op}" in steps)
        lines.append(f"  {step:<{width}}{'held' if step in st['held'] else 'not held':<10}{took and 'last ' + took}")
    d = st.get("drbd")
    if d and "error" in d:
        lines.append(f"DRBD      cannot be read: {d['error']}")
    elif d:
        sync = f", sync {d['sync_percent']}%" if d.get("sync_percent") else ""
        lines.append(f"DRBD      {d['resource']}: {d['role']}, disk {d['disk']}, {d['connection']}{sync}; "
                     f"peer {d['peer_role']}, disk {d['peer_disk']}")
    elif "drbd" in st["chain"]:
        lines.append("DRBD      resource not up on this node")
    if i.get("fault"):
        left = f"; hold-down {i['hold_left']:g} s left" if i.get("hold_left") else ""
        lines.append(f"fault     {i['fault']}{left} (failoverctl reset once fixed)")
    return lines


def _track_lines(i: dict[str, Any]) -> list[str]:
    t = i.get("track")
    if not t:
        return []
    lines = [f"track     {t['reachable']} of {len(t['targets'])} reachable (need {t['min_reachable']})"
             + (f"; {t['fault']}" if t.get("fault") else "")
             + (f"; priority {t['priority_delta']:+d}" if t.get("priority_delta") else "")]
    for name, v in t["targets"].items():
        verdict = "no verdict yet" if v["up"] is None else ("up" if v["up"] else "DOWN")
        lines.append(f"  {v['kind']:<8}{name:<22}{verdict:<15}{v['ok_run']} ok / {v['fail_run']} failed in a row; "
                     f"{v['last'] or 'not probed yet'}")
    return lines


def _peer_lines(i: dict[str, Any]) -> list[str]:
    p = i.get("peer")
    if not p:
        return []
    ago = i.get("peer_heard_ago")
    heard = "never heard" if ago is None else f"last heard {ago:g} s ago"
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(p["rejected"].items())) or "none"
    lines = [f"peer      {p['address']}:{p['port']}, {heard}; rejected messages: {rejected}"]
    if p.get("heartbeat"):
        paths = ", ".join(f"{a} {'never' if t is None else f'{t:g} s ago'}" for a, t in p.get("paths", {}).items())
        alive = "GONE (silent on every path)" if p.get("gone") else "alive"
        lines.append(f"          heartbeats every {p['heartbeat']:g} s: {alive}; last heard per path: {paths}")
    if i.get("release_left") is not None:
        lines.append(f"          ISOLATED: must stop serving within {i['release_left']:g} s or fence itself")
    if i.get("waiting_for"):
        lines.append(f"          NOT TAKING OVER: {i['waiting_for']}")
    return lines


def format_status(s: dict[str, Any], only: str | None = None) -> str:
    """The agent's lines, then each instance's block (`only`: that one's); ControlError for a name it lacks."""
    a = s["agent"]
    blocks = s.get("instances") or {s["instance"].get("name", ""): s}  # an agent from before instances
    if only is not None and only not in blocks:
        raise _no_instance(only, blocks)
    lines = [f"failover-agent {a['version']}, pid {a['pid']}, up {a['uptime']:g} s, config {a['config']}",
             f"sched     {a.get('scheduling', 'unknown')}",
             f"reloads   {a['reloads']} ({a['reload_failures']} refused)"]
    for name, block in blocks.items():
        if only in (None, name):
            lines += ["", f"instance  {name}"] if len(blocks) > 1 else []
            lines += _instance_lines(block)
    return "\n".join(lines)


def _no_instance(name: str, names: Iterable[str]) -> control.ControlError:
    return control.ControlError(f"no instance {name} in this agent (instances: {', '.join(names)})")


def _instance_lines(s: dict[str, Any]) -> list[str]:
    """One instance's block of the status answer ({"instance", "steps", "storage"}) in lines."""
    i = s["instance"]
    c = i["counters"]
    master = i["master"] or "unknown"
    if i["master"] == i["address"]:
        master += " (this node)"
    flags = [w for w, on in (("maintenance", i["maintenance"]), ("yielding after handover", i["yielding"])) if on]
    lines = [
        f"VRRP      VRID {i['vrid']} on {i['interface']} ({i['address']}), v{i['version']}, "
        f"advert {i['advert_interval']:g} s, Master_Down {i['master_down_interval']:g} s",
        f"state     {i['state']}, priority {i['priority']}{' (preempt)' if i['preempt'] else ' (nopreempt)'}"
        + (f" [{', '.join(flags)}]" if flags else ""),
        f"master    {master}",
    ]
    last = i["last_transition"]
    if last:
        lines.append(f"last      {_when(last['at'])} {last['from']} -> {last['to']}: {last['reason']}")
    faults = "; ".join(f"{k}: {v}" for k, v in i.get("faults", {}).items())
    lines.append(f"VIPs      {', '.join(i['vips'])} {'held here' if i['vips_held'] else 'not held here'}")
    lines.append(f"link      {'up' if i['link_up'] else 'DOWN'}" + (f"; FAULT because {faults}" if faults else ""))
    lines += _storage_lines(s) + _track_lines(i) + _peer_lines(i)
    if i.get("heal"):  # agent.healer: a StandAlone resource the agents cannot reconnect with proof
        lines.append(f"heal      {i['heal']}")
    lines.append(f"counters  adverts sent {c['adverts_sent']}, received {c['adverts_received']}; "
                 f"transitions {c['transitions']}, became master {c['became_master']}, faults {c['faults']}")
    drops = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "none"
    lines.append(f"drops     {drops}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    answer = control.request(_socket_path(args), "status")
    answer.pop("ok", None)
    if not args.json:
        print(format_status(answer, args.name))
        return 0
    if args.name is not None:
        blocks = answer.get("instances", {})
        if args.name not in blocks:
            raise _no_instance(args.name, blocks)
        answer = {"agent": answer["agent"], "instances": {args.name: blocks[args.name]}}
    print(json.dumps(answer, indent=2))
    return 0


def _for(args: argparse.Namespace) -> dict[str, Any]:
    """The request's `instance`, when the admin named one (the agent picks its only instance otherwise)."""
    return {} if args.name is None else {"instance": args.name}


def cmd_handover(args: argparse.Namespace) -> int:
    print(control.request(_socket_path(args), "handover", **_for(args))["message"])
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    print(control.request(_socket_path(args), "reset", **_for(args))["message"])
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    print(control.request(_socket_path(args), "maintenance", on=args.mode == "on", **_for(args))["message"])
    return 0


def cmd_fence_peer(args: argparse.Namespace) -> int:
    """DRBD's fence-peer handler: outdate the peer through the agents' peer channel.

    Exits only with codes DRBD defines (drbd.conf(5)): 4 the peer's disk is Outdated, 5 the
    peer is unreachable and a witness answers us (dead), 6 anything else, which keeps a
    disconnected Primary's I/O frozen (agent.heal). While the agent's verdict is still open
    (the peer silent, no witness answered yet, the tracker undecided), it asks again.
    """
    resource = os.environ.get("DRBD_RESOURCE", "?")
    which = {"resource": resource} if "DRBD_RESOURCE" in os.environ else {}  # the instance of that resource
    t0 = time.monotonic()
    while True:
        try:
            answer = control.request(_socket_path(args), "fence-peer", timeout=30.0,
                                     waited=round(time.monotonic() - t0, 3), **which)
        except (control.ControlError, OSError) as e:
            print(f"fence-peer {resource}: the local agent does not answer ({e}); not fencing (exit 6: a "
                  "disconnected Primary's I/O stays frozen)", file=sys.stderr)
            return FENCE_NOT_FENCED
        code = answer.get("exit")
        if not isinstance(code, int) or isinstance(code, bool):  # no healer (no [drbd]): the same verdict here
            verdict = fence_verdict(answer, time.monotonic() - t0)
            code, final, message = verdict.code, verdict.final, verdict.message
            answer = {**answer, "retry_after": verdict.retry_after}
        else:
            final, message = bool(answer.get("final", True)), str(answer.get("message", ""))
        if code not in DRBD_FENCE_CODES or code in (3, 7):
            code, final = FENCE_NOT_FENCED, True
        if final:
            print(f"fence-peer {resource}: exit {code} ({DRBD_FENCE_CODES[code]}): {message}",
                  file=sys.stdout if code in (4, 5) else sys.stderr)
            return code
        delay = answer.get("retry_after")
        time.sleep(min(1.0, max(0.05, float(delay) if isinstance(delay, int | float) else 0.3)))


def _config_path(args: argparse.Namespace) -> str:
    """check-config FILE, -c FILE or --config FILE (the same file twice is fine, two files are not)."""
    if args.file and args.config and os.path.abspath(args.file) != os.path.abspath(args.config):
        _usage_error(args, f"two config files given ({args.file} and {args.config}): give one")
    return str(args.file or args.config or configmod.DEFAULT_PATH)


def _invalid(e: configmod.ConfigError) -> str:
    """The ConfigError with the line of the offending key, when the file shows it."""
    line = None
    if e.key:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            line = checkconfig.key_line(Path(e.file).read_text(encoding="utf-8"), e.key)
    where = f"{e.file}:{line}" if line else e.file
    return f"{where}: {e.key}: {e.reason}" if e.key else f"{where}: {e.reason}"


async def _primary_of(name: str, exclude: list[Address], ipv6: bool) -> Address | None:
    from vrrp.vip import primary_address  # pyroute2: only for the commands that need it

    return await primary_address(name, exclude, ipv6)


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    try:
        process = configmod.load_process(path)
    except configmod.ConfigError as e:
        print(f"invalid: {_invalid(e)}", file=sys.stderr)
        return EXIT_INVALID
    several = len(process.instances) > 1
    if several:
        print(f"{path}: valid ({len(process.instances)} instances: {', '.join(process.names)})")
    failed = 0
    for cfg in process.instances:
        v = cfg.vrrp
        print(f"{f'instance {cfg.name}' if several else path}: {'' if several else 'valid '}(VRRPv{v.version} VRID "
              f"{v.vrid} on {v.interface}, priority {v.priority}, VIPs {', '.join(str(x) for x in v.vips)}; "
              f"steps {', '.join(cfg.steps)})")
        if not args.offline:
            failed += _check_host(cfg)
    if failed:
        print(f"{failed} host check(s) failed", file=sys.stderr)
        return EXIT_HOST_CHECK
    return 0


def _check_host(cfg: configmod.Config) -> int:
    """Print this host's findings for one instance and its takeover time; the number of failed checks."""
    v = cfg.vrrp
    vips = [x.ip for x in v.vips]
    findings = asyncio.run(checkconfig.host_findings(cfg, lambda name: _primary_of(name, vips, v.ipv6), runner.run))
    for finding in findings:
        print(finding.line())
    for line in checkconfig.takeover_time(cfg):
        print(line)
    return sum(not f.ok for f in findings)


def journal_argv(journalctl: str, since: str | None, directory: str | None, unit: str | None,
                 instance: str | None = None) -> list[str]:
    """journalctl's arguments for our events: it ORs the repeated MESSAGE_ID matches and ANDs the
    other fields (`instance`: only the events of that instance, INSTANCE=NAME)."""
    argv = [journalctl, "--no-pager", "-o", "json"]
    if directory:
        argv += ["-D", directory]
    if since:
        argv += ["--since", since]
    argv.append(f"_SYSTEMD_UNIT={unit}" if unit else f"SYSLOG_IDENTIFIER={IDENTIFIER}")
    if instance:
        argv.append(f"INSTANCE={instance}")
    return argv + [f"MESSAGE_ID={e.value}" for e in Event]


def journal_entries(since: str | None, directory: str | None, unit: str | None,
                    instance: str | None = None) -> list[dict[str, Any]]:
    """Our events from the journal, oldest first."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise control.ControlError("journalctl not found: history needs systemd's journal")
    argv = journal_argv(journalctl, since, directory, unit, instance)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise control.ControlError(f"journalctl failed: {proc.stderr.strip()}")
    out = []
    for line in proc.stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def cmd_history(args: argparse.Namespace) -> int:
    names = {e.value: e.name for e in Event}
    entries = journal_entries(args.since, args.directory, args.unit, args.instance)
    if args.json:
        for e in entries:
            print(json.dumps({"time": int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6,
                              "event": names.get(e.get("MESSAGE_ID", ""), "?"),
                              **{k: v for k, v in e.items() if not k.startswith("_")}}))
        return 0
    if not entries:
        print("no failover-agent events in the journal" + (f" of instance {args.instance}" if args.instance else "")
              + (f" since {args.since}" if args.since else ""))
    for e in entries:
        ts = int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        print(f"{_when(ts)}  {names.get(e.get('MESSAGE_ID', ''), '?'):<13} {e.get('MESSAGE', '')}")
    return 0


def write_config(path: str, text: str, private: bool) -> None:
    """Write atomically; a file holding a password is created 0600, never readable in between."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".failoverctl-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_import(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text(encoding="utf-8")
        result = convert(text, args.instance, source=args.file) if args.instance else convert_all(text, args.file)
    except (OSError, UnicodeDecodeError) as e:
        print(f"cannot read {args.file}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return EXIT_INVALID
    except ImportError_ as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if args.output:
        try:
            write_config(args.output, result.toml, private=result.secret)
        except OSError as e:
            print(f"cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(result.toml)
    print(f"vrrp_instance {result.instance}: {len(result.mapped)} option(s) mapped, {result.checks} track check(s), "
          f"{len(result.replaced)} notify script(s) read, {len(result.unmapped)} not mapped (listed as comments)"
          + (f"; {args.output} holds auth_pass: mode 0600" if args.output and result.secret else ""),
          file=sys.stderr)
    for item in result.warnings:
        print(f"review: {item}", file=sys.stderr)
    if result.review:
        for item in result.review:
            print(f"NEEDS REVIEW: {item}", file=sys.stderr)
        print(f"not fully converted: {len(result.review)} item(s) need review (NEEDS REVIEW in the output); "
              "do not run the agent with it before they are resolved", file=sys.stderr)
        return EXIT_NEEDS_REVIEW
    return 0


def cmd_sniff(args: argparse.Namespace) -> int:
    from agent import sniff  # scapy: only here, never on the daemon's import path

    return sniff.main(args)


#: systemd's $SERVICE_RESULT for a main process that was killed (SIGKILL, the watchdog, a crash)
KILLED = ("signal", "core-dump", "watchdog")


def cmd_cleanup(args: argparse.Namespace) -> int:
    """After the agent died (ExecStopPost=): drop its VIPs so the peer is the only holder.

    The VIPs come from the config the agent ran (its snapshot), not from the file as it is now.
    An agent that stopped for a restart (agent.handoff) left them held on purpose for the next
    one: kept after its clean exit; removed (from its record) when the start that followed failed.

    A killed agent whose node serves with DRBD Primary, UpToDate and connected to a Secondary
    peer leaves the VIPs too: its node still serves the clients (the kernel's nfsd or the
    agent's NFS server, which KillMode=process leaves running), and the peer cannot promote
    while it is connected to a Primary; it waits for the agent (agent.node `_vouch`), which
    systemd restarts and which adopts the chain. Removing the VIPs would only turn the kill into
    an outage. Without DRBD, or with the connection lost, nothing keeps the peer from taking
    over: the VIPs go.
    """
    try:
        source = snapshot.for_cleanup(args.config)
    except configmod.ConfigError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return EXIT_INVALID
    print(source.note)
    if source.instances:
        try:
            control.request(source.control_socket, "status", timeout=2)
            print("failover-agent is running: it manages its VIPs itself; nothing done")
            return 0
        except control.ControlError:
            pass
    else:  # nothing ran: only a hand-off record may name VIPs (a start that should have adopted them failed)
        _cleanup_instance(None, configmod.AgentConfig().state_file, "")
    several = len(source.instances) > 1
    for cfg in source.instances:
        _cleanup_instance(cfg, cfg.agent.state_file, f"instance {cfg.name}: " if several else "")
    return 0


def _cleanup_instance(cfg: configmod.Config | None, state_file: str, label: str) -> None:
    """`cmd_cleanup` for one instance: its hand-off record, its DRBD resource, its VIPs."""
    kept = handoff.read(state_file)
    if kept is not None and os.environ.get("EXIT_CODE") == "exited" and os.environ.get("EXIT_STATUS") == "0":
        print(f"{label}the agent stopped for a restart and left {', '.join(kept.held)} held for the next agent to "
              f"adopt ({handoff.path_for(state_file)}): nothing removed")
        return
    if cfg is not None and cfg.drbd is not None and kept is None and os.environ.get("SERVICE_RESULT") in KILLED:
        serving, drbd_words = asyncio.run(_drbd_serving(cfg.drbd.resource))
        if serving:
            print(f"{label}the agent was killed ({os.environ.get('SERVICE_RESULT')}) while DRBD {drbd_words}: the "
                  "VIPs stay and the node keeps serving; the peer cannot promote while this node is Primary and "
                  "connected, and waits for the restarted agent to adopt the chain")
            return
        print(f"{label}the agent was killed; DRBD {drbd_words}: not serving with a connected peer, so the VIPs go")
    interface, vips = (cfg.vrrp.interface, [str(v) for v in cfg.vrrp.vips]) if cfg is not None else \
        (kept.interface, list(kept.vips)) if kept is not None else ("", [])
    if kept is not None:
        print(f"{label}the agent that should have adopted what a restart left held did not start: removing its VIPs")
        handoff.take(state_file)
    if not vips:
        return
    removed = asyncio.run(_remove_vips(interface, vips))
    print(f"{label}removed {', '.join(removed)}" if removed else f"{label}no VIP of ours was present")


async def _drbd_serving(resource: str) -> tuple[bool, str]:
    """(is this node Primary, UpToDate and connected to a Secondary peer?, DRBD's state in words)."""
    from drbd.drbdadm import DrbdError, status_now

    try:
        st = await status_now(resource)
    except (OSError, DrbdError) as e:
        return False, f"cannot be read: {e}"
    if st is None:
        return False, f"{resource} is not up"
    return st.primary and st.disk == "UpToDate" and st.connected and not st.peer_primary, st.summary()


async def _remove_vips(interface: str, addresses: list[str]) -> list[str]:
    from ipaddress import ip_interface

    from vrrp.netlink import AsyncIPRoute
    from vrrp.vip import LinkInfo, VipHolder

    vips = [ip_interface(a) for a in addresses]
    async with AsyncIPRoute() as ipr:
        try:
            info = await LinkInfo.query(ipr, interface, exclude=[v.ip for v in vips],
                                        ipv6=any(v.version == 6 for v in vips))
        except LookupError:
            return []
        keep = {info.primary} if info.primary else set()
        return [str(v) for v in await VipHolder(ipr, info.index, vips, keep=keep).remove()]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error, which failoverctl keeps for "invalid config"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="failoverctl", description="Inspect and steer failover-agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_socket(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", default=str(configmod.DEFAULT_PATH), help="where the socket is configured")
        p.add_argument("--socket", help="control socket path (overrides --config)")
        return p

    p = with_socket(sub.add_parser("status", help="state, master, VIPs, counters of the running agent"))
    p.add_argument("name", nargs="?", help="only this instance (default: every instance)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = with_socket(sub.add_parser("fence-peer", help="DRBD fence-peer handler: exit 4 outdated, 5 peer dead, "
                                                      "6 not fenced (I/O stays frozen)"))
    p.set_defaults(func=cmd_fence_peer)
    p = sub.add_parser("history", help="the failover story of this node, from the journal")
    p.add_argument("--since", help="journalctl time spec, e.g. '1 hour ago' or '2026-11-21 02:00'")
    p.add_argument("--json", action="store_true")
    p.add_argument("--unit", help="read entries of this systemd unit instead of by identifier")
    p.add_argument("--instance", help="only the events of this instance (their INSTANCE= field)")
    p.add_argument("--directory", "-D", help="read journal files from this directory")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("check-config", help="validate a config file and check this host against it "
                                            "(exit 0 all good, 1 a host check failed, 2 invalid config)")
    p.add_argument("file", nargs="?", help=f"the config (default {configmod.DEFAULT_PATH})")
    p.add_argument("--config", "-c", help="the config, as for the other commands")
    p.add_argument("--offline", action="store_true", help="the file only: no interface, program or DRBD checks")
    p.set_defaults(func=cmd_check_config, parser=p)
    which = "the instance (may be left out while the agent runs one)"
    p = with_socket(sub.add_parser("handover", help="planned switch: release in order, then priority 0"))
    p.add_argument("name", nargs="?", help=which)
    p.set_defaults(func=cmd_handover)
    p = with_socket(sub.add_parser("maintenance", help="on: stay backup and never take over; off: normal"))
    p.add_argument("mode", choices=("on", "off"))
    p.add_argument("name", nargs="?", help=which)
    p.set_defaults(func=cmd_maintenance)
    p = with_socket(sub.add_parser("reset", help="end a FAULT hold-down now, once the cause is fixed"))
    p.add_argument("name", nargs="?", help=which)
    p.set_defaults(func=cmd_reset)
    p = sub.add_parser("import-keepalived", help="convert a keepalived.conf's vrrp_instances and sync groups to "
                                                 "TOML (exit 0 converted, 3 needs review, 2 cannot convert)")
    p.add_argument("file")
    p.add_argument("--instance", help="only this vrrp_instance, as a file of one instance (default: every one, "
                                      "as [[instance]] tables)")
    p.add_argument("--output", "-o", help="write the TOML here instead of stdout")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("sniff", help="capture VRRP adverts on the wire and say what the agent would do with each")
    p.add_argument("--interface", "-i", help="default: the config's interface, else every interface")
    p.add_argument("--vrid", type=int, help="only adverts of this VRID")
    p.add_argument("--count", "-n", type=int, default=0, help="stop after this many adverts (default: no limit)")
    p.add_argument("--timeout", type=float, default=0.0, help="stop after this many seconds (default: no limit)")
    p.add_argument("--config", "-c", default=str(configmod.DEFAULT_PATH),
                   help="judge adverts by this config's VRRP settings (if readable)")
    p.set_defaults(func=cmd_sniff, parser=p)
    p = sub.add_parser("cleanup", help="remove this node's VIPs after the agent died (ExecStopPost); "
                       "kept on a killed DRBD master that serves on")
    p.add_argument("--config", "-c", default=str(configmod.DEFAULT_PATH))
    p.set_defaults(func=cmd_cleanup)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except control.ControlError as e:
        print(f"failoverctl: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
