"""Two simulated storage nodes on a virtual clock: VRRP, the failover machine, tracking, the guard,
the peer channel and a model of DRBD 8.4, under partitions, crashes and heals.

The decision code is the real one (`vrrp.router.Router`, `agent.machine.Machine`,
`agent.track.Tracker`, `agent.guard`); what the daemon's adapters do around it is mirrored
here step for step, with `agent.instance` and `agent.chain` named where each rule comes from:
the fault sources, priority 0 only once released, releasing what an earlier run left before
joining VRRP, the DRBD acquire (wait for a releasing peer, ask the peer to outdate, the witness
wait, `may_promote`), the peer's answer to "outdate", and the fence-peer handler.

The network is a star: each node has a service link to the switch, where the witness and the
clients are, and the two nodes share one replication cable. `split_switch` separates the nodes
on the service network while both still reach the witness (two switches that lost their
interconnect): the `witness` policy cannot be safe there, `refuse` must be.

`Drbd` refuses what DRBD refuses (the peer Primary while connected, a disk that is not
UpToDate) and nothing else: a disconnected Secondary with an UpToDate disk is promoted, as 8.4
does when fencing cannot stop it. Data is a list of write numbers per node; a handshake makes
the shorter history the sync target, two diverged histories are split brain (StandAlone). The
client writes every 0.1 s through the node that serves with its service link up; a write is
acknowledged once on the Primary (and on the peer too while connected). `violations` records
every promotion while the other node is Primary and every promotion of data that lacks an
acknowledged write.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from agent.config import TrackConfig
from agent.guard import PeerView, may_promote, witness_wait
from agent.machine import Action as MachineAction
from agent.machine import Machine, Op, Phase, RunStep, Settings, VrrpFault, VrrpRecover
from agent.track import Tracker
from drbd.drbdadm import GAVE_UP
from drbd.status import Status
from vrrp.router import Action, Heard, OtherMaster, Params, Router, SendAdvert, State, Transition

STEPS = ("drbd", "mount", "vip")
WITNESS = IPv4Address("192.0.2.254")
TRACK = TrackConfig(witnesses=(WITNESS,), interval=1.0, timeout=0.5, fall=3, rise=2)
WITNESS_GRACE = 5.0
STEP_TIMEOUT = 30.0
INNER_TIMEOUT = STEP_TIMEOUT - 2.0  # agent.chain.Chain._inner_timeout
PEER_TIMEOUT = 0.5  # [peer] timeout
HANDLER_DELAY = 0.3  # DRBD runs the fence-peer handler this long after it lost the peer
SYNC_TIME = 1.0
OUTDATE_CYCLE_HOLD = 30.0  # agent.instance
Task = Generator[float, None, tuple[bool, str]]  # yields seconds to sleep, returns a step's result


@dataclass
class Side:
    """One node's half of the DRBD resource; `data`, `disk` and `peer_outdated` survive a crash."""

    up: bool = True
    role: str = "Secondary"
    disk: str = "UpToDate"
    peer_outdated: bool = False  # metadata: the fence-peer handler outdated the peer (exit 4) or found it dead (5)
    standalone: bool = False
    cycling: bool = False  # disconnected by the agent to outdate itself (agent.instance._peer_request)
    data: list[int] = field(default_factory=list)


