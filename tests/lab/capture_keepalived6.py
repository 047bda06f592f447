"""Capture keepalived's VRRPv3 adverts over IPv6 and its unsolicited Neighbor Advertisements: the
fixtures of tests/test_packet6.py.

    python -m tests.lab.capture_keepalived6 tests/fixtures/keepalived-2.2.7-ipv6      (as root)

The IPv6 sibling of tests.lab.capture_keepalived (whose IPv4 fixtures stay as they are): the same
two lab nodes, now with their link-local addresses (a fe80::ff:fe00:a, b fe80::ff:fe00:b, from
their MACs) as advert sources and the VIP 2001:db8::100/64, VRRPv3 at advert_int 0.1. b
(priority 100) starts alone and becomes master (its adverts, its unsolicited NAs); a (priority
150) starts and preempts; a is stopped with SIGTERM (its priority-0 advert); b is stopped.

vectors.txt is written by the small dissector below, independent of vrrp.packet and vrrp.vip,
in the format of the IPv4 fixtures (name; MACs and the IPv6 datagram in hex; the fields).
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
from pathlib import Path
from typing import Any

from tests.lab.capture_keepalived import Case, capture_main, ones_complement_sum, recording, run_sequence
from tests.lab.keepalived import render_keepalived_conf
from tests.lab.netns import LabError, node_mac
from tests.lab.pcap import Frame

VRID = 51
VIP = "2001:db8::100"
A, B = "a", "b"
PRIORITY = {A: 150, B: 100}
INTERVAL = 0.1
GROUP_MAC = "33:33:00:00:00:12"
ETH_P_IPV6 = 0x86DD


def _vrrp(node: str, priority: int) -> str:
    return (f"ether src {node_mac(0 if node == A else 1)} and ip6 proto 112 and ip6[40] = 0x31 and "
            f"ip6[41] = {VRID} and ip6[42] = {priority}")


CASES = [
    Case("v6_A_prio150", _vrrp(A, 150), "a's advert as master, after it preempted b"),
    Case("v6_B_prio100", _vrrp(B, 100), "b's advert as master, alone before a started"),
    Case("v6_A_prio0", _vrrp(A, 0), "a's advert when SIGTERM stopped it as master"),
    Case("na_B", f"ether src {node_mac(1)} and icmp6 and ip6[40] = 136",
         "b's unsolicited Neighbor Advertisement for the VIP when it became master"),
]


def config(node: str) -> str:
    return render_keepalived_conf(name=f"ka_{node}", interface="eth0", vrid=VRID, priority=PRIORITY[node],
                                  advert_int=INTERVAL, version=3, vips=[f"{VIP}/64"])


def record(out: Path) -> dict[str, str]:
    """b alone, then a preempts, a stops (priority 0), b stops; returns what each logged."""
    return recording(out, f"kacap6{os.getpid() % 10000}", "ip6 proto 112 or icmp6",
                     lambda lab: run_sequence(lab, {node: config(node) for node in (A, B)}, INTERVAL,
                                              lab.workdir / "v6", settle=1.5),  # NAs at once and 1 s later
                     ipv6=True)


# -- the description, independent of vrrp.packet and vrrp.vip -----------------------------------
def ipv6_datagram(frame: Frame) -> bytes:
    """The IPv6 datagram of a frame, without Ethernet padding."""
    if frame.ethertype != ETH_P_IPV6:
        raise ValueError(f"ethertype {frame.ethertype:#06x} is not IPv6")
    return frame.payload[:40 + struct.unpack_from("!H", frame.payload, 4)[0]]


def describe(ip: bytes) -> dict[str, Any]:
    """Every header field of an IPv6 datagram carrying a VRRP advert or an ICMPv6 NA."""
    first = struct.unpack_from("!I", ip)[0]
    length, next_header = struct.unpack_from("!HB", ip, 4)
    src, dst = ip[8:24], ip[24:40]
    payload = ip[40:40 + length]
    pseudo = src + dst + struct.pack("!I3xB", length, next_header)
    fields: dict[str, Any] = {
        "ip_version": first >> 28, "traffic_class": f"0x{(first >> 20) & 0xFF:02x}", "flow_label": first & 0xFFFFF,
        "payload_len": length, "next_header": next_header, "hop_limit": ip[7],
        "src": str(ipaddress.IPv6Address(src)), "dst": str(ipaddress.IPv6Address(dst)),
        "checksum": f"0x{struct.unpack_from('!H', payload, 2 if next_header == 58 else 6)[0]:04x}",
        "checksum_ok": ones_complement_sum(pseudo + payload) == 0,
    }  # fmt: skip
    if next_header == 58:  # ICMPv6: a Neighbor Advertisement (RFC 4861 4.4)
        flags = struct.unpack_from("!I", payload, 4)[0]
        fields.update({"icmp_type": payload[0], "icmp_code": payload[1], "router": bool(flags & 1 << 31),
                       "solicited": bool(flags & 1 << 30), "override": bool(flags & 1 << 29),
                       "target": str(ipaddress.IPv6Address(payload[8:24])), "options": payload[24:].hex()})
        return fields
    count = payload[3]
    fields.update({"vrrp_version": payload[0] >> 4, "vrrp_type": payload[0] & 0x0F, "vrid": payload[1],
                   "priority": payload[2], "count_ip": count, "rsvd": payload[4] >> 4,
                   "max_adver_int_cs": struct.unpack_from("!H", payload, 4)[0] & 0x0FFF,
                   "vips": [str(ipaddress.IPv6Address(payload[8 + 16 * i:24 + 16 * i])) for i in range(count)],
                   "trailing": payload[8 + 16 * count:].hex()})
    return fields


def vector(name: str, frame: Frame) -> str:
    ip = ipv6_datagram(frame)
    return f"== {name}\n{frame.src_mac} -> {frame.dst_mac} {ip.hex()}\n   {describe(ip)!r}\n"


def readme(version_line: str) -> str:
    rows = "\n".join(f"| `{c.name}.pcap` | {c.produced_by} | `{c.bpf}` |" for c in CASES)
    confs = "\n".join(f"node {node}:\n\n```\n{config(node)}```\n" for node in (A, B))
    return f"""# keepalived 2.2.7 captures: VRRPv3 over IPv6

