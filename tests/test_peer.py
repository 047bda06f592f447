"""The peer channel: its wire format (forged, stale, replayed, malformed messages are refused)
and, between two agents in network namespaces, the channel itself and the fence-peer handler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.peerwire import MAC_LEN, Rejected, ReplayGuard, decode, encode, load_secret, new_message
from tests.lab.agent import REPO, AgentProc, render_agent_conf
from tests.lab.netns import NetnsLab, ci_bound, wait_until

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0


def fresh(kind: str = "state", ts: float = NOW) -> bytes:
    return encode(new_message(kind, "192.0.2.2", ts), KEY)


def test_a_genuine_message_is_accepted_once() -> None:
    guard = ReplayGuard(5.0)
    data = fresh("outdate")
    msg = decode(data, KEY, NOW + 1, guard)
    assert msg.kind == "outdate" and msg.sender == "192.0.2.2"
    with pytest.raises(Rejected) as e:
        decode(data, KEY, NOW + 2, guard)
    assert e.value.reason == "replayed"


@pytest.mark.parametrize(("data", "reason"), [
    (encode(new_message("outdate", "192.0.2.2", NOW), b"another secret of sixteen+"), "forged"),
    (fresh()[:MAC_LEN] + fresh()[MAC_LEN:].replace(b"state", b"stata"), "forged"),  # body changed, MAC kept
    (fresh(ts=NOW - 60), "stale"),
    (fresh(ts=NOW + 60), "stale"),
    (b"x" * 10, "malformed"),
    (b"\0" * 5000, "malformed"),
])  # fmt: skip
def test_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as e:
        decode(data, KEY, NOW, ReplayGuard(5.0))
    assert e.value.reason == reason


def test_authentic_but_malformed_json_is_refused_not_crashing() -> None:
    import hashlib
    import hmac

    message = b'{"v":1,"kind":"state","from":"x","ts":%s,"nonce":"0123456789","body":{}}'
    for payload in (b"[1,2]", b'{"v":1,"kind":"promote","from":"x","ts":1,"nonce":"0123456789","body":{}}',
                    b'{"v":2}', b"\xff\xfe",
                    # found by bench.fuzz: RecursionError from json, OverflowError from float(ts)
                    b"[" * 2000, message % (b"1" + b"0" * 400), message % b"-Infinity", message % b"NaN"):
        data = hmac.new(KEY, payload, hashlib.sha256).digest() + payload
        with pytest.raises(Rejected) as e:
            decode(data, KEY, NOW, ReplayGuard(5.0))
        assert e.value.reason == "malformed"


@given(st.binary(max_size=300))
def test_garbage_only_ever_raises_rejected(data: bytes) -> None:
    with pytest.raises(Rejected):
        decode(data, KEY, NOW, ReplayGuard(5.0))


def test_the_secret_file_must_be_private_and_long_enough(tmp_path: Path) -> None:
    f = tmp_path / "peer.key"
    f.write_bytes(KEY + b"\n")
    f.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_secret(str(f))
    f.chmod(0o600)
    assert load_secret(str(f)) == KEY
    f.write_bytes(b"short")
    with pytest.raises(ValueError, match="at least 16"):
        load_secret(str(f))


# -- two agents ---------------------------------------------------------------------------------

SENDER = """
import json, socket, sys, time
sys.path.insert(0, sys.argv[1])
from agent.peerwire import encode, new_message
key, kind, ts_offset, repeat = sys.argv[2].encode(), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
data = encode(new_message(kind, "192.0.2.2", time.time() + ts_offset), key)
answers = []
for _ in range(repeat):
    s.sendto(data, ("192.0.2.1", 7801))
    try:
        answers.append(s.recv(4096)[32:].decode())
    except TimeoutError:
        answers.append(None)