class Drbd:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.sides = [Side(), Side()]
        self.link = True
        self.was_connected = True
        self.sync_until = 0.0

    def connected(self) -> bool:
        return self.link and all(s.up and not s.standalone and not s.cycling for s in self.sides)

    def status(self, i: int) -> Status | None:
        me, peer = self.sides[i], self.sides[1 - i]
        if not me.up:
            return None
        if self.connected():
            return Status("r0", me.role, me.disk, "Connected", peer.role, peer.disk)
        return Status("r0", me.role, me.disk, "StandAlone" if me.standalone else "WFConnection", "Unknown",
                      "Outdated" if me.peer_outdated else "DUnknown")

    def promote(self, i: int) -> str:
        me, peer = self.sides[i], self.sides[1 - i]
        if me.disk != "UpToDate":
            return "Need access to UpToDate data"
        if self.connected() and peer.role == "Primary":
            return "Multiple primaries not allowed by config"
        if peer.up and peer.role == "Primary":
            self.sim.violations.append(f"{self.sim.now:.2f}: node {i} promoted while node {1 - i} is Primary")
        lost = self.sim.acked - set(me.data)
        if lost:
            self.sim.violations.append(f"{self.sim.now:.2f}: node {i} promoted without {len(lost)} acknowledged "
                                       f"write(s), e.g. {sorted(lost)[:3]}")
        me.role = "Primary"
        return ""

    def demote(self, i: int) -> None:
        self.sides[i].role = "Secondary"

    def crash(self, i: int) -> None:
        s = self.sides[i]
        s.up, s.role, s.standalone, s.cycling = False, "Secondary", False, False
        self.changed()

    def boot(self, i: int) -> None:
        s = self.sides[i]
        s.up = True
        if s.disk == "UpToDate" and not s.peer_outdated:
            s.disk = "Consistent"  # 8.4 after a restart alone: UpToDate only after the handshake
        self.changed()

    def outdate(self, i: int, may_disconnect: bool) -> str:
        """drbd.drbdadm.Drbdadm.outdate: '' when the disk is Outdated (or worse), else why not."""
        s = self.sides[i]
        if s.disk in GAVE_UP:
            return ""
        if not self.connected():
            s.disk = "Outdated"
            return ""
        if not may_disconnect:
            return "still Connected; not disconnecting it again so soon"
        s.cycling = True
        self.changed()
        s.disk = "Outdated"
        s.cycling = False
        self.changed()
        return "cycled"

    def changed(self) -> None:
        """After any change of links, nodes or connections: DRBD's reaction (handler, handshake)."""
        now = self.connected()
        if self.was_connected and not now:
            for i, s in enumerate(self.sides):
                if s.up and s.role == "Primary":
                    self.sim.at(self.sim.now + HANDLER_DELAY, self._handler(i))
        elif now and not self.was_connected:
            self._handshake()
        self.was_connected = now

    def _handler(self, i: int) -> Callable[[], None]:
        return lambda: self.sim.fence_peer_handler(i)

    def _handshake(self) -> None:
        a, b = self.sides
        if a.data == b.data[: len(a.data)] and len(a.data) < len(b.data):
            source, target = b, a
        elif b.data == a.data[: len(b.data)] and len(b.data) < len(a.data):
            source, target = a, b
        elif a.data == b.data:
            for s in self.sides:
                if s.disk in ("Outdated", "Consistent"):
                    s.disk = "UpToDate"
                s.peer_outdated = False
            return
        else:
            self.sim.log(f"split brain detected: histories diverged ({len(a.data)} / {len(b.data)} writes)")
            a.standalone = b.standalone = True
            self.was_connected = False
            return
        if target.role == "Primary":  # DRBD drops the connection rather than overwrite a Primary
            self.sim.log("the sync target is Primary: connection dropped")
            a.standalone = b.standalone = True
            return
        target.data = list(source.data)
        target.disk = "Inconsistent"
        source.disk = "UpToDate" if source.disk in ("Outdated", "Consistent", "UpToDate") else source.disk
        source.peer_outdated = target.peer_outdated = False
        self.sim.at(self.sim.now + SYNC_TIME, self._sync_done)

    def _sync_done(self) -> None:
        if self.connected():
            for s in self.sides:
                if s.disk == "Inconsistent":
                    s.disk = "UpToDate"


