"""`failoverctl import-keepalived`: a keepalived.conf vrrp_instance as our TOML.

Migration is where admins decide whether to trust a tool, so the converter is explicit:
every keepalived option it sees is either mapped (and the TOML says from what), replaced by
something failover-agent does itself (notify scripts), or listed as not mapped with the
reason. The result is checked with our own config parser before it is printed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

from agent import config as configmod

_TOKEN = re.compile(r'"([^"]*)"|(\{|\})|([^\s{}"]+)')


class ImportError_(Exception):
    """The keepalived file cannot be converted (syntax, no instance, unusable values)."""


@dataclass
class Node:
    keyword: str
    args: list[str]
    children: list[Node] | None = None
    line: int = 0


def parse(text: str) -> list[Node]:
    """keepalived's syntax: keyword args..., optional { block }, comments after # or !."""
    root: list[Node] = []
    stack: list[list[Node]] = [root]
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"(?<![^\s])[#!]", raw, maxsplit=1)[0]
        current: Node | None = None
        for quoted, brace, word in _TOKEN.findall(line):
            if brace == "{":
                if current is None:
                    # a block opening on its own line belongs to the previous statement
                    if not stack[-1] or stack[-1][-1].children is not None:
                        raise ImportError_(f"line {number}: '{{' without a keyword")
                    current = stack[-1][-1]
                current.children = []
                stack.append(current.children)
                current = None
            elif brace == "}":
                if len(stack) == 1:
                    raise ImportError_(f"line {number}: unmatched '}}'")
                stack.pop()
                current = None
            elif current is None:
                current = Node(quoted or word, [], None, number)
                stack[-1].append(current)
            else:
                current.args.append(quoted if quoted else word)
    if len(stack) != 1:
        raise ImportError_("unterminated block: a '{' has no matching '}'")
    return root


NOTIFY = {"notify_master", "notify_backup", "notify_fault", "notify_stop", "notify", "notify_deleted",
          "notify_master_rx_lower_pri"}
NOT_MAPPED = {
    "state": "failover-agent starts every node as BACKUP and lets priority decide, as the RFC does; "
             "keepalived's 'state MASTER' only shortens the first election",
    "track_interface": "the VRRP interface itself is tracked (FAULT while down); other interfaces and "
                       "reachability checks come with the [track] section",
    "track_script": "use [[track.check]] argv checks (argument lists, no shell) once available",
    "track_process": "not supported; use a [[track.check]]",
    "track_file": "not supported; use a [[track.check]]",
    "unicast_src_ip": "adverts always come from the interface's own primary address",
    "mcast_src_ip": "adverts always come from the interface's own primary address",
    "use_vmac": "virtual MAC interfaces are not supported; gratuitous ARP moves clients instead",
    "vmac_xmit_base": "virtual MAC interfaces are not supported",
    "virtual_routes": "routes are not managed; keep them static or in the network config",
    "virtual_rules": "policy rules are not managed",
    "smtp_alert": "alerts: read the journal (failoverctl history) or scrape the metrics endpoint",
    "dont_track_primary": "the VRRP interface is always tracked",
    "accept": "VIPs are plain local addresses: the kernel accepts traffic to them",
    "no_accept": "VIPs are plain local addresses: the kernel accepts traffic to them",
    "garp_lower_prio_delay": "no equivalent",
    "garp_lower_prio_repeat": "no equivalent",
    "lvs_sync_daemon_interface": "LVS is not part of failover-agent",
    "debug": "use failover-agent --verbose",
    "native_ipv6": "IPv6 VRRP is not supported",
    "strict_mode": "failover-agent is always strict on receive",
    "skip_check_adv_addr": "adverts with a different address list are accepted",
    "version": "",  # handled
}


@dataclass
class Result:
    toml: str
    instance: str
    mapped: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


def _one(node: Node, what: str) -> str:
    if len(node.args) != 1:
        raise ImportError_(f"line {node.line}: {node.keyword} takes one {what}, got {node.args!r}")
    return node.args[0]


def _number(node: Node) -> float:
    """A finite number: float() also reads 'nan' and 'inf', which no keepalived option means (and int() refuses)."""
    text = _one(node, "number")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ImportError_(f"line {node.line}: {node.keyword} {text!r} is not a number")
    return value


