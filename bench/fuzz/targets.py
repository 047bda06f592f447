"""What is fuzzed: every parser of text or bytes that comes from outside the process.

Each target turns one input into an outcome label, "accepted" or the name of its documented
refusal (a `Drop` reason, `Rejected`'s reason, `ConfigError`, ...). Anything else it raises is
a bug: the harness counts it as unhandled. Where a parser's contract says more than "does not
raise" (a decoded advert re-encodes to itself, an accepted peer message is refused the second
time, a parsed DRBD status is sane), the target checks that too and raises `InvariantError`.

Seeds are valid samples built with the modules' own encoders, the test fixtures and the
README's configuration reference, so mutations start from inputs that pass the first checks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from ipaddress import IPv4Address
from pathlib import Path

from agent import config, control, keepalived_import, peerwire
from drbd import status
from tests.lab.keepalived import render_keepalived_conf
from vrrp import packet
from vrrp.checksum import checksum

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "drbd"
ACCEPTED = "accepted"

Runner = Callable[[bytes], str]


class InvariantError(AssertionError):
    """A parser accepted an input but broke a promise about the result."""


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    start: Callable[[], Runner]  # a fresh runner per run (the VRRP validators keep state)
    seeds: Callable[[], list[bytes]]
    text: bool  # token- and line-level mutations apply
    max_len: int
    fixup: Callable[[bytes], bytes] | None = None  # restores a checksum or MAC, so mutants get past it


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise InvariantError(what)


# -- VRRP ----------------------------------------------------------------------------------------

_A, _B = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
_VIPS = tuple(IPv4Address(f"192.0.2.{i}") for i in range(100, 104))


def _vrrp_seeds() -> list[bytes]:
    auth = packet.auth_bytes("s3cr3t")
    adverts = [
        (packet.Advertisement(2, 51, 100, 1.0, _VIPS[:1], packet.AUTH_PASS, auth), _B, packet.GROUP),
        (packet.Advertisement(2, 51, 255, 3.0, _VIPS, packet.AUTH_PASS, auth), _B, packet.GROUP),
        (packet.Advertisement(2, 51, 0, 1.0, ()), _A, packet.GROUP),
        (packet.Advertisement(3, 52, 150, 0.1, _VIPS[:2]), _B, _A),
        (packet.Advertisement(3, 52, 0, 40.95, _VIPS[:1]), _B, _A),
        (packet.Advertisement(3, 51, 100, 1.0, _VIPS[:1]), _B, packet.GROUP),
    ]
    return [packet.encode(adv, src, dst, i) for i, (adv, src, dst) in enumerate(adverts)]


def _vrrp_fixup(data: bytes) -> bytes:
    """What the kernel guarantees before a raw socket sees a datagram (IPv4, protocol 112, total
    length right), and the VRRP checksum made right for whatever the bytes now say."""
    ihl = max(5, data[0] & 0x0F) * 4 if data else 0
    if len(data) < ihl + 8 or len(data) > 0xFFFF:
        return data
    msg = bytearray(data[ihl:])
    msg[6:8] = b"\0\0"
    pseudo = data[12:20] + struct.pack("!BBH", 0, packet.PROTO_VRRP, len(msg)) if msg[0] >> 4 == 3 else b""
    msg[6:8] = struct.pack("!H", checksum(pseudo + bytes(msg)))
    header = bytes([0x40 | ihl // 4, data[1]]) + struct.pack("!H", len(data)) + data[4:9] + bytes([packet.PROTO_VRRP])
    return header + data[10:ihl] + bytes(msg)


def _vrrp_runner() -> Runner:
    validators = (packet.Validator(2, 51, 1.0, "s3cr3t", own=frozenset({_A})),
                  packet.Validator(3, 52, 0.1, own=frozenset({_A}), peers=frozenset({_B})))

    def run(data: bytes) -> str:
        decoded = packet.decode(data)
        if isinstance(decoded, packet.Advertisement):
            again = packet.decode(packet.encode(decoded, decoded.src, decoded.dst, 0))
            _check(again == _reencoded(decoded), f"re-encoding changes the advert: {decoded} -> {again}")
        verdicts = [v.check(data) for v in validators]
        for verdict in verdicts:
            if isinstance(verdict, packet.Advertisement):
                _check(verdict == decoded, "the validator accepted something else than decode() read")
                return ACCEPTED
        if isinstance(decoded, packet.Drop):
            return f"Drop:{decoded.reason}"
        mine = next((d for v, d in zip(validators, verdicts, strict=True) if v.version == decoded.version), verdicts[0])
        assert isinstance(mine, packet.Drop)
        return f"Drop:{mine.reason}"

    return run


def _reencoded(adv: packet.Advertisement) -> packet.Advertisement:
    """What decode(encode(adv)) must give: our IP header always says TTL 255."""
    return packet.Advertisement(adv.version, adv.vrid, adv.priority, adv.interval, adv.addresses, adv.auth_type,
                                adv.auth_data, adv.src, adv.dst)


# -- peer channel --------------------------------------------------------------------------------

PEER_KEY = b"fuzzing key, 32 bytes long......"
PEER_NOW = 1_800_000_000.0
PEER_WINDOW = 5.0


def _peer_seeds() -> list[bytes]:
    bodies: list[tuple[str, str | None, dict[str, object]]] = [
        ("state", None, {}),
        ("state-reply", "00112233445566778899aabb", {"vrrp": "MASTER", "drbd": {"role": "Primary", "disk": "UpToDate"},
                                                     "connections": [["192.0.2.100", 2049, "192.0.2.50", 812]]}),
        ("outdate", None, {"resource": "r0"}),
        ("outdate-reply", "ffeeddccbbaa998877665544", {"answer": "outdated", "detail": "exit 0"}),
    ]
    return [peerwire.encode(peerwire.Message(kind, "192.0.2.2", PEER_NOW - i, f"{i:02d}" * 12, re, body), PEER_KEY)
            for i, (kind, re, body) in enumerate(bodies)]


def _peer_fixup(data: bytes) -> bytes:
    payload = data[peerwire.MAC_LEN:]
    return hmac.new(PEER_KEY, payload, hashlib.sha256).digest() + payload


def _peer_runner() -> Runner:
    def run(data: bytes) -> str:
        guard = peerwire.ReplayGuard(PEER_WINDOW)
        try:
            msg = peerwire.decode(data, PEER_KEY, PEER_NOW, guard)
        except peerwire.Rejected as e:
            return f"Rejected:{e.reason}"
        _check(math.isfinite(msg.ts) and msg.kind in peerwire.KINDS, f"accepted {msg}")
        try:
            peerwire.decode(data, PEER_KEY, PEER_NOW, guard)
        except peerwire.Rejected as e:
            _check(e.reason == "replayed", f"a second copy was refused as {e.reason}, not replayed")
            return ACCEPTED
        raise InvariantError("a second copy of an accepted message was accepted too")

    return run


# -- agent config --------------------------------------------------------------------------------

_CONFIG_BASE = '[vrrp]\ninterface = "eth0"\nvrid = 51\nvips = ["192.0.2.100/24"]\n'
_CONFIG_SAMPLES = (
    _CONFIG_BASE,
    _CONFIG_BASE + 'priority = 150\nauth_pass = "s3cr3t"\npreempt = false\nunicast_peers = ["192.0.2.2"]\n'
                   'garp_count = 3\ngarp_interval = 0.05\ngarp_refresh = 30\n',
    '[vrrp]\ninterface = "eth1"\nvrid = 7\npriority = 255\nversion = 3\nadvert_interval = 0.1\n'
    'vips = ["192.0.2.100/24", "198.51.100.7"]\npreempt_delay = 2.5\n'
    '[agent]\ncontrol_socket = "/run/fa/control.sock"\nmetrics = "127.0.0.1:9477"\n',
    _CONFIG_BASE + '[drbd]\nresource = "r0"\nunknown_peer = "witness"\nwitness_grace = 5\n'
    '[filesystem]\ndevice = "/dev/drbd0"\nmountpoint = "/srv/nfs"\noptions = ["noatime", "nodev"]\n'
    '[nfs]\nbackend = "ganesha"\ngrace_time = 0\nlease_time = 60\ngraceless = true\nversions = [4]\n'
    'exports = [{ path = "/srv/nfs/data", clients = "192.0.2.0/24", options = "rw,sync,fsid=1" },\n'
    '           { path = "/srv/nfs/ro", clients = "*", options = "ro,fsid=2" }]\n'
    '[track]\nwitnesses = ["192.0.2.254", "192.0.2.253"]\nmin_reachable = 2\n'
    '[[track.check]]\nargv = ["/bin/true"]\nweight = -10\n'
    '[[track.check]]\nargv = ["/usr/bin/test", "-d", "/srv"]\ninterval = 1\ntimeout = 0.5\n'
    '[peer]\naddress = "192.0.2.2"\nport = 7801\nwindow = 5\n'
    '[monitor]\ninterval = 1\nmax_restarts = 0\nhold_down = 5\nstep_timeout = 30\n',
)


def _config_seeds() -> list[bytes]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", readme, re.S | re.M)
    return [s.encode() for s in (*_CONFIG_SAMPLES, *blocks)]


def _config_runner() -> Runner:
    base = config.parse_process(_CONFIG_BASE, "base.toml")

    def run(data: bytes) -> str:
        try:
            process = config.loads_process(data, "fuzz.toml")
        except config.ConfigError:
            return "ConfigError"
        config.describe_process_changes(base, process)  # the reload log must cope with whatever was accepted
        for cfg in process.instances:
            _check(cfg.steps[-1] == "vip", f"steps {cfg.steps}")
        return ACCEPTED

    return run


# -- DRBD ----------------------------------------------------------------------------------------

SKIPPED = "skipped"  # drbd.status's documented answer to text it cannot read: no Status, no exception


def _fixture_seeds(pattern: str) -> Callable[[], list[bytes]]:
    def seeds() -> list[bytes]:
        return [p.read_bytes() for p in sorted(FIXTURES.glob(pattern))]

    return seeds


def _sane(st: status.Status) -> None:
    """What callers may rely on in a Status, whatever text it came from."""
    for f in fields(st):
        value = getattr(st, f.name)
        if f.type == "str":
            _check(isinstance(value, str), f"{f.name}={value!r}")
    _check(st.minor is None or (isinstance(st.minor, int) and st.minor >= 0), f"minor={st.minor!r}")
    _check(st.sync_percent is None or 0 <= st.sync_percent <= 100, f"sync_percent={st.sync_percent!r}")
    st.summary()


def _text(data: bytes) -> str:
    """How drbd.drbdadm hands DRBD's output to the parsers."""
    return data.decode(errors="replace")


