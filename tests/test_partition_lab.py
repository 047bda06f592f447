"""Two masters after a partition heals: the RFC picks the winner, the winner reclaims the
clients at once with gratuitous ARP, the loser steps down (in namespaces, VIP-only).

keepalived measured for the split-brain issue: on heal the survivor sent no gratuitous ARP
and clients lost the VIP for 4.8 s. Here the client pings the VIP every 10 ms and must get
replies from the winner's MAC within 1 s of the heal.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.lab.agent import AgentProc
from tests.lab.netns import CLIENT, NetnsLab, wait_until
from tests.lab.probe import Pinger

pytestmark = pytest.mark.lab

VIP = "192.0.2.100"
FAST = {"version": 3, "advert_interval": 0.1}


def test_heal_with_two_masters_the_winner_sends_garp_at_once(lab: NetnsLab, tmp_path: Path) -> None:
    a = AgentProc(lab, "a", tmp_path, priority=150, **FAST)
    b = AgentProc(lab, "b", tmp_path, priority=100, **FAST)
    for agent in (a, b):
        lab.add_cleanup(agent.close)
    a.start()
    assert a.wait_state("MASTER", 5)
    b.start()
    assert b.wait_state("BACKUP", 5)
    with Pinger(lab, CLIENT, VIP, interval=0.01) as pinger:
        assert pinger.wait_replies(10, timeout=5)
        lab.set_bridged("a", False)  # a keeps carrier and stays master; b hears nothing and takes over
        assert b.wait_state("MASTER", 5)
        cut = time.monotonic()
        assert pinger.wait_first_reply_after(cut, timeout=5, mac=lab.mac("b")) is not None
        assert a.state() == "MASTER", "both are masters now"
        heal = time.monotonic()
        lab.set_bridged("a", True)
        back = pinger.wait_first_reply_after(heal, timeout=5, mac=lab.mac("a"))
        assert back is not None, "the client never reached the winner after the heal"
        assert wait_until(lambda: b.state() == "BACKUP", 3), b.log()[-2000:]
        time.sleep(0.3)
        assert pinger.macs_after(heal + back + 0.05) == [lab.mac("a")]
    # whichever heard the other first: b's advert, or the last one it sends as it yields
    assert "192.0.2.2 also acts as master (priority 100 < 150) while we are master: advert and gratuitous ARP " \
        "sent at once" in a.log(), a.log()[-2000:]
    assert back < 1.0, f"clients reached the winner {back:.3f} s after the heal"
    print(f"PARTITION heal: client back on the winner after {back:.3f} s")
