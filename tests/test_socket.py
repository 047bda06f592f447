"""The doorbell filter: which packets wake the daemon, in the BPF interpreter and in the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.lab.agent import REPO
from tests.lab.netns import NetnsLab
from vrrp.packet import GROUP, Advertisement, encode
from vrrp.rawsock import run_program
from vrrp.socket import WAKE_NEVER, doorbell_program

SRC = IPv4Address("192.0.2.1")


def advert(priority: int = 100, vrid: int = 51, version: int = 2) -> bytes:
    interval = 1.0 if version == 2 else 0.1
    return encode(Advertisement(version, vrid, priority, interval, (IPv4Address("192.0.2.100"),)), SRC, GROUP, 1)


BACKUP = doorbell_program(0x21, 51, WAKE_NEVER)
MASTER_150 = doorbell_program(0x21, 51, 150)


@pytest.mark.parametrize(("packet", "prog", "wakes"), [
    (advert(100), BACKUP, False),  # routine advert from the master: queue only
    (advert(254), BACKUP, False),
    (advert(0), BACKUP, True),  # master leaving: act after Skew_Time, not at the next timer
    (advert(100, vrid=52), BACKUP, True),  # foreign VRID: drained and counted at once
    (advert(100, version=3), BACKUP, True),  # wrong version
    (advert(149), MASTER_150, False),  # a lower backup that thinks it is master: harmless
    (advert(150), MASTER_150, True),  # equal priority: address decides, at once
    (advert(200), MASTER_150, True),  # challenger: step down at once
    (advert(0), MASTER_150, True),
    (b"\x45" + bytes(10), BACKUP, False),  # too short to judge: waits in the queue
])
def test_doorbell_decisions(packet: bytes, prog: list[tuple[int, int, int, int]], wakes: bool) -> None:
    assert run_program(prog, packet) is wakes


@given(st.binary(max_size=80), st.integers(0, 256))
def test_doorbell_never_fails_on_garbage(data: bytes, threshold: int) -> None:
    run_program(doorbell_program(0x31, 7, threshold), data)


LISTENER = """
import asyncio, json, sys
sys.path.insert(0, {repo!r})
from vrrp.socket import VrrpSocket
async def main():
    loop = asyncio.get_running_loop()
    got = []
    sock = VrrpSocket("eth0", {ifindex}, (), lambda: got.extend(sock.drain()))
    sock.open(0x21, 51)
    print("ready", flush=True)
    await asyncio.sleep(2.0)
    late = sock.drain()
    print(json.dumps({{"wakeups": sock.wakeups, "at_wake": len(got), "queued": len(late)}}), flush=True)
    sock.close()
asyncio.run(main())
"""

SENDER = """
import socket, sys, time
sys.path.insert(0, {repo!r})
from ipaddress import IPv4Address as A
from vrrp.packet import Advertisement, encode
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
def send(prio):
    adv = Advertisement(2, 51, prio, 1.0, (A("192.0.2.100"),))
    s.sendto(encode(adv, A("192.0.2.1"), A("224.0.0.18"), 1), ("224.0.0.18", 0))
for _ in range(5):
    send(100)
    time.sleep(0.05)
time.sleep(0.3)
send(0)
"""


@pytest.mark.lab
def test_kernel_filter_rings_only_for_priority_zero() -> None:
    with NetnsLab(f"fs{os.getpid() % 10000}", nodes=("a", "b"), client=False) as lab:
        ifindex = json.loads(lab.run("b", ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["ifindex"]
        listener = lab.popen("b", [sys.executable, "-c", LISTENER.format(repo=str(REPO), ifindex=ifindex)],
                             stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        lab.run("a", [sys.executable, "-c", SENDER.format(repo=str(REPO))])
        result = json.loads(listener.stdout.readline())
        listener.wait(5)
    # five routine adverts rang nothing; the priority 0 one rang once and the drain at that
    # wakeup picked up all six, with nothing left behind
    assert result == {"wakeups": 1, "at_wake": 6, "queued": 0}, result