def _unsigned(node: Node) -> int:
    """What keepalived reads as a count (read_unsigned_strvec): a whole number in 0..UINT_MAX; no huge int
    reaches the arithmetic below, where it would not convert to float."""
    value = _number(node)
    if value != int(value) or not 0 <= value <= 0xFFFFFFFF:
        raise ImportError_(f"line {node.line}: {node.keyword} {node.args[0]!r} is not a whole number in 0..4294967295")
    return int(value)


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return f"{v:g}" if isinstance(v, float) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def convert(text: str, instance: str | None = None, source: str = "keepalived.conf") -> Result:
    tree = parse(text)
    instances = [n for n in tree if n.keyword == "vrrp_instance" and n.children is not None]
    if not instances:
        raise ImportError_("no vrrp_instance block found")
    names = [(n.args[0] if n.args else "?") for n in instances]
    if instance is None:
        chosen = instances[0]
    else:
        matches = [n for n in instances if n.args[:1] == [instance]]
        if not matches:
            raise ImportError_(f"no vrrp_instance {instance!r} (found: {', '.join(names)})")
        chosen = matches[0]
    name = chosen.args[0] if chosen.args else "?"
    res = Result("", name)
    res.others = [n for n in names if n != name]
    values: dict[str, object] = {}
    garp_delay: float | None = None
    garp_repeat: int | None = None

    for node in tree:
        if node.keyword == "global_defs" and node.children:
            for g in node.children:
                if g.keyword == "vrrp_version":
                    values["version"] = int(_number(g))
                    res.mapped.append(f"global_defs vrrp_version {g.args[0]} -> version")
        elif node.keyword in ("vrrp_sync_group", "vrrp_script", "virtual_server", "include"):
            res.unmapped.append(f"{node.keyword} {' '.join(node.args)}: not converted (one VRRP instance "
                                "per config; scripts become [[track.check]] argv checks)")

    assert chosen.children is not None
    for node in chosen.children:
        k = node.keyword
        if k == "interface":
            values["interface"] = _one(node, "interface name")
            res.mapped.append("interface")
        elif k == "virtual_router_id":
            values["vrid"] = int(_number(node))
            res.mapped.append("virtual_router_id -> vrid")
        elif k == "priority":
            values["priority"] = int(_number(node))
            res.mapped.append("priority")
        elif k == "advert_int":
            values["advert_interval"] = _number(node)
            res.mapped.append("advert_int -> advert_interval")
        elif k == "version":
            values["version"] = int(_number(node))
            res.mapped.append("version")
        elif k == "nopreempt":
            values["preempt"] = False
            res.mapped.append("nopreempt -> preempt = false")
        elif k == "preempt":
            values["preempt"] = True
            res.mapped.append("preempt")
        elif k == "preempt_delay":
            values["preempt_delay"] = _number(node)
            res.mapped.append("preempt_delay")
        elif k == "authentication":
            kind = next((c.args[0] for c in node.children or [] if c.keyword == "auth_type" and c.args), "PASS")
            password = next((c.args[0] for c in node.children or [] if c.keyword == "auth_pass" and c.args), "")
            if kind.upper() != "PASS":
                res.unmapped.append(f"authentication auth_type {kind}: only PASS exists here (AH is not supported)")
            elif password:
                values["auth_pass"] = password[:8]
                res.mapped.append("authentication PASS -> auth_pass (clear text on the wire, no security)")
        elif k in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
            vips = values.setdefault("vips", [])
            assert isinstance(vips, list)
            for entry in node.children or []:
                addr = entry.keyword
                try:
                    IPv4Interface(addr)
                except ValueError:
                    res.unmapped.append(f"{k} {addr}: not an IPv4 address (IPv6 VRRP is not supported)")
                    continue
                vips.append(addr)
                opts = entry.args
                if "dev" in opts and opts.index("dev") + 1 < len(opts):
                    dev = opts[opts.index("dev") + 1]
                    if dev != values.get("interface", dev):
                        res.unmapped.append(f"{k} {addr} dev {dev}: every VIP lives on the VRRP interface")
                if any(o in opts for o in ("label", "scope", "brd", "broadcast")):
                    res.unmapped.append(f"{k} {addr} {' '.join(opts)}: label/scope/broadcast options dropped")
            res.mapped.append(f"{k} -> vips")
        elif k == "unicast_peer":
            peers = []
            for entry in node.children or []:
                try:
                    peers.append(str(IPv4Address(entry.keyword)))
                except ValueError:
                    res.unmapped.append(f"unicast_peer {entry.keyword}: not an IPv4 address")
            values["unicast_peers"] = peers
            res.mapped.append("unicast_peer -> unicast_peers")
        elif k == "garp_master_delay":
            garp_delay = _number(node)
        elif k == "garp_master_repeat":
            garp_repeat = _unsigned(node)
        elif k == "garp_master_refresh":
            values["garp_refresh"] = _number(node)
            res.mapped.append("garp_master_refresh -> garp_refresh")
        elif k in NOTIFY:
            res.replaced.append(f"{k} {' '.join(node.args)}: replaced by the ordered acquire/release chain "
                                "(VIP now; [drbd], [filesystem], [nfs] sections for storage)")
        elif NOT_MAPPED.get(k):
            res.unmapped.append(f"{k} {' '.join(node.args)}: {NOT_MAPPED[k]}".replace("  ", " "))
        else:
            res.unmapped.append(f"{k} {' '.join(node.args)}: unknown to the importer, not converted".replace("  ", " "))

    if garp_repeat is not None or garp_delay is not None:
        # keepalived: `repeat` GARPs at once and `repeat` more after `delay` s; here: `count`
        # rounds spread `interval` apart, so the same number of GARPs over the same span
        repeat = garp_repeat if garp_repeat is not None else 5
        delay = garp_delay if garp_delay is not None else 5.0
        values["garp_count"] = min(100, max(1, 2 * repeat))
        values["garp_interval"] = round(max(0.001, min(10.0, delay / max(1, 2 * repeat - 1))), 3)
        res.mapped.append(f"garp_master_repeat {repeat} / garp_master_delay {delay:g} -> garp_count "
                          f"{values['garp_count']}, garp_interval {values['garp_interval']}")

    order = ["interface", "vrid", "priority", "version", "advert_interval", "preempt", "preempt_delay", "vips",
             "unicast_peers", "auth_pass", "garp_count", "garp_interval", "garp_refresh"]
    lines = [f"# converted from {source}, vrrp_instance {name}, by failoverctl import-keepalived", "[vrrp]"]
    lines += [f"{k} = {_toml(values[k])}" for k in order if k in values]
    comments = []
    for title, items in (("replaced", res.replaced), ("not mapped", res.unmapped)):
        comments += [f"# {title}: {item}" for item in items]
    if res.others:
        comments.append(f"# other vrrp_instance blocks not converted: {', '.join(res.others)} "
                        "(use --instance NAME)")
    res.toml = "\n".join(lines[:1] + comments + lines[1:]) + "\n"
    try:
        configmod.parse(res.toml, f"{source} ({name})")
    except configmod.ConfigError as e:
        raise ImportError_(f"the converted config is not valid: {e.key}: {e.reason}") from None
    return res