Real keepalived adverts and Neighbor Advertisements, captured by
`python -m tests.lab.capture_keepalived6 tests/fixtures/keepalived-2.2.7-ipv6` (as root, under the
lab lock) with `{version_line}` (Debian's package) in a network-namespace lab: nodes a
(fe80::ff:fe00:a, 2001:db8::1, 02:00:00:00:00:0a) and b (fe80::ff:fe00:b, 2001:db8::2,
02:00:00:00:00:0b) on one bridge, tcpdump on the client's port. b starts alone and becomes
master, a starts and preempts it, a is stopped with SIGTERM, b is stopped. Each file holds the
first frame of the recording that its filter matches; `vectors.txt` lists each frame with its
IPv6 datagram in hex and its header fields, as tests/test_packet6.py reads it.

| file | what | tcpdump filter |
|---|---|---|
{rows}

The configs (rendered by tests/lab/keepalived.py, checked with `keepalived -t` in the node):

{confs}"""


def _vector_of(case: Case, frame: Frame) -> str:
    if case.name.startswith("v6") and frame.dst_mac != GROUP_MAC:
        raise LabError(f"{case.name}: sent to {frame.dst_mac}, not the VRRP group MAC")
    return vector(case.name, frame)


def main(argv: list[str] | None = None) -> int:
    logs = capture_main(argv, "tests.lab.capture_keepalived6", lambda out: {6: record(out)}, CASES, _vector_of, readme)
    if logs is None:
        return 1
    said = [line for line in logs[6]["b"].splitlines() if "priority 0" in line.lower()]
    print(f"keepalived b on a's priority 0: {said[:2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
