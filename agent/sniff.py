"""`failoverctl sniff`: VRRP adverts as they are on the wire, and what the agent makes of each.

"Both nodes are MASTER" means adverts do not arrive or are dropped; the question is whether
they are on the wire at all and which receive check refuses them. Packet sockets see IPv4
protocol 112 and IPv6 next header 112 as it arrived (TTL or hop limit included, before the IP
stack), scapy's VRRP layers decode it (an independent decoder: the reference the tests hold
vrrp.packet to), and the verdict is the one of the agent's own `vrrp.packet.Validator` for the
local config, or, without a readable config, of the structural checks alone.

scapy costs about a second and tens of MB to import, so only this command imports this
module; the daemon never does (tests/test_sniff.py checks it).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRP, VRRPv3

from agent import config as configmod
from vrrp.packet import AUTH_PASS, PROTO_VRRP, TTL, Address, Advertisement, Drop, DropReason, Validator, decode
from vrrp.rawsock import attach_filter

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_OUTGOING = 4
#: classic BPF over the IP datagram (a SOCK_DGRAM packet socket): IP protocol 112 or nothing
PROTO_112 = [(0x30, 0, 0, 9), (0x15, 0, 1, PROTO_VRRP), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
#: the same over an IPv6 datagram: next header (byte 6) 112
NEXT_HEADER_112 = [(0x30, 0, 0, 6), (0x15, 0, 1, PROTO_VRRP), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
AUTH_TYPES = {0: "none", 1: "PASS", 2: "AH"}


def structural(datagram: bytes) -> Advertisement | Drop:
    """The checks that need no config: a well-formed VRRP advert, TTL 255 when sent to the group."""
    adv = decode(datagram)
    if isinstance(adv, Advertisement) and adv.dst.is_multicast and adv.ttl != TTL:
        what = "hop limit" if adv.src.version == 6 else "IP TTL"
        return Drop(DropReason.TTL, f"{what} {adv.ttl} from {adv.src}, must be 255")
    return adv


def verdict(datagram: bytes, validator: Validator | None) -> str:
    result = validator.check(datagram) if validator is not None else structural(datagram)
    if isinstance(result, Drop):
        return f"dropped: {result.reason.value} ({result.detail})"
    return "accepted" if validator is not None else "well-formed (no config: VRID, interval, auth not judged)"


def printable(raw: bytes) -> str:
    """Auth text as an admin would type it: NUL padding dropped, anything unprintable as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}"
                   for b in raw.rstrip(b"\0"))


def ipv6(datagram: bytes) -> bool:
    return bool(datagram) and datagram[0] >> 4 == 6


def is_vrrp(datagram: bytes) -> bool:
    """IPv4 protocol 112 or IPv6 next header 112 (what the capture filters let through)."""
    if ipv6(datagram):
        return len(datagram) >= 40 and datagram[6] == PROTO_VRRP
    return len(datagram) >= 20 and datagram[9] == PROTO_VRRP


def vrid_of(datagram: bytes) -> int | None:
    head = 40 if ipv6(datagram) else (datagram[0] & 0x0F) * 4 if datagram else 0
    return datagram[head + 1] if len(datagram) > head + 1 else None


def describe(datagram: bytes, validator: Validator | None, when: float | None = None, ifname: str = "",
             outgoing: bool = False) -> str | None:
    """One line for one captured IPv4 or IPv6 datagram; None if it is not VRRP (protocol 112)."""
    six = ipv6(datagram)
    try:
        pkt = IPv6(datagram) if six else IP(datagram)
    except Exception:  # scapy raises assorted errors on truncated input; decode() names the problem below
        pkt = None
    if pkt is None or (pkt.nh if six else pkt.proto) != PROTO_VRRP:
        if is_vrrp(datagram):
            head = f"undecodable IP{'v6' if six else ''} datagram of protocol 112"
        else:
            return None
    else:
        head = f"{pkt.src} > {pkt.dst} {f'hop limit {pkt.hlim}' if six else f'TTL {pkt.ttl}'}"
        layer = pkt.getlayer(VRRPv3) or pkt.getlayer(VRRP)
        if layer is None:
            header = 40 if six else pkt.ihl * 4
            head += f" VRRP message of {len(datagram) - header} bytes (not decodable)"
        else:
            v3 = isinstance(layer, VRRPv3)
            interval = layer.adv / 100 if v3 else layer.adv
            head += (f" VRRPv{layer.version} VRID {layer.vrid} priority {layer.priority}"
                     f"{' (master leaving)' if layer.priority == 0 else ''} interval {interval:g} s")
            if not v3:
                head += f" auth {AUTH_TYPES.get(layer.authtype, f'type {layer.authtype}')}"
                if layer.authtype == AUTH_PASS:
                    head += f' "{printable(struct.pack("!II", layer.auth1, layer.auth2))}"'
            head += f" addresses {', '.join(str(a) for a in layer.addrlist) or 'none'}"
    stamp = time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d} " if when else ""
    where = f"{ifname} " if ifname else ""
    sent = " (sent by this host)" if outgoing else ""
    return f"{stamp}{where}{head}{sent}: {verdict(datagram, validator)}"


