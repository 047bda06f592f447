"""bench.soak's systemd stand-in without a lab: the shipped unit read right, Type=notify readiness
only from the main PID, the watchdog killing a silent agent and the restart after RestartSec."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from bench.soak import UNIT_FILE, Supervisor, Unit

# sends READY=1 (and WATCHDOG=1 every 0.1 s for argv[1] seconds) the way the agent does, then hangs
CHILD = """
import sys, time
from systemd import daemon
daemon.notify("READY=1")
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    daemon.notify("WATCHDOG=1")
    time.sleep(0.1)
time.sleep(3600)
"""


class FakeAgent:
    """What Supervisor uses of AgentProc: start(env=, wait=), proc, log(), the config and socket paths."""

    def __init__(self, tmp: Path, pings_for: float) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pings_for = pings_for
        self.config_path = tmp / "agent.toml"
        self.control_socket = tmp / "agent.sock"
        self.started = 0

    def start(self, env: dict[str, str], wait: bool) -> None:
        assert not wait and env["WATCHDOG_USEC"] == "500000"
        self.started += 1
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(self.pings_for)], env=env)

    def log(self) -> str:
        return ""


class NoNamespace:
    """A node without a mount namespace: nothing else to kill, cleanup is `true`."""

    running = False

    def pids(self) -> list[int]:
        return []

    def argv(self, argv: list[str], cwd: Path | None = None) -> list[str]:
        return ["true"]


def run(sup: Supervisor, until: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.poll(time.monotonic())
        if until():
            return True
        time.sleep(0.02)
    return False


def make(tmp_path: Path, pings_for: float) -> tuple[Supervisor, FakeAgent]:
    agent = FakeAgent(tmp_path, pings_for)
    unit = Unit(restart_sec=0.3, watchdog_sec=0.5, watchdog_signal=signal.SIGKILL, prevent_exit=frozenset({2}))
    return Supervisor("a", cast(Any, agent), cast(Any, NoNamespace()), unit, tmp_path), agent


def test_the_shipped_unit_is_read_as_systemd_would() -> None:
    unit = Unit.from_file(UNIT_FILE)
    assert unit.restart_sec == 1.0 and unit.watchdog_sec == 2.0 and unit.start_timeout == 30.0
    assert unit.watchdog_signal == signal.SIGKILL and unit.prevent_exit == {2}


def test_a_silent_agent_is_killed_by_the_watchdog_and_restarted(tmp_path: Path) -> None:
    sup, agent = make(tmp_path, pings_for=1.0)
    try:
        sup.start()
        assert run(sup, lambda: sup.running, 5), sup.state
        assert run(sup, lambda: sup.watchdog_kills == 1, 5)
        assert sup.unexpected and "watchdog timeout of a running agent" in sup.unexpected[0]
        assert run(sup, lambda: agent.started == 2 and sup.running, 5), sup.state
        assert sup.exits[0]["cause"] == "signal SIGKILL" and sup.restarts == 1
    finally:
        if agent.proc is not None:
            agent.proc.kill()
            agent.proc.wait()
        sup.close()


def test_a_frozen_agent_killed_by_the_watchdog_is_an_expected_exit(tmp_path: Path) -> None:
    sup, agent = make(tmp_path, pings_for=3600)
    try:
        sup.start()
        assert run(sup, lambda: sup.running, 5)
        assert sup.freeze()
        assert run(sup, lambda: sup.watchdog_kills == 1 and sup.state != "running", 5)
        sup.thaw()
        assert run(sup, lambda: sup.running, 5)
        assert not sup.unexpected and sup.exits[0]["expected"]
        assert sup.foreign_notify == 0
    finally:
        if agent.proc is not None:
            agent.proc.kill()
            agent.proc.wait()
        sup.close()
