"""Alerts: the admin's `[[notify]]` hooks, run on journal events, never in the chain's way.

The node emits journal events (`agent.actions.Emit`); the instance adapter hands each one to
`Alerts.send`, which returns at once. Each hook whose `events` list names the event's kind gets
its own process: an argument list (no shell), the event in its environment (FAILOVER_EVENT,
FAILOVER_MESSAGE, FAILOVER_<FIELD> for every journal field, ...), killed with everything it
started after its `timeout`. A hook is an alert, not a step: it decides nothing, its exit code
changes nothing, and a slow or hanging one must not delay a takeover or a release. Hence
fire-and-forget from the event loop with a bound on what runs at once (a flapping pair must
not fork a storm of mailers) and a small queue behind it; past that, runs are dropped and
counted, and the journal says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.actions import Emit
from agent.config import Config, NotifyConfig
from drbd.runner import run

log = logging.getLogger("failover-agent")

MAX_RUNNING = 4  # hook processes at once
MAX_QUEUED = 32  # runs waiting for a free slot; more are dropped
STOP_GRACE = 3.0  # seconds hooks still get when the agent stops (the RELEASED alert should go out)
#: ours to set, or systemd's for the agent alone: a hook must not ping the watchdog or write to
#: a journal stream it is not connected to (its output comes to us)
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "JOURNAL_STREAM", "LISTEN_PID",
                  "LISTEN_FDS", "LISTEN_FDNAMES")
_NOT_NAME = re.compile(r"[^A-Z0-9_]")


@dataclass(frozen=True)
class _Run:
    hook: NotifyConfig
    event: str
    env: Mapping[str, str]


def hook_env(a: Emit, vrid: int, interface: str, at: float | None = None) -> dict[str, str]:
    """The variables one event gives a hook (without the inherited environment).

    Journal fields come first and our own names last, so a field can never pass itself off
    as the event's name or message.
    """
    assert a.kind is not None
    env = {"FAILOVER_VRID": str(vrid), "FAILOVER_INTERFACE": interface}
    for key, value in a.fields.items():
        if value is not None:
            env["FAILOVER_" + _NOT_NAME.sub("_", key.upper())] = _clean(str(value))
    env.update(FAILOVER_EVENT=a.kind.name.lower(), FAILOVER_MESSAGE=_clean(a.message),
               FAILOVER_LEVEL=logging.getLevelName(a.level).lower(), FAILOVER_MESSAGE_ID=a.kind.value,
               FAILOVER_TIME=datetime.fromtimestamp(time.time() if at is None else at).astimezone()
               .isoformat(timespec="milliseconds"))
    return env


def _clean(text: str) -> str:
    return text.replace("\0", " ")  # the one character an environment variable cannot hold


class Alerts:
    """Runs the configured hooks for the events handed to `send`; one per agent, kept across reloads."""

    def __init__(self, cfg: Config | None = None, max_running: int = MAX_RUNNING,
                 max_queued: int = MAX_QUEUED) -> None:
        self.max_running, self.max_queued = max_running, max_queued
        self.hooks: tuple[NotifyConfig, ...] = ()
        self.vrid, self.interface = 0, ""
        self._running: set[asyncio.Task[None]] = set()
        self._queue: deque[_Run] = deque()
        self.started = self.failed = self.dropped = 0
        self._burst = 0  # dropped since the queue was last empty: one warning per burst, not per drop
        if cfg is not None:
            self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Take the hooks of a (re)loaded config; runs already started or queued finish as they were."""
        self.hooks, self.vrid, self.interface = cfg.notify, cfg.vrrp.vrid, cfg.vrrp.interface

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def stats(self) -> dict[str, Any]:
        return {"hooks": len(self.hooks), "running": self.running, "queued": self.queued,
                "started": self.started, "failed": self.failed, "dropped": self.dropped}

    def send(self, a: Emit, source: Config | None = None) -> None:
        """Start (or queue) every hook that wants this event; never waits for one. `source`: the
        instance that emitted it (its VRID and interface; else the configured instance's)."""
        if a.kind is None or not self.hooks:
            return
        event = a.kind.name.lower()
        wanted = [h for h in self.hooks if event in h.events]
        if not wanted:
            return
        vrid, interface = (source.vrrp.vrid, source.vrrp.interface) if source else (self.vrid, self.interface)
        env = hook_env(a, vrid, interface)
        for hook in wanted:
            job = _Run(hook, event, env)
            if len(self._running) < self.max_running:
                self._start(job)
            elif len(self._queue) < self.max_queued:
                self._queue.append(job)
            else:
                self.dropped += 1
                self._burst += 1
                if self._burst == 1:
                    log.warning("notify: %d hooks running and %d queued: dropping hook runs until the queue "
                                "empties (first dropped: %s on %s)", self.running, self.queued,
                                hook.argv[0], event)

    def _start(self, job: _Run) -> None:
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        while self._queue and len(self._running) < self.max_running:
            self._start(self._queue.popleft())
        if not self._queue and self._burst:
            log.warning("notify: %d hook run(s) dropped while the queue was full (%d in all)",
                        self._burst, self.dropped)
            self._burst = 0

    async def _run(self, job: _Run) -> None:
        argv, timeout = job.hook.argv, job.hook.timeout
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAILOVER_") and k not in _NOT_INHERITED}
        env.update(job.env)
        t0 = time.monotonic()
        try:
            code, out, err = await run(argv, timeout, env=env, own_group=True)
        except OSError as e:
            self._failed(job, f"cannot run it: {e.strerror or e}")
            return
        except Exception as e:  # an adapter bug must not go unnoticed, nor reach the loop
            self._failed(job, f"{type(e).__name__}: {e}")
            return
        took = (time.monotonic() - t0) * 1000
        if code == 124 and err == f"{argv[0]} timed out after {timeout:g} s":  # drbd.runner's timeout
            self._failed(job, f"still running after its timeout of {timeout:g} s: killed")
        elif code != 0:
            said = " ".join(f"{err} {out}".split())[:200]
            self._failed(job, f"exit {code} after {took:.0f} ms" + (f": {said}" if said else ""))
        else:
            log.debug("notify: %s on %s done in %.0f ms", argv[0], job.event, took)

    def _failed(self, job: _Run, reason: str) -> None:
        self.failed += 1
        log.warning("notify: hook %s on %s failed: %s", job.hook.argv[0], job.event, reason)

    async def wait(self, timeout: float) -> bool:
        """Until no hook runs or waits, at most `timeout` s; True when all are done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running:
            left = deadline - loop.time()
            if left <= 0:
                return False
            # the done callback starts queued runs before this wakes up: re-read the set each time
            await asyncio.wait(set(self._running), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        return True

    async def close(self, grace: float = STOP_GRACE) -> None:
        """The agent stops: give the hooks `grace` s to finish, then kill what still runs."""
        if await self.wait(grace):
            return
        if self._queue:
            log.warning("notify: stopping: %d queued hook run(s) dropped", len(self._queue))
            self.dropped += len(self._queue)
            self._queue.clear()
        tasks = set(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.warning("notify: stopping: %d hook(s) still running after %g s were killed", len(tasks), grace)
