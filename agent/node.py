"""One storage node's every decision, sans I/O: VRRP, the failover chain, tracking, the guard, the peer.

`Node` composes `vrrp.router.Router`, `agent.machine.Machine`, `agent.track.Tracker` and
`agent.guard` and owns the policy that joins them: how fault sources combine, the priority-0
advert held back until everything is released, the release budgets, the rate limit on
reclaiming clients from another master, the isolation arithmetic, the DRBD acquire plan
(wait for a releasing peer, ask the peer to outdate, the witness wait, promote or refuse),
answering the peer (never while we hold anything, never the newer data, one connection
cycle per 30 s), when probes, checks and queued adverts are due, handover and maintenance.

It reads no clock and runs nothing: `handle(event, now)` takes an `agent.events` value and
returns `agent.actions` values; `deadline()` says when to call again with `Timer()`. It never
calls back into its caller, and `snapshot()` is a read-only value, so an adapter cannot
re-enter a decision half made. The daemon (`agent.instance`) and the two-node simulation
(`tests/storage_sim.py`) run this same class.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.actions import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    WARNING,
    Action,
    AdminAnswer,
    AnswerPeer,
    ApplyNfs,
    AskPeer,
    ChangeVips,
    DrainAdverts,
    Emit,
    Garp,
    Joined,
    Promote,
    ReadDrbd,
    RunCheck,
    RunOutdate,
    SaveState,
    SelfFence,
    SendAdvert,
    SendHeartbeat,
    SendProbe,
    SetWakeThreshold,
    StartFailed,
    StatusChanged,
    Stopped,
    Tickle,
)
from agent.config import CheckConfig, Config
from agent.events import (
    Admin,
    AdminRequest,
    AdvertsHeard,
    CheckResult,
    Doorbell,
    DrbdChanged,
    DrbdRead,
    Event,
    LinkChanged,
    NfsApplied,
    OutdateDone,
    PeerAnswer,
    PeerHeard,
    PeerRequest,
    ProbeResult,
    Promoted,
    Reconfigure,
    Start,
    StepDone,
    Timer,
    VipDeleted,
)
from agent.guard import PeerView, isolation_bound, may_promote, takeover_wait, witness_wait
from agent.journal import Event as Kind
from agent.machine import Action as MachineAction
from agent.machine import (
    ChainStep,
    Machine,
    Op,
    Phase,
    PhaseChange,
    RunStep,
    Service,
    Settings,
    Step,
    VrrpFault,
    VrrpRecover,
)
from agent.track import Tracker
from drbd.status import Status
from vrrp.packet import Address, Drop, Validator
from vrrp.router import Heard, OtherMaster, Params, Router, State, Transition
from vrrp.router import SendAdvert as RouterAdvert

__all__ = ["FENCE_EXIT", "Counters", "LastTransition", "Node", "NodeStatus", "fence_exit_code", "machine_settings",
           "router_params"]

#: seconds after we cycled our connection to outdate during which a new request does not cycle it again
OUTDATE_CYCLE_HOLD = 30.0
OUTDATE_ANSWER_TIMEOUT = 20.0  # how long a peer that answered "state" gets to outdate its disk
PEER_POLL_INTERVAL = 2.0  # how often a backup learns the master's client connections
TICKLE_ROUNDS = (0.0, 0.3, 1.0)  # a client answers out-of-window segments at most every 0.5 s
RECLAIM_INTERVAL = 1.0  # at most one advert + GARP round a second for another master's adverts
DRAIN_INTERVAL = 1.0  # a held-back backup looks for its silent master's adverts once a second
# A master's doorbell rings for every advert of its VRID and for everything else (threshold 1), so
# its queue only ever holds what arrived before that threshold was set, drained by the next ring.
# A timer drain is a backstop only (at 1 s adverts a drain per advert was ~7 % of an idle master).
MASTER_DRAIN_INTERVAL = 10.0
# after a cut heals, the first packets each way may wait for the kernel to resolve the neighbour
# again (it retries every retrans_time, 1 s by default): the peer's "deaf" is stale that much longer
NEIGHBOUR_RETRY = 1.0
PEER_DEMOTE_POLL = 0.1  # while the peer is still Primary and connected, read DRBD again this often
WAKE_NEVER = 256  # a doorbell threshold no advert reaches (priority 0 always rings)
#: a restart's hand-off this recent (in advert intervals since the last advert) is adopted without
#: listening first: the peer's Master_Down_Interval (at least 3 intervals) is still far off
ADOPT_FRESH = 2.0
#: otherwise (after a kill, or a slow restart) listen this long first: a master advertises at least once
ADOPT_LISTEN = 1.25

#: DRBD's fence-peer handler contract (drbd.conf(5), handlers): what the exit code tells DRBD
FENCE_EXIT = {"outdated": 4, "unreachable-dead": 5, "primary": 6}


def fence_exit_code(answer: Mapping[str, Any]) -> int:
    """The exit code `failoverctl fence-peer` gives DRBD for the node's answer: only codes DRBD
    defines; "not fenced" is 6, which keeps a disconnected Primary's I/O frozen (agent.heal)."""
    result = str(answer.get("answer"))
    if result == "unreachable":
        return FENCE_EXIT["unreachable-dead"] if answer.get("witness_reachable") else FENCE_EXIT["primary"]
    return FENCE_EXIT.get(result, FENCE_EXIT["primary"])


def router_params(cfg: Config, address: Address) -> Params:
    v = cfg.vrrp
    return Params(vrid=v.vrid, priority=v.priority, address=address, version=v.version,
                  advert_interval=v.advert_interval, preempt=v.preempt, preempt_delay=v.preempt_delay)


def machine_settings(cfg: Config) -> Settings:
    m = cfg.monitor
    return Settings(steps=cfg.steps, timeouts={s: cfg.timeout(s) for s in cfg.steps}, monitor_interval=m.interval,
                    max_restarts=m.max_restarts, hold_down=m.hold_down, event_watched=frozenset({Step.VIP}))


def addrs(items: Sequence[object]) -> str:
    return ", ".join(str(x) for x in items)


@dataclass
class Counters:
    """Survive node restarts (a reload of identity keys), so they count for the process."""

    transitions: int = 0
    became_master: int = 0
    adverts_sent: int = 0  # counted by the adapter that sends them
    adverts_received: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    faults: int = 0


@dataclass(frozen=True)
class LastTransition:
    at: float  # the node's clock (monotonic); the adapter shows wall time
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class NodeStatus:
    """What the node knows, as plain values: the status command, metrics and systemd's STATUS= line."""

    state: str
    priority: int
    master: str | None
    master_down_interval: float
    maintenance: bool
    yielding: bool
    link_up: bool
    phase: str
    held: tuple[str, ...]
    chain: tuple[str, ...]
    faults: Mapping[str, str]
    track: Mapping[str, object] | None
    durations: Mapping[str, float]
    last_transition: LastTransition | None
    transitions: int
    became_master: int
    faults_total: int
    adverts_received: int
    drops: Mapping[str, int]
    fault_reason: str = ""  # why the chain is in FAULT ("" when it is not)
    hold_left: float | None = None  # seconds of hold-down left
    peer_heard_at: float | None = None  # the node's clock when the peer channel last carried a message
    peer_paths: Mapping[str, float] = field(default_factory=dict)  # path -> the node's clock when last heard
    peer_gone: bool = False  # silent on every path for dead_after heartbeats
    release_by: float | None = None  # isolated: the node's clock by which it must have stopped serving
    waiting_for: str = ""  # a backup not taking over from a silent master whose node is alive: why


@dataclass
class _Acquire:
    """The DRBD acquire in progress: one action at a time, each answered by an event."""

    t0: float
    until: float  # the step's timeout
    inner: float  # the part of it the waits may use
    stage: str = "read"  # read | peer-wait | reread | fence | pause | read2 | promote
    status: Status | None = None
    answer: str = ""
    waited: str = ""
    reason: str = ""
    wait_until: float | None = None


@dataclass
class _Gate:
    """The first step of a chain without DRBD (a shared disk's mount), held back until the peer
    has released it or its isolation bound has passed: nothing else keeps two mounts apart."""

    step: RunStep
    t0: float
    until: float | None = None
    waited: str = ""


@dataclass
class _Fence:
    """Asking the peer to outdate itself: for the DRBD acquire (admin None) or DRBD's fence-peer handler."""

    admin: int | None
    stage: str = "state"  # state | outdate | witnesses
    answer: str = ""
    pings: dict[str, tuple[bool, str]] = field(default_factory=dict)


@dataclass
class _Adopt:
    """A starting node found its chain held (whole, or up to some step): what must hold before it
    adopts instead of releasing.

    Each step's own check, DRBD Primary with an UpToDate disk, connected to a Secondary peer, the peer
    (asked over the peer channel, if any) neither master nor holding anything, and no advert from
    another router, queued or heard while listening. The first thing that does not hold is `why_not`.
    """

    found: tuple[ChainStep, ...]
    t0: float
    listen_until: float
    give_up: float
    evidence: list[str]
    checks: list[ChainStep]
    drbd: bool = False  # a ReadDrbd is awaited
    ask: int | None = None  # the AskPeer awaited
    why_not: str = ""
    drained: bool = False


@dataclass
class _Waiter:
    """An admin request answered once the node is released, or when its budget runs out."""

    id: int
    command: Admin
    until: float
    budget: float = 0.0
    was_master: bool = False


