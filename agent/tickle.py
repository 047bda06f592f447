"""Tickle ACKs: make clients of the old master reset their TCP connections at once.

After a failover the NFS client's TCP connection to the VIP still waits for the old master:
its retransmission timer backs off exponentially (about +6.5 s, then +13 s after the last
answered segment), and only the retransmission that reaches the new master gets the RST that
makes the RPC layer reconnect. So the new master sends each of the old master's client
connections a bare ACK from the VIP with a sequence number outside the client's window; the
client answers with a duplicate ACK (RFC 793, unacceptable segment), the new master's kernel
has no such socket and answers that with a RST whose sequence number is the client's own
`rcv_nxt`, and the client reconnects now. CTDB does the same for its public addresses.

The backup learns the master's connections over the peer channel ("state" carries them) while
all is well; `established` reads them from /proc/net/tcp on the master (kernel nfsd's sockets
have no process, so this is the one place that lists them).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from vrrp.checksum import checksum
from vrrp.rawsock import bind_to_device

TCP_ESTABLISHED = "01"
MAX_CONNECTIONS = 400  # what one peer-channel datagram carries comfortably
Connection = tuple[str, int, str, int]  # local address, local port, remote address, remote port


def _addr(hexaddr: str) -> tuple[str, int]:
    ip, port = hexaddr.split(":")
    return str(IPv4Address(struct.pack("<I", int(ip, 16)))), int(port, 16)


def established(proc_net_tcp: str, local: Iterable[IPv4Address]) -> list[Connection]:
    """The ESTABLISHED connections of /proc/net/tcp whose local address is one of `local`."""
    wanted = {str(a) for a in local}
    found: list[Connection] = []
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != TCP_ESTABLISHED:
            continue
        try:
            (lip, lport), (rip, rport) = _addr(fields[1]), _addr(fields[2])
        except ValueError:
            continue
        if lip in wanted:
            found.append((lip, lport, rip, rport))
    return found[:MAX_CONNECTIONS]


def client_connections(vips: Iterable[IPv4Address], proc: str = "/proc/net/tcp") -> list[list[str | int]]:
    """Our clients' TCP connections to the VIPs, as the peer channel carries them (none if unreadable)."""
    try:
        text = Path(proc).read_text()
    except OSError:
        return []
    return [list(c) for c in established(text, vips)]


def parse_connections(value: object) -> list[Connection]:
    """The peer's list, checked entry by entry (it crossed the network)."""
    out: list[Connection] = []
    if not isinstance(value, list):
        return out
    for item in value[:MAX_CONNECTIONS]:
        if (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) and isinstance(item[2], str)
                and all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in item[1::2])):
            with contextlib.suppress(ValueError):
                out.append((str(IPv4Address(item[0])), item[1], str(IPv4Address(item[2])), item[3]))
    return out


def tickle_ack(src: str, sport: int, dst: str, dport: int, ident: int = 0) -> bytes:
    """An IPv4 datagram carrying a bare TCP ACK, seq 0 and ack 0: out of any real window."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x10, 1024, 0, 0)
    csum = checksum(s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident & 0xFFFF, 0, 64, socket.IPPROTO_TCP, 0, s, d)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


class Tickler:
    """One raw socket on the service interface; `send` never raises (a tickle is best effort)."""

    def __init__(self, interface: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            bind_to_device(self.sock, interface)
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def send(self, connections: Sequence[Connection]) -> int:
        sent = 0
        for i, (lip, lport, rip, rport) in enumerate(connections):
            with contextlib.suppress(OSError):
                self.sock.sendto(tickle_ack(lip, lport, rip, rport, i), (rip, 0))
                sent += 1
        return sent

    def close(self) -> None:
        self.sock.close()