class Agent:
    """One failover-agent process: what agent.instance and agent.chain do around the decisions."""

    def __init__(self, sim: Sim, i: int, policy: str, preempt: bool) -> None:
        self.sim, self.i, self.policy = sim, i, policy
        self.router = Router(Params(vrid=51, priority=(150, 100)[i], address=sim.address(i), version=2,
                                    advert_interval=1.0, preempt=preempt))
        self.machine = Machine(Settings(steps=STEPS, timeouts=dict.fromkeys(STEPS, STEP_TIMEOUT),
                                        monitor_interval=2.0, hold_down=5.0))
        self.tracker = Tracker(TRACK)
        self.faults: dict[str, str] = {}
        self.farewell = False
        self.joined = False
        self.started = sim.now
        self.task: Task | None = None
        self.task_step: RunStep | None = None
        self.outdate_cycled_at: float | None = None
        self.alive = True

    # -- lifecycle (agent.instance.Instance.start) ---------------------------------------------
    def start(self) -> None:
        self.sim.held[self.i].discard("vip")  # stale VIPs go first, then the probe (agent.chain.Chain.probe)
        found = [s for s in STEPS if s in self.sim.held[self.i]]
        if "drbd" not in found and self.sim.drbd.sides[self.i].role == "Primary":
            found.insert(0, "drbd")
        self.feed(self.machine.reconcile(found, self.sim.now))
        self.sim.at(self.sim.now, self._probe)
        self._join_when_quiet()

    def _join_when_quiet(self) -> None:
        if self.joined or self.machine.running is not None or self.machine.held:
            return
        self.joined = True
        self.started = self.sim.now
        if self.tracker.fault_reason:
            self.faults["track"] = self.tracker.fault_reason
            self.apply(self.router.fault(self.faults["track"], self.sim.now))
        else:
            self.apply(self.router.start(self.sim.now))

    # -- VRRP (agent.instance.Instance.apply) ---------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, SendAdvert):
                if a.priority == 0 and (self.machine.running is not None or self.machine.held):
                    self.farewell = True  # priority 0 only once everything is released
                else:
                    self.sim.advert(self.i, a.priority, a.interval)
            elif isinstance(a, Transition):
                self.sim.log(f"node {self.i}: VRRP {a.old} -> {a.new}: {a.reason}")
                if a.old in (State.INITIALIZE, State.FAULT):
                    self.started = self.sim.now  # listening again: silence counts from here
                if a.new == State.MASTER:
                    self.feed(self.machine.vrrp_master(self.sim.now, a.reason))
                elif a.old == State.MASTER:
                    self.feed(self.machine.vrrp_lost(self.sim.now, a.reason))
            elif isinstance(a, OtherMaster) and "vip" in self.machine.held:
                self.sim.advert(self.i, self.router.priority, None)
        self.sim.wake(self)

    def heard(self, heard: Heard) -> None:
        if self.joined:
            self.apply(self.router.receive(heard, self.sim.now))

    def set_fault(self, source: str, reason: str | None, farewell: bool = False) -> None:
        had = bool(self.faults)
        if reason:
            self.faults[source] = reason
        elif self.faults.pop(source, None) is None:
            return
        if not self.joined:
            return
        if self.faults and not had:
            self.apply(self.router.fault(reason or source, self.sim.now, farewell=farewell))
        elif had and not self.faults:
            self.apply(self.router.recover(self.sim.now, f"{source} fault cleared"))

    def _probe(self) -> None:
        if not self.alive:
            return
        ok = self.sim.reaches_witness(self.i)
        self.sim.at(self.sim.now + (0.001 if ok else TRACK.timeout), lambda: self._probed(ok))
        self.sim.at(self.sim.now + TRACK.interval, self._probe)

    def _probed(self, ok: bool) -> None:
        if self.alive:
            self.tracker.result(str(WITNESS), ok, "echo reply" if ok else "no echo reply")
            self.set_fault("track", self.tracker.fault_reason or None, farewell=True)

    # -- the machine (agent.instance.Instance._feed) -------------------------------------------
    def feed(self, actions: list[MachineAction]) -> None:
        for a in actions:
            if isinstance(a, RunStep):
                self.task_step, self.task = a, self.run(a)
                self._resume()
            elif isinstance(a, VrrpFault):
                self.set_fault("hold", a.reason, farewell=True)
            elif isinstance(a, VrrpRecover):
                self.set_fault("hold", None)
        if self.machine.running is None and not self.machine.held:
            if self.farewell:
                self.farewell = False
                self.sim.advert(self.i, 0, None)
            self._join_when_quiet()
        self.sim.wake(self)

    def _resume(self) -> None:
        task, step = self.task, self.task_step
        if not self.alive or task is None or step is None:
            return
        try:
            delay = next(task)
        except StopIteration as done:
            ok, detail = done.value
            self.task = self.task_step = None
            if ok and step.op == Op.ACQUIRE:
                self.sim.held[self.i].add(step.step)
            elif ok and step.op == Op.RELEASE:
                self.sim.held[self.i].discard(step.step)
            self.feed(self.machine.step_done(step.step, step.op, ok, detail, self.sim.now))
            return
        self.sim.at(self.sim.now + delay, self._resume)

    def timer(self) -> None:
        if not self.alive:
            return
        now = self.sim.now
        if self.joined and self.router.deadline is not None and self.router.deadline <= now:
            self.apply(self.router.tick(now))
        if self.machine.deadline is not None and self.machine.deadline <= now:
            self.feed(self.machine.tick(now))
        self.sim.wake(self)

    @property
    def deadline(self) -> float | None:
        times = [t for t in (self.router.deadline if self.joined else None, self.machine.deadline) if t is not None]
        return min(times) if times else None

    # -- the steps (agent.chain.Chain) -----------------------------------------------------------
    def run(self, step: RunStep) -> Task:
        # up to 1.5 s a step: a whole release fits in witness_grace, which the witness policy relies on
        yield self.sim.rng.uniform(0.005, 1.5)
        drbd = self.sim.drbd
        if step.step != "drbd":
            return True, f"{step.step} {step.op}"
        if step.op == Op.RELEASE:
            drbd.demote(self.i)
            return True, "Secondary"
        if step.op == Op.CHECK:
            st = drbd.status(self.i)
            return (st is not None and st.primary), "check"
        return (yield from self._drbd_acquire())

    def _drbd_acquire(self) -> Task:
        drbd, t0 = self.sim.drbd, self.sim.now
        status = drbd.status(self.i)
        while status is not None and status.peer_primary and status.connected and self.sim.now - t0 < INNER_TIMEOUT:
            yield 0.1
            status = drbd.status(self.i)
        view = self.peer_view()
        if (status is not None and not status.connected and not status.primary and not status.standalone
                and status.peer_disk != "Outdated"):
            answer = self.sim.ask_peer(self.i)
            yield 0.002 if answer != "unreachable" else PEER_TIMEOUT
            view = PeerView(**{**view.__dict__, "peer_answer": answer})
        pause = witness_wait(status, view)
        if 0 < pause < INNER_TIMEOUT - (self.sim.now - t0):
            yield pause
            status = drbd.status(self.i)
            view = PeerView(**{**self.peer_view().__dict__, "peer_answer": view.peer_answer})
        decision = may_promote(status, "r0", view)
        if not decision.allow:
            return False, decision.reason
        if status is not None and status.primary:
            return True, decision.reason
        refused = drbd.promote(self.i)
        return (not refused), refused or decision.reason

    def peer_view(self) -> PeerView:
        """agent.instance.Instance._peer_view."""
        heard = self.router.last_heard_at
        silent = self.sim.now - (heard if heard is not None else self.started)
        return PeerView(unknown_peer=self.policy, witness_reachable=not self.tracker.isolated,
                        peer_silent_for=silent, master_down_interval=self.router.master_down_interval,
                        isolation_time=TRACK.fall * TRACK.interval + TRACK.timeout + WITNESS_GRACE)

    def peer_request(self) -> str:
        """agent.instance.Instance._peer_request for "outdate"."""
        status = self.sim.drbd.status(self.i)
        busy = self.machine.phase not in (Phase.IDLE, Phase.FAULT) or bool(self.machine.held)
        if busy or (status is not None and status.primary):
            return "primary"
        if status is None:
            return "failed"
        if status.peer_disk == "Outdated" and not status.connected:
            return "failed"  # we hold newer data than the peer
        again = self.outdate_cycled_at is not None and self.sim.now - self.outdate_cycled_at < OUTDATE_CYCLE_HOLD
        why = self.sim.drbd.outdate(self.i, may_disconnect=not again)
        if why == "cycled":
            self.outdate_cycled_at = self.sim.now
        return "outdated" if why in ("", "cycled") else "failed"


