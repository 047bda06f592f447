"""`failoverctl sniff` on a real wire: adverts crafted with vrrp.packet.encode leave node a through
a raw socket; the command captures them on node b and says what the agent would do with each."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from tests.lab.netns import NetnsLab
from vrrp.packet import GROUP, GROUP6, Advertisement, auth_bytes, encode

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
VIP = IPv4Address("192.0.2.100")


def advert(vrid: int = 51, password: str = "s3cr3t", version: int = 2, ttl: int = 255) -> str:
    adv = Advertisement(version, vrid, 150, 1.0, (VIP,), 1 if version == 2 else 0,
                        auth_bytes(password) if version == 2 else b"\0" * 8)
    data = encode(adv, IPv4Address("192.0.2.1"), GROUP, vrid)
    return (data[:8] + bytes([ttl]) + data[9:]).hex()  # the kernel refills the header checksum


def wait_for_line(proc: subprocess.Popen[str], words: str, timeout: float) -> list[str]:
    """stderr lines up to the one holding `words` (scapy may warn first in a namespace without routes)."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line.rstrip("\n"))
        if words in line:
            return seen
    raise AssertionError(f"no '{words}' from sniff within {timeout} s: {seen}")


def sniff(lab: NetnsLab, cfg: Path, sent: list[str]) -> tuple[str, list[str], str]:
    """`failoverctl sniff` on b while a sends `sent` (hex datagrams): its "listening" line, the
    lines it printed (one per advert, all of them there) and its stderr."""
    proc = lab.popen("b", [sys.executable, "-m", "agent.cli", "sniff", "-c", str(cfg), "--count", str(len(sent)),
                           "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        head = wait_for_line(proc, "listening on", 60)
        lab.run("a", [sys.executable, "-m", "tests.lab.send_raw", "eth0", *sent], timeout=30)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == len(sent), out
    return head[-1], lines, err


def test_sniff_decodes_and_judges_adverts_on_the_wire(lab: NetnsLab, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[vrrp]\ninterface = "eth0"\nvrid = 51\nauth_pass = "s3cr3t"\nvips = ["192.0.2.100/24"]\n')
    sent = [advert(), advert(vrid=52), advert(password="wrong"), advert(ttl=254), advert(version=3)]
    head, lines, err = sniff(lab, cfg, sent)
    assert head == f"listening on eth0 for VRRP (IPv4 and IPv6 protocol 112), judged by {cfg} (VRID 51, v2)"
    common = "eth0 192.0.2.1 > 224.0.0.18 TTL"
    assert all(common in line for line in lines), lines
    assert lines[0].endswith('TTL 255 VRRPv2 VRID 51 priority 150 interval 1 s auth PASS "s3cr3t" '
                             "addresses 192.0.2.100: accepted")
    assert lines[1].endswith("VRID 52 priority 150 interval 1 s auth PASS \"s3cr3t\" addresses 192.0.2.100: "
                             "dropped: vrid (VRID 52 from 192.0.2.1, ours is 51)")
    assert lines[2].endswith('auth PASS "wrong" addresses 192.0.2.100: '
                             "dropped: auth (authentication mismatch from 192.0.2.1 (type 1))")
    assert "TTL 254 VRRPv2 VRID 51" in lines[3]
    assert lines[3].endswith("dropped: ttl (IP TTL 254 from 192.0.2.1, must be 255)")
    assert lines[4].endswith("TTL 255 VRRPv3 VRID 51 priority 150 interval 1 s addresses 192.0.2.100: "
                             "dropped: version (version 3 from 192.0.2.1, we run 2)")
    assert "sniff: 5 advert(s)" in err


def test_sniff_shows_ipv6_adverts(lab: NetnsLab, tmp_path: Path) -> None:
    """VRRPv3 over IPv6 on the wire: sent from a's link-local address (tests.lab.send_raw), captured on b."""
    lab.enable_ipv6()
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[vrrp]\ninterface = "eth0"\nvrid = 51\nversion = 3\nvips = ["2001:db8::100/64"]\n')
    source, vip = IPv6Address(lab.link_local("a")), IPv6Address("2001:db8::100")

    def advert6(vrid: int = 51, hop_limit: int = 255) -> str:
        data = encode(Advertisement(3, vrid, 150, 1.0, (vip,)), source, GROUP6, 0)
        return (data[:7] + bytes([hop_limit]) + data[8:]).hex()

    _, lines, _ = sniff(lab, cfg, [advert6(), advert6(vrid=52), advert6(hop_limit=254)])
    assert lines[0].endswith(f"eth0 {source} > ff02::12 hop limit 255 VRRPv3 VRID 51 priority 150 interval 1 s "
                             "addresses 2001:db8::100: accepted"), lines
    assert lines[1].endswith(f"dropped: vrid (VRID 52 from {source}, ours is 51)"), lines
    assert lines[2].endswith(f"dropped: ttl (hop limit 254 from {source}, must be 255)"), lines
