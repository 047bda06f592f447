"""Service figures under real systemd (systemd-nspawn node): time to READY, and reload transitions.

- READY: `systemctl start failover-agent` returns when the agent sent READY=1 (Type=notify),
  median over the repetitions, VIP-only mode.
- reload: the priority is changed and `systemctl reload` applied N times on a running master
  with a backup beside it; transitions counted in both nodes' journals (target: zero).

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
    print(f"\nsystemd {args.reps} repetitions (systemd-nspawn node, VIP-only mode)\n")
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(f"| systemctl start -> READY | {statistics.median(ready):.3f} s | {min(ready):.3f} s | {max(ready):.3f} s |")
    print(f"\nreload with a priority change: {reloads} reloads applied, transitions during them: "
          f"master {after[0] - before[0]}, backup {after[1] - before[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
