"""agent.sched: the agent's loop runs SCHED_RR, what it starts runs ordinarily, a refusal is not fatal.

Each case runs in a child interpreter: the test process itself must not become real-time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agent.config import ConfigError, parse

PROBE = r"""
import json, os, subprocess, sys
from agent.sched import apply_priority
got = apply_priority(int(sys.argv[1]))
child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                       capture_output=True, text=True, check=True)
print(json.dumps({"priority": got.priority, "refused": got.refused, "describe": got.describe(),
                  "policy": os.sched_getscheduler(0), "param": os.sched_getparam(0).sched_priority,
                  "child_policy": int(child.stdout)}))
"""


def probe(priority: int, without_sys_nice: bool = False) -> dict[str, object]:
    # setpriv: root without CAP_SYS_NICE (as under a unit whose bounding set lacks it)
    wrap = ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--"] if without_sys_nice else []
    out = subprocess.run([*wrap, sys.executable, "-c", PROBE, str(priority)], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    got: dict[str, object] = json.loads(out.stdout)
    return got


def test_the_loop_runs_round_robin_and_its_children_ordinarily() -> None:
    got = probe(10)
    assert got["refused"] == "", got
    assert got["policy"] == os.SCHED_RR | os.SCHED_RESET_ON_FORK
    assert got["param"] == 10
    assert got["child_policy"] == os.SCHED_OTHER  # drbdadm, mount, ganesha: never real-time
    assert got["describe"] == "SCHED_RR 10"


def test_a_refusal_is_reported_not_fatal() -> None:
    got = probe(10, without_sys_nice=True)
    assert got["priority"] == 0 and got["policy"] == os.SCHED_OTHER
    assert "CAP_SYS_NICE" in str(got["refused"])
    assert str(got["describe"]).startswith("ordinary (SCHED_OTHER); real-time refused: ")


def test_zero_leaves_the_ordinary_scheduler() -> None:
    got = probe(0)
    assert got == {**got, "priority": 0, "refused": "", "policy": os.SCHED_OTHER, "child_policy": os.SCHED_OTHER}


BASE = """
[vrrp]
interface = "eth0"
vrid = 7
priority = 100
vips = ["192.0.2.100/24"]
"""


def test_the_priority_defaults_to_10_and_is_range_checked() -> None:
    assert parse(BASE, "agent.toml").agent.realtime_priority == 10
    assert parse(BASE + "[agent]\nrealtime_priority = 0\n", "agent.toml").agent.realtime_priority == 0
    with pytest.raises(ConfigError, match=r"realtime_priority.*0\.\.99"):
        parse(BASE + "[agent]\nrealtime_priority = 100\n", "agent.toml")