def _events2_runner() -> Runner:
    def run(data: bytes) -> str:
        resources = status.parse_events2(_text(data))
        for st in resources.values():
            _sane(st)
        return ACCEPTED if resources else SKIPPED

    return run


def _proc_runner() -> Runner:
    def run(data: bytes) -> str:
        st = status.parse_proc_drbd(_text(data), minor=0, name="r0")
        if st is None:
            return SKIPPED
        _sane(st)
        return ACCEPTED

    return run


def _status_json_runner() -> Runner:
    def run(data: bytes) -> str:
        resources = status.parse_status_json(_text(data))
        for st in resources.values():
            _sane(st)
        return ACCEPTED if resources else SKIPPED

    return run


# -- keepalived.conf -----------------------------------------------------------------------------

_KEEPALIVED_SAMPLE = """! a DRBD/NFS pair as keepalived ran it
global_defs {
   router_id NFS1
   vrrp_version 2
}
vrrp_script chk_nfs {
    script "/usr/local/bin/check_nfs.sh"
    interval 2
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 1
    nopreempt
    authentication {
        auth_type PASS
        auth_pass s3cr3t
    }
    unicast_peer {
        192.0.2.2
    }
    virtual_ipaddress {
        192.0.2.100/24 dev eth0 label eth0:nfs
        192.0.2.101
        2001:db8::1
    }
    track_script {
        chk_nfs
    }
    garp_master_delay 1
    garp_master_repeat 5
    garp_master_refresh 60
    notify_master "/etc/keepalived/drbd-master.sh"   # promote, mount, start nfs
    use_vmac
}
vrrp_instance VI_2 {
    interface eth1
    virtual_router_id 52
    version 3
    advert_int 0.5
    preempt_delay 10
    virtual_ipaddress {
        198.51.100.10/24
    }
}
"""