class Node:
    """One VRRP instance and the storage chain it guards; see the module docstring."""

    def __init__(self, cfg: Config, address: Address, counters: Counters | None = None) -> None:
        self.cfg = cfg
        self.address = address
        self.counters = counters if counters is not None else Counters()
        v = cfg.vrrp
        self.router = Router(router_params(cfg, address))
        self.validator = Validator(version=v.version, vrid=v.vrid, interval=v.advert_interval,
                                   auth_pass=v.auth_pass, own=frozenset({address}), peers=frozenset(v.unicast_peers))
        self.validator.drops.update(self.counters.drops)
        self.machine = Machine(machine_settings(cfg))
        self.tracker = Tracker(cfg.track) if cfg.track else None
        self.faults: dict[str, str] = {}  # why the router must stay in FAULT, by source; FAULT while any
        self.link_up = True
        self.joined = False
        self.stopped = False
        self.last: LastTransition | None = None
        self.durations: dict[str, float] = {}
        self._out: list[Action] = []
        self._ids = itertools.count(1)
        self._listening_since = 0.0  # the router forgets the peer when it (re)starts
        self._farewell = False
        self._draining = False
        self._next_drain = 0.0
        self._wake = WAKE_NEVER
        self._last_reclaim = -1e9
        self._master_since = 0.0
        self._master_reason = ""
        self._start_until: float | None = None
        self._adopt: _Adopt | None = None
        self._adopted = ""  # why the machine's SERVING came from adopting, not from a takeover
        self.kept: tuple[str, ...] = ()  # what a stop for a restart left held for the next agent
        self._stop: _Waiter | None = None
        self._waiters: list[_Waiter] = []
        self._probe_at: dict[str, float] = {}
        self._probe_sent: dict[str, float] = {}
        self._check_at: dict[str, float] = {}
        self._check_sent: dict[str, float] = {}
        self._poll_at: float | None = None
        self._peer_connections: tuple[tuple[str, int, str, int], ...] = ()
        self._tickles: list[float] = []
        self._tickle_conns: tuple[tuple[str, int, str, int], ...] = ()
        self._acquire: _Acquire | None = None
        self._fences: dict[int, _Fence] = {}
        self._asks: dict[int, int | None] = {}  # AskPeer id -> fence id (None: the connections poll)
        self._outdates: deque[PeerRequest] = deque()
        self._outdating: PeerRequest | None = None
        self._outdate_cycled_at: float | None = None
        self._peer_heard_at: float | None = None
        self._nfs_changed = False  # a reload changed [nfs]: applied once no NFS step runs
        self._drbd_seen = ""  # DRBD's state as last logged (DrbdChanged)
        self._now = 0.0
        # the peer's heartbeats (agent.peer): last heard per path, gone when silent on all
        self._beat_at: float | None = None  # when our next heartbeat is due
        self._heard: dict[str, float] = {}
        self._path_silent: set[str] = set()
        self._peer_gone = False
        self._peer_deaf = False  # the peer says it hears nothing from us
        self._peer_bound = 0.0  # the isolation bound the peer announces for itself
        self._peer_restart_until = 0.0  # the peer's agent restarts (agent.handoff): not gone before this
        self._peer_holding = True  # its last heartbeat: holds part of the chain (unknown: yes)
        self._peer_vrrp = ""  # its last heartbeat's VRRP state
        self._left_at = -1.0  # when the master's heartbeat said it left (its adverts queued before are stale)
        self._gate: _Gate | None = None
        self._release_by: float | None = None
        self._isolated_at: float | None = None  # when this node noticed it is isolated (release_deadline counts)
        self._drbd_now: Status | None = None  # DRBD as drbd.follower last told (None: not known or not up)
        self._drbd_linked = False  # this run has seen DRBD connected to the peer
        self._waiting_for = ""  # `_vouch`: why this backup waits for a silent master's agent
        self._drained_at = -1.0  # when the VRRP queue was last read to the end
        # the last time too few witnesses answered us: we may have been cut off ourselves then,
        # and a peer silent to us may have gone on serving (and been isolated only later)
        self._pings: dict[str, bool] = {}
        self._unsure_at: float | None = None
        # since when this process has run without a stall (SIGSTOP, a frozen VM): what arrived
        # during a stall is read only now, so silence and the peer's "deaf" count from here
        self._awake_since = 0.0
        # when the peer last came back after counting gone: its first heartbeats were sent before ours
        # reached it, so its "deaf" is stale (a heal is silent both ways) until ours have had time to
        self._back_since = 0.0
        self._self_fenced = False

    # -- the one entry point ------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        self._out = out
        beat = self._beats()
        if beat and now - self._now > 2 * beat:  # our own timer fires every heartbeat: we were stalled
            self._awake_since = now
        self._now = now
        if self.stopped:
            return out
        if isinstance(event, Timer):
            self._timer(now)
        elif isinstance(event, Doorbell):
            self._drain()
        elif isinstance(event, AdvertsHeard):
            self._adverts(event, now)
        elif isinstance(event, StepDone):
            if not self._adopt_checked(event):
                self._step_done(event.step, event.op, event.ok, event.detail, event.ms, now)
        elif isinstance(event, DrbdRead):
            if not self._adopt_drbd(event):
                self._drbd_read(event, now)
        elif isinstance(event, DrbdChanged):
            self._drbd_changed(event, now)
        elif isinstance(event, Promoted):
            self._promoted(event, now)
        elif isinstance(event, ProbeResult):
            self._probe_result(event, now)
        elif isinstance(event, CheckResult):
            self._track_result(event.name, event.ok, event.detail, now, self._check_sent, self._check_at,
                               self._check_interval(event.name))
        elif isinstance(event, PeerRequest):
            self._peer_request(event, now)
        elif isinstance(event, PeerHeard):
            self._peer_heard(event, now)
        elif isinstance(event, PeerAnswer):
            self._peer_answer(event, now)
        elif isinstance(event, OutdateDone):
            self._outdate_done(event, now)
        elif isinstance(event, NfsApplied):
            self._emit(Kind.RELOAD, f"reload: [nfs] {'applied' if event.ok else 'NOT applied'}: {event.detail}",
                       INFO if event.ok else ERROR, RESULT="ok" if event.ok else "failed")
        elif isinstance(event, LinkChanged):
            self._link(event, now)
        elif isinstance(event, VipDeleted):
            self._vip_deleted(event, now)
        elif isinstance(event, AdminRequest):
            self._admin(event, now)
        elif isinstance(event, Reconfigure):
            self._reconfigure(event.cfg, now)
        elif isinstance(event, Start):
            self._start(event, now)
        self._due(now)
        self._settle(now)
        return out

    def deadline(self) -> float | None:
        """When to call `handle(Timer(), now)` next; the adapter keeps exactly this one timer."""
        if self.stopped:
            return None
        adopt = self._adopt
        times = [self.machine.deadline, self._poll_at, self._start_until,
                 None if adopt is None else adopt.give_up if adopt.checks or adopt.drbd or adopt.ask else
                 max(adopt.listen_until, self._now) if not adopt.drained else None,
                 self._stop.until if self._stop else None,
                 self._acquire.wait_until if self._acquire else None,
                 self._tickles[0] if self._tickles else None, self._beat_at, self._release_by,
                 self._next_silence(), self._gate.until if self._gate else None]
        if self.joined and not self._draining:
            down = self.router.deadline
            if down is not None and self.router.state == State.BACKUP and self.router.held_back:
                down = max(down, self._next_drain)  # waiting for a silent master's agent: look once a second
            times.append(down)
        times += self._probe_at.values()
        times += self._check_at.values()
        times += [w.until for w in self._waiters]
        if self._acquire is not None and self._acquire.stage in ("peer-wait", "pause"):
            times.append(self._acquire.until)
        valid = [t for t in times if t is not None]
        return min(valid) if valid else None

    @property
    def quiet(self) -> bool:
        """Nothing held and no step running: a priority-0 advert may go, an admin's wait is over."""
        return self.machine.running is None and not self.machine.held

    # -- output helpers -----------------------------------------------------------------
    def _emit(self, kind: Kind | None, message: str, level: int = INFO, **fields: object) -> None:
        self._out.append(Emit(kind, message, level, {k: v for k, v in fields.items() if v is not None}))

    def _next_id(self) -> int:
        return next(self._ids)

    # -- lifecycle ----------------------------------------------------------------------
    def _start(self, event: Start, now: float) -> None:
        if self.joined or self._start_until is not None or self._adopt is not None:
            return  # started already
        self.link_up = event.link_up
        if event.maintenance:
            self.router.set_maintenance(True, now)
            self._emit(Kind.MAINTENANCE, "maintenance on, as the admin left it before this start: this node stays "
                       "BACKUP and never takes over (failoverctl maintenance off)", WARNING, MAINTENANCE="on")
        if self.cfg.peer is not None:
            self._poll_at = now
            self._beat_at = now if self.cfg.peer.heartbeat else None
        found = tuple(s for s in self.cfg.steps if s in event.found)
        first = found == self.cfg.steps[:len(found)]  # the whole chain, or held up to some step
        if found and first and event.link_up and not event.maintenance:
            self._begin_adopt(found, event.handoff_age, now)
        elif found:
            why = "maintenance mode is on" if event.maintenance else "the interface is down" \
                if not event.link_up else "not the chain's first steps"
            self._release_found(found, now, why if first else "")
        else:
            self._start_until = now

    def _release_found(self, found: Sequence[ChainStep], now: float, why: str) -> None:
        """Startup reconciliation: whatever an earlier run left held is released before we take part."""
        vips = addrs(self.cfg.vrrp.vips)
        if Step.VIP in found:
            self._emit(Kind.CLEANUP, f"VIP(s) {vips} left on {self.cfg.vrrp.interface} by an earlier run: removing",
                       WARNING, VIPS=vips)
        rest = [str(s) for s in found if s != Step.VIP]
        if rest:
            self._emit(Kind.CLEANUP, f"startup: {', '.join(rest)} still held by an earlier run; releasing before "
                       "taking part in VRRP", WARNING, HELD=",".join(rest))
        if why:
            self._emit(Kind.CLEANUP, f"startup: not adopting what the earlier run left held: {why}; releasing as "
                       "after any unclean stop", WARNING, HELD=",".join(found), REASON=why)
        self._start_until = now + self._release_budget(found)
        self._machine(self.machine.reconcile(found, now), now)

    # -- adopting the chain a restarted agent's predecessor left held ------------------------
    def _begin_adopt(self, found: tuple[ChainStep, ...], handoff_age: float | None, now: float) -> None:
        """Verify before adopting; meanwhile nothing is released and nothing is advertised."""
        interval = self.cfg.vrrp.advert_interval
        if handoff_age is not None and handoff_age <= ADOPT_FRESH * interval:
            listen, how = 0.0, f"handed over by the previous agent {handoff_age:.2f} s after its last advert"
        elif handoff_age is not None and handoff_age > 3 * interval:
            # the backup's Master_Down_Interval may be over: it may hold the VIP already, so do not
            # add a second listening delay to a restart that was too slow
            self._release_found(found, now, f"the restart took {handoff_age:.2f} s from the previous agent's last "
                                f"advert, more than 3 advert intervals: the backup may have taken over")
            return
        else:
            listen = ADOPT_LISTEN * interval
            how = ("the previous agent's hand-off is " + (f"{handoff_age:.2f} s old" if handoff_age is not None
                                                         else "missing (killed?)") + f": listened {listen:g} s")
        budget = max(self.cfg.monitor.step_timeout, self.cfg.peer.timeout if self.cfg.peer else 0.0)
        a = self._adopt = _Adopt(found, now, now + listen, now + budget, [how], [s for s in found if s != Step.DRBD])
        what = "the whole chain" if found == self.cfg.steps else "the chain up to " + str(found[-1])
        self._emit(Kind.CLEANUP, f"startup: {what} ({', '.join(found)}) is still held by an earlier run: "
                   "checking it to adopt it instead of releasing it", HELD=",".join(found))
        if Step.DRBD in found:
            a.drbd = True
            self._out.append(ReadDrbd())
        if a.checks:
            self._out.append(RunStep(a.checks[0], Op.CHECK, self.machine.s.timeout(a.checks[0])))
        if self.cfg.peer is not None:
            a.ask = self._next_id()
            self._out.append(AskPeer(a.ask, "state", self.cfg.peer.timeout))

    def _adopt_checked(self, event: StepDone) -> bool:
        a = self._adopt
        if a is None or event.op != Op.CHECK or not a.checks or a.checks[0] != event.step:
            return False
        a.checks.pop(0)
        if not event.ok:
            a.why_not = a.why_not or f"{event.step} check failed: {event.detail}"
            return True
        a.evidence.append(f"{event.step}: {event.detail}")
        if a.checks:
            self._out.append(RunStep(a.checks[0], Op.CHECK, self.machine.s.timeout(a.checks[0])))
        return True

    def _adopt_drbd(self, event: DrbdRead) -> bool:
        a = self._adopt
        if a is None or not a.drbd:
            return False
        a.drbd = False
        st = event.status
        if event.error or st is None:
            a.why_not = a.why_not or f"DRBD cannot be read: {event.error or 'the resource is down'}"
        elif not st.primary or st.disk != "UpToDate" or st.peer_primary or not st.connected:
            # disconnected: the peer may have promoted since (its isolation bound counts from a
            # moment we cannot know), so only the guard of an ordinary takeover may decide
            a.why_not = a.why_not or ("DRBD is not Primary with an UpToDate disk, connected to a Secondary peer: "
                                      + st.summary())
        else:
            a.evidence.append(f"DRBD {st.summary()}")
        return True

    def _adopt_peer(self, event: PeerAnswer) -> bool:
        a = self._adopt
        if a is None or a.ask != event.id:
            return False
        a.ask = None
        body = event.body
        if body is None:
            a.evidence.append("the peer channel had no answer")
            return True
        self._peer_heard_at = self._now
        vrrp, phase, held = body.get("vrrp"), body.get("phase"), body.get("held") or []
        if vrrp == State.MASTER or held or phase not in (Phase.IDLE, Phase.FAULT):
            holding = ", ".join(map(str, held)) or "nothing"
            a.why_not = a.why_not or f"the peer is {vrrp}, phase {phase}, holding {holding}"
        else:
            a.evidence.append(f"the peer says {vrrp}, holding nothing")
        return True

    def _adopt_progress(self, now: float) -> None:
        """After every event while verifying: release at the first doubt, adopt once all is in."""
        a = self._adopt
        if a is None:
            return
        if self.faults.get("link"):
            a.why_not = a.why_not or self.faults["link"]
        if not a.why_not and (a.checks or a.drbd or a.ask is not None):
            if now < a.give_up:
                return
            a.why_not = f"the checks did not answer within {a.give_up - a.t0:g} s"
        if not a.why_not and (now < a.listen_until or self._draining):
            return
        if not a.why_not and not a.drained:
            a.drained = True  # adverts queued before we listened count too
            self._drain()
            return
        self._adopt = None
        if a.why_not:
            self._release_found(a.found, now, a.why_not)
            return
        self._adopted = f"adopted {', '.join(a.found)} as the earlier run left them: " + "; ".join(a.evidence)
        if self.tracker is not None:
            self.tracker.presume_up()  # the earlier run served with them; the next results decide
        self._machine(self.machine.adopt(a.found, now, self._adopted), now)
        self._adopted = ""
        self._join(now, adopt=True)

    def _join(self, now: float, adopt: bool = False) -> None:
        self._start_until = None
        self.joined = True
        self._schedule_tracking(now)  # from here: a node proves it is connected after it joined
        if not self.link_up:
            self.faults.setdefault("link", f"interface {self.cfg.vrrp.interface} is down at startup")
        if self.tracker is not None and self.tracker.fault_reason:
            self.faults.setdefault("track", f"{self.tracker.fault_reason} (no verdict yet at startup)")
        self._listening_since = now
        self._out.append(Joined())
        if self.faults:
            self._vrrp(self.router.fault("; ".join(self.faults.values()), now), now)
        elif adopt:
            self._vrrp(self.router.adopt(now, "startup: adopted the chain the previous agent left held, no other "
                                              "master heard"), now)
            self._out.append(Garp())
        else:
            self._vrrp(self.router.start(now), now)

    def _release_budget(self, held: Sequence[ChainStep]) -> float:
        return 0.8 if list(held) in ([Step.VIP], []) else sum(self.machine.s.timeout(s) for s in held) + 1

    def _settle(self, now: float) -> None:
        """After every event: what waited for the node to be released, and the doorbell."""
        self._adopt_progress(now)
        self._vouch(now)
        quiet = self.quiet
        if quiet and self._farewell:
            self._farewell = False
            self._out.append(SendAdvert(0))
        if self._start_until is not None and not self.joined and (quiet or now >= self._start_until):
            if quiet:
                self._join(now)
            else:
                self._start_until = None
                self._out.append(StartFailed(f"startup reconciliation could not release "
                                             f"{', '.join(self.machine.held)}"))
        superseded = self.router.state == State.MASTER  # a handover the peer did not take is over
        for w in [w for w in self._waiters if quiet or now >= w.until
                  or (superseded and w.command == Admin.HANDOVER)]:
            self._waiters.remove(w)
            self._answer_waiter(w, quiet)
        running = self.machine.running
        if self._nfs_changed and (running is None or running.step not in (Step.NFS, Step.NFS_STATE)):
            self._nfs_changed = False  # never while the server is being started or stopped
            self._out.append(ApplyNfs())
        if self._stop is not None and (quiet or now >= self._stop.until):
            self._finish_stop(now)
        if not self.stopped:
            threshold = 1 if self.router.state == State.MASTER or self._adopt is not None else WAKE_NEVER
            if threshold != self._wake:
                self._wake = threshold
                self._out.append(SetWakeThreshold(threshold))

    def _finish_stop(self, now: float) -> None:
        stop, self._stop = self._stop, None
        assert stop is not None
        held = tuple(str(s) for s in self.machine.held)
        if held:
            self._emit(Kind.FAULT, f"stopping with {', '.join(held)} still held: release did not finish within "
                       f"{stop.budget:g} s", ERROR, HELD=",".join(held))
        if self._farewell:
            self._farewell = False
            self._out.append(SendAdvert(0))
        self._out.append(Stopped(held))
        self.stopped = True

    # -- timers ---------------------------------------------------------------------------
    def _timer(self, now: float) -> None:
        deadline = self.router.deadline
        if self.joined and not self._draining and deadline is not None and deadline <= now:
            if self.router.state == State.BACKUP and self.router.held_back and now < self._next_drain:
                pass  # a held-back takeover looks for the master's adverts once a second (DRAIN_INTERVAL)
            elif self.router.state == State.MASTER and now < self._next_drain:
                # a master's own advert timer: every advert rings its doorbell (see MASTER_DRAIN_INTERVAL)
                self._vrrp(self.router.tick(now), now)
            else:
                master = self.router.state == State.MASTER
                self._next_drain = now + (MASTER_DRAIN_INTERVAL if master else DRAIN_INTERVAL)
                self._drain()

    def _due(self, now: float) -> None:
        if self.machine.deadline is not None and self.machine.deadline <= now:
            self._machine(self.machine.tick(now), now)
        for target, at in list(self._probe_at.items()):
            if at <= now and self.cfg.track is not None:
                del self._probe_at[target]
                self._probe_sent[target] = now
                self._out.append(SendProbe(target, self.cfg.track.timeout))
        for name, at in list(self._check_at.items()):
            check = self._check(name)
            if at <= now and check is not None:
                del self._check_at[name]
                self._check_sent[name] = now
                self._out.append(RunCheck(name, check.argv, check.timeout))
        if self._poll_at is not None and self._poll_at <= now and self.cfg.peer is not None:
            self._poll_at = now + PEER_POLL_INTERVAL
            if self.router.state == State.BACKUP:
                ask = self._next_id()
                self._asks[ask] = None
                self._out.append(AskPeer(ask, "state", self.cfg.peer.timeout))
        self._watch_peer(now)
        self._watch_release(now)
        self._check_gate(now)
        while self._tickles and self._tickles[0] <= now:
            self._tickles.pop(0)
            self._out.append(Tickle(self._tickle_conns))
        plan = self._acquire
        if plan is not None and plan.wait_until is not None and plan.wait_until <= now:
            plan.wait_until = None
            plan.stage = "reread" if plan.stage == "peer-wait" else "read2"
            self._out.append(ReadDrbd())
        elif plan is not None and plan.stage in ("peer-wait", "pause") and now >= plan.until:
            self._acquired(False, f"drbd acquire did not finish within {plan.until - plan.t0:g} s", now)

    # -- VRRP -------------------------------------------------------------------------------
    def _drain(self) -> None:
        if not self._draining:
            self._draining = True
            self._out.append(DrainAdverts())

    def _adverts(self, event: AdvertsHeard, now: float) -> None:
        """Feed the router everything queued, in arrival order, then let its timers run."""
        self._draining = False
        self._drained_at = now
        router = self.router
        for data, at in event.datagrams:
            deadline = router.deadline
            if self.joined and deadline is not None and deadline <= at:
                self._vrrp(router.tick(deadline), deadline)
            result = self.validator.check(data)
            if isinstance(result, Drop):
                self._out.append(Emit(None, "dropped VRRP packet: %s (%s)", DEBUG, args=(result.reason, result.detail)))
                continue
            self.counters.adverts_received += 1
            if self._adopt is not None and not self._adopt.why_not:
                self._adopt.why_not = f"{result.src} advertises priority {result.priority}: another master"
            if router.state == State.MASTER and at < self._master_since:
                continue  # queued before we took over (the peer went silent since): its next advert counts
            if router.state == State.BACKUP and result.src == router.leaving and at <= self._left_at:
                continue  # queued before its heartbeat said it left: drained late, it must not undo the leave
            self._vrrp(router.receive(Heard(result.src, result.priority, result.interval), at), at)
        self.counters.drops = dict(self.validator.drops)
        if self.joined:
            self._vrrp(router.tick(now), now)

    def _vrrp(self, actions: Sequence[object], now: float, why: str = "") -> None:
        for action in actions:
            if isinstance(action, RouterAdvert):
                if action.priority == 0 and not self.quiet:
                    self._farewell = True  # sent once everything is released
                else:
                    self._out.append(SendAdvert(action.priority, action.interval))
            elif isinstance(action, Transition):
                self._transition(action, why, now)
            elif isinstance(action, OtherMaster):
                self._other_master(action, now)

    def _transition(self, t: Transition, why: str, now: float) -> None:
        self.counters.transitions += 1
        reason = f"{why}: {t.reason}" if why and why != t.reason else t.reason
        self.last = LastTransition(now, t.old, t.new, reason)
        peer = self.router.master if self.router.master != self.address else None
        v = self.cfg.vrrp
        self._emit(Kind.TRANSITION, f"VRRP {v.vrid} on {v.interface}: {t.old} -> {t.new}: {reason}",
                   VRRP_STATE=t.new, PREV_STATE=t.old, REASON=reason, PEER=peer, VRID=v.vrid,
                   INTERFACE=v.interface, VRRP_PRIORITY=self.router.priority)
        self._out.append(StatusChanged())
        if t.old in (State.INITIALIZE, State.FAULT):
            self._listening_since = now  # the guard's silence counts from when we listen again
        if t.new == State.MASTER:
            self.counters.became_master += 1
            self._master_since = now
            self._master_reason = reason
            self._machine(self.machine.vrrp_master(now, reason), now)
        elif t.old == State.MASTER:
            self._machine(self.machine.vrrp_lost(now, reason), now)

    def _other_master(self, other: OtherMaster, now: float) -> None:
        """Two masters (a healed partition) and we win: advert and gratuitous ARP now, so clients come back."""
        if Step.VIP not in self.machine.held or now - self._last_reclaim < RECLAIM_INTERVAL:
            return
        self._last_reclaim = now
        self._out += [SendAdvert(self.router.priority), Garp()]
        what = ("left mastership (priority 0)" if other.priority == 0 else
                f"also acts as master (priority {other.priority} < {self.router.priority})")
        self._emit(Kind.TRANSITION, f"{other.src} {what} while we are master: advert and gratuitous ARP sent at "
                   "once", WARNING, VRRP_STATE="MASTER", PEER=str(other.src), REASON="two masters")

    def _set_fault(self, source: str, reason: str | None, now: float, farewell: bool = False) -> None:
        """FAULT while any source has a reason; back to VRRP when the last one clears."""
        had = bool(self.faults)
        if reason:
            self.faults[source] = reason
        elif self.faults.pop(source, None) is None:
            return
        if not self.joined:
            return
        if self.faults and not had:
            self._vrrp(self.router.fault(reason or source, now, farewell=farewell), now)
        elif had and not self.faults:
            self._vrrp(self.router.recover(now, f"{source} fault cleared"), now)

    def _link(self, event: LinkChanged, now: float) -> None:
        self.link_up = event.up
        name = self.cfg.vrrp.interface
        self._emit(Kind.LINK, f"interface {name} is {'up' if event.up else 'down'} ({event.detail})",
                   INFO if event.up else WARNING, LINK="up" if event.up else "down", INTERFACE=name)
        self._set_fault("link", None if event.up else f"interface {name} down ({event.detail})", now)
        self._out.append(StatusChanged())

    def _apply_priority(self, now: float) -> None:
        base = self.cfg.vrrp.priority
        prio = self.tracker.effective_priority(base) if self.tracker is not None else base
        if prio != self.router.priority:
            self._vrrp(self.router.with_priority(prio, now), now, why=f"tracked priority {prio} (configured {base})")

    # -- the failover chain -----------------------------------------------------------------
    def _machine(self, actions: list[MachineAction], now: float) -> None:
        for action in actions:
            if isinstance(action, RunStep):
                if action.step == Step.DRBD and action.op == Op.ACQUIRE:
                    self._begin_acquire(action, now)
                elif action.step == Step.MOUNT and action.op == Op.ACQUIRE and self.cfg.drbd is None:
                    self._gate = _Gate(action, now)
                    self._check_gate(now)
                else:
                    self._out.append(action)
            elif isinstance(action, VrrpFault):
                self.counters.faults += 1
                hold = (self.machine.hold_until or now) - now
                self._emit(Kind.FAULT, f"fault: {action.reason}; rolled back, priority 0 and silence for {hold:g} s",
                           ERROR, REASON=action.reason)
                self._set_fault("hold", action.reason, now, farewell=True)
            elif isinstance(action, VrrpRecover):
                self._set_fault("hold", None, now)
            elif isinstance(action, PhaseChange):
                self._phase(action, now)

    def _step_done(self, step: ChainStep, op: Op, ok: bool, detail: str, ms: float, now: float) -> None:
        if op != Op.CHECK or not ok:
            self.durations[f"{step}_{op}"] = round(ms, 3)
            self._emit(Kind.STEP, f"{step} {op} {'done' if ok else 'FAILED'} in {ms:.1f} ms: {detail}",
                       INFO if ok else ERROR, STEP=f"{step}_{op}", RESULT="ok" if ok else "failed",
                       DURATION_MS=f"{ms:.1f}")
        self._machine(self.machine.step_done(step, op, ok, detail, now), now)

    def _phase(self, change: PhaseChange, now: float) -> None:
        if change.new in (Phase.SERVING, Phase.ACQUIRING) and self._adopted:
            held = ",".join(self.machine.held)
            rest = [str(s) for s in self.cfg.steps if s not in self.machine.held]
            how = f"acquiring {', '.join(rest)} on as master" if rest else "serving on"
            self._emit(Kind.ADOPTED, f"{self._adopted}; {how} without a failover", VRRP_STATE="MASTER",
                       HELD=held, EVIDENCE=self._adopted.split(": ", 1)[-1], VIPS=addrs(self.cfg.vrrp.vips),
                       ACQUIRING=",".join(rest) or None)
        elif change.new == Phase.SERVING:
            total = (now - self._master_since) * 1000
            done = "; ".join(f"{k.rsplit('_', 1)[0]} {v:g} ms" for k, v in self.durations.items()
                             if k.endswith("_acquire"))
            vips = addrs(self.cfg.vrrp.vips)
            self._emit(Kind.SERVING, f"became MASTER: {self._master_reason}; {done}; VIP {vips} up "
                       f"({total:.1f} ms after the transition)", VRRP_STATE="MASTER", REASON=self._master_reason,
                       DURATION_MS=f"{total:.1f}", VIPS=vips)
            self._tickle(now)
        elif change.old == Phase.RELEASING and change.new == Phase.IDLE:
            self._emit(Kind.RELEASED, f"released: {', '.join(reversed(self.cfg.steps))} ({change.reason})",
                       VRRP_STATE=self.router.state)
        self._out.append(StatusChanged())

    def _vip_deleted(self, event: VipDeleted, now: float) -> None:
        if event.address not in self.cfg.vrrp.vips:
            return
        detail = f"VIP {event.address} was removed from {self.cfg.vrrp.interface} by someone else"
        actions = self.machine.lost(Step.VIP, detail, now)
        if actions:
            self._emit(Kind.STEP, f"{detail}: restarting the vip step", WARNING, STEP="vip_check", RESULT="lost",
                       VIPS=str(event.address))
        self._machine(actions, now)

    def _drbd_changed(self, event: DrbdChanged, now: float) -> None:
        """DRBD told us unasked (drbd.follower): log it; a held resource no longer Primary is lost at
        once, like a failed check; a peer that demoted (or a lost link) ends the acquire's peer-wait."""
        st, resource = event.status, self.cfg.drbd.resource if self.cfg.drbd else "?"
        self._drbd_now = st
        self._drbd_linked = self._drbd_linked or (st is not None and st.connected)
        self._frozen_before_us(st)
        words = st.summary() if st is not None else f"{resource}: not up"
        if words != self._drbd_seen:
            self._drbd_seen = words
            self._out.append(Emit(None, "DRBD %s", INFO, args=(words,)))
        if Step.DRBD in self.machine.held and (st is None or not st.primary):
            detail = f"DRBD is no longer Primary: {words}"
            actions = self.machine.lost(Step.DRBD, detail, now)
            if actions:
                self._emit(Kind.STEP, f"{detail}: restarting from the drbd step", WARNING, STEP="drbd_check",
                           RESULT="lost")
            self._machine(actions, now)
        plan = self._acquire
        if plan is not None and plan.stage == "peer-wait" and not (st is not None and st.peer_primary and st.connected):
            plan.wait_until = now  # `_due` re-reads at once instead of at the next poll

    def _vouch(self, now: float) -> None:
        """A peer whose DRBD is Primary and connected to ours is a live node holding the data: if its
        agent falls silent (killed, hung, restarting) we wait for the agent instead of taking over.

        A takeover could not promote while that node is Primary, and claiming mastership would make
        its restarting agent hear another master and release a chain it can adopt (agent.handoff).
        A dead node loses the connection within DRBD's ping timeout, and a peer that demotes ends
        the wait, both reported by drbd.follower at once; a leave or our preemption is not held
        back (vrrp.router's `vouch`).
        """
        st, drbd = self._drbd_now, self.cfg.drbd
        alive = ""
        if drbd is not None and self.joined and st is not None and st.connected and st.peer_primary \
                and not st.primary:
            alive = f"DRBD {drbd.resource} shows the peer Primary and connected"
        if alive != self.router.master_alive:
            self._vrrp(self.router.vouch(alive, now), now)
        r = self.router
        # silent: the queue was read after Master_Down fell due (or `peer_gone` made it due) and held no advert
        due = r.state == State.BACKUP and r.held_back and r.master_down_at is not None \
            and self._drained_at >= r.master_down_at
        waiting = f"the master is silent, but {alive}: waiting for its agent, not taking over" if due else ""
        if waiting != self._waiting_for:
            self._waiting_for = waiting
            if waiting:
                silent = f" for {now - self._last_heard():.2f} s"
                self._emit(Kind.FENCE, f"the master's agent is silent{silent}, but {alive}: its node lives and "
                           "holds the data, so this node waits for its agent instead of taking over (a promote "
                           "could not succeed while it is Primary)", WARNING, PEER_STATE="agent-silent")
            else:
                why = "the master is heard again, or it left" if alive else \
                    f"DRBD: {st.summary()}" if st is not None else "DRBD is down"
                self._emit(Kind.FENCE, f"no longer waiting for the master's agent: {why}", PEER_STATE="wait-over")
            self._out.append(StatusChanged())

    # -- the DRBD acquire plan (the split-brain guard's inputs gathered one at a time) ---------
    def _begin_acquire(self, step: RunStep, now: float) -> None:
        self._acquire = _Acquire(t0=now, until=now + step.timeout, inner=max(1.0, step.timeout - 2.0))
        self._out.append(ReadDrbd())

    def _drbd_read(self, event: DrbdRead, now: float) -> None:
        plan = self._acquire
        if plan is None or plan.stage not in ("read", "reread", "read2"):
            return
        if event.error:
            self._acquired(False, event.error, now)
            return
        plan.status = status = event.status
        if plan.stage == "reread":
            plan.waited = f"; waited {now - plan.t0:.2f} s for the peer to demote"
        if plan.stage == "read2":
            self._decide(plan, now)
            return
        if status is not None and status.peer_primary and status.connected and now - plan.t0 < plan.inner:
            # we preempted, the partition healed, or the peer's agent died and its kernel lives:
            # the peer is releasing, or will be; wait for its demotion. A live DRBD connection is
            # never dropped on the agents' word: silence of the agent (killed, restarting) is not
            # death of the node, and a dropped Primary would freeze (resource-and-stonith) with no
            # agent to answer its fence-peer handler. A dead node is noticed by DRBD's own ping
            # (README: ping-int 1, ping-timeout 5: within ~1.5 s, inside the isolation bound).
            plan.stage, plan.wait_until = "peer-wait", now + PEER_DEMOTE_POLL
            return
        if (status is not None and not status.connected and not status.primary and not status.standalone
                and status.peer_disk != "Outdated" and self.cfg.peer is not None):
            plan.stage = "fence"
            self._begin_fence(None)
            return
        self._after_fence(plan, now)

    def _after_fence(self, plan: _Acquire, now: float) -> None:
        pause = witness_wait(plan.status, self._peer_view(now, plan.answer))
        if 0 < pause < plan.inner - (now - plan.t0):
            # unknown_peer = witness: give an isolated peer the time to notice and release first
            plan.stage, plan.wait_until = "pause", now + pause
            plan.waited += f"; waited {pause:.2f} s so an isolated peer could release first"
            return
        self._decide(plan, now)

    def _decide(self, plan: _Acquire, now: float) -> None:
        assert self.cfg.drbd is not None
        resource = self.cfg.drbd.resource
        decision = may_promote(plan.status, resource, self._peer_view(now, plan.answer))
        if not decision.allow:
            self._acquired(False, f"not promoting: {decision.reason}", now)
        elif plan.status is not None and plan.status.primary:
            self._acquired(True, decision.reason + plan.waited, now)
        else:
            plan.stage, plan.reason = "promote", decision.reason
            self._out.append(Promote())

    def _promoted(self, event: Promoted, now: float) -> None:
        plan = self._acquire
        if plan is None or plan.stage != "promote":
            return
        assert self.cfg.drbd is not None
        if event.ok:
            self._acquired(True, f"{self.cfg.drbd.resource} Primary ({plan.reason}{plan.waited})", now)
        else:
            self._acquired(False, event.detail, now)

    def _acquired(self, ok: bool, detail: str, now: float) -> None:
        plan, self._acquire = self._acquire, None
        assert plan is not None
        self._step_done(Step.DRBD, Op.ACQUIRE, ok, detail, (now - plan.t0) * 1000, now)

    def _peer_view(self, now: float, answer: str = "") -> PeerView:
        """For the guard: the witnesses' verdict and how long the peer has been silent on every path."""
        drbd, track, peer = self.cfg.drbd, self.cfg.track, self.cfg.peer
        witness = None if self.tracker is None or track is None or not track.witnesses else not self.tracker.isolated
        beats = self._beats() and self._heard  # heartbeats configured and ever heard: they time the detection
        detection = peer.detection if beats and peer is not None else self.router.master_down_interval
        # the peer is assumed to run our timing; a slower one it announced counts
        bound = max(self.own_bound(), self._peer_bound)
        return PeerView(unknown_peer=drbd.unknown_peer if drbd else "refuse", witness_reachable=witness,
                        peer_silent_for=now - self._last_contact(), detection=detection, isolation_bound=bound,
                        peer_answer=answer)

    # -- asking the peer to outdate (for the acquire, or for DRBD's fence-peer handler) --------
    def _begin_fence(self, admin: int | None) -> None:
        fid = self._next_id()
        self._fences[fid] = _Fence(admin)
        if self.cfg.peer is None or self._peer_gone:
            # gone: silent on every path, so asking would only cost peer.timeout to learn the same
            self._fenced(fid, "unreachable", 0.0)
            return
        self._ask(fid, "state", self.cfg.peer.timeout)

    def _ask(self, fid: int, kind: str, timeout: float) -> None:
        ask = self._next_id()
        self._asks[ask] = fid
        self._out.append(AskPeer(ask, kind, timeout))

    def _peer_answer(self, event: PeerAnswer, now: float) -> None:
        if self._adopt_peer(event) or event.id not in self._asks:
            return
        fid = self._asks.pop(event.id)
        if event.body is not None:
            self._peer_heard_at = now
        if fid is None:  # the connections poll
            if event.body is not None and event.body.get("phase") == str(Phase.SERVING):
                self._peer_connections = event.connections
            return
        fence = self._fences.get(fid)
        if fence is None or self.cfg.peer is None:
            return
        if event.body is None:
            self._fenced(fid, "unreachable", now)
        elif fence.stage == "state":
            # alive; the outdate itself may take several drbdadm calls (disconnect, outdate, read
            # back, connect): a slow answer is not a dead peer
            fence.stage = "outdate"
            self._ask(fid, "outdate", max(self.cfg.peer.timeout, OUTDATE_ANSWER_TIMEOUT))
        else:
            answer = str(event.body.get("result", "failed"))
            detail = str(event.body.get("detail", ""))
            if answer not in ("outdated", "primary", "unreachable") and detail:
                answer = f"{answer}: {detail}"
            self._fenced(fid, answer, now)

    def _fenced(self, fid: int, answer: str, now: float) -> None:
        fence = self._fences[fid]
        fence.answer = answer
        if self.cfg.peer is not None:
            self._emit(Kind.FENCE, f"asked the peer {self.cfg.peer.address} to outdate its disk: {answer}", WARNING,
                       ANSWER=answer, PEER=str(self.cfg.peer.address))
        if fence.admin is None:
            del self._fences[fid]
            plan = self._acquire
            if plan is not None and plan.stage == "fence":
                plan.answer = answer
                self._after_fence(plan, now)
            return
        track = self.cfg.track
        if answer != "unreachable" or track is None or not track.witnesses or self.tracker is None:
            self._fence_answer(fid, False, "" if answer != "unreachable" else "no witnesses configured")
            return
        # the tracker's verdict lags by up to fall x interval, too late for DRBD's fence-peer
        # handler, which declares the peer dead on our word: ping every witness afresh
        fence.stage = "witnesses"
        self._out += [SendProbe(str(w), track.timeout, fresh=fid) for w in track.witnesses]

    def _fresh_ping(self, event: ProbeResult) -> None:
        assert event.fresh is not None
        fence, track = self._fences.get(event.fresh), self.cfg.track
        if fence is None or fence.stage != "witnesses" or track is None:
            return
        fence.pings[event.target] = (event.ok, event.detail)
        if len(fence.pings) < len(track.witnesses):
            return
        ok = sum(1 for answered, _ in fence.pings.values() if answered)
        detail = "; ".join(f"{w}: {fence.pings.get(str(w), (False, 'no answer'))[1]}" for w in track.witnesses)
        if self.tracker is not None and self.tracker.isolated:
            self._fence_answer(event.fresh, False, f"the tracker counts us isolated ({detail})")
        else:
            self._fence_answer(event.fresh, ok >= track.min_reachable,
                               f"{ok} of {len(track.witnesses)} witnesses answer now ({detail})")

    def _fence_answer(self, fid: int, witness: bool, detail: str) -> None:
        fence = self._fences.pop(fid)
        assert fence.admin is not None
        if fence.answer == "unreachable":
            self._emit(Kind.FENCE, f"fence-peer: the peer does not answer; witnesses: {detail}", WARNING,
                       ANSWER=fence.answer, WITNESS=str(witness).lower())
        track = self.cfg.track
        horizon = track.fall * track.interval + track.timeout if track and track.witnesses else 0.0
        self._out.append(AdminAnswer(fence.admin, {"answer": fence.answer, "witness_reachable": witness,
                                                   "witness_detail": detail, "horizon": horizon,
                                                   "isolated": bool(self.tracker and self.tracker.isolated)}))

    # -- answering the peer: only ever gives data up, never while we hold or take it ----------
    def _peer_request(self, req: PeerRequest, now: float) -> None:
        self._peer_heard_at = now
        if req.kind == "state":
            status = req.drbd
            self._out.append(AnswerPeer(req.id, {
                "vrrp": str(self.router.state), "phase": str(self.machine.phase),
                "held": [str(s) for s in self.machine.held], "drbd": status.summary() if status else None},
                connections=Step.VIP in self.machine.held))
        elif req.kind == "outdate":
            self._outdates.append(req)
            self._next_outdate(now)
        else:
            self._out.append(AnswerPeer(req.id, {"result": "failed", "detail": f"unknown request {req.kind}"}))

    def _next_outdate(self, now: float) -> None:
        while self._outdating is None and self._outdates:
            req = self._outdates.popleft()
            status, m = req.drbd, self.machine
            busy = m.phase not in (Phase.IDLE, Phase.FAULT) or bool(m.held) or self._acquire is not None
            if busy or (status is not None and status.primary):
                detail = f"phase {m.phase}, holding {', '.join(m.held) or 'nothing'}"
                self._out.append(AnswerPeer(req.id, {"result": "primary", "detail": detail}))
            elif self.cfg.drbd is None:
                self._out.append(AnswerPeer(req.id, {"result": "failed", "detail": "no [drbd] section on the peer"}))
            elif status is not None and status.peer_disk == "Outdated" and not status.connected:
                # our fence-peer handler outdated the peer (or found it dead) and we went on writing: we
                # hold the newer data, and outdating it would leave the stale copy as the only UpToDate one
                self._out.append(AnswerPeer(req.id, {"result": "failed", "detail": (
                    f"this node's DRBD records the peer as Outdated ({status.summary()}): it holds newer data "
                    "than the peer; not outdating it")}))
            else:
                # a disk we disconnected to outdate has reconnected and resynced: the link works, and
                # the peer's DRBD asking again (its handler runs on every lost connection) must not
                # make us cycle the connection forever
                again = self._outdate_cycled_at is not None and now - self._outdate_cycled_at < OUTDATE_CYCLE_HOLD
                self._outdating = req
                self._out.append(RunOutdate(req.id, disconnect=not again))

    def _outdate_done(self, event: OutdateDone, now: float) -> None:
        req = self._outdating
        if req is None or req.id != event.id:
            return
        self._outdating = None
        if event.ok:
            if event.notes:
                self._outdate_cycled_at = now
            how = f" ({'; '.join(event.notes)})" if event.notes else ""
            self._emit(Kind.FENCE, f"outdated our DRBD disk at the request of the peer {req.sender}{how}", WARNING,
                       ANSWER="outdated", PEER=req.sender)
            self._out.append(AnswerPeer(req.id, {"result": "outdated"}))
        else:
            self._emit(Kind.FENCE, f"the peer {req.sender} asked us to outdate our DRBD disk and it failed: "
                       f"{event.error}", ERROR, ANSWER="failed", PEER=req.sender)
            self._out.append(AnswerPeer(req.id, {"result": "failed", "detail": event.error}))
        self._next_outdate(now)

    def _tickle(self, now: float) -> None:
        """Just took over: reset the old master's client connections now (agent.tickle)."""
        own = {str(v.ip) for v in self.cfg.vrrp.vips}
        conns = tuple(c for c in self._peer_connections if c[0] in own)
        self._peer_connections = ()
        if not conns:
            return
        self._tickle_conns = conns
        self._tickles = [now + d for d in TICKLE_ROUNDS]
        clients = sorted({c[2] for c in conns})
        self._emit(Kind.SERVING, f"tickled {len(conns)} TCP connection(s) of the old master's clients "
                   f"({', '.join(clients[:8])}{' ...' if len(clients) > 8 else ''}) so they reconnect now",
                   CONNECTIONS=len(conns))

    # -- the peer's heartbeats: alive on which path, gone when silent on all --------------------------
    def _beats(self) -> float:
        """Seconds between heartbeats (0: none: no [peer], or heartbeat = 0)."""
        return self.cfg.peer.heartbeat if self.cfg.peer is not None else 0.0

    def _last_heard(self) -> float:
        """The latest sign of life of the peer on any path: heartbeat, peer message, advert."""
        heard = [t for t in (*self._heard.values(), self._peer_heard_at, self.router.last_heard_at) if t is not None]
        return max(heard, default=self._listening_since)

    def _last_contact(self) -> float:
        """What the peer's silence counts from: its last sign of life, or the latest moment from
        which on we could have heard it (listening again, witnesses answering again)."""
        return max(self._last_heard(), self._listening_since, self._unsure_at or self._listening_since,
                   self._awake_since)

    def _next_silence(self) -> float | None:
        """When a path or the peer as a whole next counts as silent (for `deadline`)."""
        if not self._beats() or self.cfg.peer is None:
            return None
        detection = self.cfg.peer.detection
        times = [max(t + detection, self._peer_restart_until) for p, t in self._heard.items()
                 if p not in self._path_silent]
        if self._heard and not self._peer_gone:
            times.append(max(self._last_contact() + detection, self._peer_restart_until))
        return min(times, default=None)

    def own_bound(self) -> float:
        """How soon after its last contact with us the peer may take over if we are isolated."""
        return isolation_bound(self.cfg, self.cfg.vrrp.advert_interval)

    def _holding(self) -> bool:
        run = self.machine.running
        return bool(self.machine.held) or self._acquire is not None or (run is not None and run.op == Op.ACQUIRE) \
            or self._adopt is not None

    def _peer_heard(self, event: PeerHeard, now: float) -> None:
        self._heard[event.path] = now
        if event.restarting:
            self._peer_restart_until = now + event.restarting
            self._emit(Kind.FENCE, f"the peer's agent restarts and keeps serving: not counted gone for "
                       f"{event.restarting:g} s", PEER_STATE="restarting", PATH=event.path)
        if self._adopt is not None and event.vrrp == State.MASTER and not self._adopt.why_not:
            self._adopt.why_not = f"the peer's heartbeat on {event.path} says it is MASTER"
        self._peer_bound = min(max(event.bound, 0.0), 600.0)
        self._peer_holding = event.holding
        was, self._peer_vrrp = self._peer_vrrp, event.vrrp
        if was == State.MASTER and event.vrrp in (State.BACKUP, State.FAULT) and now >= self._peer_restart_until:
            self._peer_left(event, now)
        if event.path in self._path_silent:
            self._path_silent.discard(event.path)
            self._emit(Kind.FENCE, f"peer {event.path}: heartbeats again on this path", PATH=event.path,
                       PEER_PATH="up")
        if self._peer_gone:
            self._peer_gone = False
            self._back_since = now
            self._emit(Kind.FENCE, f"the peer is back: heartbeat on {event.path} ({event.vrrp})", WARNING,
                       PEER_STATE="alive", PATH=event.path)
            self._out.append(StatusChanged())
        deaf = not event.hears_us
        peer = self.cfg.peer
        fresh = max(self._awake_since, self._back_since + NEIGHBOUR_RETRY)
        if deaf and peer is not None and now < fresh + peer.detection + peer.heartbeat:
            deaf = self._peer_deaf  # sent while we were stalled or cut off: ours since have not reached it yet
        if deaf != self._peer_deaf:
            self._peer_deaf = deaf
            reason = ("the peer hears nothing from us on any path: it will take over, so this node releases "
                      "(and fences itself if it cannot stop serving in time)") if deaf else None
            self._set_fault("peer", reason, now, farewell=True)
            self._emit(Kind.FAULT, reason or "the peer hears us again", WARNING if deaf else INFO,
                       REASON=reason or "peer hears us")

    def _peer_left(self, event: PeerHeard, now: float) -> None:
        """The master's heartbeat says it left MASTER: its priority 0 advert may be lost on the
        network it lost (a service link cut), the heartbeat on another path is not."""
        master, peer = self.router.master, self.cfg.peer
        if self.joined and peer is not None and master is not None and (str(master) in self._heard
                                                                         or master == peer.address):
            how = f"its heartbeat on {event.path} says {event.vrrp}"
            self._left_at = now
            self._vrrp(self.router.peer_left(master, now, how), now)

    def _watch_peer(self, now: float) -> None:
        peer = self.cfg.peer
        if peer is None or not peer.heartbeat:
            return
        if self._beat_at is not None and self._beat_at <= now:
            self._beat_at = now + peer.heartbeat
            self._out.append(SendHeartbeat(str(self.router.state), self._holding(), not self._peer_gone,
                                           round(self.own_bound(), 3)))
        for path, at in self._heard.items():
            if path not in self._path_silent and now >= max(at + peer.detection, self._peer_restart_until):
                self._path_silent.add(path)
                self._emit(Kind.FENCE, f"peer {path}: no heartbeat for {now - at:.2f} s on this path", WARNING,
                           PATH=path, PEER_PATH="silent")
        last = self._last_contact()
        silent = now - last
        if self._heard and not self._peer_gone and now >= max(last + peer.detection, self._peer_restart_until):
            self._peer_gone = True
            self._emit(Kind.FENCE, f"the peer is gone: silent on every path ({', '.join(self._heard)}) for "
                       f"{silent:.2f} s", WARNING, PEER_STATE="gone")
            self._out.append(StatusChanged())
            master = self.router.master
            if self.joined and (master is None or str(master) in self._heard or master == peer.address):
                why = (f"the peer is gone: silent on every path for {silent:.2f} s (dead_after {peer.dead_after} x "
                       f"heartbeat {peer.heartbeat:g} s)")
                self._vrrp(self.router.peer_gone(now, why), now)

    # -- a shared disk (no DRBD to refuse a second Primary): the mount waits for the peer ----------
    def _shared_disk_wait(self, now: float) -> tuple[float, str]:
        """Seconds to hold the mount back (0: go), and why."""
        peer = self.cfg.peer
        if peer is None or not peer.heartbeat or not self._heard or not self._peer_holding:
            return 0.0, ""
        if now < self._last_heard() + peer.detection:
            return PEER_DEMOTE_POLL, "the peer's heartbeats say it still holds the disk"
        view = self._peer_view(now)
        wait = self._last_contact() + takeover_wait(view) - now
        return max(0.0, wait), (f"the peer went silent while holding the disk: waiting {takeover_wait(view):.2f} s "
                                "from the last contact, the bound by which an isolated peer has released it")

    def _check_gate(self, now: float) -> None:
        gate = self._gate
        if gate is not None and not self.machine.want:  # VRRP moved on: the mount was never started
            self._gate = None
            self._machine(self.machine.abandon(Step.MOUNT, now), now)
            return
        if gate is None or (gate.until is not None and now < gate.until):
            return
        wait, why = self._shared_disk_wait(now)
        if wait <= 0:
            self._gate = None
            if gate.waited:
                self._emit(Kind.FENCE, f"mounting after {now - gate.t0:.2f} s: {gate.waited}", WARNING)
            self._out.append(gate.step)
        elif now + wait > gate.t0 + gate.step.timeout:
            self._gate = None
            self._step_done(Step.MOUNT, Op.ACQUIRE, False, f"not mounting: {why}", (now - gate.t0) * 1000, now)
        else:
            gate.until, gate.waited = now + wait, why

    # -- the bounded release: an isolated master stops serving within release_deadline -----------
    def _isolated(self) -> str:
        """Why this node must stop serving within release_deadline ('' when it need not)."""
        if self._peer_deaf:
            return "the peer hears nothing from us on any path"
        silent = self.cfg.peer is not None and self._now >= self._last_heard() + self.cfg.peer.detection
        if self.tracker is not None and self.tracker.isolated and (not self._beats() or silent):
            return "no witness answers and the peer is silent on every path"
        return ""

    def _frozen_before_us(self, st: Status | None) -> None:
        """A Primary whose I/O DRBD froze before this run saw it connected: the fence-peer handler
        asked an agent that is gone (killed, or restarting) and got no verdict, so nothing tells
        when the isolation began: with unknown_peer = witness the peer may have promoted already.
        A frozen Primary can neither unmount nor demote, and if the link came back DRBD would
        resume it beside that new Primary: the demote escalation's last stage, now."""
        drbd = self.cfg.drbd
        if (st is None or not st.primary or not st.suspended or st.connected or self._drbd_linked
                or self._self_fenced or drbd is None or drbd.unknown_peer != "witness"):
            return
        self._fence(f"found {st.summary()} with its I/O frozen before this agent saw it connected: the fence-peer "
                    "verdict of an earlier run never came, and the peer may have promoted since")

    def _fence(self, reason: str) -> bool:
        """The demote escalation's last stage, now (False: none is configured, which is said loudly)."""
        action = self.cfg.drbd.demote_escalation[-1] if self.cfg.drbd is not None else "none"
        if action == "none":
            self._emit(Kind.FAULT, f"{reason}; NO self-fence configured (drbd.demote_escalation ends with 'none', "
                       "or no [drbd]): two nodes may serve", CRITICAL, REASON=reason, FENCE="none")
            return False
        self._self_fenced = True
        self._emit(Kind.FAULT, f"self-fence ({action}): {reason}", CRITICAL, REASON=reason, FENCE=action)
        self._out.append(SelfFence(action, reason))
        return True

    def _serving_parts(self) -> list[ChainStep]:
        """What must be released by the deadline: what lets clients write, and a shared disk's mount.

        With DRBD the unmount and demote may come later while the replication link is up (DRBD
        keeps the peer from promoting beside us); once DRBD shows it disconnected (fencing
        resource-and-stonith has frozen our I/O), the peer may promote as soon as its bound has
        passed, so the Primary role must be gone by the deadline too, or the node fences itself. The
        admin's services serve clients (and may write to the data) like NFS does: they go too.
        """
        parts: list[ChainStep] = [Step.VIP, Step.NFS, Step.NFS_STATE]
        st = self._drbd_now
        if self.cfg.drbd is None or (st is not None and st.primary and not st.connected):
            parts += [Step.MOUNT, Step.DRBD]
        return [s for s in self.machine.held if s in parts or isinstance(s, Service)]

    def _watch_release(self, now: float) -> None:
        if (self.cfg.drbd is None and self.cfg.filesystem is None) or self._self_fenced:
            return  # VIP only: no data to diverge, the release takes the time it takes
        why = self._isolated()
        if not why:
            self._isolated_at = self._release_by = None  # the peer hears us again: it will not take over now
            return
        if self._isolated_at is None:
            self._isolated_at = now
        parts = self._serving_parts() or ([Step.DRBD] if self._acquire is not None else [])
        deadline = self.cfg.guard.release_deadline
        if self._release_by is None:
            if parts:  # counted from noticing: a DRBD disconnect seen later may be past it already
                self._release_by = self._isolated_at + deadline
                self._emit(Kind.FAULT, f"isolated ({why}): stopping to serve within "
                           f"{max(0.0, self._release_by - now):.3g} s ({', '.join(parts)} held)", WARNING, REASON=why)
            return
        if not parts:
            self._emit(Kind.FAULT, f"stopped serving {now - self._isolated_at:.3f} s after noticing "
                       f"isolation (release_deadline {deadline:g} s)", REASON="released in time")
            self._release_by = None
        elif now >= self._release_by:
            self._release_by = None
            if not self._fence(f"isolated ({why}) and still holding {', '.join(parts)} "
                               f"{now - self._isolated_at:.2f} s after noticing: the peer takes over after its bound"):
                self._isolated_at = now  # said again a deadline later while it lasts

    # -- reachability tracking ------------------------------------------------------------------
    def _schedule_tracking(self, now: float) -> None:
        track = self.cfg.track
        self._probe_at = {str(w): now for w in track.witnesses} if track else {}
        self._check_at = {c.name: now for c in track.checks} if track else {}

    def _check(self, name: str) -> CheckConfig | None:
        track = self.cfg.track
        return next((c for c in track.checks if c.name == name), None) if track else None

    def _check_interval(self, name: str) -> float:
        check = self._check(name)
        return check.interval if check is not None else 0.0

    def _probe_result(self, event: ProbeResult, now: float) -> None:
        if event.fresh is not None:
            self._fresh_ping(event)
            return
        track = self.cfg.track
        if track is not None and event.target in self._probe_sent:
            self._pings[event.target] = event.ok
            if sum(self._pings.values()) < track.min_reachable:
                self._unsure_at = now
        interval = track.interval if track else 0.0
        self._track_result(event.target, event.ok, event.detail, now, self._probe_sent, self._probe_at, interval)

    def _track_result(self, name: str, ok: bool, detail: str, now: float, sent: dict[str, float],
                      due: dict[str, float], interval: float) -> None:
        if name not in sent:
            return  # a result for a target a reload removed
        due[name] = max(now, sent.pop(name) + interval)
        if self.tracker is None:
            return
        for change in self.tracker.result(name, ok, detail):
            self._emit(Kind.TRACK, change.message, INFO if change.up else WARNING, TARGET=change.target,
                       KIND=change.kind, UP=str(change.up).lower(), REACHABLE=self.tracker.reachable,
                       PRIORITY_DELTA=self.tracker.priority_delta)
            self._out.append(StatusChanged())
        self._set_fault("track", self.tracker.fault_reason or None, now, farewell=True)
        self._apply_priority(now)

    # -- admin requests ---------------------------------------------------------------------------
    def _admin(self, req: AdminRequest, now: float) -> None:
        if self._adopt is not None and req.command in (Admin.STOP, Admin.RESTART):
            self._adopt.why_not = self._adopt.why_not or "the agent is stopping"
            self._adopt_progress(now)  # released like any leftover, before the stop below waits for it
        budget = self._release_budget(self.machine.held)
        if req.command == Admin.HANDOVER:
            if self.router.state != State.MASTER:
                self._out.append(AdminAnswer(req.id, {"message": f"nothing to hand over: this node is "
                                                                 f"{self.router.state}"}))
                return
            self._emit(Kind.HANDOVER, f"handover requested: releasing, then priority 0 to "
                       f"{self.cfg.vrrp.interface}'s peers")
            self._waiters.append(_Waiter(req.id, req.command, now + budget, budget))
            self._vrrp(self.router.handover(now), now)
        elif req.command in (Admin.MAINTENANCE_ON, Admin.MAINTENANCE_OFF):
            on = req.command == Admin.MAINTENANCE_ON
            self._waiters.append(_Waiter(req.id, req.command, now + budget, budget, self.router.state == State.MASTER))
            self._out.append(SaveState(maintenance=on))
            self._vrrp(self.router.set_maintenance(on, now), now)
        elif req.command == Admin.RESET:
            was = self.machine.fault_reason if self.machine.phase == Phase.FAULT else ""
            self._machine(self.machine.reset(now), now)
            message = f"reset: the hold-down after \"{was}\" is over; VRRP decides again" if was else \
                "reset: no fault hold-down to clear; failure and restart counts cleared"
            self._emit(Kind.FAULT, message, REASON="reset by the admin")
            self._out += [AdminAnswer(req.id, {"message": message}), StatusChanged()]
        elif req.command == Admin.FENCE_PEER:
            self._begin_fence(req.id)
        elif req.command == Admin.RESTART and self._stop is None and self._may_keep():
            self._keep_for_restart(req)
        elif req.command in (Admin.STOP, Admin.RESTART) and self._stop is None:
            if req.command == Admin.RESTART:
                self._emit(None, f"stopping for a restart while {self.router.state}/{self.machine.phase}: "
                           "an ordered leave, nothing kept", INFO)
            self._stop = _Waiter(req.id, req.command, now + budget, budget)
            self._vrrp(self.router.shutdown(now), now, why=req.reason)

    def _may_keep(self) -> bool:
        """Only a settled master keeps its chain over a restart; anything in motion leaves in order."""
        m = self.machine
        return (self.router.state == State.MASTER and m.phase == Phase.SERVING and m.running is None
                and self._acquire is None and not self._waiters and not self._farewell and not self.faults)

    def _keep_for_restart(self, req: AdminRequest) -> None:
        """A restart (an upgrade): no release and no priority 0, so the backup does not take over. One
        last advert restarts the backup's Master_Down timer, giving the next agent all of it."""
        held = tuple(str(s) for s in self.machine.held)
        self._out.append(SendAdvert(self.router.priority))
        peer = self.cfg.peer
        if peer is not None and peer.heartbeat:  # or the peer counts us gone after heartbeat x dead_after
            self._out.append(SendHeartbeat(str(self.router.state), True, not self._peer_gone,
                                           round(self.own_bound(), 3), 3 * self.cfg.vrrp.advert_interval))
        self._emit(None, f"stopping for a restart ({req.reason}): keeping {', '.join(held)} held for the next "
                   "agent, no priority-0 advert", WARNING)
        self._out.append(Stopped(held, kept=True))
        self.stopped, self.kept = True, held

    def _answer_waiter(self, w: _Waiter, released: bool) -> None:
        if w.command == Admin.HANDOVER:
            message = "released; the peer takes over after its Skew_Time" if released else \
                "the peer did not take over: this node is master again" if self.router.state == State.MASTER \
                else f"release still in progress: {', '.join(self.machine.held)} held"
        else:
            on = w.command == Admin.MAINTENANCE_ON
            word = "on: this node stays BACKUP and never takes over" if on else "off: normal VRRP rules again"
            self._emit(Kind.MAINTENANCE, f"maintenance {word}" + (" (released mastership first)" if w.was_master
                                                                   else ""), MAINTENANCE="on" if on else "off")
            self._out.append(StatusChanged())
            message = f"maintenance {word}"
        self._out.append(AdminAnswer(w.id, {"message": message}))

    # -- reload -------------------------------------------------------------------------------------
    def _reconfigure(self, new: Config, now: float) -> None:
        """Live changes only; the daemon restarts the node for identity keys."""
        old = self.cfg
        self.cfg = new
        v = new.vrrp
        self.validator.configure(v.advert_interval, v.auth_pass)
        self.machine.s = machine_settings(new)  # monitor interval, restarts, hold-down, timeouts
        self._nfs_changed = self._nfs_changed or new.nfs != old.nfs
        if (new.peer is None) != (old.peer is None):
            self._poll_at = None if new.peer is None else now  # the connections poll follows the channel
        if new.peer is None or not new.peer.heartbeat:
            self._beat_at, self._peer_gone, self._path_silent = None, False, set()
            self._heard.clear()
            self._set_fault("peer", None, now)
            self._peer_deaf = False
        elif self._beat_at is None:
            self._beat_at = now
        if Step.VIP in self.machine.held:
            gone = tuple(x for x in old.vrrp.vips if x not in v.vips)
            added = tuple(x for x in v.vips if x not in old.vrrp.vips)
            if gone or added:
                self._out.append(ChangeVips(gone, added))
        self._vrrp(self.router.reconfigure(router_params(new, self.address), now), now)
        if new.track != old.track:
            if new.track is None:
                self.tracker = None
            elif self.tracker is None:
                self.tracker = Tracker(new.track)
            else:
                self.tracker.configure(new.track)
            self._probe_sent.clear()
            self._check_sent.clear()
            self._pings.clear()
            self._schedule_tracking(now)
            self._set_fault("track", self.tracker.fault_reason or None if self.tracker else None, now, farewell=True)
        self._apply_priority(now)
        self._out.append(StatusChanged())

    # -- status -------------------------------------------------------------------------------------
    def snapshot(self) -> NodeStatus:
        r = self.router
        master = r.master if r.state == State.MASTER or r.last_heard_at is not None else None
        return NodeStatus(
            state=str(r.state), priority=r.priority, master=str(master) if master else None,
            master_down_interval=round(r.master_down_interval, 4), maintenance=r.maintenance, yielding=r.yielding,
            link_up=self.link_up, phase=str(self.machine.phase), held=tuple(str(s) for s in self.machine.held),
            chain=tuple(str(s) for s in self.cfg.steps), faults=dict(self.faults),
            track=self.tracker.summary() if self.tracker is not None else None, durations=dict(self.durations),
            last_transition=self.last, transitions=self.counters.transitions,
            became_master=self.counters.became_master, faults_total=self.counters.faults,
            adverts_received=self.counters.adverts_received, drops=dict(self.validator.drops),
            fault_reason=self.machine.fault_reason if self.machine.phase == Phase.FAULT else "",
            hold_left=None if self.machine.hold_until is None else max(0.0, self.machine.hold_until - self._now),
            peer_heard_at=self._peer_heard_at, peer_paths=dict(self._heard), peer_gone=self._peer_gone,
            release_by=self._release_by, waiting_for=self._waiting_for)

