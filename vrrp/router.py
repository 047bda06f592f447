"""The VRRP router state machine of RFC 3768 section 6.4 / RFC 5798 section 6.4, sans I/O.

The router never reads a clock or touches a socket: callers feed it events with the
current time and carry out the actions it returns. That is what lets the property
tests run dozens of routers over a simulated LAN with a virtual clock, and what keeps
the daemon's adapters free of protocol decisions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from vrrp.packet import Address

__all__ = ["Action", "Heard", "OtherMaster", "Params", "Router", "SendAdvert", "State", "Transition"]


class State(enum.StrEnum):
    INITIALIZE = "INITIALIZE"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"


@dataclass(frozen=True)
class Params:
    """What the state machine needs of the configuration; intervals in seconds."""

    vrid: int
    priority: int
    address: Address
    version: int = 2
    advert_interval: float = 1.0
    preempt: bool = True
    preempt_delay: float = 0.0


@dataclass(frozen=True)
class Heard:
    """The parts of a validated advertisement that drive the state machine."""

    src: Address
    priority: int
    interval: float


@dataclass(frozen=True)
class SendAdvert:
    priority: int
    interval: float | None = None  # None: our own; set when the advert speaks for another master's interval


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class OtherMaster:
    """We stay master, but `src` also acts as master (a partition healed): reclaim the clients.

    The RFC lets the lower-priority master step down on our next advert; until the clients'
    ARP caches point at us again they may still talk to it, so the adapter sends gratuitous
    ARP at once instead of waiting for caches to expire.
    """

    src: Address
    priority: int


Action = SendAdvert | Transition | OtherMaster


class Router:
    """One virtual router. Call `deadline` after every event and `tick` when it passes."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.state = State.INITIALIZE
        self.master_adver_interval = params.advert_interval
        self.master_down_at: float | None = None
        self.adver_at: float | None = None
        self.master: Address | None = None
        self.last_heard_at: float | None = None
        self.preempt_at: float | None = None
        self.leaving: Address | None = None
        self.left_how = "priority 0 advert"  # how `leaving` told us it left
        self.preempting: Heard | None = None
        self.maintenance = False  # stay backup whatever happens, until switched off
        self.yielding = False  # after a handover: do not preempt a working master
        self.master_alive = ""  # why the silent master is known alive (`vouch`): no takeover meanwhile
        self.gone_how = ""  # `peer_gone` said so while `master_alive` held the takeover back

    # -- derived timing (RFC 3768 6.1 / RFC 5798 6.1) -------------------------------------
    @property
    def priority(self) -> int:
        return self.params.priority

    @property
    def skew_time(self) -> float:
        if self.params.version == 3:
            return (256 - self.priority) * self.master_adver_interval / 256
        return (256 - self.priority) / 256

    @property
    def master_down_interval(self) -> float:
        return 3 * self.master_adver_interval + self.skew_time

    @property
    def held_back(self) -> bool:
        """A silent master's takeover waits: its node is alive (`vouch`) and it neither left nor is
        being preempted. The deadline stays Master_Down's, so the caller still looks for adverts
        then; it decides how often to look again while the takeover waits."""
        return bool(self.master_alive) and self.leaving is None and self.preempting is None

    @property
    def deadline(self) -> float | None:
        if self.state == State.MASTER:
            return self.adver_at
        if self.state == State.BACKUP and not self.maintenance:
            return self.master_down_at
        return None

    # -- events ------------------------------------------------------------------------
    def start(self, now: float, reason: str = "startup") -> list[Action]:
        """Startup event from Initialize (also how FAULT recovers)."""
        if self.state not in (State.INITIALIZE, State.FAULT):
            return []
        self.master_adver_interval = self.params.advert_interval
        self.master = self.last_heard_at = self.leaving = self.preempting = None
        if self.priority == 255 and not self.maintenance:
            return self._become_master(now, f"{reason}: address owner (priority 255) starts as master")
        return self._become_backup(now, reason)

    def adopt(self, now: float, reason: str) -> list[Action]:
        """Startup as the master this node already was (an agent restart that adopts the chain it
        left held, having heard no other master): advertise at once instead of waiting as backup,
        so a backup that kept hearing us never sees the master go."""
        if self.state != State.INITIALIZE or self.maintenance:
            return []
        self.master_adver_interval = self.params.advert_interval
        self.master = self.last_heard_at = self.leaving = self.preempting = None
        return self._become_master(now, reason)

    def receive(self, heard: Heard, now: float) -> list[Action]:
        if self.state == State.BACKUP:
            return self._backup_receive(heard, now)
        if self.state == State.MASTER:
            return self._master_receive(heard, now)
        return []

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state == State.MASTER and self.adver_at is not None and now >= self.adver_at:
            self.adver_at = now + self.params.advert_interval
            actions.append(SendAdvert(self.priority))
        elif (self.state == State.BACKUP and not self.maintenance and self.master_down_at is not None
              and now >= self.master_down_at and not self.held_back):
            if self.leaving is not None:
                why = (f"master {self.leaving} left ({self.left_how}); "
                       f"took over after Skew_Time {self.skew_time:.3f} s")
            elif self.preempting is not None:
                p = self.preempting
                why = f"preempting lower-priority master {p.src} ({p.priority} < {self.priority})"
            elif self.gone_how:
                why = self.gone_how
            elif self.last_heard_at is None:
                why = f"no advertisement heard within {self.master_down_interval:.3f} s of startup"
            else:
                why = (f"master {self.master} silent for {now - self.last_heard_at:.3f} s "
                       f"(Master_Down_Interval {self.master_down_interval:.3f} s)")
            actions += self._become_master(now, why)
        return actions

    def shutdown(self, now: float) -> list[Action]:
        """Leave the group; a master says so with priority 0 so a backup takes over after Skew_Time."""
        actions: list[Action] = []
        if self.state == State.MASTER:
            actions.append(SendAdvert(0))
        if self.state != State.INITIALIZE:
            actions.append(self._go(State.INITIALIZE, "shutdown"))
        return actions

    def fault(self, reason: str, now: float, farewell: bool = False) -> list[Action]:
        """Stop taking part (link down, failed takeover). `farewell`: the link still works, say priority 0."""
        if self.state == State.FAULT:
            return []
        actions: list[Action] = []
        if farewell and self.state == State.MASTER:
            actions.append(SendAdvert(0))
        actions.append(self._go(State.FAULT, reason))
        return actions

    def handover(self, now: float) -> list[Action]:
        """Planned switch: leave mastership with priority 0 and do not preempt the peer afterwards.

        If no peer takes over within Master_Down_Interval we take over again: a handover must
        never leave the service without a master.
        """
        if self.state != State.MASTER:
            return []
        self.yielding = True
        return [SendAdvert(0), *self._become_backup(now, "handover requested by the admin")]

    def set_maintenance(self, on: bool, now: float) -> list[Action]:
        """Maintenance: hand over if master, then never take over until switched off."""
        if on == self.maintenance:
            return []
        self.maintenance = on
        if on and self.state == State.MASTER:
            return [SendAdvert(0), *self._become_backup(now, "maintenance mode on")]
        return []

    def peer_gone(self, now: float, reason: str) -> list[Action]:
        """The master is known dead sooner than Master_Down_Interval could tell: take over now.

        An extension of the RFC for two routers that also share an authenticated heartbeat on
        every path (agent.peer): the caller decides "gone"; with any other peer it never calls
        this and RFC timing holds. Maintenance still keeps us backup.
        """
        if self.state != State.BACKUP or self.maintenance:
            return []
        if self.held_back:
            self.master_down_at, self.gone_how = now, reason  # due the moment the hold ends
            return []
        return self._become_master(now, reason)

    def vouch(self, alive: str, now: float) -> list[Action]:
        """The master is silent, but something other than VRRP shows its node alive and holding the
        service (`alive` says what; "" withdraws it): its agent died or restarts, the node did not.

        The second extension for a pair (agent.node: DRBD reports the peer Primary and
        connected). Taking over could not succeed anyway, since the live node holds what we would
        need, and claiming mastership would make a restarting agent see another master and give
        up a chain it could simply adopt. So Master_Down and `peer_gone` wait while it holds;
        a leave (priority 0, `peer_left`) and a preemption do not. Withdrawn, a takeover that
        fell due meanwhile happens at the next `tick` (the deadline has passed already).
        """
        self.master_alive = alive
        return []

    def peer_left(self, src: Address, now: float, how: str) -> list[Action]:
        """The master told us it left on another channel: the same as its priority 0 advert.

        The extension that goes with `peer_gone`: a master that goes FAULT because it lost its
        service network sends its priority 0 advert into that network, where we never hear it;
        its heartbeat on the replication network says it left. Only the master we follow
        counts (not some other router's word), and only as fast as priority 0 would be (Skew_Time).
        """
        if self.state != State.BACKUP or self.maintenance or (self.master is not None and self.master != src):
            return []
        if self.leaving is None:
            self.leaving, self.left_how = src, how
            self.master_down_at = now + self.skew_time
        return []

    def recover(self, now: float, reason: str = "fault cleared") -> list[Action]:
        return self.start(now, reason) if self.state == State.FAULT else []

    def reconfigure(self, params: Params, now: float) -> list[Action]:
        """Apply live changes (priority, interval, preempt) without a transition of their own."""
        if (params.vrid, params.version) != (self.params.vrid, self.params.version):
            raise ValueError("vrid and version changes need a restart of the instance")
        old = self.params
        self.params = params
        if params.version == 2 or self.state != State.BACKUP:
            self.master_adver_interval = params.advert_interval
        actions: list[Action] = []
        if self.state == State.MASTER and old.advert_interval != params.advert_interval:
            self.adver_at = now
        if self.state == State.MASTER and old.priority != params.priority:
            actions.append(SendAdvert(params.priority))
            self.adver_at = now + params.advert_interval
        if self.state == State.BACKUP and self.master_down_at is not None:
            self.master_down_at = min(self.master_down_at, now + self.master_down_interval)
        return actions

    def with_priority(self, priority: int, now: float) -> list[Action]:
        return self.reconfigure(replace(self.params, priority=priority), now)

    # -- state handlers ----------------------------------------------------------------
    def _backup_receive(self, heard: Heard, now: float) -> list[Action]:
        if heard.priority == 0:
            self.leaving, self.left_how = heard.src, "priority 0 advert"
            self.master_down_at = now + self.skew_time
            return []
        self.leaving = None
        self.gone_how = ""
        lower = heard.priority < self.priority
        if lower and self.params.preempt and not self.yielding:
            if self.params.preempt_delay <= 0:
                self.preempting = heard
                return []
            if self.preempt_at is None:
                self.preempt_at = now + self.params.preempt_delay
            if now >= self.preempt_at:
                self.preempting = heard
                return []
        else:
            self.preempt_at = None
        self.preempting = None
        self.master = heard.src
        self.last_heard_at = now
        if self.params.version == 3:
            self.master_adver_interval = heard.interval
        self.master_down_at = now + self.master_down_interval
        return []

    def _master_receive(self, heard: Heard, now: float) -> list[Action]:
        if heard.priority == 0:
            # another router leaves mastership while we are master: clients may still use it
            self.adver_at = now + self.params.advert_interval
            return [SendAdvert(self.priority), OtherMaster(heard.src, 0)]
        wins = heard.priority > self.priority or (
            heard.priority == self.priority and int(heard.src) > int(self.params.address)
        )
        if not wins:
            return [OtherMaster(heard.src, heard.priority)]
        if heard.priority > self.priority:
            why = f"{heard.src} advertises higher priority {heard.priority} > {self.priority}"
        else:
            why = f"{heard.src} has equal priority {heard.priority} and a higher address"
        self.master = heard.src
        self.last_heard_at = now
        if self.params.version == 3:
            self.master_adver_interval = heard.interval
        # Two masters met (a healed partition) and we lose. One last advert at our own priority
        # tells the winner at once, whichever of the two heard the other first, so it reclaims
        # the clients with gratuitous ARP instead of leaving them on our MAC until their ARP
        # caches expire. To any RFC router it is just an advert of ours still in flight (not a
        # priority 0, which would make other backups take over and flap). It carries the
        # winner's interval: a v3 backup that accepts it must not learn a shorter one than the
        # master it will follow, or it would time out between that master's adverts.
        return [SendAdvert(self.priority, heard.interval), *self._become_backup(now, why)]

    def _become_master(self, now: float, reason: str) -> list[Action]:
        self.adver_at = now + self.params.advert_interval
        self.master_down_at = None
        self.master = self.params.address
        self.preempt_at = None
        self.leaving = self.preempting = None
        self.yielding = False
        self.gone_how = ""
        return [SendAdvert(self.priority), self._go(State.MASTER, reason)]

    def _become_backup(self, now: float, reason: str) -> list[Action]:
        self.adver_at = None
        self.preempt_at = None
        self.leaving = self.preempting = None
        self.gone_how = ""
        self.master_down_at = now + self.master_down_interval
        return [self._go(State.BACKUP, reason)]

    def _go(self, new: State, reason: str) -> Transition:
        old, self.state = self.state, new
        if new in (State.FAULT, State.INITIALIZE):
            self.adver_at = self.master_down_at = None
        return Transition(old, new, reason)
