"""Send whole IPv4 or IPv6 datagrams, given as hex, out of one interface (run inside a lab namespace).

Tests need adverts the agent's own socket never sends (TTL 254, a wrong password, another
VRID), built byte for byte with vrrp.packet.encode; an IP_HDRINCL socket sends them as they
are, except that the kernel fills in the IP header checksum. IPv6 has no header-including
socket for protocol 112: the message goes out of an AF_INET6 raw socket with the datagram's
hop limit, and its source (an address of the interface) set with IPV6_PKTINFO.

    python -m tests.lab.send_raw eth0 45c00028... [more hex datagrams]
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from ipaddress import IPv4Address, IPv6Address

from vrrp.packet import PROTO_VRRP


def main(argv: list[str]) -> int:
    ifname, *datagrams = argv
    index = socket.if_nametoindex(ifname)
    if datagrams and bytes.fromhex(datagrams[0])[0] >> 4 == 6:
        return send6(ifname, index, [bytes.fromhex(text) for text in datagrams])
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_VRRP) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        # multicast without a route in the namespace: say which interface (else ENETUNREACH)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, index))
        for text in datagrams:
            data = bytes.fromhex(text)
            s.sendto(data, (str(IPv4Address(data[16:20])), 0))
            time.sleep(0.05)  # in order on the wire, and in the capture
    return 0


def send6(ifname: str, index: int, datagrams: list[bytes]) -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, PROTO_VRRP) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        for data in datagrams:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, data[7])
            source = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, data[8:24] + struct.pack("=i", index))]
            s.sendmsg([data[40:]], source, 0, (str(IPv6Address(data[24:40])), 0, 0, index))
            time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
