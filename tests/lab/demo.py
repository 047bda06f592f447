"""README command 1: a live two-node failover in network namespaces, on embedded defaults.

Builds a bridge with nodes a (192.0.2.1, priority 150) and b (192.0.2.2, priority 100) and a
client (192.0.2.10) that pings the VIP 192.0.2.100 every 20 ms; crashes the master (SIGKILL of
its agent and its cable pulled), then stops the new master gracefully, and prints what the
client saw. Everything it creates is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.lab.agent import AgentProc
from tests.lab.netns import CLIENT, NetnsLab, wait_until
from tests.lab.probe import Pinger

VIP = "192.0.2.100"


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, what: str, at: float | None = None) -> None:
        t = (time.monotonic() if at is None else at) - self.t0
        print(f"  {t:8.3f} s  {what}", flush=True)


def holder(lab: NetnsLab) -> str:
    got = [n for n in ("a", "b") if f"{VIP}/24" in lab.addresses(n)]
    return ",".join(got) or "nobody"


def run(workdir: Path) -> int:
    tl = Timeline()
    print("failover-agent demo: two nodes (a: priority 150, b: priority 100), VRRPv2, advert 1 s, "
          f"VIP {VIP}; client pings the VIP every 20 ms\n")
    with NetnsLab("fademo", nodes=("a", "b")) as lab:
        a = AgentProc(lab, "a", workdir, priority=150)
        b = AgentProc(lab, "b", workdir, priority=100)
        lab.add_cleanup(a.close)
        lab.add_cleanup(b.close)
        a.start()
        b.start()
        tl.say("agents started on a and b (both BACKUP, waiting Master_Down_Interval)")
        if not a.wait_state("MASTER", 8):
            print(a.log(), file=sys.stderr)
            return 1
        tl.say(f"a is MASTER: {a.transitions()[-1].reason}; VIP held by {holder(lab)}")
        with Pinger(lab, CLIENT, VIP, interval=0.02) as pinger:
            if not pinger.wait_replies(10, timeout=5):
                print("client cannot reach the VIP", file=sys.stderr)
                return 1
            tl.say(f"client gets replies from {pinger.macs_after(0)[-1]} (a is {lab.mac('a')})")

            print("\n-- crash: a's cable pulled and its agent SIGKILLed")
            crash = time.monotonic()
            lab.set_link("a", False)
            a.kill()
            tl.say("a crashed", crash)
            b.wait_state("MASTER", 8)
            tl.say(f"b is MASTER: {b.transitions()[-1].reason}")
            back = pinger.wait_first_reply_after(crash, timeout=8, mac=lab.mac("b"))
            if back is None:
                print("the VIP never answered again", file=sys.stderr)
                return 1
            tl.say(f"client's first reply from the VIP after the crash, from b's MAC {lab.mac('b')}", crash + back)
            print(f"   => crash outage seen by the client: {pinger.max_gap(start=crash - 0.1):.3f} s "
                  "(Master_Down_Interval at priority 100 = 3.609 s)")

            print("\n-- a comes back (cable in, agent restarted): it preempts b")
            lab.set_link("a", True)
            a2 = AgentProc(lab, "a", workdir / "restarted", priority=150)
            lab.add_cleanup(a2.close)
            a2.start()
            wait_until(lambda: a2.state() == "MASTER", 8)
            tl.say(f"a is MASTER again; VIP held by {holder(lab)}")
            time.sleep(1)

            print("\n-- planned stop: SIGTERM to a's agent (priority 0 advert, VIP released)")
            stop = time.monotonic()
            code, took = a2.terminate()
            tl.say(f"a's agent exited with {code} after {took * 1000:.0f} ms", stop + took)
            b.wait_state("MASTER", 3)
            tl.say(f"b is MASTER: {b.transitions()[-1].reason}")
            pinger.wait_replies(5, timeout=3, after=stop)
            print(f"   => planned-stop outage seen by the client: {pinger.max_gap(start=stop - 0.1):.3f} s")
            print(f"\nclient: {len(pinger.replies)} replies, {pinger.lost()} lost in all")
        print("\nagent logs:")
        for name, p in (("a (first run)", a), ("a (restarted)", a2), ("b", b)):
            print(f"--- {name}")
            print(p.log().rstrip())
    print("\nlab removed (namespaces, processes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="failover-agent-demo-") as tmp:
        try:
            return run(Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; lab removed", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
