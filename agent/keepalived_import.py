"""`failoverctl import-keepalived`: a keepalived.conf vrrp_instance as our TOML.

Migration is where admins decide whether to trust a tool, so the converter is explicit:
every keepalived option it sees is either mapped (and the TOML says from what), replaced by
something failover-agent does itself, or listed as not mapped with the reason. The result is
checked with our own config parser before it is printed.

A storage pair is the case that must never come out as a quiet VIP-only config: its storage
work hides in notify scripts. So the notify scripts are read (the script file, or the inline
command) and what they do to DRBD, the filesystem and NFS becomes draft [drbd], [filesystem]
and [nfs] sections marked REVIEW; whatever cannot be converted (an unreadable script, a
`drbdadm primary all`, a mount from fstab, a service the agent does not run) is named in
`Result.review`, and the command then exits 3 ("needs review"). `vrrp_script`/`track_script`
become [[track.check]] entries, `include` directives are followed as keepalived follows them.
"""

from __future__ import annotations

import glob as globmod
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from ipaddress import ip_address, ip_interface
from pathlib import Path

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
    file: str = ""


INCLUDES = ("include", "includer", "includem", "includew", "includeb", "includea")
MAX_INCLUDE_DEPTH = 16


def _read_text(path: str) -> str:
    if "\0" in path:  # the kernel cannot even be asked: say so as the OSError a missing file gives
        raise OSError(f"{path.replace(chr(0), '<NUL>')}: a path cannot contain a NUL byte")
    return Path(path).read_text(encoding="utf-8")


def _strip_comment(raw: str) -> str:
    return re.split(r"(?<![^\s])[#!]", raw, maxsplit=1)[0]


def brace_expand(pattern: str) -> list[str]:
    """csh-style {a,b} alternatives (nested), in order, as glob(GLOB_BRACE) expands keepalived's include."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    else:
        return [pattern]
    alternatives, depth, current = [], 0, ""
    for c in pattern[start + 1:end]:
        if c == "," and depth == 0:
            alternatives.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        current += c
    alternatives.append(current)
    return [x for alt in alternatives for x in brace_expand(pattern[:start] + alt + pattern[end + 1:])]


def _where(file: str, line: int, main: str) -> str:
    return f"line {line}" if file == main else f"{file} line {line}"


def _lines(text: str, file: str, main: str, notes: list[str], read: Callable[[str], str],
           stack: tuple[str, ...] = ()) -> Iterator[tuple[str, int, str]]:
    """(file, line number, line without comment), with every include expanded in place.

    keepalived.conf(5): an included FILENAME may hold wildcards and {a,b} braces, and a
    relative name is relative to the directory of the file that includes it.
    """
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        words = line.split()
        if not words or words[0] not in INCLUDES:
            yield file, number, line
            continue
        where = _where(file, number, main)
        if len(words) < 2:
            raise ImportError_(f"{where}: {words[0]} needs a file name")
        pattern = line.split(None, 1)[1].strip().strip('"')
        base = os.path.dirname(file) if os.path.dirname(file) else "."
        matches: list[str] = []
        for alt in brace_expand(pattern):
            full = alt if os.path.isabs(alt) else os.path.join(base, alt)
            matches += [m for m in sorted(globmod.glob(full)) if m not in matches]
        if not matches:
            notes.append(f"{words[0]} {pattern} ({where}): no file matches it (keepalived skips it too)")
        for match in matches:
            real = os.path.realpath(match)
            if real in stack or len(stack) >= MAX_INCLUDE_DEPTH:
                raise ImportError_(f"{where}: {words[0]} {pattern}: {match} includes itself, or includes nest "
                                   f"deeper than {MAX_INCLUDE_DEPTH}")
            try:
                sub = read(match)
            except (OSError, UnicodeDecodeError) as e:
                raise ImportError_(f"{where}: cannot read the included {match}: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
            yield from _lines(sub, match, main, notes, read, (*stack, real))


def parse(text: str, source: str = "keepalived.conf", notes: list[str] | None = None,
          read: Callable[[str], str] = _read_text) -> list[Node]:
    """keepalived's syntax: keyword args..., optional { block }, comments after # or !, includes."""
    root: list[Node] = []
    stack: list[list[Node]] = [root]
    sink = notes if notes is not None else []
    for file, number, line in _lines(text, source, source, sink, read, (os.path.realpath(source),)):
        current: Node | None = None
        for quoted, brace, word in _TOKEN.findall(line):
            if brace == "{":
                if current is None:
                    # a block opening on its own line belongs to the previous statement
                    if not stack[-1] or stack[-1][-1].children is not None:
                        raise ImportError_(f"{_where(file, number, source)}: '{{' without a keyword")
                    current = stack[-1][-1]
                current.children = []
                stack.append(current.children)
                current = None
            elif brace == "}":
                if len(stack) == 1:
                    raise ImportError_(f"{_where(file, number, source)}: unmatched '}}'")
                stack.pop()
                current = None
            elif current is None:
                current = Node(quoted or word, [], None, number, file)
                stack[-1].append(current)
            else:
                current.args.append(quoted if quoted else word)
    if len(stack) != 1:
        raise ImportError_("unterminated block: a '{' has no matching '}'")
    return root


NOTIFY = ("notify_master", "notify_backup", "notify_fault", "notify_stop", "notify", "notify_deleted",
          "notify_master_rx_lower_pri")
