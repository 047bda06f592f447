"""drbd/follower.py against a fake `drbdsetup` executable replaying real 8.4 captures.

The fake (tests/fake_drbdsetup.py) takes the real argv and prints the captured lines; the
UML lab test (tests/test_uml_storage.py) runs the follower against the real program.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from drbd.follower import Follower
from drbd.status import Status, parse_events2

FIXTURES = Path(__file__).parent / "fixtures" / "drbd"
FAKE = Path(__file__).parent / "fake_drbdsetup.py"


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (the project has no pytest asyncio plugin)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def stream_changes(name: str) -> list[str]:
    """The change lines of a captured stream (after its initial `exists -`)."""
    lines = fixture(name).splitlines()
    end = next(i for i, line in enumerate(lines) if line.endswith("exists -"))
    return lines[end + 1:]


class Fake:
    def __init__(self, base: Path, state: str) -> None:
        self.base = base
        base.mkdir(exist_ok=True)
        (base / "state").write_text(fixture(state))
        (base / "feed").write_text("")
        self.program = base / "drbdsetup"
        self.program.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
        self.program.chmod(0o755)

    def send(self, *lines: str) -> None:
        with (self.base / "feed").open("a") as f:
            f.write("".join(line + "\n" for line in lines))

    def state(self, name: str) -> None:
        (self.base / "state").write_text(fixture(name))

    def calls(self) -> list[list[str]]:
        path = self.base / "calls"
        return [line.split()[1:] for line in path.read_text().splitlines()] if path.exists() else []


class Seen:
    def __init__(self) -> None:
        self.items: list[tuple[float, Status | None]] = []

    def __call__(self, status: Status | None) -> None:
        self.items.append((time.monotonic(), status))

    async def wait(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            assert time.monotonic() < deadline, f"{len(self.items)} changes seen, wanted {count}: {self.items}"
            await asyncio.sleep(0.005)

    @property
    def last(self) -> Status | None:
        return self.items[-1][1]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    monkeypatch.setenv("FAKE_DRBD_DIR", str(tmp_path / "drbd"))
    return Fake(tmp_path / "drbd", "events2-connected-primary.txt")


@contextlib.asynccontextmanager
async def running(f: Follower) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(f.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@sync
async def test_initial_state_is_reported_once_with_the_real_argv(fake: Fake) -> None:
    seen = Seen()
    f = Follower("r0", seen, command=(str(fake.program),))
    async with running(f):
        assert await f.wait_live(5)
        await seen.wait(1)
        await asyncio.sleep(0.1)
        assert len(seen.items) == 1
        assert seen.last == parse_events2(fixture("events2-connected-primary.txt"))["r0"] == f.status
        assert fake.calls() == [["events2", "r0"]]


@sync
async def test_a_lost_connection_arrives_within_milliseconds_as_one_consistent_state(fake: Fake) -> None:
    seen = Seen()
    f = Follower("r0", seen, command=(str(fake.program),))
    async with running(f):
        await seen.wait(1)
        changes = stream_changes("events2-stream-link-cut-split-brain.txt")
        t0 = time.monotonic()
        fake.send(*changes[:2])  # NetworkFailure on the connection, then the peer device
        await seen.wait(2)
        took = seen.items[1][0] - t0
        st = seen.last
        assert st is not None and not st.connected and st.connection == "NetworkFailure"
        assert (st.peer_role, st.peer_disk, st.role) == ("Unknown", "DUnknown", "Primary")
        assert took < 0.5, f"{took:.3f} s"  # a few ms here; generous for a loaded machine
        # the rest of the capture: reconnect attempts, the split brain, StandAlone
        fake.send(*changes[2:])
        deadline = time.monotonic() + 5
        while (f.status is None or f.status.connection != "StandAlone") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert f.status is not None and f.status.standalone and f.status.primary
        assert f.status == parse_events2(fixture("events2-stream-link-cut-split-brain.txt"))["r0"]


@sync
async def test_the_peers_promotion_is_a_change(fake: Fake) -> None:
    fake.state("events2-standalone-outdated.txt")
    seen = Seen()
    f = Follower("r0", seen, command=(str(fake.program),))
    async with running(f):
        await seen.wait(1)
        fake.send(*stream_changes("events2-stream-disconnect-outdate-connect.txt")[8:14])
        deadline = time.monotonic() + 5
        while not (f.status and f.status.peer_primary) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert f.status is not None and f.status.peer_primary and f.status.connected


@sync
async def test_lines_that_change_nothing_report_nothing(fake: Fake) -> None:
    seen = Seen()
    f = Follower("r0", seen, command=(str(fake.program),))
    async with running(f):
        await seen.wait(1)
        fake.send("change connection name:r0 peer-node-id:0 conn-name:peer",
                  "call helper name:r0 peer-node-id:0 conn-name:peer volume:0 minor:0 helper:before-resync-target",
                  "garbage that is no event at all", "change device name:other volume:0 minor:1 disk:Outdated")
        await asyncio.sleep(0.3)
        assert len(seen.items) == 1


@sync
async def test_a_dead_process_is_restarted_with_backoff_and_logged(fake: Fake, caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    seen = Seen()
    f = Follower("r0", seen, command=(str(fake.program),), backoff_first=0.2)
    caplog.set_level(logging.WARNING, "failover-agent")
    async with running(f):
        await seen.wait(1)
        fake.state("events2-wfconnection-primary.txt")  # what a new process will find
        fake.send("STDERR netlink socket closed", "EXIT 1")
        t0 = time.monotonic()
        while f.live and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.005)
        assert not f.live
        await seen.wait(2)
        assert time.monotonic() - t0 >= 0.15  # the backoff
        assert f.live and f.starts == 2
        st = seen.last
        assert st is not None and st.connection == "Connecting" and st.primary
        assert "drbdsetup events2 r0 stopped (exit 1: netlink socket closed)" in caplog.text.replace(
            str(fake.program), "drbdsetup")
        # died again at once: the next wait is twice as long
        fake.send("EXIT 2")
        t1 = time.monotonic()
        while f.starts < 3 and time.monotonic() - t1 < 5:
            await asyncio.sleep(0.005)
        assert f.starts == 3 and time.monotonic() - t1 >= 0.35
        assert len(seen.items) == 2  # the same state again: not reported twice


@sync
async def test_a_missing_program_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "failover-agent")
    f = Follower("r0", command=(str(tmp_path / "nope"),), backoff_first=0.05)
    async with running(f):
        await asyncio.sleep(0.3)
        assert not f.live and f.status is None
    assert "cannot start" in caplog.text and caplog.text.count("stopped") >= 2


@sync
async def test_cancelling_kills_the_process(fake: Fake) -> None:
    f = Follower("r0", command=(str(fake.program),))
    task = asyncio.create_task(f.run())
    assert await f.wait_live(5)
    pid = f.pid
    assert pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@sync
async def test_a_resource_that_goes_down_reports_none(fake: Fake) -> None:
    seen = Seen()
    f = Follower("r0", seen, command=(str(fake.program),))
    async with running(f):
        await seen.wait(1)
        fake.send("destroy peer-device name:r0 peer-node-id:0 conn-name:peer volume:0",
                  "destroy connection name:r0 peer-node-id:0 conn-name:peer",
                  "destroy device name:r0 volume:0 minor:0", "destroy resource name:r0")
        await seen.wait(2)
        await asyncio.sleep(0.1)
        assert seen.last is None and f.live


@sync
async def test_the_chain_answers_from_the_follower_while_it_is_live_else_reads_once(fake: Fake) -> None:
    from agent.chain import Chain
    from agent.config import parse

    cfg = parse('[vrrp]\ninterface = "eth0"\nvrid = 51\npriority = 100\nvips = ["192.0.2.100/24"]\n'
                '[drbd]\nresource = "r0"\n')
    calls: list[list[str]] = []

    async def runner(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        calls.append(list(argv))
        return 0, fixture("events2-wfconnection-primary.txt"), ""

    chain = Chain(cfg, None, None, runner)  # type: ignore[arg-type]  # no VIP step is run here
    chain.follower = Follower("r0", command=(str(fake.program),))
    st = await chain.drbd_status()  # not started yet: one read
    assert st is not None and st.connection == "Connecting" and len(calls) == 1
    async with running(chain.follower):
        assert await chain.follower.wait_live(5)
        for _ in range(5):
            st = await chain.drbd_status()
        assert st is not None and st.connection == "Connected" and len(calls) == 1


@sync
async def test_wait_for_a_state_returns_when_the_kernel_reports_it(fake: Fake) -> None:
    f = Follower("r0", command=(str(fake.program),))
    async with running(f):
        assert await f.wait_live(5)
        assert not await f.wait_for(lambda st: st is not None and not st.primary, 0.1)
        t0 = time.monotonic()
        fake.send("change resource name:r0 role:Secondary")
        assert await f.wait_for(lambda st: st is not None and not st.primary, 5)
        assert time.monotonic() - t0 < 1.0
