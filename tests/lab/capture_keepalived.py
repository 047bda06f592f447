"""Capture keepalived's adverts in a namespace lab: the fixtures of tests/test_packet.py.

    python -m tests.lab.capture_keepalived tests/fixtures/keepalived-2.2.7      (as root)

The packet tests pin the exact bytes keepalived puts on the wire, so the captures must come
from keepalived itself, not from our encoder.  This runs Debian's keepalived in two lab nodes
(a 192.0.2.1 / 02:00:00:00:00:0a, b 192.0.2.2 / 02:00:00:00:00:0b, VRID 51, VIP 192.0.2.100)
while tcpdump records the bridge traffic from the client's port, then cuts one frame per case
out of that recording with a BPF filter and describes each VRRP frame in vectors.txt.

Sequence, once with VRRPv2 (advert_int 1, auth PASS "s3cr3t") and once with VRRPv3
(advert_int 0.1, no authentication): b (priority 100) starts alone and becomes master (its
adverts, its gratuitous ARP); a (priority 150) starts and preempts (its adverts); a is stopped
with SIGTERM (its priority-0 advert); b is stopped.

vectors.txt is written from the bytes by the small dissector below, deliberately not
vrrp.packet's: the fixture has to describe the wire independently of the code it tests.  Its
format (three lines per frame: name, MACs and IP datagram in hex, the fields as a Python dict)
is what tests/test_packet.py reads.  README.md beside it says which config and event produced
each file.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.lab.keepalived import Keepalived, check_keepalived_conf, keepalived_version, render_keepalived_conf
from tests.lab.lock import hold_lab_lock
from tests.lab.netns import CLIENT, LabError, NetnsLab, node_ip, node_mac, stop_process
from tests.lab.pcap import Frame, ip_datagram, read_pcap

T = TypeVar("T")
VERSION = "Keepalived v2.2.7"
VRID = 51
VIP = "192.0.2.100"
PASSWORD = "s3cr3t"
A, B = "a", "b"
PRIORITY = {A: 150, B: 100}
INTERVAL = {2: 1.0, 3: 0.1}
GROUP_MAC = "01:00:5e:00:00:12"


@dataclass(frozen=True)
class Case:
    """One fixture file: the first frame of the recording that ``bpf`` matches."""

    name: str
    bpf: str
    produced_by: str


def _vrrp(node: str, version: int, priority: int) -> str:
    return (f"ether src {node_mac(0 if node == A else 1)} and ip src {node_ip(0 if node == A else 1)} and "
            f"ip proto 112 and ip[20] = 0x{version}1 and ip[21] = {VRID} and ip[22] = {priority}")


VIP_HEX = "0x" + ipaddress.IPv4Address(VIP).packed.hex()
CASES = [
    Case("v2_A_prio150", _vrrp(A, 2, 150), "v2: a's advert as master, after it preempted b"),
    Case("v2_B_prio100", _vrrp(B, 2, 100), "v2: b's advert as master, alone before a started"),
    Case("v2_A_prio0", _vrrp(A, 2, 0), "v2: a's advert when SIGTERM stopped it as master"),
    Case("v3_A_prio150", _vrrp(A, 3, 150), "v3: a's advert as master, after it preempted b"),
    Case("v3_B_prio100", _vrrp(B, 3, 100), "v3: b's advert as master, alone before a started"),
    Case("garp_B", f"ether src {node_mac(1)} and ether dst ff:ff:ff:ff:ff:ff and arp and arp[6:2] = 1 and "
                   f"arp[14:4] = {VIP_HEX} and arp[24:4] = {VIP_HEX}",
         "v2: b's gratuitous ARP request for the VIP when it became master"),
]


def config(node: str, version: int) -> str:
    return render_keepalived_conf(name=f"ka_{node}", interface="eth0", vrid=VRID, priority=PRIORITY[node],
                                  advert_int=INTERVAL[version], version=version, vips=[f"{VIP}/24"],
                                  auth_pass=PASSWORD if version == 2 else "")


# -- the lab ------------------------------------------------------------------------------------
def _wait(what: str, predicate: Callable[[], bool], timeout: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"{what} within {timeout:g} s failed:\n{logs()}")
        time.sleep(0.05)


def run_keepalived(lab: NetnsLab, version: int, work: Path) -> dict[str, str]:
    """b alone, then a preempts, a stops (priority 0), b stops; returns what each logged."""
    return run_sequence(lab, {node: config(node, version) for node in (A, B)}, INTERVAL[version],
                        work / f"v{version}", settle=0.5)


def run_sequence(lab: NetnsLab, configs: dict[str, str], interval: float, work: Path, settle: float) -> dict[str, str]:
    """The capture's sequence with these keepalived configs of a and b (`settle`: seconds after b
    became master, for its announcements); returns what each logged."""
    kas: dict[str, Keepalived] = {}
    for node in (B, A):
        check_keepalived_conf(lab, node, configs[node])
        kas[node] = Keepalived(lab, node, configs[node], workdir=work / node)
    a, b = kas[A], kas[B]
    b.start()
    _wait("b MASTER alone", lambda: b.state() == "MASTER", 15, b.log)
    time.sleep(2 * interval + settle)  # adverts and the GARP burst
    a.start()
    _wait("a MASTER by preemption", lambda: a.state() == "MASTER" and b.state() == "BACKUP", 15,
          lambda: a.log() + b.log())
    time.sleep(2 * interval + 0.5)
    if a.stop() != 0:
        raise LabError(f"keepalived a did not stop cleanly:\n{a.log()}")
    _wait("b MASTER after a's priority 0", lambda: b.state() == "MASTER", 10, b.log)
    time.sleep(2 * interval + 0.5)
    b.stop()
    return {"a": a.log(), "b": b.log()}


def record(out: Path) -> dict[int, dict[str, str]]:
    """Everything VRRP and ARP on the bridge during both runs, seen from the client's port."""
    return recording(out, f"kacap{os.getpid() % 10000}", "ip proto 112 or arp",
                     lambda lab: {version: run_keepalived(lab, version, lab.workdir) for version in (2, 3)})