def _keepalived_seeds() -> list[bytes]:
    rendered = [
        render_keepalived_conf(name="ka_a", interface="eth0", vrid=51, priority=150, advert_int=1.0,
                               vips=["192.0.2.100/24"], auth_pass="s3cr3t", nopreempt=True),
        render_keepalived_conf(name="ka_b", interface="eth1", vrid=7, priority=100, advert_int=0.2, version=3,
                               vips=["192.0.2.100/24", "192.0.2.101"], unicast_src="192.0.2.1",
                               unicast_peers=["192.0.2.2"], preempt_delay=3, garp_master_delay=2,
                               garp_master_repeat=3),
    ]
    return [t.encode() for t in (_KEEPALIVED_SAMPLE, *rendered)]


def _keepalived_runner() -> Runner:
    def run(data: bytes) -> str:
        try:  # convert() itself checks its TOML with our loader
            keepalived_import.convert(data.decode(errors="replace"))
        except keepalived_import.ImportError_:
            return "ImportError_"
        return ACCEPTED

    return run


# -- control socket ------------------------------------------------------------------------------


def _control_seeds() -> list[bytes]:
    requests: list[dict[str, object]] = [{"command": "status"}, {"command": "handover"},
                                         {"command": "maintenance", "on": True}, {"command": "fence-peer"}]
    return [json.dumps(r).encode() + b"\n" for r in requests]


