"""`failoverctl`: the admin's command for a running failover-agent and its config."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent import config as configmod
from agent import control
from agent.journal import IDENTIFIER, Event
from agent.keepalived_import import ImportError_, convert
from agent.node import fence_exit_code
from agent.version import version


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    try:
        return configmod.load(args.config).agent.control_socket
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
    for step in st["chain"]:
        took = "; ".join(f"{op} {_ms(steps[f'{step}_{op}'])}" for op in ("acquire", "release")
                         if f"{step}_{op}" in steps)
        lines.append(f"  {step:<10}{'held' if step in st['held'] else 'not held':<10}{took and 'last ' + took}")
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
    return [f"peer      {p['address']}:{p['port']}, {heard}; rejected messages: {rejected}"]


def format_status(s: dict[str, Any]) -> str:
    a, i = s["agent"], s["instance"]
    c = i["counters"]
    master = i["master"] or "unknown"
    if i["master"] == i["address"]:
        master += " (this node)"
    flags = [w for w, on in (("maintenance", i["maintenance"]), ("yielding after handover", i["yielding"])) if on]
    lines = [
        f"failover-agent {a['version']}, pid {a['pid']}, up {a['uptime']:g} s, config {a['config']}",
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
    lines.append(f"counters  adverts sent {c['adverts_sent']}, received {c['adverts_received']}; "
                 f"transitions {c['transitions']}, became master {c['became_master']}, faults {c['faults']}; "
                 f"reloads {a['reloads']} ({a['reload_failures']} refused)")
    drops = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "none"
    lines.append(f"drops     {drops}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    answer = control.request(_socket_path(args), "status")
    answer.pop("ok", None)
    print(json.dumps(answer, indent=2) if args.json else format_status(answer))
    return 0


def cmd_handover(args: argparse.Namespace) -> int:
    print(control.request(_socket_path(args), "handover")["message"])
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    print(control.request(_socket_path(args), "reset")["message"])
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    print(control.request(_socket_path(args), "maintenance", on=args.mode == "on")["message"])
    return 0


def cmd_fence_peer(args: argparse.Namespace) -> int:
    """DRBD's fence-peer handler: outdate the peer through the agents' peer channel."""
    resource = os.environ.get("DRBD_RESOURCE", "?")
    try:
        answer = control.request(_socket_path(args), "fence-peer")
    except (control.ControlError, OSError) as e:
        print(f"fence-peer {resource}: the local agent does not answer ({e}); not fencing", file=sys.stderr)
        return 1
    result, code = str(answer.get("answer")), fence_exit_code(answer)
    if code != 1:
        said = "the peer does not answer and a witness answers us: peer taken as dead" \
            if result == "unreachable" else f"peer {result}"
        print(f"fence-peer {resource}: {said}")
    elif result == "unreachable":
        print(f"fence-peer {resource}: the peer does not answer and the witnesses do not vouch for us "
              f"({answer.get('witness_detail') or 'no detail'}): we may be the isolated node; not fencing",
              file=sys.stderr)
    else:
        print(f"fence-peer {resource}: the peer could not outdate its disk: {result}", file=sys.stderr)
    return code


def _load(path: str) -> configmod.Config | None:
    """The config, or None after saying on stderr why it is invalid."""
    try:
        return configmod.load(path)
    except configmod.ConfigError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    if cfg is None:
        return 2
    v = cfg.vrrp
    print(f"{args.file}: valid (VRRPv{v.version} VRID {v.vrid} on {v.interface}, priority {v.priority}, "
          f"VIPs {', '.join(str(x) for x in v.vips)})")
    return 0


def journal_entries(since: str | None, directory: str | None, unit: str | None) -> list[dict[str, Any]]:
    """Our events from the journal, oldest first (journalctl ORs repeated MESSAGE_ID matches)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise control.ControlError("journalctl not found: history needs systemd's journal")
    argv = [journalctl, "--no-pager", "-o", "json"]
    if directory:
        argv += ["-D", directory]
    if since:
        argv += ["--since", since]
    argv.append(f"_SYSTEMD_UNIT={unit}" if unit else f"SYSLOG_IDENTIFIER={IDENTIFIER}")
    argv += [f"MESSAGE_ID={e.value}" for e in Event]
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
    entries = journal_entries(args.since, args.directory, args.unit)
    if args.json:
        for e in entries:
            print(json.dumps({"time": int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6,
                              "event": names.get(e.get("MESSAGE_ID", ""), "?"),
                              **{k: v for k, v in e.items() if not k.startswith("_")}}))
        return 0
    if not entries:
        print("no failover-agent events in the journal" + (f" since {args.since}" if args.since else ""))
    for e in entries:
        ts = int(e.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        print(f"{_when(ts)}  {names.get(e.get('MESSAGE_ID', ''), '?'):<13} {e.get('MESSAGE', '')}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text(encoding="utf-8")
        result = convert(text, args.instance, source=args.file)
    except (OSError, UnicodeDecodeError) as e:
        print(f"cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    except ImportError_ as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(result.toml)
    else:
        sys.stdout.write(result.toml)
    print(f"vrrp_instance {result.instance}: {len(result.mapped)} option(s) mapped, {len(result.replaced)} "
          f"notify script(s) replaced, {len(result.unmapped)} not mapped (listed as comments)", file=sys.stderr)
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """After the agent died (ExecStopPost=): drop its VIPs so the peer is the only holder."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    try:
        control.request(cfg.agent.control_socket, "status", timeout=2)
        print("failover-agent is running: it manages its VIPs itself; nothing done")
        return 0
    except control.ControlError:
        pass
    removed = asyncio.run(_remove_vips(cfg))
    print(f"removed {', '.join(removed)}" if removed else "no VIP of ours was present")
    return 0


async def _remove_vips(cfg: configmod.Config) -> list[str]:
    from pyroute2 import AsyncIPRoute

    from vrrp.vip import LinkInfo, VipHolder

    async with AsyncIPRoute() as ipr:
        try:
            info = await LinkInfo.query(ipr, cfg.vrrp.interface, exclude=[v.ip for v in cfg.vrrp.vips])
        except LookupError:
            return []
        keep = {info.primary} if info.primary else set()
        return [str(v) for v in await VipHolder(ipr, info.index, cfg.vrrp.vips, keep=keep).remove()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failoverctl", description="Inspect and steer failover-agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_socket(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", default=str(configmod.DEFAULT_PATH), help="where the socket is configured")
        p.add_argument("--socket", help="control socket path (overrides --config)")
        return p

    p = with_socket(sub.add_parser("status", help="state, master, VIPs, counters of the running agent"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = with_socket(sub.add_parser("fence-peer", help="DRBD fence-peer handler: exit 4 outdated, 5 peer dead, "
                                                      "6 peer Primary, 1 not fenced"))
    p.set_defaults(func=cmd_fence_peer)
    p = sub.add_parser("history", help="the failover story of this node, from the journal")
    p.add_argument("--since", help="journalctl time spec, e.g. '1 hour ago' or '2026-11-21 02:00'")
    p.add_argument("--json", action="store_true")
    p.add_argument("--unit", help="read entries of this systemd unit instead of by identifier")
    p.add_argument("--directory", "-D", help="read journal files from this directory")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("file", nargs="?", default=str(configmod.DEFAULT_PATH))
    p.set_defaults(func=cmd_check_config)
    p = with_socket(sub.add_parser("handover", help="planned switch: release in order, then priority 0"))
    p.set_defaults(func=cmd_handover)
    p = with_socket(sub.add_parser("maintenance", help="on: stay backup and never take over; off: normal"))
    p.add_argument("mode", choices=("on", "off"))
    p.set_defaults(func=cmd_maintenance)
    p = with_socket(sub.add_parser("reset", help="end a FAULT hold-down now, once the cause is fixed"))
    p.set_defaults(func=cmd_reset)
    p = sub.add_parser("import-keepalived", help="convert a keepalived.conf vrrp_instance to TOML")
    p.add_argument("file")
    p.add_argument("--instance", help="which vrrp_instance (default: the first)")
    p.add_argument("--output", "-o", help="write the TOML here instead of stdout")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("cleanup", help="remove this node's VIPs after the agent died (ExecStopPost)")
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
