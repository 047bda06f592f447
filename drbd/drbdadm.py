"""Promote and demote through `drbdadm`, with DRBD's refusals turned into typed errors.

The exit code of `drbdadm primary` alone cannot tell "the peer is Primary" from "the device
is held open" (both 11, see DOMAIN.md), and the difference decides what the agent does next
(wait for the peer vs. kill holders), so the kernel's message is matched too. Every success
is verified by reading the role back: a promote that returns 0 but leaves us Secondary is a
failure. Demotion escalates as configured: retries, then `secondary --force` where the
kernel supports it, and finally a self-fence request the caller carries out.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from drbd.runner import Runner, run
from drbd.status import Status, parse_events2

FENCE_ACTIONS = ("none", "reboot", "poweroff")
#: disk states that can never be promoted over the peer: what a fenced peer must be in
GAVE_UP = ("Outdated", "Inconsistent", "Diskless")


class DrbdError(Exception):
    """A DRBD command failed; `code` and `stderr` are DRBD's own."""

    def __init__(self, message: str, code: int = 0, stderr: str = "") -> None:
        super().__init__(message)
        self.code, self.stderr = code, stderr


class PeerIsPrimary(DrbdError):
    pass


class NoUpToDateData(DrbdError):
    pass


class DeviceInUse(DrbdError):
    pass


class NoSuchResource(DrbdError):
    pass


class ModuleNotLoaded(DrbdError):
    pass


class PeerNotOutdated(DrbdError):
    pass


class NoQuorum(DrbdError):
    pass


class DemoteFailed(DrbdError):
    """Every escalation step failed; `fence` is what the admin configured as the last resort."""

    def __init__(self, message: str, fence: str) -> None:
        super().__init__(message)
        self.fence = fence


_PATTERNS: list[tuple[str, type[DrbdError], str]] = [
    ("Multiple primaries not allowed", PeerIsPrimary, "the peer is Primary"),
    ("Need access to UpToDate data", NoUpToDateData, "no UpToDate data on this node"),
    ("held open by someone", DeviceInUse, "the device is in use (mounted or open)"),
    ("not defined in your config", NoSuchResource, "no such resource in drbd.conf"),
    ("Device minor not allocated", NoSuchResource, "the resource is not up (drbdadm up)"),
    ("peer is not outdated", PeerNotOutdated, "the peer is not known to be Outdated (fencing)"),
    ("No quorum", NoQuorum, "no quorum"),
    ("Could not connect to 'drbd' generic netlink", ModuleNotLoaded, "the drbd kernel module is not loaded"),
]


def classify(action: str, resource: str, code: int, stderr: str) -> DrbdError:
    """The typed error for a failed `drbdadm ACTION RESOURCE` (DRBD's message kept in it)."""
    text = " ".join(stderr.split())
    for needle, cls, meaning in _PATTERNS:
        if needle.lower() in text.lower():
            return cls(f"drbdadm {action} {resource}: {meaning} (exit {code}: {text})", code, stderr)
    return DrbdError(f"drbdadm {action} {resource} failed (exit {code}): {text or 'no message'}", code, stderr)


