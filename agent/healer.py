"""The adapter of `agent.heal`: reads DRBD and the evidence record, carries the decisions out.

Two entry points. `fence_peer` completes DRBD's fence-peer request: it turns the node's answer
into a verdict (agent.heal.fence_verdict) and, when that verdict keeps a disconnected Primary's
I/O frozen, takes the only way out that writes nothing: VIPs off, the evidence written to the
root disk, then the self-fence (agent.fence: SysRq, not systemctl, whose sync() would block on
the frozen device). `run` is a slow periodic check: a StandAlone resource is reconnected, or
discarded, or left to the admin as agent.heal.heal decides; a healed pair clears the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent import heal
from agent.config import Config
from agent.fence import self_fence
from agent.journal import Event as Kind
from agent.journal import emit
from drbd.runner import Runner, run
from drbd.status import Status

log = logging.getLogger("failover-agent")

HEAL_INTERVAL = 5.0  # seconds between checks of a StandAlone resource (DRBD events are the lead's events2 work)
RETRY_HOLD = 30.0  # the same connect or discard is not repeated within this


def evidence_path(cfg: Config) -> Path | None:
    """Next to the state file (root disk, survives reboots), one record per resource."""
    if cfg.drbd is None:
        return None
    return Path(cfg.agent.state_file).parent / f"heal-{cfg.drbd.resource}.json"


class Healer:
    """One resource's frozen-Primary exit and heal check; decisions are agent.heal's."""

    def __init__(self, cfg: Config, status: Callable[[], Awaitable[Status | None]],
                 remove_vips: Callable[[], Awaitable[object]], serving: Callable[[], tuple[bool, bool]],
                 runner: Runner = run, fence: Callable[[str, str], None] | None = None) -> None:
        """`serving()`: (this node holds its VIPs, maintenance on), from the node's snapshot."""
        self.cfg = cfg
        self.status = status
        self.remove_vips = remove_vips
        self.serving = serving
        self.runner = runner
        self.fence = fence or self._self_fence
        self.note = ""  # what the admin must know now ("" when nothing), for failoverctl status
        self._last: dict[str, float] = {}

    def _self_fence(self, action: str, why: str) -> None:
        """agent.fence: SysRq at once (no sync: it would block on the frozen device), or the lab's record."""
        self_fence(self.cfg, action, why)

    @property
    def path(self) -> Path | None:
        return evidence_path(self.cfg)

    # -- the fence-peer verdict ------------------------------------------------------------
    async def fence_peer(self, answer: dict[str, Any], waited: float) -> dict[str, Any]:
        verdict = heal.fence_verdict(answer, waited)
        body = {**answer, "exit": verdict.code, "final": verdict.final, "message": verdict.message,
                "retry_after": verdict.retry_after}
        if not verdict.final or verdict.code != heal.ACTIVE or self.cfg.drbd is None:
            return body
        try:
            status = await self.status()
        except Exception as e:  # DRBD unreadable: no self-fence on a guess
            log.error("fence-peer: cannot read DRBD after the verdict: %s", e)
            return body
        last = self.cfg.drbd.demote_escalation[-1] if self.cfg.drbd.demote_escalation else "none"
        action = heal.frozen_primary(status, verdict, last)
        if action.message:
            emit(Kind.FENCE, f"fence-peer: {action.message}", logging.CRITICAL if action.record else logging.WARNING,
                 ANSWER=str(answer.get("answer")), FENCE=action.self_fence or "none")
        if action.remove_vips:
            with contextlib.suppress(Exception):  # nothing may keep the self-fence from happening
                await asyncio.wait_for(self.remove_vips(), 2.0)
        if action.record and status is not None:
            await self._record(status, verdict, action.self_fence or "none")
        if action.self_fence:
            self.fence(action.self_fence, action.message)
        elif action.record:
            self.note = action.message
        return body

    async def _record(self, status: Status, verdict: heal.FenceVerdict, what: str) -> None:
        path = self.path
        if path is None:
            return
        gi = await self.gi(status)
        evidence = heal.Evidence(status.name, time.time(), verdict.message, gi, status.summary(), what)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            with tmp.open("w") as f:
                f.write(evidence.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.error("cannot write the heal evidence %s (the heal will need the admin): %s", path, e)
            return
        emit(Kind.FENCE, f"recorded in {path}: {status.name} Primary with frozen I/O since now, current UUID "
             f"{gi.current if gi else 'unknown'}; nothing can be written until this node leaves the Primary role",
             logging.WARNING, ANSWER="frozen", GI=str(gi) if gi else "")

    async def gi(self, status: Status) -> heal.Gi | None:
        """DRBD's generation identifiers (drbdadm picks the 8.4 or 9 form of drbdsetup get-gi)."""
        try:
            code, out, _ = await self.runner(["drbdadm", "get-gi", status.name], 10.0)
        except OSError:
            return None
        return heal.Gi.parse(out) if code == 0 else None

    # -- the heal ----------------------------------------------------------------------------
    def load(self) -> heal.Evidence | None:
        path = self.path
        if path is None:
            return None
        try:
            return heal.Evidence.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            self._say("unreadable", f"heal evidence {path} cannot be read ({e}): treated as absent", logging.ERROR)
            return None

    async def check(self) -> heal.HealDecision:
        """One round: read, decide, act."""
        status = await self.status()
        evidence = self.load()
        if status is None or (status.connected and evidence is None) or not (status.standalone or status.connected):
            if status is not None and status.connected:
                self.note = ""
            return heal.HealDecision(heal.HealAction.NONE)
        vips, maintenance = self.serving()
        gi = await self.gi(status) if status.standalone and evidence is not None else None
        decision = heal.heal(status, gi, evidence, vips and not status.suspended, maintenance)
        res = status.name
        if decision.action == heal.HealAction.CLEAR and self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.note = ""
            emit(Kind.FENCE, decision.reason, ANSWER="healed")
        elif decision.action == heal.HealAction.CONNECT and self._due("connect"):
            code, _, err = await self.runner(["drbdadm", "connect", res], 30.0)
            emit(Kind.FENCE, f"{decision.reason}: drbdadm connect {res} exit {code} {err.strip()}", logging.WARNING,
                 ANSWER="connect")
        elif decision.action == heal.HealAction.DISCARD and self._due("discard"):
            await self.runner(["drbdadm", "disconnect", res], 30.0)  # StandAlone already: exit 0 or "nothing to do"
            code, _, err = await self.runner(["drbdadm", "connect", "--discard-my-data", res], 30.0)
            emit(Kind.FENCE, f"{decision.reason}: drbdadm connect --discard-my-data {res} exit {code} {err.strip()}",
                 logging.WARNING, ANSWER="discard")
        elif decision.action == heal.HealAction.ADMIN:
            self.note = decision.reason + "; run: " + " | ".join(decision.commands)
            self._say(decision.reason, self.note, logging.ERROR)
        return decision

    def _due(self, what: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(what, -1e9) < RETRY_HOLD:
            return False
        self._last[what] = now
        return True

    def _say(self, key: str, message: str, level: int) -> None:
        """Once per distinct situation, not every round."""
        if self._last.get(f"say:{key}") is None:
            self._last[f"say:{key}"] = time.monotonic()
            emit(Kind.FENCE, message, level, ANSWER="admin")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HEAL_INTERVAL)
            try:
                await self.check()
            except Exception as e:  # a DRBD read that failed: next round
                log.debug("heal check: %s", e)
