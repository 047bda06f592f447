"""An agent killed under real systemd: what it started lives on, and the restarted agent adopts it.

One systemd-nspawn node, the repository's unit, a `[[service]]` argv triple whose `start` leaves
a background process in the agent's cgroup (as a daemon started by a script does). SIGKILL of
the agent's main process: `KillMode=process` leaves that process running, ExecStopPost's cleanup
removes the VIP (no DRBD here: nothing would keep a peer from taking over), systemd restarts the
agent after RestartSec, and the new agent finds the chain held up to the VIP: it adopts the
service (the same process, not started again) and adds the VIP back. With `KillMode=mixed`
systemd would have killed the process with the agent, and the new agent would start another.
The DRBD half (the VIP kept, the peer waiting for the agent) runs on real DRBD in
tests/test_uml_partition.py, scenario 4.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.journal import Event
from tests.lab.agent import render_agent_conf
from tests.lab.nspawn import NspawnLab, NspawnNode, ensure_image
from tests.test_systemd_unit_failures import wait

pytestmark = pytest.mark.lab

AGENT = "failover-agent.service"
VIP = "192.0.2.100/24"
PIDFILE = "/run/lab-bg.pid"
PROGRAM = "/usr/local/bin/lab-bg"
# the admin's own script (not built from config values): start leaves a daemon behind
SCRIPT = f"""#!/bin/sh
case "$1" in
start) sleep infinity </dev/null >/dev/null 2>&1 & echo $! > {PIDFILE} ;;
stop) [ -f {PIDFILE} ] && kill "$(cat {PIDFILE})"; rm -f {PIDFILE} ;;
check) [ -f {PIDFILE} ] && kill -0 "$(cat {PIDFILE})" ;;
*) exit 2 ;;
esac
"""
CONF = render_agent_conf(priority=150, version=3, advert_interval=0.5) + f"""
[[service]]
name = "bg"
start = ["{PROGRAM}", "start"]
stop = ["{PROGRAM}", "stop"]
check = ["{PROGRAM}", "check"]
timeout = 10
"""


@pytest.fixture(scope="module")
def node() -> Iterator[NspawnNode]:
    with NspawnLab("kad", nodes=("a",), client=False, image=ensure_image()) as lab:
        a = lab["a"]
        a.write_file(PROGRAM, SCRIPT, mode=0o755)
        a.install_agent(CONF)
        yield a
        a.systemctl("stop", AGENT, check=False)


def vip_here(node: NspawnNode) -> bool:
    return VIP in node.run(["ip", "-br", "addr", "show", "eth0"], unit=False).stdout


def daemon_pid(node: NspawnNode) -> int | None:
    """The background process's PID while it runs."""
    result = node.run(["cat", PIDFILE], check=False, unit=False)
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        return None
    pid = int(result.stdout.strip())
    return pid if node.run(["kill", "-0", str(pid)], check=False, unit=False).returncode == 0 else None


def messages(node: NspawnNode, since: float) -> list[dict[str, object]]:
    return [e for e in node.journal_json(AGENT) if int(str(e.get("__REALTIME_TIMESTAMP", 0))) >= since * 1e6]


def test_a_killed_agent_s_daemon_survives_and_the_restarted_agent_adopts_it(node: NspawnNode) -> None:
    t0 = time.time()

    def log() -> str:
        return "\n".join(str(e.get("MESSAGE", "")) for e in messages(node, t0))

    node.systemctl("start", AGENT)
    wait(lambda: vip_here(node), 15, "the VIP", log)
    before = daemon_pid(node)
    assert before is not None, log()
    props = node.unit_properties(AGENT, "MainPID", "NRestarts")
    t1 = time.time()
    node.run(["kill", "-KILL", props["MainPID"]], unit=False)  # the main process dies, nothing else is signalled
    wait(lambda: node.unit_properties(AGENT, "NRestarts")["NRestarts"] == str(int(props["NRestarts"]) + 1), 15,
         "systemd to restart the agent", log)
    wait(lambda: vip_here(node) and node.unit_properties(AGENT, "ActiveState")["ActiveState"] == "active", 15,
         "the VIP back", log)
    assert daemon_pid(node) == before, f"the daemon was restarted or killed (KillMode?): {log()}"
    since = messages(node, t1)
    cleanup = [str(e["MESSAGE"]) for e in since if "removed 192.0.2.100/24" in str(e.get("MESSAGE"))]
    assert cleanup, f"ExecStopPost's cleanup should remove the VIP of a chain without DRBD: {log()}"
    adopted = [e for e in since if e.get("MESSAGE_ID") == Event.ADOPTED.value]
    assert adopted, f"no ADOPTED event: {log()}"
    assert adopted[-1]["HELD"] == "service:bg" and adopted[-1]["ACQUIRING"] == "vip", adopted[-1]
    assert "missing (killed?)" in str(adopted[-1]["MESSAGE"])
    steps = [" ".join(str(e["MESSAGE"]).split()[:3]) for e in since if str(e.get("MESSAGE", "")).startswith(
        ("service:bg ", "vip "))]
    assert steps == ["vip acquire done"], f"only the VIP is acquired again, nothing released: {steps}"

    # the adopted daemon is the agent's again: a stop releases it
    node.systemctl("stop", AGENT)
    assert daemon_pid(node) is None and not vip_here(node), log()