print(json.dumps(answers))
"""


def peer_agent(lab: NetnsLab, node: str, tmp_path: Path, priority: int, peer: str, extra: str = "",
               advert_interval: float = 0.1) -> AgentProc:
    key = tmp_path / f"peer-{node}.key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    agent = AgentProc(lab, node, tmp_path, priority=priority)
    text = render_agent_conf({"control_socket": str(agent.control_socket)}, priority=priority, version=3,
                             advert_interval=advert_interval)
    text += f'[peer]\naddress = "{peer}"\nsecret_file = "{key}"\ntimeout = 0.5\n' + extra
    agent.write_config(text)
    lab.add_cleanup(agent.close)
    return agent


def send_from_b(lab: NetnsLab, key: bytes, kind: str, ts_offset: float = 0.0, repeat: int = 1) -> list[str | None]:
    out = lab.run("b", [sys.executable, "-c", SENDER, str(REPO), key.decode(), kind, str(ts_offset), str(repeat)])
    answers: list[str | None] = json.loads(out.stdout)
    return answers


@pytest.mark.lab
def test_peer_channel_answers_the_peer_and_drops_forged_stale_and_replayed(lab: NetnsLab, tmp_path: Path) -> None:
    a = peer_agent(lab, "a", tmp_path, 150, "192.0.2.2").start()
    answers = send_from_b(lab, KEY, "state", repeat=2)
    assert answers[0] is not None and json.loads(answers[0])["body"]["vrrp"] in ("BACKUP", "MASTER")
    assert answers[1] is None, "a replayed request was answered"
    assert send_from_b(lab, b"not the shared secret at all!!", "outdate") == [None]
    assert send_from_b(lab, KEY, "state", ts_offset=-120) == [None]
    lab.run("client", [sys.executable, "-c", SENDER.replace('"192.0.2.2", time', '"192.0.2.10", time'),
                       str(REPO), KEY.decode(), "state", "0", "1"])  # right key, wrong host
    rejected = a.status()["instance"]["peer"]["rejected"]
    assert rejected == {"replayed": 1, "forged": 1, "stale": 1, "not_peer": 1}, rejected
    log = a.log()
    for needle in ("(replayed: nonce", "(forged: HMAC does not match", "(stale: timestamp -120", "(not_peer: only"):
        assert needle in log
    assert a.alive


def fence(agent: AgentProc) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "fence-peer", "--socket", str(agent.control_socket)],
                          capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={**os.environ, "DRBD_RESOURCE": "r0"})


@pytest.mark.lab
def test_fence_peer_handler_exit_codes(lab: NetnsLab, tmp_path: Path) -> None:
    a = peer_agent(lab, "a", tmp_path, 150, "192.0.2.2").start()
    b = peer_agent(lab, "b", tmp_path, 100, "192.0.2.1").start()
    assert wait_until(lambda: a.status()["instance"]["state"] == "MASTER", 5)
    # b serves nothing but has no DRBD to outdate: the handler must not claim success (6: not
    # fenced, a disconnected Primary's I/O stays frozen; DRBD defines no "failed" code)
    r = fence(a)
    assert r.returncode == 6 and "could not outdate" in r.stderr and "no [drbd] section" in r.stderr
    # a is master: b asking a to outdate gets "primary" -> 6
    r = fence(b)
    assert r.returncode == 6, r.stdout + r.stderr
    # b gone, no witnesses configured: not fenced
    b.kill()
    t0 = time.monotonic()
    r = fence(a)
    assert r.returncode == 6 and "may be the isolated node" in r.stderr
    assert time.monotonic() - t0 < 5
    assert "asked the peer 192.0.2.2 to outdate its disk: unreachable" in a.log()


@pytest.mark.lab
def test_fence_peer_declares_the_peer_dead_only_while_a_witness_answers_now(lab: NetnsLab, tmp_path: Path) -> None:
    """Exit 5 tells DRBD the peer is dead: only on a fresh witness answer, never on the tracker's verdict,
    which lags by fall x interval (here 10 s, so a stale verdict would still say "connected"). Without
    an answer the handler asks again until the tracker decides, then says 6 (not fenced)."""
    track = '[track]\nwitnesses = ["192.0.2.10"]\ninterval = 1.0\ntimeout = 0.3\nfall = 10\nrise = 1\n'
    a = peer_agent(lab, "a", tmp_path, 150, "192.0.2.2", track).start()
    assert wait_until(lambda: a.status()["instance"]["state"] == "MASTER", 10), a.log()[-3000:]
    r = fence(a)  # no b at all: unreachable, and the witness answers
    assert r.returncode == 5, r.stdout + r.stderr
    assert "taken as dead" in r.stdout
    lab.run("client", ["ip", "route", "add", "blackhole", f"{lab.ipv4('a')}/32"])
    t0 = time.monotonic()
    r = fence(a)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "we may be the isolated node" in r.stderr and "no echo reply" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30
    assert "fence-peer: the peer does not answer; witnesses:" in a.log()


@pytest.mark.lab
def test_heartbeats_take_over_from_a_dead_peer_without_waiting_for_master_down(lab: NetnsLab, tmp_path: Path) -> None:
    """VRRPv3 with 1 s adverts: Master_Down_Interval is 3.6 s for b; its heartbeats (0.1 s, 3 missed)
    tell it within 0.3 s that a is gone, and it takes over then."""
    a = peer_agent(lab, "a", tmp_path, 150, "192.0.2.2", advert_interval=1.0).start()
    assert wait_until(lambda: a.status()["instance"]["state"] == "MASTER", 10), a.log()[-3000:]
    b = peer_agent(lab, "b", tmp_path, 100, "192.0.2.1", advert_interval=1.0).start()
    assert wait_until(lambda: (b.status()["instance"]["peer"]["paths"].get("192.0.2.1") or 9) < 0.5, 10)
    peer = b.status()["instance"]["peer"]
    assert peer["heartbeat"] == 0.1 and not peer["gone"] and b.status()["instance"]["state"] == "BACKUP"
    t0 = time.monotonic()
    a.kill()  # SIGKILL: no priority 0, no farewell; b hears nothing on any path
    assert wait_until(lambda: b.status()["instance"]["state"] == "MASTER", ci_bound(2.5)), b.log()[-3000:]
    took = time.monotonic() - t0
    assert "the peer is gone: silent on every path" in b.transitions()[-1].reason, b.transitions()
    assert took < 3.0, f"b took over after {took:.2f} s, as late as Master_Down_Interval"
    assert b.status()["instance"]["peer"]["gone"]
