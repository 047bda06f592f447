"""Follow one DRBD resource through one long-running `drbdsetup events2 RESOURCE`.

Why not poll: a lost replication link or the peer's promotion is something the agent must act
on within milliseconds, and spawning `drbdsetup events2 --now` every monitor interval costs a
fork and exec each time (expensive under user-mode-linux, noisy on any host) while nothing
changes. `drbdsetup events2` without `--now` prints the current state (`exists ...` lines, then
`exists -`) and afterwards one line per change, for as long as it runs; drbd-utils 9 speaks it
to DRBD 9 and, synthesised, to the 8.4 kernel module (tests/fixtures/drbd/events2-stream-*).

This adapter keeps that one process running, feeds its lines to the sans-I/O parser
(`drbd.status.Events2`), keeps the resource's current `Status` and hands every change to a
callback. Lines that arrive together (DRBD reports one state change as several lines: the
connection, then the peer device) are applied together before the callback runs, so no
half-applied state is ever reported. If the process dies it is started again after a backoff
(0.5 s doubling up to 30 s, back to 0.5 s once a run lasted 10 s), and each exit is logged.
While it is not running, `live` is False and callers read DRBD once instead (the fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from drbd.status import Events2, Status

log = logging.getLogger("failover-agent")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_RUN = 10.0  # a run that lasted this long resets the backoff
SETTLE = 0.003  # more lines within this time belong to the same state change
SETTLE_MAX = 0.05  # but a change is reported at the latest this long after its first line
STDERR_KEEP = 2000


class Follower:
    """The current state of `resource`, from one `drbdsetup events2 RESOURCE` kept running.

    `on_change(status)` is called (in the event loop) with the new `Status` whenever it differs
    from the last one reported, and once when the initial state is complete; `None` means the
    resource is not up (not configured, or `drbdadm down`).
    """

    def __init__(self, resource: str, on_change: Callable[[Status | None], None] = lambda _: None,
                 command: Sequence[str] = ("drbdsetup",), backoff_first: float = BACKOFF_FIRST,
                 backoff_max: float = BACKOFF_MAX, healthy_run: float = HEALTHY_RUN) -> None:
        self.resource = resource
        self.on_change = on_change
        self.argv = [*command, "events2", resource]
        self.backoff_first, self.backoff_max, self.healthy_run = backoff_first, backoff_max, healthy_run
        self.live = False  # the process runs and its initial state is complete
        self.starts = 0  # processes started so far
        self.pid: int | None = None
        self.last_exit = ""  # why the last process ended (for status and logs)
        self._status: Status | None = None
        self._reported = False
        self._changed: asyncio.Event | None = None

    @property
    def status(self) -> Status | None:
        """The resource's state now (None: not up); meaningful only while `live`."""
        return self._status

    async def run(self) -> None:
        """Keep the process running until cancelled (the process is killed then)."""
        delay = self.backoff_first
        while True:
            started = time.monotonic()
            try:
                self.last_exit = await self._once()
            except OSError as e:  # no such program, no permission: the same backoff
                self.last_exit = f"cannot start {self.argv[0]}: {e.strerror or e}"
            finally:
                self.live = False
                self.pid = None
            if time.monotonic() - started >= self.healthy_run:
                delay = self.backoff_first
            log.warning("%s stopped (%s); DRBD state is read once per question until it runs again, in %g s",
                        " ".join(self.argv), self.last_exit, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def wait_for(self, predicate: Callable[[Status | None], bool], timeout: float) -> bool:
        """Until the live state satisfies `predicate` (False after `timeout`): e.g. our own promotion
        seen by the kernel, without another process to ask it."""
        deadline = time.monotonic() + timeout
        while not (self.live and predicate(self._status)):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def wait_live(self, timeout: float) -> bool:
        """For tests and startup: until the initial state is in (False on timeout)."""
        deadline = time.monotonic() + timeout
        while not self.live and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.live

    async def _once(self) -> str:
        proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self.starts += 1
        self.pid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.create_task(_tail(proc.stderr))
        parser = Events2()
        try:
            await self._follow(proc.stdout, parser)
            code = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()
            errors.cancel()
            raise
        err = await errors
        return f"exit {code}" + (f": {err}" if err else "")

    async def _follow(self, out: asyncio.StreamReader, parser: Events2) -> None:
        pending = b""
        while True:
            chunk = await out.read(65536)
            if not chunk:
                return
            pending = self._feed(parser, pending + chunk)
            # one state change comes as several lines, maybe in several writes: take what follows at once
            until = time.monotonic() + SETTLE_MAX
            while (left := until - time.monotonic()) > 0:
                try:
                    more = await asyncio.wait_for(out.read(65536), min(SETTLE, left))
                except TimeoutError:
                    break
                if not more:
                    break
                pending = self._feed(parser, pending + more)
            self._publish(parser)

    def _feed(self, parser: Events2, data: bytes) -> bytes:
        *lines, rest = data.split(b"\n")
        for line in lines:
            parser.feed(line.decode(errors="replace"))
        return rest

    def _publish(self, parser: Events2) -> None:
        if not parser.initial_done:
            return
        status = parser.resources.get(self.resource)
        first = not self.live
        self.live = True
        if first and self._reported and status == self._status:
            return  # a restarted process: nothing changed meanwhile
        if not first and status == self._status:
            return
        self._status, self._reported = status, True
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        try:
            self.on_change(status)
        except Exception:  # the caller's bug must not stop the following
            log.exception("handling a DRBD state change failed")


async def _tail(stream: asyncio.StreamReader) -> str:
    """The last words the process wrote to stderr (read all along, so it never blocks on a full pipe)."""
    kept = b""
    while chunk := await stream.read(4096):
        kept = (kept + chunk)[-STDERR_KEEP:]
    return " ".join(kept.decode(errors="replace").split())[-400:]
