"""Runs the admin's `[[service]]` steps: a systemd unit through systemctl, or start/stop/check programs.

Each service is started, stopped and looked at; acquire and release do not trust an exit code
alone but wait until the look confirms it (the unit `systemctl is-active`, or the `check`
program exiting 0; for a release, the opposite), so a start script that returns 0 while its
daemon dies at once is a failed step like a mount that did not happen. Both operations share the
service's one timeout. Like `agent.chain`, this decides nothing: failures raise `ServiceError`
with a sentence naming the service, and `agent.machine` turns them into a rollback or a restart.

The admin's programs run without a shell, in their own session, with their output in an
unlinked temporary file rather than a pipe: a daemon the start program leaves running inherits
that output, and a pipe would hold us until the timeout waiting for its end. On timeout (or
cancellation) the program's whole process group is killed, by its process group id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from agent.config import ServiceConfig
from drbd.runner import Runner, run

__all__ = ["Control", "Look", "ServiceError", "control", "run_program"]

#: how often acquire and release look again while the service has not yet come up or gone down
LOOK_INTERVAL = 0.1
#: the part of the timeout kept back so a hanging program is killed and named before the chain's
#: own timeout cancels the whole operation (at most 1 s)
MARGIN = 0.1
#: what is kept of a program's output for the journal
OUTPUT_TAIL = 300


class ServiceError(Exception):
    """A service step failed: the message names the service and what it saw."""


@dataclass(frozen=True)
class Look:
    """What one look at a service found: running (`up`), verifiably stopped (`down`), or neither
    (the look itself failed: no answer is no proof that it stopped)."""

    up: bool
    down: bool
    detail: str


async def run_program(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """(exit code, the tail of stdout and stderr); 124 and a sentence when killed after `timeout`."""
    with tempfile.TemporaryFile() as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await _kill_group(proc)
            return 124, f"{argv[0]} did not finish within {timeout:g} s (killed)"
        except asyncio.CancelledError:
            await _kill_group(proc)
            raise
        out.seek(max(0, os.fstat(out.fileno()).st_size - OUTPUT_TAIL))
        return code, " ".join(out.read().decode(errors="replace").split())


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group id is its pid
    await proc.wait()


class Control:
    """One service: acquire (start, then wait until it is up), release (stop, then wait until it
    is down), check (one look), running (the look at startup, for what an earlier run left)."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg

    @property
    def what(self) -> str:
        return f"service {self.cfg.name} ({self.cfg.describe()})"

    async def _start(self, timeout: float) -> tuple[int, str]:
        raise NotImplementedError

    async def _stop(self, timeout: float) -> tuple[int, str]:
        raise NotImplementedError

    async def look(self, timeout: float) -> Look:
        raise NotImplementedError

    async def acquire(self) -> str:
        deadline = self._deadline()
        code, out = await self._start(self._left(deadline))
        if code != 0:
            raise ServiceError(f"{self.what}: start exited {code}" + (f": {out}" if out else ""))
        seen = await self._wait(deadline, up=True)
        if not seen.up:
            raise ServiceError(f"{self.what}: started, but not running within {self.cfg.timeout:g} s: {seen.detail}")
        return f"{self.what} running: {seen.detail}"

    async def release(self) -> str:
        deadline = self._deadline()
        code, out = await self._stop(self._left(deadline))
        failed = f"stop exited {code}" + (f": {out}" if out else "") if code != 0 else ""
        seen = await self._wait(deadline, up=False)
        if not seen.down:
            raise ServiceError(f"{self.what}: {failed or 'stopped'}, but still not verified down within "
                               f"{self.cfg.timeout:g} s: {seen.detail}")
        return f"{self.what} stopped: {seen.detail}" + (f" ({failed}, yet it is down)" if failed else "")

    async def check(self) -> str:
        seen = await self.look(self._left(self._deadline()))
        if not seen.up:
            raise ServiceError(f"{self.what} is not running: {seen.detail}")
        return seen.detail

    async def running(self) -> bool:
        """At startup: a look that fails, hangs or cannot even run (a missing program) finds nothing to
        stop; the first acquire then fails with that reason, instead of the agent not starting."""
        try:
            return (await self.look(self._left(self._deadline()))).up
        except OSError:
            return False

    async def _wait(self, deadline: float, up: bool) -> Look:
        """Look until the service is up (or down), or the time is over: the last look."""
        loop = asyncio.get_running_loop()
        while True:
            seen = await self.look(self._left(deadline))
            if (seen.up if up else seen.down) or loop.time() + LOOK_INTERVAL >= deadline:
                return seen
            await asyncio.sleep(LOOK_INTERVAL)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.cfg.timeout - min(1.0, MARGIN * self.cfg.timeout)

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.05, deadline - asyncio.get_running_loop().time())


class Programs(Control):
    """`start`, `stop` and `check` argument lists; up is `check` exiting 0, down any other exit."""

    async def _start(self, timeout: float) -> tuple[int, str]:
        return await run_program(self.cfg.start, timeout)

    async def _stop(self, timeout: float) -> tuple[int, str]:
        return await run_program(self.cfg.stop, timeout)

    async def look(self, timeout: float) -> Look:
        code, out = await run_program(self.cfg.check, timeout)
        detail = f"check exit {code}" + (f": {out}" if out else "")
        return Look(code == 0, code not in (0, 124), detail)  # a check that hung proves nothing


class Unit(Control):
    """A systemd unit: `systemctl start|stop UNIT` (which wait for the job), up is `is-active`."""

    #: what `systemctl is-active` prints for a unit that is verifiably not running
    DOWN = ("inactive", "failed")

    def __init__(self, cfg: ServiceConfig, runner: Runner = run, systemctl: str = "systemctl") -> None:
        super().__init__(cfg)
        self.runner, self.systemctl = runner, systemctl

    async def _systemctl(self, verb: str, timeout: float) -> tuple[int, str]:
        code, out, err = await self.runner([self.systemctl, verb, self.cfg.unit], timeout)
        return code, " ".join((err.strip() or out.strip()).split())[-OUTPUT_TAIL:]

    async def _start(self, timeout: float) -> tuple[int, str]:
        return await self._systemctl("start", timeout)

    async def _stop(self, timeout: float) -> tuple[int, str]:
        return await self._systemctl("stop", timeout)

    async def look(self, timeout: float) -> Look:
        code, out, err = await self.runner([self.systemctl, "is-active", self.cfg.unit], timeout)
        state = out.strip() or " ".join(err.split()) or f"exit {code}"
        return Look(code == 0, code != 0 and state in self.DOWN, f"{self.cfg.unit} {state}")


def control(cfg: ServiceConfig) -> Control:
    return Unit(cfg) if cfg.unit else Programs(cfg)
