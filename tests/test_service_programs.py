"""Service steps with start/stop/check programs, against real processes.

A tiny service written into tmp_path: `start` launches a real background process (a `sleep`,
which inherits the start program's output, as careless daemons do) and writes its pid file;
`stop` kills it by that PID; `check` looks at /proc. Flag files in its state directory make it
misbehave on purpose. The chain tests run the real `agent.machine.Machine` with the real
`agent.chain.Chain` on these processes: rollback of what was started, restart of a service that
died while held, and failing over once the restarts are used up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from agent import services
from agent.chain import Chain
from agent.config import Config, ServiceConfig, parse
from agent.machine import Machine, Op, Phase, RunStep, Service
from agent.node import machine_settings
from vrrp.vip import Garp, VipHolder

SERVICE = r'''
import os, signal, subprocess, sys, time

action, state = sys.argv[1], sys.argv[2]
pidfile = os.path.join(state, "pid")


def flag(name):
    return os.path.exists(os.path.join(state, name))


def alive():
    """The daemon's PID while it runs (a zombie waiting for PID 1 to reap it does not count)."""
    try:
        pid = int(open(pidfile).read())
        with open(f"/proc/{pid}/stat") as f:
            return pid if f.read().rsplit(")", 1)[1].split()[0] != "Z" else None
    except (OSError, ValueError):
        return None


if action == "start":
    with open(os.path.join(state, "starts"), "a") as f:
        f.write(f"{os.getpid()}\n")
    if flag("fail-start"):
        print("refusing to start: fail-start is set")
        sys.exit(3)
    if flag("hang-start"):
        time.sleep(60)
    # the daemon keeps the start program's stdout and stderr open, as a careless one does
    daemon = subprocess.Popen(["sleep", "0" if flag("die-at-once") else "600"])
    with open(pidfile, "w") as f:
        f.write(str(daemon.pid))
    print(f"started {daemon.pid}")
elif action == "stop":
    pid = alive()
    if pid is not None and not flag("ignore-stop"):
        os.kill(pid, signal.SIGTERM)
    print(f"stopped {pid}")
elif action == "check":
    pid = alive()
    print(f"running as {pid}" if pid else "not running")
    sys.exit(0 if pid else 1)
