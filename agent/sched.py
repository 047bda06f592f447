"""The agent's CPU scheduling: SCHED_RR for its own loop, the ordinary scheduler for what it starts.

A master's adverts are only as punctual as its wake-ups. With both CPUs busy (a resync, a
backup job, nfsd threads) the ordinary scheduler lets a waking process wait behind the running
ones for 4-20 ms (bench.jitter, "busy"), and a backup whose master is late that much more than
its skew allows takes over. A real-time policy runs the loop the moment its timer fires. The
loop is mostly asleep (well under 0.1 % of a core at 1 s adverts), so it takes nothing from the
rest of the machine; a runaway is bounded by the kernel's RT throttling (sched_rt_runtime_us,
95 % of a CPU) and then killed by the systemd watchdog. Corosync and sbd run real-time by
default for the same reason; keepalived has `vrrp_rt_priority` (off by default).

SCHED_RESET_ON_FORK keeps the policy to the agent: drbdadm, mount, nfsd's helpers, ganesha and
the admin's services start with the ordinary scheduler, and so do threads the loop creates.

Not fatal when refused: without CAP_SYS_NICE, under systemd's RestrictRealtime=, or on a
kernel with RT group scheduling whose cgroup has no RT budget (containers), the agent runs on
the ordinary scheduler and says so once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

__all__ = ["Scheduling", "apply_priority"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scheduling:
    """What the agent runs with: `priority` 0 is the ordinary scheduler; `refused` says why, when
    a priority asked for could not be had."""

    priority: int
    refused: str = ""

    def describe(self) -> str:
        policy = f"SCHED_RR {self.priority}" if self.priority else "ordinary (SCHED_OTHER)"
        return f"{policy}; real-time refused: {self.refused}" if self.refused else policy


def apply_priority(priority: int) -> Scheduling:
    """Run the calling thread (the event loop's) at `priority` (1..99), or ordinarily for 0."""
    try:
        if priority:
            os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
        elif os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK != os.SCHED_OTHER:  # a reload that turns it off
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as e:
        why = f"{e.strerror or e} (needs CAP_SYS_NICE, no RestrictRealtime=, and an RT budget for the cgroup)"
        if priority:
            log.warning("agent.realtime_priority = %d refused: %s; running on the ordinary scheduler, "
                        "so a busy CPU can delay adverts", priority, why)
        return Scheduling(0, why if priority else "")
    return Scheduling(priority)
