"""A `[[service]]` unit under real systemd (one systemd-nspawn node, no peer).

The agent runs as its own unit and drives a tiny service unit of the test's: it starts it and
sees it active before the VIP goes up; a service killed while held is restarted behind a
removed VIP; a restart of the agent adopts it (the unit has its own cgroup, so the agent's
stop does not take it along); a stop releases the VIP, then stops the unit.

One node, VRRPv3 at 0.5 s (so a restart of the agent, about 0.6 s here, stays within the 3 advert
intervals an adoption allows): it becomes master on its own, having heard no other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.lab.agent import render_agent_conf
from tests.lab.nspawn import NspawnLab, NspawnNode, ensure_image
from tests.test_systemd_unit_failures import wait

pytestmark = pytest.mark.lab

AGENT = "failover-agent.service"
SERVICE = "lab-resolver.service"
VIP = "192.0.2.100/24"
CONF = render_agent_conf(priority=150, version=3, advert_interval=0.5) + f"""
[monitor]
interval = 0.5
max_restarts = 2

[[service]]
name = "resolver"
unit = "{SERVICE}"
timeout = 10
"""
UNIT_TEXT = """[Unit]
Description=a stand-in resolver for the failover-agent lab

[Service]
ExecStart=/bin/sleep infinity
"""


@pytest.fixture(scope="module")
def node() -> Iterator[NspawnNode]:
    with NspawnLab("svc", nodes=("a",), client=False, image=ensure_image()) as lab:
        a = lab["a"]
        a.write_file(f"/etc/systemd/system/{SERVICE}", UNIT_TEXT)
        a.install_agent(CONF)
        yield a
        a.systemctl("stop", AGENT, check=False)


def agent_log(node: NspawnNode, since: float) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in node.journal_json(AGENT)
            if int(e.get("__REALTIME_TIMESTAMP", 0)) >= since * 1e6]


def service(node: NspawnNode) -> dict[str, str]:
    return node.unit_properties(SERVICE, "ActiveState", "MainPID")


def test_a_service_unit_rides_the_chain_is_restarted_adopted_and_released(node: NspawnNode) -> None:
    t0 = time.time()

    def vip_here() -> bool:
        return VIP in node.run(["ip", "-br", "addr", "show", "eth0"], unit=False).stdout

    def log() -> str:
        return "\n".join(agent_log(node, t0))

    assert service(node)["ActiveState"] == "inactive"
    node.systemctl("start", AGENT)
    wait(vip_here, 10, "the VIP", log)
    first = service(node)
    assert first["ActiveState"] == "active", first
    lines = agent_log(node, t0)
    started = next(i for i, m in enumerate(lines) if m.startswith("service:resolver acquire done"))
    vip_up = next(i for i, m in enumerate(lines) if m.startswith("vip acquire done"))
    assert started < vip_up, log()
    status = node.run(["failoverctl", "status"], unit=False).stdout
    assert "service:resolver" in status and "last acquire" in status, status

    # killed while held: the monitor sees it, the VIP goes, the unit is started again, the VIP comes back
    t1 = time.time()
    node.systemctl("kill", "--signal=KILL", SERVICE)
    wait(lambda: any(m.startswith("service:resolver check FAILED") for m in agent_log(node, t1)), 5,
         "the failed check", log)
    wait(lambda: service(node)["ActiveState"] == "active" and service(node)["MainPID"] != first["MainPID"], 10,
         "the restarted service", log)
    wait(vip_here, 10, "the VIP again", log)
    after = [m for m in agent_log(node, t1) if m.split(" ", 1)[0] in ("vip", "service:resolver")]
    assert [" ".join(m.split()[:3]) for m in after][:5] == [
        "service:resolver check FAILED", "vip release done", "service:resolver release done",
        "service:resolver acquire done", "vip acquire done"], after

    # an upgrade's restart: the unit lives in its own cgroup, so it is still there to be adopted
    running = service(node)
    t2 = time.time()
    node.systemctl("restart", AGENT)
    wait(lambda: any("adopted" in m for m in agent_log(node, t2)), 10, "the adoption", log)
    assert service(node) == running and vip_here()

    # a stop: VIP first, then the unit, verified inactive
    t3 = time.time()
    node.systemctl("stop", AGENT)
    assert service(node)["ActiveState"] == "inactive" and not vip_here()
    order = [" ".join(m.split()[:3]) for m in agent_log(node, t3) if m.split(" ", 1)[0] in ("vip", "service:resolver")]
    assert order == ["vip release done", "service:resolver release done"], order
