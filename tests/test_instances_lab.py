"""One agent, two instances, alternating masters: each VIP on its node, each instance steered alone (netns lab).

Nodes a and b each run one agent with the instances "left" (VRID 51, VIP .100, a preferred) and
"right" (VRID 52, VIP .101, b preferred), VIP-only, VRRPv3 at 0.1 s.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.lab.agent import AgentProc
from tests.lab.netns import NetnsLab, wait_until

pytestmark = pytest.mark.lab

LEFT, RIGHT = "192.0.2.100", "192.0.2.101"


def two_instances(agent: AgentProc, left: int, right: int, with_right: bool = True) -> str:
    text = (f'[agent]\ncontrol_socket = "{agent.control_socket}"\n'
            f'state_file = "{Path(str(agent.control_socket)).with_suffix(".state.json")}"\n')
    for name, vrid, vip, priority in (("left", 51, LEFT, left), ("right", 52, RIGHT, right))[:2 if with_right else 1]:
        text += (f'[[instance]]\nname = "{name}"\n[instance.vrrp]\ninterface = "eth0"\nvrid = {vrid}\nversion = 3\n'
                 f'advert_interval = 0.1\npriority = {priority}\nvips = ["{vip}/24"]\n')
    return text


def states(agent: AgentProc) -> dict[str, str]:
    return {name: block["instance"]["state"] for name, block in agent.status()["instances"].items()}


def test_two_instances_alternate_and_move_alone(lab: NetnsLab, tmp_path: Path) -> None:
    agents = {}
    for node, left, right in (("a", 150, 100), ("b", 100, 150)):
        agent = AgentProc(lab, node, tmp_path)
        agent.write_config(two_instances(agent, left, right))
        lab.add_cleanup(agent.close)
        agents[node] = agent.start()
    a, b = agents["a"], agents["b"]

    def held(left_on: str, right_on: str) -> bool:
        return all(lab.has_address(node, ip) == (node == on) for ip, on in ((LEFT, left_on), (RIGHT, right_on))
                   for node in ("a", "b"))

    assert wait_until(lambda: held("a", "b"), 5), (states(a), states(b))
    assert states(a) == {"left": "MASTER", "right": "BACKUP"} and states(b) == {"left": "BACKUP", "right": "MASTER"}
    status = a.status()
    assert "instance" not in status and status["instances"]["left"]["instance"]["vrid"] == 51
    text = a.ctl("status").stdout
    assert "instance  left" in text and "instance  right" in text and "VRID 52" in text
    assert "VRID 51" not in a.ctl("status", "right").stdout

    # a handover of one instance moves only that one
    refused = a.ctl("handover", check=False)
    assert refused.returncode != 0 and "handover needs an instance: one of left, right" in refused.stderr
    a.ctl("handover", "left")
    assert wait_until(lambda: held("b", "b"), 5), (states(a), states(b))
    assert states(b) == {"left": "MASTER", "right": "MASTER"}
    assert "left: " in a.log(), "an instance's lines name it while the agent runs several"
    # a does not preempt after its handover (it yields); b hands left back, right stays put
    b.ctl("handover", "left")
    assert wait_until(lambda: held("a", "b"), 5), (states(a), states(b))

    # a SIGHUP that removes "right" on b releases only its VIP: a takes it over, left stays on a
    b.write_config(two_instances(b, 100, 150, with_right=False))
    b.signal(signal.SIGHUP)
    assert wait_until(lambda: held("a", "a"), 5), (states(a), states(b))
    assert list(b.status()["instances"]) == ["left"] and b.status()["instance"]["state"] == "BACKUP"
    assert "[[instance]] right removed" in b.log()
    assert a.alive and b.alive


def test_a_sync_group_moves_together_when_one_member_fails(lab: NetnsLab, tmp_path: Path) -> None:
    """left and right in one group, both preferred on a: a check failing for left alone (FAULT)
    moves right to b as well; once it passes again, left preempts back and b hands right back."""
    flag = tmp_path / "left-broken"
    agents = {}
    for node, priority in (("a", 150), ("b", 100)):
        agent = AgentProc(lab, node, tmp_path)
        text = two_instances(agent, priority, priority).replace('name = "left"', 'name = "left"\nsync_group = "g"')
        text = text.replace('name = "right"', 'name = "right"\nsync_group = "g"')
        if node == "a":  # left's check on a: fails while the flag file exists
            text = text.replace('vips = ["192.0.2.100/24"]\n', 'vips = ["192.0.2.100/24"]\n[[instance.track.check]]\n'
                                f'argv = ["/bin/sh", "-c", "test ! -e {flag}"]\ninterval = 0.2\ntimeout = 0.1\n'
                                'fall = 1\n')
        agent.write_config(text)
        lab.add_cleanup(agent.close)
        agents[node] = agent.start()
    a, b = agents["a"], agents["b"]

    def on(node: str) -> bool:
        return all(lab.has_address(node, ip) for ip in (LEFT, RIGHT))

    assert wait_until(lambda: on("a"), 5), (states(a), states(b))
    flag.write_text("")
    assert wait_until(lambda: on("b"), 5), (states(a), states(b))
    assert states(a) == {"left": "FAULT", "right": "BACKUP"}
    assert "left of sync group g is FAULT: right hands over too (sync group)" in a.log()
    flag.unlink()
    assert wait_until(lambda: on("a"), 10), (states(a), states(b))
    assert "left of sync group g left MASTER: right hands over too (sync group)" in b.log()