def recording(out: Path, prefix: str, bpf: str, run: Callable[[NetnsLab], T], ipv6: bool = False) -> T:
    """tcpdump on the client's port into `out` (what `bpf` matches) while `run` runs in a new lab."""
    with NetnsLab(prefix, nodes=(A, B)) as lab:
        if ipv6:
            lab.enable_ipv6()
        dump = lab.popen(CLIENT, ["tcpdump", "-i", "eth0", "-n", "-s", "256", "-U", "-w", str(out), bpf],
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert dump.stderr is not None
        first = dump.stderr.readline()
        if "listening on" not in first:
            raise LabError(f"tcpdump did not start: {first}{dump.stderr.read() if dump.poll() is not None else ''}")
        try:
            return run(lab)
        finally:
            stop_process(dump, grace=5)  # SIGTERM: tcpdump flushes and closes the file


def cut(recording: Path, case: Case, dest: Path) -> Frame:
    """The first frame that matches the case's filter, alone in ``dest``."""
    subprocess.run(["tcpdump", "-n", "-r", str(recording), "-c", "1", "-w", str(dest), case.bpf],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    frames = read_pcap(dest)
    if len(frames) != 1:
        raise LabError(f"{case.name}: {len(frames)} frames match {case.bpf!r} in the recording")
    return frames[0]


# -- the description, independent of vrrp.packet ------------------------------------------------
def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 over ``data`` (odd length padded with a zero byte); 0 means the checksum holds."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def describe(ip: bytes) -> dict[str, Any]:
    """Every header field of an IPv4 datagram carrying one VRRP advert, as vectors.txt lists them."""
    ihl = (ip[0] & 0x0F) * 4
    total, ident, frag = struct.unpack_from("!HHH", ip, 2)
    fields: dict[str, Any] = {
        "ip_version": ip[0] >> 4, "ihl": ihl, "tos": f"0x{ip[1]:02x}", "dscp": ip[1] >> 2, "ecn": ip[1] & 3,
        "total_len": total, "id": f"0x{ident:04x}", "flags_frag": f"0x{frag:04x}", "ttl": ip[8], "proto": ip[9],
        "ip_checksum": f"0x{struct.unpack_from('!H', ip, 10)[0]:04x}",
        "ip_checksum_ok": ones_complement_sum(ip[:ihl]) == 0,
        "src": str(ipaddress.IPv4Address(ip[12:16])), "dst": str(ipaddress.IPv4Address(ip[16:20])),
    }  # fmt: skip
    msg = ip[ihl:total]
    version, count = msg[0] >> 4, msg[3]
    fields.update({"vrrp_version": version, "vrrp_type": msg[0] & 0x0F, "vrid": msg[1], "priority": msg[2],
                   "count_ip": count})
    vips = [str(ipaddress.IPv4Address(msg[8 + 4 * i:12 + 4 * i])) for i in range(count)]
    checksum = struct.unpack_from("!H", msg, 6)[0]
    if version == 2:
        auth = msg[8 + 4 * count:16 + 4 * count]
        fields.update({"auth_type": msg[4], "adver_int_s": msg[5], "checksum": f"0x{checksum:04x}",
                       "checksum_ok": ones_complement_sum(msg) == 0, "vips": vips,
                       "auth_data": f"{auth.hex()} ({auth!r})"})
    else:  # RFC 5798: the checksum covers an IPv4 pseudo-header too
        pseudo = ip[12:20] + struct.pack("!BBH", 0, ip[9], len(msg))
        fields.update({"rsvd": msg[4] >> 4, "max_adver_int_cs": struct.unpack_from("!H", msg, 4)[0] & 0x0FFF,
                       "checksum": f"0x{checksum:04x}", "checksum_ok": ones_complement_sum(pseudo + msg) == 0,
                       "vips": vips, "trailing": msg[8 + 4 * count:].hex()})
    return fields


def vector(name: str, frame: Frame) -> str:
    ip = ip_datagram(frame)
    return f"== {name}\n{frame.src_mac} -> {frame.dst_mac} {ip.hex()}\n   {describe(ip)!r}\n"


def readme(version_line: str, cases: list[Case]) -> str:
    rows = "\n".join(f"| `{c.name}.pcap` | {c.produced_by} | `{c.bpf}` |" for c in cases)
    confs = "\n".join(f"{label}:\n\n```\n{config(node, v)}```\n" for v in (2, 3) for node, label in
                      ((A, f"v{v}, node a (192.0.2.1)"), (B, f"v{v}, node b (192.0.2.2)")))
    return f"""# keepalived 2.2.7 captures

Real keepalived adverts, captured by `python -m tests.lab.capture_keepalived tests/fixtures/keepalived-2.2.7`
(as root, under the lab lock) with `{version_line}` (Debian's package) in a network-namespace lab:
nodes a (192.0.2.1, 02:00:00:00:00:0a) and b (192.0.2.2, 02:00:00:00:00:0b) on one bridge,
tcpdump on the client's port. Each run (v2, then v3): b starts alone and becomes master, a
starts and preempts it, a is stopped with SIGTERM, b is stopped. Each file holds the first
frame of the recording that its filter matches (one frame per file); `vectors.txt` lists every
VRRP frame with its IP datagram in hex and its header fields, as tests/test_packet.py reads it.

| file | what | tcpdump filter |
|---|---|---|
{rows}

The configs (rendered by tests/lab/keepalived.py, checked with `keepalived -t` in the node):

{confs}"""


def capture_main(argv: list[str] | None, tool: str, record: Callable[[Path], dict[Any, dict[str, str]]],
                 cases: list[Case], vector_of: Callable[[Case, Frame], str | None],
                 readme_of: Callable[[str], str]) -> dict[Any, dict[str, str]] | None:
    """The command line of a capture tool (this one and tests.lab.capture_keepalived6): check the
    keepalived version, take the lab lock, `record` into a temporary file, cut one frame per case,
    write vectors.txt (`vector_of`: a frame's entry, None for none) and README.md, and copy all to
    the output directory. Returns what `record` returned (the keepalived logs), None on a wrong version."""
    parser = argparse.ArgumentParser(prog=f"python -m {tool}")
    parser.add_argument("outdir", type=Path, help="where the pcaps, vectors.txt and README.md go")
    args = parser.parse_args(argv)
    version_line = keepalived_version()
    if not version_line.startswith(VERSION):
        print(f"these fixtures are of {VERSION}; this machine has {version_line or 'no keepalived'}", file=sys.stderr)
        return None
    hold_lab_lock(tool)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the lab is torn down on kill
    with tempfile.TemporaryDirectory(prefix="keepalived-capture-") as tmp:
        recording = Path(tmp) / "all.pcap"
        logs = record(recording)
        staged = Path(tmp) / "out"
        staged.mkdir()
        vectors = [vector_of(case, cut(recording, case, staged / f"{case.name}.pcap")) for case in cases]
        (staged / "vectors.txt").write_text("".join(v for v in vectors if v is not None))
        (staged / "README.md").write_text(readme_of(version_line))
        args.outdir.mkdir(parents=True, exist_ok=True)
        for path in sorted(staged.iterdir()):
            shutil.copyfile(path, args.outdir / path.name)
            print(f"wrote {args.outdir / path.name}")
    return logs


def _vector_of(case: Case, frame: Frame) -> str | None:
    if frame.ethertype != 0x0800:
        return None
    if frame.dst_mac != GROUP_MAC:
        raise LabError(f"{case.name}: sent to {frame.dst_mac}, not the VRRP group MAC")
    return vector(case.name, frame)


def main(argv: list[str] | None = None) -> int:
    logs = capture_main(argv, "tests.lab.capture_keepalived", record, CASES, _vector_of,
                        lambda version_line: readme(version_line, CASES))
    if logs is None:
        return 1
    for version, by_node in logs.items():  # what b made of a's priority 0, for the interop tests' wording
        said = [line for line in by_node["b"].splitlines() if "priority 0" in line.lower()]
        print(f"v{version}: keepalived b on a's priority 0: {said[:2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