class Sim:
    def __init__(self, policy: str, seed: int, preempt: bool = False) -> None:
        self.policy, self.preempt = policy, preempt
        self.rng = random.Random(seed)
        self.now = 0.0
        self.violations: list[str] = []
        self.events: list[str] = []
        self.acked: set[int] = set()
        self.writes = 0
        self.service = [True, True]
        self.switch_split = False
        self.node_up = [True, True]
        self.held: list[set[str]] = [set(), set()]
        self.drbd = Drbd(self)
        self.agents: list[Agent | None] = [None, None]
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._woken: dict[int, float] = {}
        for i in (0, 1):
            self.start_agent(i)
        self.at(0.1, self._client)

    # -- the clock -------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn))

    def wake(self, agent: Agent) -> None:
        d = agent.deadline
        if d is not None and self._woken.get(id(agent)) != d:
            self._woken[id(agent)] = d
            self.at(d, agent.timer)

    def run_for(self, dt: float) -> None:
        end = self.now + dt
        while self._heap and self._heap[0][0] <= end:
            t, _, fn = heapq.heappop(self._heap)
            self.now = max(self.now, t)
            fn()
        self.now = end

    def log(self, text: str) -> None:
        self.events.append(f"{self.now:8.3f} {text}")

    # -- the network ------------------------------------------------------------------------------
    @staticmethod
    def address(i: int) -> IPv4Address:
        return IPv4Address(f"192.0.2.{i + 1}")

    def reaches_witness(self, i: int) -> bool:
        return self.node_up[i] and self.service[i]

    def peers_talk(self) -> bool:
        return all(self.service) and all(self.node_up) and not self.switch_split

    def advert(self, i: int, priority: int, interval: float | None) -> None:
        heard = Heard(self.address(i), priority, 1.0 if interval is None else interval)
        if self.peers_talk():
            self.at(self.now + 0.001, lambda: self._deliver(1 - i, heard))

    def _deliver(self, j: int, heard: Heard) -> None:
        agent = self.agents[j]
        if agent is not None and agent.alive and self.peers_talk():
            agent.heard(heard)

    def ask_peer(self, i: int) -> str:
        """Over the peer channel (agent.peer): the peer's answer, or unreachable."""
        peer = self.agents[1 - i]
        if not self.peers_talk() or peer is None or not peer.alive:
            return "unreachable"
        answer = peer.peer_request()
        self.log(f"node {i} asked node {1 - i} to outdate: {answer}")
        return answer

    def fence_peer_handler(self, i: int) -> None:
        """DRBD on node i lost the peer while Primary: `failoverctl fence-peer` (agent.cli)."""
        me = self.drbd.sides[i]
        agent = self.agents[i]
        if not me.up or self.drbd.connected() or agent is None or not agent.alive:
            return
        answer = self.ask_peer(i)
        if answer == "outdated" or (answer == "unreachable" and self.reaches_witness(i) and not agent.tracker.isolated):
            me.peer_outdated = True  # exit 4 or 5: DRBD records the peer as Outdated
        self.log(f"node {i} fence-peer: {answer}")

    def _client(self) -> None:
        for i, agent in enumerate(self.agents):
            side = self.drbd.sides[i]
            if (agent is not None and agent.alive and agent.machine.serving and self.service[i]
                    and side.up and side.role == "Primary"):
                self.writes += 1
                side.data.append(self.writes)
                peer = self.drbd.sides[1 - i]
                if self.drbd.connected():
                    peer.data.append(self.writes)
                self.acked.add(self.writes)
                break
        self.at(self.now + 0.1, self._client)

    # -- faults ------------------------------------------------------------------------------------
    def set_service(self, i: int, up: bool) -> None:
        self.service[i] = up
        self.log(f"service link of node {i} {'restored' if up else 'cut'}")

    def set_replication(self, up: bool) -> None:
        self.drbd.link = up
        self.log(f"replication link {'restored' if up else 'cut'}")
        self.drbd.changed()

    def set_switch_split(self, on: bool) -> None:
        self.switch_split = on
        self.log(f"switch {'split' if on else 'joined'}")

    def kill_agent(self, i: int, restart_after: float | None = None) -> None:
        """SIGKILL of the agent alone (node, DRBD role, mount stay); systemd restarts it after `restart_after`."""
        agent = self.agents[i]
        if agent is not None:
            agent.alive = False
            self.agents[i] = None
            self.log(f"agent {i} killed")
            if restart_after is not None:
                self.at(self.now + restart_after, lambda: self.start_agent(i))

    def start_agent(self, i: int) -> None:
        if self.agents[i] is None and self.node_up[i]:
            agent = Agent(self, i, self.policy, self.preempt)
            self.agents[i] = agent
            self.log(f"agent {i} started")
            agent.start()

    def crash_node(self, i: int) -> None:
        self.kill_agent(i)
        self.node_up[i] = False
        self.held[i].clear()
        self.drbd.crash(i)
        self.log(f"node {i} crashed")

    def boot_node(self, i: int) -> None:
        if not self.node_up[i]:
            self.node_up[i] = True
            self.drbd.boot(i)
            self.log(f"node {i} booted")
            self.start_agent(i)

    def primaries(self) -> list[int]:
        return [i for i, s in enumerate(self.drbd.sides) if s.up and s.role == "Primary"]
