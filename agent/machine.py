"""The failover state machine between VRRP and the storage steps, sans I/O.

VRRP mastership is a claim, not a right: when VRRP says MASTER the machine acquires the
steps in order (DRBD Primary, mount, NFS state dir, NFS, the admin's services, VIP), one at a time, and serves
only when all succeeded; whatever stops it (VRRP leaving MASTER, a failed step, a monitor
failure past its restarts) releases exactly what was acquired, in reverse. A failed
acquire rolls back first and only then tells VRRP to step aside (priority 0, silence for a
hold-down that doubles with each failure), so the peer never tries to promote while we
still hold the data.

Like `vrrp.router`, it reads no clock and runs nothing: it returns `RunStep` and VRRP
requests; `agent.chain` runs the steps and reports back with `step_done`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ORDER", "Action", "ChainStep", "Machine", "Op", "Phase", "PhaseChange", "RunStep", "Service", "Settings",
           "Step", "VrrpFault", "VrrpRecover", "in_chain_order"]


class Step(enum.StrEnum):
    """The steps of the chain, in acquire order; the one name used by config, chain, status and journal."""

    DRBD = "drbd"
    MOUNT = "mount"
    NFS_STATE = "nfs_state"
    NFS = "nfs"
    VIP = "vip"


ORDER = tuple(Step)


class Service(str):
    """An admin's `[[service]]` step (agent.config.ServiceConfig): "service:NAME".

    The built-in steps are a fixed enum; services are as many as the config lists, so they are a
    value of their own, a string like the enum's members, so status, journal and durations name
    every step the same way. They sit between the NFS server and the VIP, in the order of the
    file: what they serve lives on the filesystem, and clients reach them only once the VIP is up.
    """

    __slots__ = ()
    PREFIX = "service:"

    def __new__(cls, name: str) -> Service:
        return super().__new__(cls, cls.PREFIX + name)

    def __getnewargs__(self) -> tuple[str]:  # copy and pickle build it from its name again
        return (self.name,)

    @property
    def name(self) -> str:
        return self[len(self.PREFIX):]

    @property
    def value(self) -> str:
        """The step's name in status and journal, as `Step.value` is."""
        return str(self)


ChainStep = Step | Service


def _rank(step: ChainStep) -> float:
    """Where a step sits in the chain; every service ranks just before the VIP."""
    return ORDER.index(Step.VIP) - 0.5 if isinstance(step, Service) else ORDER.index(step)


def in_chain_order(steps: Sequence[ChainStep]) -> bool:
    """Built-in steps in ORDER, services together between NFS and the VIP (in any order among themselves)."""
    return all(isinstance(s, Service) or s in ORDER for s in steps) and \
        list(steps) == sorted(steps, key=_rank) and len(set(steps)) == len(steps)


class Phase(enum.StrEnum):
    IDLE = "IDLE"  # not serving; VRRP decides whether we should
    ACQUIRING = "ACQUIRING"
    SERVING = "SERVING"
    RELEASING = "RELEASING"
    FAULT = "FAULT"  # rolled back after a failure; VRRP silenced for a hold-down


class Op(enum.StrEnum):
    ACQUIRE = "acquire"
    RELEASE = "release"
    CHECK = "check"


@dataclass(frozen=True)
class RunStep:
    step: ChainStep
    op: Op
    timeout: float


@dataclass(frozen=True)
class VrrpFault:
    """Leave mastership with a priority-0 advert and stay silent until `VrrpRecover`."""

    reason: str


@dataclass(frozen=True)
class VrrpRecover:
    reason: str


@dataclass(frozen=True)
class PhaseChange:
    old: Phase
    new: Phase
    reason: str


Action = RunStep | VrrpFault | VrrpRecover | PhaseChange


@dataclass(frozen=True)
class Settings:
    steps: tuple[ChainStep, ...] = (Step.VIP,)
    timeouts: Mapping[ChainStep, float] = field(default_factory=dict)
    monitor_interval: float = 2.0
    max_restarts: int = 2
    hold_down: float = 5.0
    hold_down_max: float = 60.0
    release_retry: float = 1.0
    # steps whose loss the kernel reports as an event (VIPs: RTM_DELADDR), so polling them
    # would only cost wakeups; they are checked through `lost`
    event_watched: frozenset[ChainStep] = frozenset()

    def timeout(self, step: ChainStep) -> float:
        return self.timeouts.get(step, 30.0)


