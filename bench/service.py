"""Service figures under real systemd (systemd-nspawn node): time to READY, and reload transitions.

- READY: `systemctl start failover-agent` returns when the agent sent READY=1 (Type=notify),
  median over the repetitions, VIP-only mode.
- reload: the priority is changed and `systemctl reload` applied N times on a running master
  with a backup beside it; transitions counted in both nodes' journals (target: zero).
- restart: `systemctl restart failover-agent` on the master N times, a client pinging the VIP
  every 10 ms: the longest silence per restart (target <= 0.5 s), the backup's transitions
  (target: zero) and how many restarts adopted the chain.

    python -m bench.service [--reps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from agent.journal import Event
from tests.lab.agent import render_agent_conf
from tests.lab.lock import hold_lab_lock
from tests.lab.nspawn import NspawnLab, NspawnNode, ensure_image
from tests.lab.probe import Pinger


def transitions(node: NspawnNode) -> int:
    return len(node.journal_json("failover-agent.service", [f"MESSAGE_ID={Event.TRANSITION.value}"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    hold_lab_lock("bench.service")  # nothing else may load the machine while it measures
    image = ensure_image()
    with NspawnLab("fbsvc", image=image) as lab:
        a, b = lab["a"], lab["b"]
        a.install_agent(render_agent_conf(priority=150))
        b.install_agent(render_agent_conf(priority=100))
        ready = []
        for _ in range(args.reps):
            t0 = time.monotonic()
            a.systemctl("start", "failover-agent")
            ready.append(time.monotonic() - t0)
            a.systemctl("stop", "failover-agent")
        a.systemctl("start", "failover-agent")
        b.systemctl("start", "failover-agent")
        end = time.monotonic() + 10
        while time.monotonic() < end and "192.0.2.100/24" not in lab.net.addresses("a"):
            time.sleep(0.05)
        time.sleep(1)
        before = transitions(a), transitions(b)
        for i in range(args.reps):
            a.write_file("/etc/failover-agent/agent.toml", render_agent_conf(priority=151 + i % 50))
            a.systemctl("reload", "failover-agent")
            time.sleep(0.3)
        time.sleep(2)
        after = transitions(a), transitions(b)
        reloads = len(a.journal_json("failover-agent.service", [f"MESSAGE_ID={Event.RELOAD.value}"]))
        before_b = transitions(b)
        gaps, took, adopted = restarts(lab, args.reps)
        time.sleep(4)  # past the backup's Master_Down_Interval after the last restart
        restart_b = transitions(b) - before_b
    print(f"\nsystemd {args.reps} repetitions (systemd-nspawn node, VIP-only mode)\n")
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(f"| systemctl start -> READY | {statistics.median(ready):.3f} s | {min(ready):.3f} s | {max(ready):.3f} s |")
    print(f"\nreload with a priority change: {reloads} reloads applied, transitions during them: "
          f"master {after[0] - before[0]}, backup {after[1] - before[1]}")
    print(f"\nrestart of the master's agent ({len(gaps)} times, VIP-only, advert_interval 1 s)\n")
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(f"| client silence (ping every 10 ms) | {statistics.median(gaps):.3f} s | {min(gaps):.3f} s | "
          f"{max(gaps):.3f} s |")
    print(f"| systemctl restart -> ADOPTED | {statistics.median(took):.3f} s | {min(took):.3f} s | {max(took):.3f} s |")
    print(f"\nadopted {adopted} of {len(gaps)}; transitions on the backup during the restarts: {restart_b}")
    return 0


def restarts(lab: NspawnLab, reps: int) -> tuple[list[float], list[float], int]:
    """`systemctl restart` on the master `reps` times: (longest ping silence, time to ADOPTED, adoptions)."""
    a = lab["a"]
    adopted_id = [f"MESSAGE_ID={Event.ADOPTED.value}"]
    gaps: list[float] = []
    took: list[float] = []
    with Pinger(lab.net, "client", "192.0.2.100", interval=0.01) as pinger:
        pinger.wait_replies(50, timeout=10)
        for _ in range(reps):
            before = len(a.journal_json("failover-agent.service", adopted_id))
            t0 = time.monotonic()
            a.systemctl("restart", "failover-agent")
            end = t0 + 10
            while time.monotonic() < end and len(a.journal_json("failover-agent.service", adopted_id)) == before:
                time.sleep(0.02)
            took.append(time.monotonic() - t0)
            time.sleep(2.0)
            gaps.append(pinger.max_gap(start=t0, end=time.monotonic()))
    adopted = len(a.journal_json("failover-agent.service", adopted_id))
    return gaps, took, adopted
    return 0


if __name__ == "__main__":
    sys.exit(main())
