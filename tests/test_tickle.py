"""Tickle ACKs (agent.tickle): the packet, the connection lists, and in network namespaces a
client whose TCP connection to the VIP is reset right after the takeover instead of at its
next retransmission."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from agent.tickle import MAX_CONNECTIONS, established, parse_connections, tickle_ack
from tests.lab.agent import log_seconds
from tests.lab.netns import NetnsLab, ci_bound, wait_until
from tests.test_peer import peer_agent

VIP = "192.0.2.100"


def test_the_tickle_is_a_valid_bare_ack_out_of_any_window() -> None:
    pkt = IP(tickle_ack(VIP, 2049, "192.0.2.10", 803, ident=7))
    tcp = pkt[TCP]
    assert (pkt.src, pkt.dst, pkt.ttl, pkt.id, pkt.proto) == (VIP, "192.0.2.10", 64, 7, 6)
    assert (tcp.sport, tcp.dport, tcp.flags, tcp.seq, tcp.ack) == (2049, 803, "A", 0, 0)
    assert not bytes(tcp.payload)
    again = IP(bytes(pkt))
    stated = (again.chksum, again[TCP].chksum)
    del again.chksum, again[TCP].chksum
    assert stated == (IP(bytes(again)).chksum, IP(bytes(again))[TCP].chksum), "checksums differ from scapy's"


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0801 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1
   1: 640200C0:0801 0A0200C0:0323 01 00000000:00000000 00:00000000 00000000     0        0 0 1
   2: 010200C0:0016 0A0200C0:D431 01 00000000:00000000 02:000000B4 00000000     0        0 0 1
   3: 640200C0:0801 0B0200C0:02F1 06 00000000:00000000 03:00001771 00000000     0        0 0 3
   4: garbage
"""


def test_established_picks_the_vip_s_established_connections() -> None:
    """Layout of /proc/net/tcp (little-endian address, hex port); kernel nfsd's sockets are in it too."""
    assert established(PROC_NET_TCP, [IPv4Address(VIP)]) == [(VIP, 2049, "192.0.2.10", 803)]


def test_the_peer_s_list_is_checked_entry_by_entry() -> None:
    good = [VIP, 2049, "192.0.2.10", 803]
    bad = [[VIP, 2049, "192.0.2.10"], [VIP, 0, "192.0.2.10", 803], [VIP, 2049, "not an ip", 803],
           [VIP, True, "192.0.2.10", 803], "x", None, [VIP, 2049, "192.0.2.10", 70000]]
    assert parse_connections([*bad, good]) == [(VIP, 2049, "192.0.2.10", 803)]
    assert parse_connections({"a": 1}) == [] and parse_connections(None) == []
    assert len(parse_connections([good] * (MAX_CONNECTIONS + 5))) == MAX_CONNECTIONS


SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 2049)); s.listen(); print("listening", flush=True)
c, _ = s.accept()
while c.recv(4096):
    pass
"""

CLIENT = """
import json, socket, sys, time
c = socket.create_connection((sys.argv[1], 2049), timeout=5)
c.setblocking(True); c.settimeout(None)
print(json.dumps({"local_port": c.getsockname()[1]}), flush=True)
while True:
    try:
        c.send(b"x")
    except OSError as e:
        print(json.dumps({"reset_at": time.monotonic(), "wall": time.time(), "error": e.strerror}), flush=True)
        break
    time.sleep(0.05)
"""


def day_seconds(wall: float) -> float:
    """Seconds of the local day of a time.time() value, to compare with an agent's log clock."""
    t = datetime.fromtimestamp(wall)
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


@pytest.mark.lab
def test_client_connections_are_reset_right_after_the_takeover(lab: NetnsLab, tmp_path: Path) -> None:
    """VRRP every 1 s, the backup at priority 1: it takes over 3.0-4.0 s after the master's switch
    port dies (Master_Down_Interval 3.996 s after the last advert). The client's retransmissions
    back off (about 0.2, 0.6, 1.4, 3.1, 6.3 s after the first lost segment), so without a tickle
    the first one to reach the new master, and its RST, comes at ~6.3 s in most runs, 2.3 s or more
    after the takeover; the tickle rounds (0, 0.3, 1.0 s after it) reset the client within ~1 s.
    So the tickle is judged by the reset's delay after the takeover (wall clocks of one machine),
    which a slow takeover does not stretch; the takeover itself gets a CI bound."""
    a = peer_agent(lab, "a", tmp_path, 150, "192.0.2.2", advert_interval=1.0).start()
    b = peer_agent(lab, "b", tmp_path, 1, "192.0.2.1", advert_interval=1.0).start()
    assert wait_until(lambda: a.status()["instance"]["state"] == "MASTER", 10), a.log()[-2000:]
    server = lab.popen("a", [sys.executable, "-c", SERVER], stdout=-1, text=True)
    lab.add_cleanup(server.kill)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    client = lab.popen("client", [sys.executable, "-c", CLIENT, VIP], stdout=-1, text=True)
    lab.add_cleanup(client.kill)
    assert client.stdout is not None
    port = json.loads(client.stdout.readline())["local_port"]
    time.sleep(2.5)  # the backup polls the master's state every 2 s
    t0 = time.monotonic()
    lab.set_bridged("a", False)
    line = client.stdout.readline()
    reset = json.loads(line)
    took = reset["reset_at"] - t0
    assert wait_until(lambda: b.status()["instance"]["state"] == "MASTER", 5)
    log = b.log()
    assert "tickled 1 TCP connection(s) of the old master's clients (192.0.2.10)" in log, log[-3000:]
    mdi = 3 * 1.0 + (256 - 1) / 256
    master_at = log_seconds([t for t in b.transitions() if t.new == "MASTER"][-1].clock)
    assert master_at is not None
    after = (day_seconds(reset["wall"]) - master_at + 43200) % 86400 - 43200  # across midnight too
    print(f"TICKLE client connection {port} reset {took:.2f} s after the cut, {after:.2f} s after b became "
          f"master (Master_Down_Interval {mdi:.2f} s)")
    assert took < ci_bound(mdi), f"reset only {took:.2f} s after the cut ({line})"
    assert after < 2.0, f"reset {after:.2f} s after the takeover: the tickle did not work ({line})"