#: global_defs keywords naming a script that receives every state change, like `notify`
GLOBAL_NOTIFY = ("notify_fifo_script", "vrrp_notify_fifo_script")
NOT_MAPPED = {
    "state": "failover-agent starts every node as BACKUP and lets priority decide, as the RFC does; "
             "keepalived's 'state MASTER' only shortens the first election",
    "track_interface": "the VRRP interface itself is tracked (FAULT while down); for other links use "
                       "[track] witnesses or a [[track.check]]",
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
    "native_ipv6": "an instance with IPv6 VIPs is an IPv6 (VRRPv3) instance already",
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
    #: drafted or adjusted values the admin should look at (REVIEW comments; exit 0)
    warnings: list[str] = field(default_factory=list)
    #: what could not be converted (NEEDS REVIEW comments; `failoverctl import-keepalived` exits 3)
    review: list[str] = field(default_factory=list)
    checks: int = 0

    @property
    def secret(self) -> bool:
        """The TOML holds a password (auth_pass): write it private."""
        return any(line.startswith("auth_pass = ") for line in self.toml.splitlines())


def _one(node: Node, what: str) -> str:
    if len(node.args) != 1:
        raise ImportError_(f"line {node.line}: {node.keyword} takes one {what}, got {' '.join(node.args) or 'nothing'}")
    return node.args[0]


def _number(node: Node) -> float:
    """A finite number: float() also reads 'nan' and 'inf', which no keepalived option means (and int() refuses)."""
    text = _one(node, "number")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ImportError_(f"line {node.line}: {node.keyword} '{text}' is not a number")
    return value


def _unsigned(node: Node) -> int:
    """What keepalived reads as a count (read_unsigned_strvec): a whole number in 0..UINT_MAX; no huge int
    reaches the arithmetic below, where it would not convert to float."""
    value = _number(node)
    if value != int(value) or not 0 <= value <= 0xFFFFFFFF:
        raise ImportError_(f"line {node.line}: {node.keyword} '{node.args[0]}' is not a whole number in 0..4294967295")
    return int(value)


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return f"{v:g}" if isinstance(v, float) else str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- advert_int ---------------------------------------------------------------------------------
_US = 1_000_000  # keepalived's TIMER_HZ: intervals are kept in microseconds


def keepalived_advert_int(text: str, version: int) -> tuple[float, str]:
    """The interval keepalived 2.2.7 really uses for `advert_int TEXT`, and a warning if it changed it.

    keepalived 2.2.7, keepalived/vrrp/vrrp_parser.c vrrp_adv_handler(): a value outside
    0.01..255 s is reported as not valid and ignored (the default 1 s stays).
    keepalived/vrrp/vrrp.c vrrp_complete_instance(): for VRRPv2 an interval that is not whole
    seconds is logged as "VRRPv2 advertisement interval %fs must be an integer. rounding" and
    rounded half up (adver_int += TIMER_HZ / 2; adver_int -= adver_int % TIMER_HZ), 0 becoming
    1 s; for VRRPv3 the same is done in units of 10 ms (0 becoming 10 ms) and anything from
    40.96 s up becomes 40.95 s.
    """
    try:
        us = int(Decimal(text) * _US)
    except (InvalidOperation, ValueError, OverflowError):
        raise ImportError_(f"advert_int '{text}' is not a number") from None
    if not _US // 100 <= us <= 255 * _US:
        return 1.0, f"advert_int {text}: keepalived ignores a value outside 0.01..255 s and uses 1 s"
    unit, top = (_US, 255 * _US) if version == 2 else (_US // 100, 4095 * _US // 100)
    if us > top:
        return top / _US, f"advert_int {text}: keepalived uses {top / _US:g} s for VRRPv{version}"
    if us % unit == 0:
        return us / _US, ""
    rounded = max(unit, (us + unit // 2) - (us + unit // 2) % unit)
    what = "whole seconds" if version == 2 else "10 ms steps"
    return rounded / _US, (f"advert_int {text}: VRRPv{version} needs {what}; keepalived 2.2.7 rounds it (half up) "
                           f"to {rounded / _US:g} s, and so does this import")


# -- vrrp_script / track_script -----------------------------------------------------------------
_SHELL = re.compile(r"[|&;<>()$`*?\[\]~]")
#: where a check program given without a path is looked up (keepalived's scripts run from here)
SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _which(name: str) -> str | None:
    return None if "\0" in name else shutil.which(name, path=SCRIPT_PATH)


@dataclass
class _Script:
    """A vrrp_script block with keepalived's defaults (keepalived/vrrp/vrrp_data.c alloc_vrrp_script)."""

    name: str
    script: str = ""
    argv: list[str] = field(default_factory=list)
    interval: float = 1.0
    timeout: float = 0.0  # 0: keepalived uses the interval
    rise: int = 1
    fall: int = 1
    weight: int = 0
    reverse: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class _Check:
    argv: list[str]
    interval: float
    timeout: float
    rise: int
    fall: int
    weight: int
    raised: int  # a positive keepalived weight, moved into the base priority
    comments: list[str]


def _int(node: Node, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ImportError_(f"line {node.line}: {node.keyword} '{text}' is not an integer") from None


def _script(node: Node, res: Result, which: Callable[[str], str | None]) -> _Script | None:
    """One vrrp_script block; None (and a review item) when it cannot run as a [[track.check]]."""
    s = _Script(node.args[0] if node.args else "?")
    for c in node.children or []:
        if c.keyword == "script":
            s.script = " ".join(c.args)
        elif c.keyword in ("interval", "timeout"):
            setattr(s, c.keyword, float(max(1, int(_number(c)))))  # keepalived: whole seconds, 0 becomes 1
        elif c.keyword in ("rise", "fall"):
            setattr(s, c.keyword, _int(c, _one(c, "integer")))
        elif c.keyword == "weight" and c.args:
            s.weight, s.reverse = _int(c, c.args[0]), c.args[1:2] == ["reverse"]
        elif c.keyword == "user":
            s.notes.append(f"keepalived ran it as user {' '.join(c.args)}; [[track.check]] runs as root")
        elif c.keyword == "init_fail":
            s.notes.append("init_fail: here every check counts as failed until it passed `rise` times")
        else:
            res.unmapped.append(f"vrrp_script {s.name} {c.keyword}: unknown to the importer, not converted")
    if not s.script:
        res.review.append(f"vrrp_script {s.name}: has no script line (keepalived removes it)")
        return None
    if _SHELL.search(s.script):
        res.review.append(f"vrrp_script {s.name}: '{s.script}' uses shell syntax, which [[track.check]] does not "
                          "run (no shell): put it in an executable script and give its path")
        return None
    try:
        s.argv = shlex.split(s.script)
    except ValueError as e:
        res.review.append(f"vrrp_script {s.name}: cannot split '{s.script}' into arguments ({e})")
        return None
    if not s.argv[0].startswith("/"):
        found = which(s.argv[0])
        if found is None:
            res.review.append(f"vrrp_script {s.name}: program '{s.argv[0]}' has no absolute path and is not found "
                              f"in {SCRIPT_PATH} on this host; [[track.check]] needs an absolute path")
            return None
        s.notes.append(f"'{s.argv[0]}' resolved to {found} on this host")
        s.argv[0] = found
    return s


def _tracked_checks(tracks: list[tuple[Node, str]], scripts: dict[str, Node], res: Result,
                    which: Callable[[str], str | None]) -> list[_Check]:
    """track_script entries (instance or sync group) of one instance, keepalived's semantics kept.

    keepalived: weight 0 = FAULT after `fall` failures; a negative weight is subtracted while
    the script fails; a positive weight is added while it succeeds. [[track.check]] weights are
    0 or negative, so a positive weight W becomes -W and the caller raises the base priority by W:
    success gives base + W as before, failure base.
    """
    out: list[_Check] = []
    for entry, owner in tracks:
        node = scripts.get(entry.keyword)
        if node is None:
            res.review.append(f"track_script {entry.keyword} ({owner}): no vrrp_script {entry.keyword} is defined")
            continue
        s = _script(node, res, which)
        if s is None:
            continue
        weight, reverse = s.weight, s.reverse
        if entry.args[:1] == ["weight"] and len(entry.args) >= 2:  # the instance overrides the script's weight
            weight = _int(entry, entry.args[1])
            reverse = entry.args[2:3] == ["reverse"] or (reverse and entry.args[2:3] != ["noreverse"])
        if reverse:
            res.review.append(f"track_script {s.name} ({owner}): 'weight {weight} reverse' (priority changed while "
                              "the script succeeds) has no [[track.check]] equivalent")
            continue
        notes = [f"from vrrp_script {s.name} (track_script of {owner}): '{s.script}'", *s.notes]
        ka_timeout = s.timeout or s.interval
        timeout = ka_timeout
        if timeout >= s.interval:
            timeout = round(s.interval * 0.9, 3)
            notes.append(f"keepalived let it run up to {ka_timeout:g} s; [[track.check]] needs a timeout below "
                         f"the interval: {timeout:g} s")
        if weight > 0:
            notes.append(f"keepalived weight +{weight} (added while it succeeds) -> weight -{weight} with the base "
                         f"priority raised by {weight}")
        out.append(_Check(s.argv, s.interval, timeout, min(100, s.rise), min(100, s.fall), -abs(weight),
                          max(0, weight), notes))
    return out


# -- notify scripts: what they do to storage ----------------------------------------------------
#: programs whose work the agent does itself; anything else storage-like in a notify script is named
STORAGE_TOOLS = {"drbdsetup", "drbdmeta", "rpc.nfsd", "rpc.mountd", "ganesha.nfsd", "fsck", "e2fsck", "xfs_repair",
                 "vgchange", "lvchange", "vgimport", "vgexport", "zpool", "zfs", "multipath", "iscsiadm", "kpartx"}
NFS_UNITS = {"nfs-server": "kernel", "nfs-kernel-server": "kernel", "nfs-ganesha": "ganesha"}
#: units the NFS backend starts or needs anyway
NFS_HELPER_UNITS = {"rpcbind", "rpc-statd", "rpc-statd-notify", "nfs-mountd", "nfs-idmapd", "nfsdcld", "rpc-gssd",
                    "rpc-svcgssd", "nfs-blkmap", "nfs-config", "nfs-utils", "nfs-common", "proc-fs-nfsd",
                    "var-lib-nfs-rpc_pipefs"}
_SERVICE_VERBS = {"start", "stop", "restart", "try-restart", "reload-or-restart", "force-reload", "reload"}
_PREFIX_WORDS = {"if", "then", "else", "elif", "do", "while", "until", "exec", "nohup", "time", "command", "builtin",
                 "local", "export", "readonly", "declare", "typeset", "!", "{", "}"}
_COMPOUND = {"fi", "done", "esac", "case", "for", "select", "function", "return", "exit", "shift", "set", "trap"}
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
EXPORTS_FILES = ("/etc/exports", "/etc/exports.d/*.exports")
STATE_TARGET = "/var/lib/nfs"


@dataclass
class _Mount:
    device: str
    mountpoint: str
    fstype: str
    options: list[str]
    origin: str


@dataclass
class Storage:
    """What the notify scripts do to DRBD, the filesystem and NFS, gathered as facts."""

    resources: dict[str, str] = field(default_factory=dict)
    all_resources: str = ""
    mounts: list[_Mount] = field(default_factory=list)
    exports: list[dict[str, str]] = field(default_factory=list)
    exports_from_files: str = ""
    backends: dict[str, str] = field(default_factory=dict)
    via_systemd: bool = False
    state_bind: tuple[str, str] | None = None
    commands: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    review: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.resources or self.all_resources or self.mounts or self.exports or self.exports_from_files
                    or self.backends or self.state_bind)


def _logical_script_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, numbered by their first physical line."""
    pending, first = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            first = number
        if line.endswith("\\") and not line.lstrip().startswith("#"):
            pending += line[:-1] + " "
            continue
        yield first, pending + line
        pending = ""
    if pending:
        yield first, pending


def simple_commands(text: str) -> Iterator[tuple[int, list[str] | None, str]]:
    """(line, argv, source line) of every simple command of a shell text; argv None if it cannot be split.

    Not a shell: just enough to find the commands a notify script runs in sequences, lists,
    pipelines, if/case bodies and after redirections; variables are resolved from plain
    assignments met earlier (RES=r0 ... drbdadm primary $RES).
    """
    env: dict[str, str] = {}
    for number, line in _logical_script_lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:
            yield number, None, line.strip()
            continue
        commands: list[list[str]] = [[]]
        skip_next, parens = False, 0
        for tok in tokens:
            if skip_next:
                skip_next = False
                continue
            if tok and all(c in "();<>|&" for c in tok):
                if "<" in tok or ">" in tok:
                    if commands[-1] and commands[-1][-1].isdigit():
                        commands[-1].pop()  # 2>/dev/null: the fd number belongs to the redirection
                    skip_next = True  # the file or fd it redirects to
                    continue
                parens += tok.count("(")
                if ")" in tok and parens == 0:
                    commands[-1] = []  # `MASTER)`: a case pattern, not a command
                parens = max(0, parens - tok.count(")"))
                commands.append([])
                continue
            commands[-1].append(tok)
        for cmd in commands:
            argv = _strip_prefixes(cmd, env)
            if argv:
                yield number, argv, line.strip()


def _strip_prefixes(cmd: list[str], env: dict[str, str]) -> list[str]:
    argv = list(cmd)
    while argv:
        word = argv[0]
        assign = _ASSIGN.match(word)
        if word in _COMPOUND:
            return []
        if word in _PREFIX_WORDS:
            argv.pop(0)
        elif word == "sudo":
            argv.pop(0)
            while argv and argv[0].startswith("-"):
                argv.pop(0)
        elif word == "timeout":
            argv.pop(0)
            while argv and (argv[0].startswith("-") or argv[0][:1].isdigit()):
                argv.pop(0)
        elif assign:
            if all(_ASSIGN.match(w) for w in argv):
                for w in argv:
                    m = _ASSIGN.match(w)
                    assert m is not None
                    env[m.group(1)] = _substitute(m.group(2), env)
                return []
            argv.pop(0)
        else:
            break
    return [_substitute(a, env) for a in argv]


def _substitute(word: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), word)


def _unresolved(argv: Sequence[str]) -> bool:
    return any("$" in a or "`" in a for a in argv)


def _drbdadm(args: list[str], origin: str, cmdline: str, st: Storage) -> None:
    words: list[str] = []
    it = iter(args)
    for a in it:
        if a in ("-c", "--config-file", "-s", "--drbdsetup", "-m", "--drbdmeta"):
            next(it, None)
        elif not a.startswith("-"):
            words.append(a)
    if not words:
        return
    action, names = words[0], words[1:]
    for name in names:
        if name == "all":
            st.all_resources = st.all_resources or f"{origin}: `{cmdline}`"
        else:
            st.resources.setdefault(name.split("/")[0], origin)
    if action == "primary" and any(a in ("--force", "--overwrite-data-of-peer") for a in args):
        st.warnings.append(f"{origin}: `{cmdline}`: the agent never forces a promotion (Split-brain guard)")
    elif action in ("connect", "disconnect", "outdate", "invalidate", "invalidate-remote", "up", "down", "adjust"):
        st.warnings.append(f"{origin}: `{cmdline}`: not done by the agent, whose split-brain guard and fence-peer "
                           "handler decide instead")


def _mount(args: list[str], origin: str, cmdline: str, st: Storage) -> None:
    fstype, options, positional, bind = "", [], [], False
    i = 0
    while i < len(args):
        a = args[i]
        value = args[i + 1] if i + 1 < len(args) else ""
        if a in ("-t", "--types", "-o", "--options"):
            if a in ("-t", "--types"):
                fstype = value
            else:
                options += value.split(",")
            i += 2
            continue
        if a.startswith(("--types=", "--options=")):
            key, _, v = a.partition("=")
            if key == "--types":
                fstype = v
            else:
                options += v.split(",")
        elif a.startswith("-t") and len(a) > 2:
            fstype = a[2:]
        elif a.startswith("-o") and len(a) > 2:
            options += a[2:].split(",")
        elif a in ("-B", "--bind", "-R", "--rbind"):
            bind = True
        elif a in ("-a", "--all"):
            st.review.append(f"{origin}: `{cmdline}`: mounts everything in /etc/fstab; name the replicated "
                             "filesystem in [filesystem]")
            return
        elif a in ("-r", "--read-only"):
            options.append("ro")
        elif not a.startswith("-"):
            positional.append(a)
        i += 1
    if "bind" in options or "rbind" in options:
        bind = True
    options = [o for o in options if o and o not in ("defaults", "bind", "rbind")]
    if bind:
        if len(positional) == 2 and positional[1].rstrip("/") == STATE_TARGET:
            st.state_bind = (positional[0], origin)
            st.commands.append(cmdline)
        else:
            st.review.append(f"{origin}: `{cmdline}`: a bind mount the agent does not make (it binds only the NFS "
                             f"state folder onto {STATE_TARGET})")
        return
    if len(positional) != 2:
        st.review.append(f"{origin}: `{cmdline}`: device or mountpoint comes from /etc/fstab; write device, "
                         "mountpoint, fstype and options into [filesystem]")
        return
    if not fstype:
        fstype = "ext4"
        st.warnings.append(f"{origin}: `{cmdline}` gives no -t: fstype = \"ext4\" assumed (check with blkid)")
    st.mounts.append(_Mount(positional[0], positional[1], fstype, options, origin))
    st.commands.append(cmdline)


def _exportfs(args: list[str], origin: str, cmdline: str, st: Storage) -> None:
    options: str | None = None
    flags: set[str] = set()
    targets: list[str] = []
    it = iter(args)
    for a in it:
        if a == "-o":
            options = next(it, "")
        elif a.startswith("-o"):
            options = a[2:]
        elif a.startswith("-"):
            flags |= set(a[1:])
        else:
            targets.append(a)
    if "u" in flags:
        st.commands.append(cmdline)  # withdrawing: the agent does that when it stops NFS
        return
    for target in targets:
        clients, _, path = target.rpartition(":")
        if not clients or not path.startswith("/"):
            st.review.append(f"{origin}: `{cmdline}`: '{target}' is not CLIENT:/PATH")
            continue
        if options is None:
            st.warnings.append(f"{origin}: `{cmdline}` gives no -o: exportfs exports read-only then (options \"ro\")")
        st.exports.append({"path": path, "clients": clients, "options": options or "ro"})
    if not targets and flags & {"a", "r"}:
        st.exports_from_files = st.exports_from_files or origin
    st.commands.append(cmdline)


def _service(verb: str, unit: str, origin: str, cmdline: str, st: Storage) -> None:
    if verb not in _SERVICE_VERBS:
        return
    name = unit.removesuffix(".service").removesuffix(".mount")
    if name in NFS_UNITS:
        st.backends.setdefault(NFS_UNITS[name], origin)
        st.via_systemd = True
        st.commands.append(cmdline)
    elif name in NFS_HELPER_UNITS:
        st.commands.append(cmdline)
    elif name == "drbd":
        st.warnings.append(f"{origin}: `{cmdline}`: keep drbd.service enabled at boot; the agent only promotes "
                           "and demotes")
    else:
        st.review.append(f"{origin}: `{cmdline}`: the agent runs no other services (only DRBD, the filesystem, "
                         "NFS and the VIP); keep this one out of the failover or run it some other way")


_TOOLS = ("drbdadm", "mount", "umount", "exportfs", "systemctl", "service")
#: programs whose arguments the draft is made of (umount and fuser only release: their arguments are not needed)
_DRAFTED = ("drbdadm", "mount", "exportfs", "systemctl", "service")


def scan_script(text: str, origin: str, st: Storage, read: Callable[[str], str], numbered: bool = True,
                depth: int = 0) -> list[str]:
    """Record what a notify script does to storage; returns the other programs it runs."""
    others: list[str] = []
    for number, argv, line in simple_commands(text):
        where = f"{origin} line {number}" if numbered else origin
        if argv is None:
            if re.search(r"drbd|mount|exportfs|nfs", line):
                st.review.append(f"{where}: `{line}` cannot be split into words (unbalanced quotes?)")
            continue
        prog = os.path.basename(argv[0])
        cmdline = " ".join(argv)
        init_script = argv[0].startswith("/etc/init.d/") and len(argv) > 1
        if (prog in _DRAFTED or prog in STORAGE_TOOLS or init_script) and _unresolved(argv):
            st.review.append(f"{where}: `{cmdline}`: uses a variable the importer cannot resolve")
        elif prog == "drbdadm":
            _drbdadm(argv[1:], where, cmdline, st)
        elif prog == "mount":
            _mount(argv[1:], where, cmdline, st)
        elif prog in ("umount", "fuser"):
            st.commands.append(cmdline)  # release side: the agent unmounts and kills holders (kill_holders)
        elif prog == "exportfs":
            _exportfs(argv[1:], where, cmdline, st)
        elif prog == "systemctl":
            words = [a for a in argv[1:] if not a.startswith("-")]
            for unit in words[1:]:
                _service(words[0], unit, where, cmdline, st)
        elif prog == "service" and len(argv) >= 3:
            _service(argv[2], argv[1], where, cmdline, st)
        elif init_script:
            _service(argv[1], prog, where, cmdline, st)
        elif prog in ("sh", "bash", "dash") and "-c" in argv[1:-1]:
            others += scan_script(argv[argv.index("-c") + 1], where, st, read, False, depth + 1)
        elif prog in STORAGE_TOOLS:
            st.review.append(f"{where}: `{cmdline}`: {prog} is not something the agent runs; "
                             "fold it into DRBD/mount/NFS settings or keep it out of the failover")
        elif argv[0].startswith("/") and depth < 3 and (nested := _script_text(argv[0], read)) is not None:
            others += scan_script(nested, f"{argv[0]} (run by {origin})", st, read, True, depth + 1)
        else:
            others.append(prog)
    return others


def _script_text(path: str, read: Callable[[str], str]) -> str | None:
    """The text of a shell script we can read, None for binaries and unreadable files."""
    try:
        text = read(path)
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.startswith("#!") and "\0" not in text else None


def notify_command(keyword: str, node: Node, st: Storage, res: Result, read: Callable[[str], str],
                   which: Callable[[str], str | None]) -> None:
    """One notify_* line: read its script, or parse the inline command, for storage work.

    keepalived runs the first word of the string as the program (the rest are its arguments);
    an inline command ("drbdadm primary r0", or a shell line) is parsed as it stands.
    """
    if not node.args:
        return
    command = node.args[0]
    label = f"{keyword} {command}"
    words = command.split()
    prog = words[0] if words else ""
    text, origin, numbered = command, f"{keyword} '{command}'", False
    inline = os.path.basename(prog) in (*_TOOLS, "sh", "bash", "dash") or bool(re.search(r"[;&|]", command))
    if not inline:
        found = prog if prog.startswith("/") else which(prog)
        unknown = ("what it does to DRBD, the filesystem or NFS is unknown; run the import where the script is, or "
                   "write [drbd], [filesystem] and [nfs] by hand")
        if found is None:
            res.review.append(f"{label}: {prog} is not found in PATH: {unknown}")
            return
        try:
            script = read(found)
        except UnicodeDecodeError:
            script = "\0"  # a program, not a script
        except OSError as e:
            res.review.append(f"{label}: cannot read {prog} ({e.strerror or e}): {unknown}")
            return
        if "\0" not in script:  # a program (logger, mail...) is taken as the inline command it is
            text, origin, numbered = script, found, True
    before = len(st.commands) + len(st.review) + len(st.warnings)
    others = scan_script(text, origin, st, read, numbered)
    if len(st.commands) + len(st.review) + len(st.warnings) > before:
        res.replaced.append(f"{label}: its storage commands are drafted below as [drbd]/[filesystem]/[nfs] "
                            "(REVIEW them); the agent's ordered chain runs them")
    else:
        ran = ", ".join(dict.fromkeys(others)) or "nothing"
        res.replaced.append(f"{label}: runs no DRBD, mount, export or NFS service command (runs: {ran}); "
                            "nothing to convert")


def exports_from_files(patterns: Sequence[str], read: Callable[[str], str]) -> tuple[list[dict[str, str]], list[str]]:
    """exports(5) entries, one per client, from /etc/exports and /etc/exports.d; also the files read."""
    out: list[dict[str, str]] = []
    files: list[str] = []
    for pattern in patterns:
        for path in sorted(globmod.glob(pattern)):
            try:
                text = read(path)
            except (OSError, UnicodeDecodeError):
                continue
            files.append(path)
            for _, line in _logical_script_lines(text):
                words = line.split("#", 1)[0].split()
                if not words or not words[0].startswith("/"):
                    continue
                default = ""
                for word in words[1:]:
                    if word.startswith("-"):
                        default = word[1:]
                        continue
                    client, _, opts = word.partition("(")
                    out.append({"path": words[0], "clients": client or "*", "options": opts.rstrip(")") or default})
    return out, files


@dataclass
class _Block:
    """One TOML table of the output; commented out (inactive) when our parser refuses it."""

    name: str
    lines: list[str]
    comments: list[str]
    active: bool = True

    def render(self) -> list[str]:
        head = [f"# {c}" for c in self.comments]
        if self.active:
            return head + self.lines
        return [*head, "# NEEDS REVIEW: commented out, see above", *(f"# {line}" for line in self.lines)]


def draft_storage(st: Storage, res: Result, exports_files: Sequence[str], read: Callable[[str], str]) -> list[_Block]:
    """Draft [drbd], [filesystem] and [nfs] tables from the gathered facts, with REVIEW comments."""
    sections: list[_Block] = []
    mount = st.mounts[0] if st.mounts else None
    for other in st.mounts[1:]:
        if (other.device, other.mountpoint) != (st.mounts[0].device, st.mounts[0].mountpoint):
            res.review.append(f"{other.origin}: mounts {other.device} on {other.mountpoint} too; the agent moves one "
                              "filesystem per config")
    resources = list(st.resources)
    by_res = re.match(r"^/dev/drbd/by-res/([^/]+)", mount.device) if mount else None
    if not resources and by_res:
        resources = [by_res.group(1)]
    if len(resources) > 1:
        res.review.append(f"the scripts use several DRBD resources ({', '.join(resources)}); the agent manages one "
                          "per config: keep one in [drbd]")
    if resources and st.all_resources:
        res.warnings.append(f"{st.all_resources}: acts on every DRBD resource; the agent promotes {resources[0]} only")
    if resources:
        origin = st.resources.get(resources[0], "the mounted device")
        sections.append(_Block("drbd", [f"resource = {_toml(resources[0])}"], [
            f"REVIEW: drafted from {origin}; promotion follows the split-brain guard; unknown_peer = \"refuse\" "
            "(default) never takes over a peer DRBD cannot see: see the README's Split-brain guard"]))
    elif st.all_resources:
        res.review.append(f"{st.all_resources}: names no resource ('all'); write [drbd] resource = \"NAME\"")
    elif mount and re.match(r"^/dev/drbd\d+$", mount.device):
        res.review.append(f"{mount.origin}: mounts {mount.device} but no script names its DRBD resource; "
                          "write [drbd] resource = \"NAME\"")
    if mount:
        lines = [f"device = {_toml(mount.device)}", f"mountpoint = {_toml(mount.mountpoint)}",
                 f"fstype = {_toml(mount.fstype)}"]
        if mount.options:
            lines.append(f"options = {_toml(mount.options)}")
        sections.append(_Block("filesystem", lines, [f"REVIEW: drafted from {mount.origin}; a busy unmount kills "
                                                     "the holders after kill_grace (kill_holders = true)"]))
    if len(st.backends) > 1:
        res.review.append(f"the scripts start both kernel nfsd and nfs-ganesha ({', '.join(st.backends.values())}); "
                          "keep one [nfs] backend")
    if not (st.backends or st.exports or st.exports_from_files):
        if st.state_bind:
            res.review.append(f"{st.state_bind[1]}: binds {st.state_bind[0]} onto {STATE_TARGET} but starts no NFS "
                              "server the importer knows")
        return sections
    backend = "ganesha" if "ganesha" in st.backends else "kernel"
    lines = [f"backend = {_toml(backend)}"]
    origins = [o for o in dict.fromkeys([*st.backends.values(), st.exports_from_files]) if o]
    comments = [f"REVIEW: drafted from {', '.join(origins)}"]
    exports = list(st.exports)
    if backend == "kernel" and not exports and (st.exports_from_files or st.backends):
        exports, files = exports_from_files(exports_files, read)
        if files:
            comments.append(f"REVIEW: exports read from {', '.join(files)}; the agent writes its own "
                            "/etc/exports.d/failover-agent.exports: remove them from there")
    if mount:
        top = mount.mountpoint.rstrip("/")
        outside = [e for e in exports if e["path"] != top and not e["path"].startswith(top + "/")]
        for e in outside:
            res.warnings.append(f"export {e['path']} to {e['clients']} is not on the replicated filesystem "
                                f"{mount.mountpoint}: not converted (it stays with exports(5))")
        exports = [e for e in exports if e not in outside]
    if exports:
        lines.append(f"exports = {_toml([dict(e) for e in exports])}")
    elif backend == "ganesha":
        res.review.append(f"nfs-ganesha ({st.backends['ganesha']}): its EXPORT blocks are not read by the importer: "
                          "write them as [nfs] exports (the agent renders ganesha.conf itself)")
    else:
        res.review.append("kernel nfsd: no export of the replicated filesystem found (exportfs -o in the scripts, "
                          "/etc/exports): write [nfs] exports")
    if backend == "kernel":
        if st.via_systemd:
            lines.append('service = "systemd"')
            comments.append("REVIEW: the scripts started nfs-server.service, so service = \"systemd\": set the same "
                            "scope= in /etc/nfs.conf [nfsd] on both nodes and disable the unit at boot; "
                            "service = \"direct\" does both itself")
        else:
            comments.append("REVIEW: nfsd ran outside the scripts: disable nfs-server.service at boot, the agent "
                            "starts nfsd (service = \"direct\")")
    if st.state_bind:
        src = st.state_bind[0].rstrip("/")
        top = mount.mountpoint.rstrip("/") if mount else ""
        if top and src.startswith(top + "/"):
            lines.append(f"state_dir = {_toml(src[len(top) + 1:])}")
        else:
            res.review.append(f"{st.state_bind[1]}: binds {src} onto {STATE_TARGET}, which is not inside the "
                              "replicated filesystem: set [nfs] state_dir by hand")
    else:
        state = f"kernel nfsd's {STATE_TARGET}" if backend == "kernel" else "ganesha's recovery records"
        comments.append(f"REVIEW: state_dir = \".nfs-state\" (default): {state} now move with the data, in that "
                        "folder on the replicated filesystem")
    sections.append(_Block("nfs", lines, comments, active=bool(exports)))
    return sections


# -- the conversion -----------------------------------------------------------------------------
def _block_for(key: str, blocks: list[_Block]) -> _Block | None:
    active = [b for b in blocks if b.active]
    m = re.match(r"^track\.check\[(\d+)\]", key)
    if m:
        checks = [b for b in active if b.name == "track.check"]
        n = int(m.group(1))
        return checks[n - 1] if 0 < n <= len(checks) else None
    top = key.split(".", 1)[0].split("[", 1)[0]
    return next((b for b in active if b.name == top), None)


def _storage_scripts(chosen: Node, groups: list[Node], tree: list[Node]) -> list[tuple[str, Node]]:
    out = [(c.keyword, c) for c in chosen.children or [] if c.keyword in NOTIFY]
    for g in groups:
        out += [(f"vrrp_sync_group {g.args[0] if g.args else '?'} {c.keyword}", c) for c in g.children or []
                if c.keyword in NOTIFY]
    for node in tree:
        if node.keyword == "global_defs":
            out += [(f"global_defs {c.keyword}", c) for c in node.children or [] if c.keyword in GLOBAL_NOTIFY]
    return out


def convert(text: str, instance: str | None = None, source: str = "keepalived.conf", *,
            read: Callable[[str], str] = _read_text, which: Callable[[str], str | None] = _which,
            exports_files: Sequence[str] = EXPORTS_FILES) -> Result:
    """Convert one vrrp_instance; `read`, `which` and `exports_files` are the host, for the tests."""
    return _convert(text, instance, source, read, which, exports_files)[0]


def _convert(text: str, instance: str | None, source: str, read: Callable[[str], str],
             which: Callable[[str], str | None], exports_files: Sequence[str]) -> tuple[Result, list[_Block]]:
    """`convert`, and the output's tables (valid alone) for `convert_all` to nest."""
    include_notes: list[str] = []
    tree = parse(text, source, include_notes, read)
    instances = [n for n in tree if n.keyword == "vrrp_instance" and n.children is not None]
    if not instances:
        raise ImportError_("no vrrp_instance block found")
    names = [(n.args[0] if n.args else "?") for n in instances]
    if instance is None:
        chosen = instances[0]
    else:
        matches = [n for n in instances if n.args[:1] == [instance]]
        if not matches:
            raise ImportError_(f"no vrrp_instance {instance} (found: {', '.join(names)})")
        chosen = matches[0]
    name = chosen.args[0] if chosen.args else "?"
    res = Result("", name)
    res.others = [n for n in names if n != name]
    res.unmapped += include_notes
    values: dict[str, object] = {}
    garp_delay: float | None = None
    garp_repeat: int | None = None
    advert: str | None = None
    scripts = {n.args[0]: n for n in tree if n.keyword == "vrrp_script" and n.args and n.children is not None}
    groups = [g for g in tree if g.keyword == "vrrp_sync_group" and any(
        name in [m.keyword, *m.args] for c in g.children or [] if c.keyword == "group" for m in c.children or [])]
    tracks: list[tuple[Node, str]] = []
    own_version: int | None = None  # the instance's own `version`, not global_defs' vrrp_version

    for node in tree:
        if node.keyword == "global_defs" and node.children:
            for g in node.children:
                if g.keyword == "vrrp_version":
                    values["version"] = int(_number(g))
                    res.mapped.append(f"global_defs vrrp_version {g.args[0]} -> version")
        elif node.keyword == "vrrp_sync_group":
            gname = node.args[0] if node.args else "?"
            if node in groups:
                tracks += [(t, f"vrrp_sync_group {gname}") for c in node.children or [] if c.keyword == "track_script"
                           for t in c.children or []]
                res.mapped.append(f"vrrp_sync_group {gname}: its notify scripts and track_script apply to {name}")
            else:
                res.unmapped.append(f"vrrp_sync_group {gname}: does not hold {name}; not converted")
        elif node.keyword == "virtual_server":
            res.unmapped.append(f"virtual_server {' '.join(node.args)}: LVS is not part of failover-agent")

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
            advert = _one(node, "number")
            res.mapped.append("advert_int -> advert_interval")
        elif k == "version":
            values["version"] = own_version = int(_number(node))
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
                    ip_interface(addr)
                except ValueError:
                    res.unmapped.append(f"{k} {addr}: not an IPv4 or IPv6 address")
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
                    peer = ip_address(entry.keyword)
                except ValueError:
                    res.unmapped.append(f"unicast_peer {entry.keyword}: not an IPv4 or IPv6 address")
                    continue
                if peer.version == 6 and not peer.is_link_local:
                    res.unmapped.append(f"unicast_peer {peer}: IPv6 adverts come from the peer's link-local address; "
                                        "list that one")
                    continue
                peers.append(str(peer))
            values["unicast_peers"] = peers
            res.mapped.append("unicast_peer -> unicast_peers")
        elif k == "garp_master_delay":
            garp_delay = _number(node)
        elif k == "garp_master_repeat":
            garp_repeat = _unsigned(node)
        elif k == "garp_master_refresh":
            values["garp_refresh"] = _number(node)
            res.mapped.append("garp_master_refresh -> garp_refresh")
        elif k == "track_script":
            tracks += [(t, f"vrrp_instance {name}") for t in node.children or []]
        elif k in NOTIFY:
            pass  # read below, with the sync group's and global ones
        elif NOT_MAPPED.get(k):
            res.unmapped.append(f"{k} {' '.join(node.args)}: {NOT_MAPPED[k]}".replace("  ", " "))
        else:
            res.unmapped.append(f"{k} {' '.join(node.args)}: unknown to the importer, not converted".replace("  ", " "))

    vips = values.get("vips")
    if isinstance(vips, list) and vips and ip_interface(str(vips[0])).version == 6:
        # keepalived runs an IPv6 instance as VRRPv3 unless the instance itself says version 2 (a
        # non-standard VRRPv2 over IPv6 that RFC 3768 does not have, refused in strict mode)
        if own_version == 2:
            res.unmapped.append("version 2 with IPv6 VIPs: VRRPv2 (RFC 3768) is IPv4 only; converted to version 3, "
                                "which the keepalived peer must run too")
        if values.get("version") != 3:
            values["version"] = 3
            res.mapped.append("IPv6 VIPs -> version = 3 (as keepalived runs an IPv6 instance)")
    version = int(str(values.get("version", 2)))
    if advert is not None:
        interval, warning = keepalived_advert_int(advert, version)
        values["advert_interval"] = interval
        if warning:
            res.warnings.append(warning)

    if garp_repeat is not None or garp_delay is not None:
        # keepalived: `repeat` GARPs at once and `repeat` more after `delay` s; here: `count`
        # rounds spread `interval` apart, so the same number of GARPs over the same span
        repeat = garp_repeat if garp_repeat is not None else 5
        delay = garp_delay if garp_delay is not None else 5.0
        values["garp_count"] = min(100, max(1, 2 * repeat))
        values["garp_interval"] = round(max(0.001, min(10.0, delay / max(1, 2 * repeat - 1))), 3)
        res.mapped.append(f"garp_master_repeat {repeat} / garp_master_delay {delay:g} -> garp_count "
                          f"{values['garp_count']}, garp_interval {values['garp_interval']}")

    checks = _tracked_checks(tracks, scripts, res, which)
    tracked = {t.keyword for t, _ in tracks}
    res.unmapped += [f"vrrp_script {s}: not tracked by {name} (keepalived runs only tracked scripts); not converted"
                     for s in scripts if s not in tracked]
    raise_by = sum(c.raised for c in checks)
    if raise_by:
        base = int(str(values.get("priority", 100)))
        if base + raise_by > 254:
            res.review.append(f"priority {base} + positive track_script weights {raise_by} exceeds 254: "
                              "set priority and the check weights by hand")
        else:
            values["priority"] = base + raise_by
            res.warnings.append(f"priority {base} raised to {base + raise_by}: keepalived added the positive "
                                "track_script weights while the scripts succeeded; here failing checks subtract them")
    res.checks = len(checks)

    st = Storage()
    for keyword, node in _storage_scripts(chosen, groups, tree):
        notify_command(keyword, node, st, res, read, which)
    res.review += st.review
    res.warnings += st.warnings
    storage_sections = draft_storage(st, res, exports_files, read) if st.found else []

    order = ["interface", "vrid", "priority", "version", "advert_interval", "preempt", "preempt_delay", "vips",
             "unicast_peers", "auth_pass", "garp_count", "garp_interval", "garp_refresh"]
    blocks = [_Block("vrrp", ["[vrrp]", *(f"{k} = {_toml(values[k])}" for k in order if k in values)], [])]
    for check in checks:
        lines = ["[[track.check]]", f"argv = {_toml(check.argv)}", f"interval = {check.interval:g}",
                 f"timeout = {check.timeout:g}", f"fall = {check.fall}", f"rise = {check.rise}",
                 f"weight = {check.weight}"]
        blocks.append(_Block("track.check", lines, check.comments))
    for block in storage_sections:
        block.lines.insert(0, f"[{block.name}]")
    blocks += storage_sections

    while True:  # each refusal comments out one draft section, so this ends
        res.toml = _render(res, source, name, blocks)
        try:
            configmod.parse(res.toml, f"{source} ({name})")
            return res, blocks
        except configmod.ConfigError as e:
            refused = _block_for(e.key, blocks)
            if refused is None or refused.name == "vrrp":
                raise ImportError_(f"the converted config is not valid: {e.key}: {e.reason}") from None
            refused.active = False
            res.review.append(f"draft {e.key}: {e.reason}")


def _render(res: Result, source: str, name: str, blocks: list[_Block]) -> str:
    lines = [f"# converted from {source}, vrrp_instance {name}, by failoverctl import-keepalived"]
    lines += [f"# NEEDS REVIEW: {item}" for item in res.review]
    lines += [f"# REVIEW: {item}" for item in res.warnings]
    for title, items in (("replaced", res.replaced), ("not mapped", res.unmapped)):
        lines += [f"# {title}: {item}" for item in items]
    if res.others:
        lines.append(f"# other vrrp_instance blocks not converted: {', '.join(res.others)} (use --instance NAME)")
    for i, block in enumerate(blocks):
        if i:
            lines.append("")
        lines += block.render()
    return "\n".join(lines) + "\n"


# -- every instance of the file ---------------------------------------------------------------
_HEADER_LINE = re.compile(r"^(# )?\[(\[?)([A-Za-z_.]+)(\]?)\]$")


def convert_all(text: str, source: str = "keepalived.conf", *, read: Callable[[str], str] = _read_text,
                which: Callable[[str], str | None] = _which, exports_files: Sequence[str] = EXPORTS_FILES) -> Result:
    """Every vrrp_instance of the file: one `[[instance]]` table each (named after it), and a
    vrrp_sync_group as the `sync_group` of its members. A file of one vrrp_instance converts as
    `convert` does, to a file of one instance."""
    tree = parse(text, source, [], read)
    names = [n.args[0] if n.args else "?" for n in tree if n.keyword == "vrrp_instance" and n.children is not None]
    if len(names) <= 1:
        return convert(text, None, source, read=read, which=which, exports_files=exports_files)
    if len(set(names)) != len(names):
        raise ImportError_(f"vrrp_instance names repeat ({', '.join(names)}): convert them one by one with --instance")
    parts = [_convert(text, name, source, read, which, exports_files) for name in names]
    group_of = {m: g.args[0] for g in tree if g.keyword == "vrrp_sync_group" and g.args
                for c in g.children or [] if c.keyword == "group"
                for x in c.children or [] for m in [x.keyword, *x.args] if m in names}
    group_of = {m: g for m, g in group_of.items() if len(_members(group_of)[g]) > 1}  # ours need two members
    res = Result("", ", ".join(names), checks=sum(r.checks for r, _ in parts))
    for attr in ("mapped", "replaced", "unmapped", "warnings", "review"):
        items = [f"{r.instance}: {item}" for r, _ in parts for item in getattr(r, attr)]
        setattr(res, attr, list(dict.fromkeys(items)))
    res.mapped += [f"vrrp_sync_group {g} -> sync_group = \"{_table_name(g)}\" in {', '.join(sorted(ms))}"
                   for g, ms in _members(group_of).items()]
    while True:  # each refusal comments out one draft table of one instance, so this ends
        res.toml = _render_all(res, source, [(r.instance, blocks) for r, blocks in parts], group_of)
        try:
            configmod.parse_process(res.toml, f"{source} (every vrrp_instance)")
            return res
        except configmod.ConfigError as e:
            m = re.match(r"^instance\[(\d+)\]\.(.+)$", e.key)
            refused = _block_for(m.group(2), parts[int(m.group(1)) - 1][1]) if m else None
            if refused is None or refused.name == "vrrp":
                raise ImportError_(f"the converted config is not valid: {e.key}: {e.reason}") from None
            refused.active = False
            res.review.append(f"draft {e.key}: {e.reason}")


def _members(group_of: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for member, group in group_of.items():
        out.setdefault(group, []).append(member)
    return out


def _table_name(name: str) -> str:
    """A keepalived name as an instance or group name here (letters, digits, '-', '.', '_')."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)[:64] or "_"


def _nested(block: _Block) -> _Block:
    """`block` as a table of an [[instance]]: [vrrp] -> [instance.vrrp], [[track.check]] -> [[instance.track.check]]."""
    def nest(line: str) -> str:
        m = _HEADER_LINE.match(line)
        return f"{m.group(1) or ''}[{m.group(2)}instance.{m.group(3)}{m.group(4)}]" if m else line

    return _Block(block.name, [nest(line) for line in block.lines], block.comments, block.active)


def _render_all(res: Result, source: str, parts: list[tuple[str, list[_Block]]], group_of: dict[str, str]) -> str:
    lines = [f"# converted from {source}, every vrrp_instance ({res.instance}), by failoverctl import-keepalived"]
    lines += [f"# NEEDS REVIEW: {item}" for item in res.review]
    lines += [f"# REVIEW: {item}" for item in res.warnings]
    for title, items in (("replaced", res.replaced), ("not mapped", res.unmapped)):
        lines += [f"# {title}: {item}" for item in items]
    for name, blocks in parts:
        lines += ["", "[[instance]]", f"name = \"{_table_name(name)}\""]
        if name in group_of:
            lines.append(f"sync_group = \"{_table_name(group_of[name])}\"")
        for block in blocks:
            lines += _nested(block).render()
    return "\n".join(lines) + "\n"
