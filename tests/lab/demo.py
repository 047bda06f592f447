"""README command 1: a live two-node failover in network namespaces, on embedded defaults.

Default (storage): nodes a (192.0.2.1, priority 150) and b (192.0.2.2, priority 100), each
with its own mount namespace and a failover-agent, share one ext4 disk (a loop device standing
in for DRBD); the master mounts it, starts nfs-ganesha on it and raises the VIP 192.0.2.100. A
client (192.0.2.10) writes acknowledged files through the VIP with libnfs the whole time. The
demo crashes the master (power cut), brings it back, stops it gracefully, and finally reads
every acknowledged file back through the VIP.

``--vip-only``: the same two nodes without storage; the client pings the VIP every 20 ms.
``--uml``: the storage demo on user-mode-linux nodes with real DRBD 8.4 and kernel nfsd
(tests/lab/uml_agents.py; builds or reuses the cached UML image, several minutes the first time).

Everything it creates is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.lab.agent import AgentProc
from tests.lab.lock import hold_lab_lock
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


def chain_lines(agent: AgentProc, since: int = 0) -> list[str]:
    """The step lines of the agent's log after character ``since``, without the clock."""
    keep = ("acquire done", "release done", "FAILED", "became MASTER", "released:", "->")
    return [ln.split(" ", 2)[-1] for ln in agent.log()[since:].splitlines() if any(k in ln for k in keep)]


def show(agent: AgentProc, since: int, node: str) -> None:
    for line in chain_lines(agent, since):
        print(f"             {node}: {line[:150]}")


def run_storage(workdir: Path) -> int:
    from tests.lab.ganesha_agents import EXPORT, GaneshaAgents
    from tests.lab.nfsclient import NfsWriter

    tl = Timeline()
    print("failover-agent storage demo: nodes a (priority 150) and b (priority 100), VRRPv3 advert 0.1 s, "
          f"VIP {VIP};\none shared ext4 disk (stand-in for DRBD), nfs-ganesha started by the agent; a client "
          "writes files through the VIP\n")
    with NetnsLab("fademo", nodes=("a", "b")) as lab:
        g = GaneshaAgents(lab)
        a, b = g.agents["a"], g.agents["b"]
        g.start()
        tl.say("a serves: chain acquired in order (mount, NFS state folder, nfs-ganesha, VIP)")
        show(a, 0, "a")
        writer = NfsWriter(lab, CLIENT, VIP, export=g.disk.path(EXPORT)).start()
        lab.add_cleanup(writer.stop)
        if not writer.wait_acked(20, timeout=20):
            print(f"client cannot write through the VIP: {writer.errors[-3:]}", file=sys.stderr)
            return 1
        tl.say(f"client: {len(writer.acks)} files written and acknowledged through the VIP")

        print("\n-- crash: a's agent SIGKILLed, cable pulled, filesystem cut off, every process of a killed")
        mark_b = len(b.log())
        crash = time.monotonic()
        g.crash("a")
        tl.say("a is dead (its mount went with it)", crash)
        g.wait_serving("b", 20)
        tl.say(f"b serves ({g.acquire_ms('b'):.0f} ms from MASTER to VIP)")
        show(b, mark_b, "b")
        back = writer.wait_first_ack_after(crash, timeout=30)
        if back is None:
            print(f"writes never resumed: {writer.errors[-3:]}", file=sys.stderr)
            return 1
        writer.wait_acked(10, timeout=20, after=crash + back)
        print(f"   => longest time without an acknowledged write: {writer.max_gap(crash - 1, crash + back + 1):.3f} s "
              "(Master_Down_Interval at priority 100: 0.361 s)")

        print("\n-- a comes back (node rebooted, agent started): it preempts, b releases in reverse order")
        mark_a, mark_b = len(a.log()), len(b.log())
        g.reboot("a")
        g.wait_serving("a", 20)
        tl.say("a serves again")
        show(b, mark_b, "b")
        show(a, mark_a, "a")
        time.sleep(1)

        print("\n-- planned stop: SIGTERM to a's agent (ordered release, priority 0 advert)")
        mark_a, mark_b = len(a.log()), len(b.log())
        stop = time.monotonic()
        took = g.stop("a")
        tl.say(f"a's agent exited after {took * 1000:.0f} ms", stop + took)
        show(a, mark_a, "a")
        g.wait_serving("b", 10)
        show(b, mark_b, "b")
        writer.wait_acked(10, timeout=20, after=stop)
        print(f"   => longest time without an acknowledged write: {writer.max_gap(stop - 1, time.monotonic()):.3f} s")

        writer.stop()
        report = writer.verify()
        print(f"\nclient: {len(writer.acks)} files acknowledged; read back through the VIP from b: {report.describe()}")
        if not report.passed:
            return 1
    print("\nlab removed (namespaces, mounts, loop device, processes)")
    return 0


def run_vip_only(workdir: Path) -> int:
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
    flavour = parser.add_mutually_exclusive_group()
    flavour.add_argument("--vip-only", action="store_true", help="VRRP and the VIP only, a pinging client")
    flavour.add_argument("--uml", action="store_true", help="user-mode-linux nodes: real DRBD 8.4 and kernel nfsd")
    args = parser.parse_args(argv)
    hold_lab_lock("tests.lab.demo")
    with tempfile.TemporaryDirectory(prefix="failover-agent-demo-") as tmp:
        try:
            if args.uml:
                from tests.lab.uml_agents import demo as uml_demo

                return uml_demo()
            return (run_vip_only if args.vip_only else run_storage)(Path(tmp))
        except KeyboardInterrupt:
            print("\ninterrupted; lab removed", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