def validator_for(cfg: configmod.VrrpConfig, own: Address | None) -> Validator:
    """The receive checks the agent's instance applies (agent/instance.py builds the same)."""
    return Validator(version=cfg.version, vrid=cfg.vrid, interval=cfg.advert_interval, auth_pass=cfg.auth_pass,
                     own=frozenset({own}) if own else frozenset(), peers=frozenset(cfg.unicast_peers))


def open_capture(ifname: str | None, six: bool = False) -> socket.socket:
    """A packet socket for IPv4 protocol 112 (`six`: IPv6 next header 112); on one interface, all
    multicast let in (no group to join)."""
    ethertype = ETH_P_IPV6 if six else ETH_P_IP
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ethertype))
    try:
        attach_filter(sock, NEXT_HEADER_112 if six else PROTO_112)
        if ifname:
            sock.bind((ifname, ethertype))
            mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_ALLMULTI, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    except BaseException:
        sock.close()
        raise
    return sock


def capture(socks: Sequence[socket.socket], show: Callable[[bytes, str, bool], bool], count: int,
            timeout: float) -> int:
    """Feed datagrams to `show` (True = counted) until `count` were counted or `timeout` passed."""
    deadline = time.monotonic() + timeout if timeout else None
    seen = 0
    while not count or seen < count:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            break
        ready, _, _ = select.select(socks, [], [], wait)
        for sock in ready:
            data, addr = sock.recvfrom(65535)
            if is_vrrp(data) and show(data, str(addr[0]), addr[2] == PACKET_OUTGOING):
                seen += 1
    return seen


def _own_address(ifname: str, vips: list[Address]) -> Address | None:
    from vrrp.vip import primary_address

    try:
        return asyncio.run(primary_address(ifname, vips, ipv6=any(v.version == 6 for v in vips)))
    except (LookupError, OSError):
        return None


def _instance_for(process: configmod.ProcessConfig, vrid: int | None, interface: str | None) -> configmod.Config:
    """The instance whose adverts to judge: the one matching --vrid and --interface (ConfigError: none or several)."""
    fits = [c for c in process.instances if vrid in (None, c.vrrp.vrid) and interface in (None, c.vrrp.interface)]
    if len(fits) != 1:
        which = "none of its instances" if not fits else f"{len(fits)} of its instances"
        raise configmod.ConfigError(process.file, "", f"{which} ({', '.join(process.names)}) fit; give --vrid and "
                                    "--interface to pick one")
    return fits[0]


def main(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.vrid is not None and not 1 <= args.vrid <= 255:
        parser.error(f"--vrid must be in 1..255, got {args.vrid}")
    if args.count < 0 or args.timeout < 0:
        parser.error("--count and --timeout must not be negative")
    cfg: configmod.Config | None = None
    if Path(args.config).exists():
        try:
            cfg = _instance_for(configmod.load_process(args.config), args.vrid, args.interface)
        except configmod.ConfigError as e:
            print(f"sniff: {e}; judging adverts by their structure only", file=sys.stderr)
    else:
        print(f"sniff: no config at {args.config}; judging adverts by their structure only", file=sys.stderr)
    ifname = args.interface or (cfg.vrrp.interface if cfg else None)
    validator = None
    if cfg is not None:
        own = _own_address(ifname, [v.ip for v in cfg.vrrp.vips]) if ifname == cfg.vrrp.interface and ifname else None
        validator = validator_for(cfg.vrrp, own)
    socks: list[socket.socket] = []
    try:
        socks += [open_capture(ifname), open_capture(ifname, six=True)]
    except PermissionError:
        for sock in socks:
            sock.close()
        print("sniff: capturing needs root (CAP_NET_RAW)", file=sys.stderr)
        return 1
    except OSError as e:
        for sock in socks:
            sock.close()
        why = f"no interface {ifname}" if e.errno in (errno.ENODEV, errno.ENXIO) else (e.strerror or str(e))
        print(f"sniff: cannot capture: {why}", file=sys.stderr)
        return 1
    judged = f"judged by {cfg.file} (VRID {cfg.vrrp.vrid}, v{cfg.vrrp.version})" if cfg else "structure only"
    print(f"listening on {ifname or 'every interface'} for VRRP (IPv4 and IPv6 protocol 112), {judged}",
          file=sys.stderr, flush=True)

    def show(data: bytes, iface: str, outgoing: bool) -> bool:
        if args.vrid is not None and vrid_of(data) not in (args.vrid, None):
            return False
        line = describe(data, validator, time.time(), iface if not args.interface else "", outgoing)
        if line is None:
            return False
        print(line, flush=True)
        return True

    try:
        seen = capture(socks, show, args.count, args.timeout)
    except KeyboardInterrupt:
        return 0
    finally:
        for sock in socks:
            sock.close()
    if not seen:
        print(f"sniff: no VRRP advert{f' for VRID {args.vrid}' if args.vrid else ''} seen on "
              f"{ifname or 'any interface'} within {args.timeout:g} s (firewall dropping protocol 112? "
              "multicast filtered by the switch?)", file=sys.stderr)
        return 1
    print(f"sniff: {seen} advert(s)", file=sys.stderr)
    return 0