@dataclass
class Drbdadm:
    resource: str
    runner: Runner = run
    timeout: float = 30.0
    module_check: Callable[[], bool] = lambda: os.path.exists("/proc/drbd")
    retry_delay: float = 1.0
    retries: int = 3

    async def _drbdadm(self, *args: str) -> tuple[int, str, str]:
        if not self.module_check():
            raise ModuleNotLoaded(f"drbdadm {args[0]} {self.resource}: the drbd kernel module is not loaded "
                                  "(/proc/drbd is missing)")
        return await self.runner(["drbdadm", *args, self.resource], self.timeout)

    async def _checked(self, action: str) -> str:
        code, out, err = await self._drbdadm(action)
        if code != 0:
            raise classify(action, self.resource, code, err)
        return out

    async def role(self) -> str:
        """Our role: 'Primary', 'Secondary' or 'Unknown' (8.4 prints 'Primary/Secondary')."""
        word = (await self._checked("role")).strip().split("/")[0]
        return word if word in ("Primary", "Secondary") else "Unknown"

    async def promote(self, role_now: Callable[[], Awaitable[str]] | None = None) -> None:
        """`drbdadm primary`, verified by reading the role back (`role_now`: another way to read it)."""
        await self._checked("primary")
        role = await (role_now or self.role)()
        if role != "Primary":
            raise DrbdError(f"drbdadm primary {self.resource} returned 0 but the role is {role}")

    async def disk_state(self) -> str:
        """Our disk state ('UpToDate', 'Outdated', ...); 8.4 prints 'local/peer'."""
        return (await self._checked("dstate")).strip().split("/")[0] or "Unknown"

    async def connection_state(self) -> str:
        """'Connected', 'WFConnection', 'StandAlone', ... (the first word DRBD prints)."""
        words = (await self._checked("cstate")).split()
        return words[0] if words else "Unknown"

    async def outdate(self, notes: list[str] | None = None, disconnect: bool = True) -> None:
        """Mark our own disk Outdated (asked by a peer that wants to promote without us).

        DRBD 8.4 exits 0 and changes nothing when the disk is still Connected, which is the usual
        moment: the peer's DRBD notices the lost link and runs its fence-peer handler before ours
        does. A peer told "outdated" then records us as Outdated while we stay UpToDate and fall
        behind, so the disk state is read back, and a connected disk is disconnected for the
        outdate and reconnected at once (it resyncs as SyncTarget when the link works again).
        An Inconsistent or Diskless disk is worse than Outdated already and is left alone.
        """
        log = notes if notes is not None else []
        if await self.disk_state() in GAVE_UP:
            return
        await self._checked("outdate")
        if await self.disk_state() in GAVE_UP:
            return
        cstate = await self.connection_state()
        if cstate == "StandAlone" or not disconnect:
            raise DrbdError(f"drbdadm outdate {self.resource} returned 0 but the disk is not Outdated ({cstate}"
                            f"{'' if disconnect else '; not disconnecting it again so soon'})")
        await self._checked("disconnect")
        try:
            await self._checked("outdate")
            disk = await self.disk_state()
        finally:
            await self._checked("connect")
        log.append(f"{self.resource} was {cstate}: disconnected, outdated ({disk}), reconnected")
        if disk != "Outdated":
            raise DrbdError(f"drbdadm outdate {self.resource} returned 0 but the disk is {disk} (was {cstate})")

    async def demote(self, escalation: Sequence[str] = ("retry", "none"), notes: list[str] | None = None) -> None:
        """Secondary, escalating as configured; the last entry is the fence action."""
        log = notes if notes is not None else []
        steps, fence = list(escalation[:-1]), escalation[-1] if escalation else "none"
        if fence not in FENCE_ACTIONS:
            raise ValueError(f"the last demote_escalation entry must be one of {FENCE_ACTIONS}, got {fence!r}")
        last: DrbdError | None = None
        for attempt in ["plain", *steps]:
            tries = self.retries if attempt == "retry" else 1
            for _ in range(tries):
                if attempt == "retry":
                    await asyncio.sleep(self.retry_delay)
                args = ("secondary", "--force") if attempt == "force" else ("secondary",)
                code, _, err = await self._drbdadm(*args)
                if code == 0 and await self.role() == "Secondary":
                    if attempt != "plain":
                        log.append(f"demoted {self.resource} after escalation step '{attempt}'")
                    return
                if attempt == "force" and ("unrecognized option" in err or "--force" in err):
                    log.append("secondary --force is not supported by this DRBD; skipped")
                    break
                last = classify(" ".join(args), self.resource, code, err)
                log.append(str(last))
                if isinstance(last, NoSuchResource | ModuleNotLoaded):
                    raise last
        raise DemoteFailed(f"cannot demote {self.resource}: {last}; last resort: {fence}", fence)


async def status_now(resource: str, runner: Runner = run) -> Status | None:
    """One `drbdsetup events2 --now` of `resource`: None when it is not up, DrbdError when it cannot be read.

    For moments without drbd.follower's stream: a chain whose follower is restarting, and the
    cleanup after a killed agent (which must know whether this node still serves).
    """
    code, out, err = await runner(["drbdsetup", "events2", "--now", resource], 10.0)
    if code != 0:
        if "not defined" in err or "Unknown resource" in err or "no such" in err.lower():
            return None
        raise DrbdError(f"drbdsetup events2 --now {resource} failed (exit {code}): {err.strip() or out.strip()}",
                        code, err)
    return parse_events2(out).get(resource)
