"""Run failover-agent inside a lab node, the way systemd would: foreground, log on stderr.

The agent is started from the repository (``python -m agent.daemon``) with the interpreter
running the tests, so tests exercise the working tree rather than whatever copy is installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.netns import NetnsLab, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
TRANSITION = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) INFO VRRP \d+ on \S+: (\w+) -> (\w+): (.*)$", re.M)


def log_seconds(line: str) -> float | None:
    """Seconds of the day of an agent log line or clock (HH:MM:SS.mmm: its host's local wall clock)."""
    m = re.match(r"(\d\d):(\d\d):(\d\d\.\d{3})(?: |$)", line)
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot render {v!r} as TOML")


def render_agent_conf(agent: dict[str, Any] | None = None, **vrrp: Any) -> str:
    """A [vrrp] section (defaults fit the lab: eth0, VRID 51, VIP 192.0.2.100/24) and an [agent] one."""
    values: dict[str, Any] = {"interface": "eth0", "vrid": 51, "vips": ["192.0.2.100/24"]}
    values.update(vrrp)
    lines = ["[vrrp]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    if agent:
        if "control_socket" in agent and "state_file" not in agent:
            # agents of a lab share the host's /var/lib: each keeps its state beside its socket
            agent = {**agent, "state_file": str(Path(agent["control_socket"]).with_suffix(".state.json"))}
        lines += ["[agent]"] + [f"{k} = {_toml_value(v)}" for k, v in agent.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Logged:
    clock: str
    old: str
    new: str
    reason: str


class AgentProc:
    """One failover-agent process in one lab node."""

    def __init__(self, lab: NetnsLab, node: str, workdir: Path, **vrrp: Any) -> None:
        self.lab, self.node = lab, node
        # how to start a process "on the node": in its network namespace; a node with its own
        # mount namespace too replaces this with NodeNamespace.popen (argv, cwd=, stdout=, stderr=)
        self.spawn: Callable[..., subprocess.Popen[bytes]] = lambda argv, **kw: lab.popen(node, argv, **kw)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"agent-{node}.toml"
        self.log_path = workdir / f"agent-{node}.log"
        # every agent of a lab shares the host's /run: each gets its own control socket
        self.control_socket = workdir / f"agent-{node}.sock"
        self.vrrp = vrrp
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def write_config(self, text: str | None = None, **vrrp: Any) -> None:
        """Write `text`, or the [vrrp] settings given at construction updated with `vrrp`."""
        if text is None:
            self.vrrp.update(vrrp)
            text = render_agent_conf({"control_socket": str(self.control_socket)}, **self.vrrp)
        self.config_path.write_text(text)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """failoverctl against this agent (from the host: the control socket is a file)."""
        proc = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--socket", str(self.control_socket)],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"failoverctl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ctl("status", "--json").stdout)
        return result

    def start(self, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
              wait: bool = True) -> AgentProc:
        """Spawn the agent; with ``wait`` return once it logged that it runs.

        ``env`` adds variables (a supervisor's NOTIFY_SOCKET/WATCHDOG_USEC); ``wait=False`` is
        for a caller that learns readiness another way (sd_notify READY=1, bench/soak.py).
        """
        before = self.log().count("failover-agent running")  # the log is appended to across restarts
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        # the running-config snapshot (agent.snapshot) beside the socket, not in the host's /run
        full_env = {**os.environ, "RUNTIME_DIRECTORY": str(self.control_socket.parent), **(env or {})}
        self.proc = self.spawn([sys.executable, "-m", "agent.daemon", "--config", str(self.config_path),
                                *extra_args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=full_env)
        log.close()
        if not wait:
            return self
        if not wait_until(lambda: self.log().count("failover-agent running") > before or not self.alive, 10):
            raise AssertionError(f"agent on {self.node} did not start:\n{self.log()}")
        if not self.alive:
            raise AssertionError(f"agent on {self.node} exited at startup:\n{self.log()}")
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def transitions(self) -> list[Logged]:
        return [Logged(*m.groups()) for m in TRANSITION.finditer(self.log())]

    def state(self) -> str | None:
        ts = self.transitions()
        return ts[-1].new if ts else None

    def wait_state(self, state: str, timeout: float) -> bool:
        return wait_until(lambda: self.state() == state, timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds to exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)