def _control_runner() -> Runner:
    def run(data: bytes) -> str:
        end = data.find(b"\n")
        try:  # the server reads one line (StreamReader.readline), at most MAX_REQUEST bytes
            control.parse_request(data[: end + 1] if end >= 0 else data)
        except control.ControlError:
            return "ControlError"
        return ACCEPTED

    return run


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("vrrp", "vrrp.packet decode + Validator.check", _vrrp_runner, _vrrp_seeds, False, 1500, _vrrp_fixup),
    Target("peerwire", "agent.peerwire.decode", _peer_runner, _peer_seeds, True, peerwire.MAX_DATAGRAM + 64,
           _peer_fixup),
    Target("config", "agent.config.loads_process (TOML)", _config_runner, _config_seeds, True, 8192),
    Target("drbd-events2", "drbd.status.parse_events2", _events2_runner, _fixture_seeds("events2-*.txt"), True,
           8192),
    Target("drbd-proc", "drbd.status.parse_proc_drbd", _proc_runner, _fixture_seeds("proc_drbd-*.txt"), True, 8192),
    Target("drbd-json", "drbd.status.parse_status_json", _status_json_runner, _fixture_seeds("status-json-*.json"),
           True, 8192),
    Target("keepalived", "agent.keepalived_import.convert", _keepalived_runner, _keepalived_seeds, True, 8192),
    Target("control", "agent.control.parse_request", _control_runner, _control_seeds, True, 8192),
)}
