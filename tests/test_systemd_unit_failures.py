"""The unit when things go wrong, under real systemd and journald (a systemd-nspawn node).

- A config that does not validate: the unit must end up failed, not restarting in a loop (the
  agent exits 2 and RestartPreventExitStatus=2 holds; an ExecStartPre= check would not, since
  that option only looks at the main process), and `systemctl status` must say which file,
  key and reason.
- The file edited into something invalid while the agent runs: a clean stop must not fail the
  unit, and after a crash (SIGKILL) ExecStopPost's `failoverctl cleanup` must still remove the
  VIP, from the snapshot of the config the agent ran, not from the file.

One node, no peer: it becomes master on its own (VRRPv3, 0.1 s adverts, so within ~0.4 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.lab.agent import render_agent_conf
from tests.lab.netns import wait_until
from tests.lab.nspawn import NspawnLab, NspawnNode, ensure_image

pytestmark = pytest.mark.lab

CONF_PATH = "/etc/failover-agent/agent.toml"
UNIT = "failover-agent.service"
VIP = "192.0.2.100/24"
GOOD = render_agent_conf(priority=150, version=3, advert_interval=0.1)
BROKEN = GOOD.replace("priority = 150", "priority = 300")
REASON = "must be in 1..255, got 300"


@pytest.fixture(scope="module")
def lab() -> Iterator[NspawnLab]:
    with NspawnLab("fsu", nodes=("a",), client=False, image=ensure_image()) as lab:
        yield lab


@pytest.fixture
def node(lab: NspawnLab) -> Iterator[NspawnNode]:
    """The node with the unit stopped and its failed state and restart counter reset."""
    a = lab["a"]
    yield a
    a.systemctl("stop", UNIT, check=False)
    a.systemctl("reset-failed", UNIT, check=False)


def props(node: NspawnNode) -> dict[str, str]:
    return node.unit_properties(UNIT, "ActiveState", "SubState", "Result", "MainPID", "ExecMainStatus",
                                "NRestarts")


def status_text(node: NspawnNode) -> str:
    """What an admin sees: `systemctl status` with its default 10 journal lines (exit 3 when failed)."""
    return node.systemctl("status", "--no-pager", "--full", UNIT, check=False).stdout


def unit_log(node: NspawnNode, since: float) -> str:
    """The unit's journal messages from ``since`` (host time: the node shares the kernel's clock)."""
    return "\n".join(str(e.get("MESSAGE", "")) for e in node.journal_json(UNIT)
                     if int(e.get("__REALTIME_TIMESTAMP", 0)) >= since * 1e6)


def wait(predicate: object, timeout: float, what: str, details: object = None) -> None:
    if not wait_until(predicate, timeout, interval=0.05):  # type: ignore[arg-type]
        extra = details() if callable(details) else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{extra}")


def assert_failed_for_good(node: NspawnNode, restarts: int) -> None:
    """Failed on exit status 2, and no restart follows (RestartSec=1: 3 s would show several)."""
    wait(lambda: props(node)["ActiveState"] == "failed", 10, "the unit to fail", lambda: status_text(node))
    time.sleep(3)
    p = props(node)
    got = (p["ActiveState"], p["SubState"], p["Result"], p["ExecMainStatus"])
    assert got == ("failed", "failed", "exit-code", "2"), f"{p}\n{status_text(node)}"
    assert p["NRestarts"] == str(restarts), f"restart loop on a config error: {p}\n{status_text(node)}"


def test_invalid_config_fails_the_unit_without_restarts_and_status_says_why(node: NspawnNode) -> None:
    t0 = time.time()
    node.install_agent(BROKEN)
    started = node.systemctl("start", UNIT, check=False)
    assert started.returncode != 0, "Type=notify: the start job fails when the agent exits before READY=1"
    assert_failed_for_good(node, restarts=0)
    wanted = (CONF_PATH, "vrrp.priority", REASON)
    wait(lambda: all(w in status_text(node) for w in wanted), 5, f"{wanted} in systemctl status",
         lambda: status_text(node))
    status = status_text(node)
    assert "config error" in status and "start-limit-hit" not in status, status
    # ExecStopPost ran too and knew there was nothing to clean up (no second copy of the error)
    assert "nothing to clean up" in unit_log(node, t0)


def test_clean_stop_after_the_file_was_broken_does_not_fail_the_unit(lab: NspawnLab, node: NspawnNode) -> None:
    t0 = time.time()
    node.install_agent(GOOD)
    node.systemctl("start", UNIT)
    wait(lambda: VIP in lab.net.addresses("a"), 8, "the VIP on the single node")
    node.write_file(CONF_PATH, BROKEN)
    node.systemctl("stop", UNIT)
    p = props(node)
    assert (p["ActiveState"], p["Result"]) == ("inactive", "success"), f"{p}\n{status_text(node)}"
    assert VIP not in lab.net.addresses("a")
    assert "cleanup uses the config the agent ran (snapshot /run/failover-agent/" in unit_log(node, t0)


def test_crash_after_the_file_was_broken_cleanup_removes_the_vip_from_the_snapshot(
        lab: NspawnLab, node: NspawnNode) -> None:
    t0 = time.time()
    node.install_agent(GOOD)
    node.systemctl("start", UNIT)
    wait(lambda: VIP in lab.net.addresses("a"), 8, "the VIP on the single node")
    snapshots = node.run(["ls", "/run/failover-agent"], unit=False).stdout.split()
    assert any(name.startswith("running-config-") for name in snapshots), snapshots
    node.write_file(CONF_PATH, BROKEN)  # edited, never reloaded: the agent still runs GOOD
    pid = props(node)["MainPID"]
    node.run(["kill", "-KILL", pid], unit=False)
    wait(lambda: VIP not in lab.net.addresses("a"), 5, "ExecStopPost to remove the VIP",
         lambda: unit_log(node, t0))
    log = unit_log(node, t0)
    assert "cleanup uses the config the agent ran (snapshot /run/failover-agent/running-config-" in log, log
    assert f"removed {VIP}" in log, log
    # Restart=on-failure restarts the killed agent once; that start meets the broken file and stops there
    assert_failed_for_good(node, restarts=1)
    assert REASON in status_text(node)
    assert VIP not in lab.net.addresses("a")