'''


class Tiny:
    """One tiny service in its own directory; kills whatever it left running at the end (by PID)."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.dir = tmp / name
        self.dir.mkdir()
        script = tmp / "tiny-service.py"
        if not script.exists():
            script.write_text(SERVICE)
        self.name = name
        self.argv = (sys.executable, str(script))

    def config(self, timeout: float = 5.0) -> ServiceConfig:
        return ServiceConfig(self.name, start=(*self.argv, "start", str(self.dir)),
                             stop=(*self.argv, "stop", str(self.dir)), check=(*self.argv, "check", str(self.dir)),
                             timeout=timeout)

    def toml(self, timeout: float = 5.0) -> str:
        def argv(op: str) -> str:
            return "[" + ", ".join(f'"{a}"' for a in (*self.argv, op, str(self.dir))) + "]"

        return (f'\n[[service]]\nname = "{self.name}"\nstart = {argv("start")}\nstop = {argv("stop")}\n'
                f'check = {argv("check")}\ntimeout = {timeout}\n')

    def flag(self, name: str, on: bool = True) -> None:
        path = self.dir / name
        path.touch() if on else path.unlink(missing_ok=True)

    @property
    def pid(self) -> int | None:
        try:
            return int((self.dir / "pid").read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def kill(self) -> None:
        pid = self.pid
        if pid is not None and self.running():
            os.kill(pid, signal.SIGKILL)

    @property
    def starts(self) -> list[int]:
        path = self.dir / "starts"
        return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[dict[str, Tiny]]:
    made: dict[str, Tiny] = {}

    class Make(dict[str, Tiny]):
        def __missing__(self, name: str) -> Tiny:
            made[name] = self[name] = Tiny(tmp_path, name)
            return self[name]

    yield Make()
    for t in made.values():
        t.kill()


# -- the adapter alone ------------------------------------------------------------------------------
def test_acquire_starts_and_verifies_release_stops_by_pid_and_verifies(tiny: dict[str, Tiny]) -> None:
    db = tiny["db"]
    svc = services.control(db.config())

    async def scenario() -> None:
        assert not await svc.running()
        t0 = time.monotonic()
        said = await svc.acquire()
        # the daemon holds the start program's output open: the step must not wait for it
        assert time.monotonic() - t0 < 3.0
        assert db.running() and said.startswith("service db (") and f"running as {db.pid}" in said
        assert await svc.running() and f"running as {db.pid}" in await svc.check()
        said = await svc.release()
        assert not db.running() and "not running" in said, said
        with pytest.raises(services.ServiceError, match=r"service db \(.*\) is not running: check exit 1: not running"):
            await svc.check()

    asyncio.run(scenario())


def test_a_start_that_hangs_is_killed_with_its_process_group_and_named(tiny: dict[str, Tiny]) -> None:
    db = tiny["db"]
    db.flag("hang-start")
    svc = services.control(db.config(timeout=1.5))

    async def scenario() -> None:
        t0 = time.monotonic()
        with pytest.raises(services.ServiceError, match=r"start exited 124: .* did not finish within 1.3\d* s"):
            await svc.acquire()
        assert time.monotonic() - t0 < 1.5  # before the chain's own timeout would cancel it
        (starter,) = db.starts
        assert not Path(f"/proc/{starter}").exists()  # killed and reaped

    asyncio.run(scenario())


def test_a_start_that_exits_0_while_its_daemon_dies_is_a_failed_step(tiny: dict[str, Tiny]) -> None:
    db = tiny["db"]
    db.flag("die-at-once")
    svc = services.control(db.config(timeout=1.0))
    with pytest.raises(services.ServiceError, match="started, but not running within 1 s: check exit 1: not running"):
        asyncio.run(svc.acquire())


def test_a_failed_start_says_its_exit_code_and_output(tiny: dict[str, Tiny]) -> None:
    db = tiny["db"]
    db.flag("fail-start")
    with pytest.raises(services.ServiceError, match="start exited 3: refusing to start: fail-start is set"):
        asyncio.run(services.control(db.config()).acquire())


def test_a_stop_that_leaves_it_running_is_a_failed_release(tiny: dict[str, Tiny]) -> None:
    db = tiny["db"]
    svc = services.control(db.config(timeout=1.0))

    async def scenario() -> None:
        await svc.acquire()
        db.flag("ignore-stop")
        with pytest.raises(services.ServiceError, match="stopped, but still not verified down within 1 s: check "
                                                        "exit 0: running as"):
            await svc.release()
        assert db.running()
        db.flag("ignore-stop", on=False)
        await svc.release()
        assert not db.running()

    asyncio.run(scenario())


def test_run_program_keeps_the_tail_of_the_output_and_kills_on_cancel(tmp_path: Path) -> None:
    async def scenario() -> None:
        code, out = await services.run_program(["/bin/sh", "-c", "seq 1 1000; echo done >&2; exit 7"], 5)
        assert code == 7 and out.endswith("999 1000 done") and len(out) <= services.OUTPUT_TAIL
        marker = tmp_path / "pid"
        task = asyncio.create_task(services.run_program(["/bin/sh", "-c", f"echo $$ > {marker}; sleep 60"], 30))
        while not marker.exists() or not marker.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not Path(f"/proc/{marker.read_text().strip()}").exists()

    asyncio.run(scenario())


# -- the real machine with the real chain ------------------------------------------------------------
class Driven:
    """The machine's RunSteps carried out by the chain, one at a time, as agent.instance does."""

    def __init__(self, cfg: Config) -> None:
        # services only: the machine takes a chain without the VIP (the daemon's always ends with it),
        # and the chain never touches its VIP adapters
        self.machine = Machine(replace(machine_settings(cfg), steps=tuple(s.step for s in cfg.services)))
        self.chain = Chain(cfg, cast(VipHolder, None), cast(Garp, None))
        self.log: list[str] = []
        self.details: list[str] = []
        self.now = 0.0  # the machine's clock: the tests move it (the monitor's ticks)

    async def tick(self, now: float) -> None:
        self.now = now
        await self.carry_out(self.machine.tick(now))

    async def carry_out(self, actions: Sequence[object]) -> None:
        todo = [a for a in actions if isinstance(a, RunStep)]
        while todo:
            step = todo.pop(0)
            done = await self.chain.step_done(step)
            self.log.append(f"{step.op} {step.step}{'' if done.ok else ' FAILED'}")
            self.details.append(done.detail)
            todo += [a for a in self.machine.step_done(done.step, done.op, done.ok, done.detail, self.now)
                     if isinstance(a, RunStep)]


def services_only(*parts: str, extra: str = "") -> Config:
    text = '[vrrp]\ninterface = "eth0"\nvrid = 51\nvips = ["192.0.2.100/24"]\n' + extra + "".join(parts)
    return parse(text, "agent.toml")


def test_a_failing_start_rolls_back_the_services_started_before_it_in_reverse(tiny: dict[str, Tiny]) -> None:
    a, b, c = tiny["a"], tiny["b"], tiny["c"]
    c.flag("fail-start")
    d = Driven(services_only(a.toml(), b.toml(), c.toml()))

    async def scenario() -> None:
        await d.carry_out(d.machine.vrrp_master(0.0, "test"))

    asyncio.run(scenario())
    assert d.log == ["acquire service:a", "acquire service:b", "acquire service:c FAILED",
                     "release service:b", "release service:a"]
    assert "start exited 3: refusing to start" in d.details[2]
    assert d.machine.phase == Phase.FAULT and d.machine.held == []
    assert not a.running() and not b.running() and a.starts and b.starts


def test_a_held_service_that_dies_is_restarted_with_what_follows_it_then_failed_over(tiny: dict[str, Tiny]) -> None:
    a, b = tiny["a"], tiny["b"]
    d = Driven(services_only(a.toml(), b.toml(), extra="[monitor]\ninterval = 0.5\nmax_restarts = 1\n"))

    async def scenario() -> None:
        await d.carry_out(d.machine.vrrp_master(0.0, "test"))
        assert d.machine.phase == Phase.SERVING and d.machine.held == [Service("a"), Service("b")]
        first = a.pid
        d.log.clear()
        await d.tick(1.0)  # the monitor: both alive
        assert d.log == ["check service:a", "check service:b"]

        a.kill()  # dies while held: restart a, and b, which came after it
        d.log.clear()
        await asyncio.sleep(0.1)
        await d.tick(2.0)
        assert d.log == ["check service:a FAILED", "release service:b", "release service:a", "acquire service:a",
                         "acquire service:b"]
        assert d.machine.phase == Phase.SERVING and a.running() and a.pid != first and b.running()

        a.kill()  # again: max_restarts 1 is used up, the node fails over
        d.log.clear()
        await asyncio.sleep(0.1)
        await d.tick(3.0)
        assert d.log == ["check service:a FAILED", "release service:b", "release service:a"]
        assert d.machine.phase == Phase.FAULT and "service:a failed 2 times while serving" in d.machine.fault_reason

    asyncio.run(scenario())
    assert not a.running() and not b.running()


def test_a_start_that_hangs_past_the_timeout_rolls_back_and_leaves_nothing_running(tiny: dict[str, Tiny]) -> None:
    a, b = tiny["a"], tiny["b"]
    b.flag("hang-start")
    d = Driven(services_only(a.toml(), b.toml(timeout=60)))
    # a reload that only shortens the timeout applies live, as agent.instance.reconfigure hands it on
    new = services_only(a.toml(), b.toml(timeout=1.5))
    d.chain.cfg = new
    d.machine.s = replace(machine_settings(new), steps=d.machine.s.steps)
    t0 = time.monotonic()
    asyncio.run(d.carry_out(d.machine.vrrp_master(0.0, "test")))
    assert time.monotonic() - t0 < 5.0
    assert d.log == ["acquire service:a", "acquire service:b FAILED", "release service:a"]
    assert "did not finish within" in d.details[1]
    assert not a.running() and d.machine.phase == Phase.FAULT


def test_a_missing_check_program_finds_nothing_at_startup_and_fails_the_acquire(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    svc = services.control(ServiceConfig("db", start=(missing,), stop=(missing,), check=(missing,), timeout=2.0))
    assert asyncio.run(svc.running()) is False
    chain = Chain(services_only(f'\n[[service]]\nname = "db"\nstart = ["{missing}"]\nstop = ["{missing}"]\n'
                                f'check = ["{missing}"]\n'), cast(VipHolder, None), cast(Garp, None))
    ok, detail = asyncio.run(chain.run(RunStep(Service("db"), Op.ACQUIRE, 2.0)))
    assert not ok and detail.startswith("service:db acquire: [Errno 2] No such file or directory"), detail