class Machine:
    def __init__(self, settings: Settings) -> None:
        if not in_chain_order(settings.steps):
            raise ValueError(f"steps must be a subsequence of {ORDER} (services before the VIP), got {settings.steps}")
        self.s = settings
        self.phase = Phase.IDLE
        self.held: list[ChainStep] = []  # acquired steps, in acquire order
        self.running: RunStep | None = None
        self.want = False  # VRRP says MASTER
        self.failures = 0  # consecutive failed takeovers, for the hold-down backoff
        self.restarts: dict[ChainStep, int] = {}
        self.fault_reason = ""
        self.hold_until: float | None = None
        self.check_at: float | None = None
        self.retry_at: float | None = None
        self._after_release: str | None = None  # fault reason once the rollback is done
        self._checking: list[ChainStep] = []
        self._restart_from: ChainStep | None = None

    # -- inputs --------------------------------------------------------------------------
    def vrrp_master(self, now: float, reason: str) -> list[Action]:
        self.want = True
        return self._advance(now, f"VRRP MASTER: {reason}")

    def vrrp_lost(self, now: float, reason: str) -> list[Action]:
        self.want = False
        return self._advance(now, f"VRRP no longer MASTER: {reason}")

    def step_done(self, step: ChainStep, op: Op, ok: bool, detail: str, now: float) -> list[Action]:
        run = self.running
        if run is None or run.step != step or run.op != op:
            return []  # a late answer for something we no longer wait for
        self.running = None
        if op == Op.ACQUIRE:
            if ok:
                self.held.append(step)
            elif self._after_release is None:
                self._after_release = f"{step} failed: {detail}"
        elif op == Op.RELEASE:
            if ok:
                self.held.pop()
            else:
                self.retry_at = now + self.s.release_retry  # never leave a half-released node
        else:
            self._checking.pop(0)
            if not ok:
                return self._monitor_failed(step, detail, now)
        return self._advance(now, detail)

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.phase == Phase.FAULT and self.hold_until is not None and now >= self.hold_until:
            self.hold_until = None
            actions += [VrrpRecover(f"hold-down over after: {self.fault_reason}"),
                        self._go(Phase.IDLE, "hold-down over")]
            actions += self._advance(now, "retrying")
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            actions += self._advance(now, "retrying the release")
        if self.phase == Phase.SERVING and self.check_at is not None and now >= self.check_at \
                and self.running is None:
            self.check_at = None
            self._checking = self._polled()
            actions += self._advance(now, "monitor")
        return actions

    def abandon(self, step: ChainStep, now: float) -> list[Action]:
        """The running acquire of `step` was held back and never carried out, and VRRP no longer
        wants it: nothing to roll back for it and no failure; the release goes on from there."""
        run = self.running
        if run is None or run.step != step or run.op != Op.ACQUIRE or self.want:
            return []
        self.running = None
        return self._advance(now, f"{step} acquire abandoned: no longer master")

    def reset(self, now: float) -> list[Action]:
        """The admin fixed the cause of a FAULT: end the hold-down now and forget past failures."""
        self.failures = 0
        self.restarts.clear()
        if self.phase != Phase.FAULT or self.hold_until is None:
            return []
        self.hold_until = now
        return self.tick(now)

    def lost(self, step: ChainStep, detail: str, now: float) -> list[Action]:
        """An event says a held step is gone (e.g. a VIP deleted by hand): like a failed check."""
        if self.phase != Phase.SERVING or step not in self.held or self.running is not None:
            return []
        return self._monitor_failed(step, detail, now)

    def _polled(self) -> list[ChainStep]:
        return [s for s in self.held if s not in self.s.event_watched]

    def reconcile(self, found: Sequence[ChainStep], now: float) -> list[Action]:
        """At startup: whatever a crashed agent left held is released before we take part."""
        self.held = [s for s in self.s.steps if s in found]
        if not self.held:
            return []
        return self._advance(now, f"startup found {', '.join(self.held)} still held")

    def adopt(self, steps: Sequence[ChainStep], now: float, reason: str) -> list[Action]:
        """At startup: the chain, or its first steps, an earlier run of this node held, found and verified.

        Serve it as it is instead of releasing and acquiring it again (an upgrade's restart, or an
        agent killed and restarted, must not fail over); a chain held only up to some step (after
        a kill, ExecStopPost removed the VIPs) is acquired on from there. The monitor takes over,
        so a step that was not what the checks said is restarted like any failed check.
        """
        if self.phase != Phase.IDLE or self.held or self.running is not None:
            raise ValueError(f"adopt() is for a machine that has not started, not one {self.phase}")
        if not steps or list(steps) != list(self.s.steps[:len(steps)]):
            raise ValueError(f"adopt() takes the chain {self.s.steps} or its first steps, got {tuple(steps)}")
        self.held = list(steps)
        self.want = True
        self.failures = 0
        self.restarts.clear()
        if len(self.held) < len(self.s.steps):
            return self._advance(now, reason)
        actions: list[Action] = [self._go(Phase.SERVING, reason)]
        if self._polled():
            self.check_at = now + self.s.monitor_interval
        return actions

    @property
    def deadline(self) -> float | None:
        times = [t for t in (self.hold_until, self.retry_at, self.check_at) if t is not None]
        return min(times) if times else None

    @property
    def serving(self) -> bool:
        return self.phase == Phase.SERVING

    # -- the engine ----------------------------------------------------------------------
    def _advance(self, now: float, reason: str) -> list[Action]:
        """Start the next step if none is running; change phase when a chain completes."""
        if self.running is not None or self.retry_at is not None:
            return []
        actions: list[Action] = []
        if self._checking and self.phase == Phase.SERVING and self.want:
            return [self._run(self._checking[0], Op.CHECK)]
        if self._restart_from is not None and self._restart_from not in self.held:
            self._restart_from = None  # released down to the failed step: acquire again from there
        release = not self.want or self._after_release is not None or self._restart_from is not None
        if release and self.held:
            if self.phase != Phase.RELEASING:
                actions.append(self._go(Phase.RELEASING, reason))
            actions.append(self._run(self.held[-1], Op.RELEASE))
            return actions
        if self._after_release is not None:
            return actions + self._enter_fault(now)
        if self.phase == Phase.FAULT:
            return actions
        if not self.want:
            if self.phase != Phase.IDLE:
                actions.append(self._go(Phase.IDLE, reason))
            return actions
        todo = [s for s in self.s.steps if s not in self.held]
        if todo:
            if self.phase == Phase.IDLE:
                self.restarts.clear()  # a new takeover: restart budgets start afresh
            if self.phase != Phase.ACQUIRING:
                actions.append(self._go(Phase.ACQUIRING, reason))
            actions.append(self._run(todo[0], Op.ACQUIRE))
            return actions
        if self.phase != Phase.SERVING:
            self.failures = 0
            actions.append(self._go(Phase.SERVING, "every step acquired"))
        if self.check_at is None and self._polled():
            self.check_at = now + self.s.monitor_interval
        return actions

    def _monitor_failed(self, step: ChainStep, detail: str, now: float) -> list[Action]:
        self._checking = []
        count = self.restarts.get(step, 0) + 1
        self.restarts[step] = count
        if count > self.s.max_restarts:
            self._after_release = f"{step} failed {count} times while serving: {detail}"
            return self._advance(now, self._after_release)
        # release down to and including the failed step, then acquire again from there
        idx = self.held.index(step) if step in self.held else len(self.held)
        self._restart_from = self.held[idx] if idx < len(self.held) else None
        return self._advance(now, f"{step} check failed ({detail}): restart {count}/{self.s.max_restarts}")

    def _enter_fault(self, now: float) -> list[Action]:
        reason = self._after_release or "failure"
        self._after_release = None
        self.failures += 1
        self.fault_reason = reason
        hold = min(self.s.hold_down * 2 ** (self.failures - 1), self.s.hold_down_max)
        self.hold_until = now + hold
        self.check_at = None
        self.restarts.clear()
        return [self._go(Phase.FAULT, f"{reason}; rolled back, silent for {hold:g} s"), VrrpFault(reason)]

    def _run(self, step: ChainStep, op: Op) -> RunStep:
        self.running = RunStep(step, op, self.s.timeout(step))
        return self.running

    def _go(self, new: Phase, reason: str) -> PhaseChange:
        if new != Phase.SERVING:
            self.check_at = None  # monitoring is for serving only
        old, self.phase = self.phase, new
        return PhaseChange(old, new, reason)
