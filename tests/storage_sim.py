"""Two simulated storage nodes on a virtual clock, each running the agent's own decision core
(`agent.node.Node`: VRRP, the failover machine, tracking, the guard, the peer policy), with a
model of DRBD 8.4 under partitions, crashes and heals.

This module owns only the world: the clock, the links, the DRBD model, the steps' run times,
processes that crash and restart, and message delay and loss. Each node's `Node` gets the
same `agent.events` the daemon's adapters would give it and its `agent.actions` are carried out
here in virtual time: adverts are encoded with `vrrp.packet` and queued at the peer (the
doorbell rings for what the node asked it to), peer-channel requests reach the other `Node`
and come back as its answers (or as silence after the asker's timeout), DRBD reads, promotions
and outdates go to the model, pings reach the witness when the service link is up. Nothing of
the agent's wiring is copied here; the config is an ordinary `agent.config` text.

The network is a star: each node has a service link to the switch, where the witness and the
clients are, and the two nodes share one replication cable. `split_switch` separates the nodes
on the service network while both still reach the witness (two switches that lost their
interconnect): the `witness` policy cannot be safe there, `refuse` must be.

`Drbd` refuses what DRBD refuses (the peer Primary while connected, a disk that is not
UpToDate) and nothing else: a disconnected Secondary with an UpToDate disk is promoted, as 8.4
does when fencing cannot stop it. With `fencing resource-and-stonith` a Primary that loses the
connection freezes its I/O until the fence-peer handler says the peer is outdated or dead
(exit 4 or 5), it is demoted, it crashes, or the connection comes back: a frozen Primary
completes no write, so the peer may promote beside it (the bounded release relies on that).
Data is a list of write numbers per node; a handshake makes the shorter history the sync
target, two diverged histories are split brain (StandAlone). The client writes every 0.1 s
through the node that serves with its service link up; a write is acknowledged once on the
Primary (and on the peer too while connected). `violations` records every promotion while
the other node is a Primary that can write (not frozen, its agent serving or acquiring, or
killed with the VIP left in place: the unit's ExecStopPost keeps it only on a Primary connected
to a Secondary; a restarted agent adopts only a Primary connected to a Secondary, and an
isolated agent that no longer holds the VIP or NFS must pass the guard again before it serves), every
moment both nodes serve as writable Primaries, every frozen Primary that resumes while the
other one is Primary, and every promotion of data that lacks an acknowledged write.

Each node has its own clock, running up to 1 % fast or slow with an offset; heartbeats go on
both paths (the service network and the replication cable) with random delay (so they may
arrive out of order) and loss. A node that cannot stop serving within release_deadline fences
itself (`agent.actions.SelfFence`): the model crashes it and boots it again. DRBD's fence-peer
handler runs `failoverctl fence-peer`, whose exit code (`agent.node.fence_exit_code`) 4 or 5
makes DRBD record the peer as Outdated. A connection lost or back reaches each agent as
drbd.follower's `DrbdChanged`, FOLLOWER_DELAY later.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address

from agent import actions as act
from agent import events as ev
from agent.config import Config, parse
from agent.journal import Event as Kind
from agent.machine import ChainStep, Op, Phase, Step
from agent.node import Node, fence_exit_code
from drbd.drbdadm import GAVE_UP
from drbd.status import Status
from vrrp.packet import GROUP, Advertisement, encode

WITNESS = IPv4Address("192.0.2.254")
VIP = IPv4Address("192.0.2.100")
FOLLOWER_DELAY = 0.05  # drbd.follower: a lost connection is a typed event within tens of ms
HANDLER_DELAY = 0.3  # DRBD runs the fence-peer handler this long after it lost the peer
DELAY = (0.0005, 0.03)  # a heartbeat's one-way delay, uniform: later ones may overtake earlier ones
LOSS = 0.02  # the share of heartbeats lost on the way
CLOCK_RATE = 0.01  # each node's clock runs up to this much fast or slow
FENCE_REBOOT = (5.0, 15.0)  # a self-fenced node is back after this long
SYNC_TIME = 1.0
LATENCY = 0.001  # one way, on any link
DRBD_CALL = 0.002  # a drbdsetup / drbdadm call
OUTDATE_CALL = 0.05  # drbdadm outdate, read back, maybe disconnect and connect
Task = Generator[float, None, tuple[bool, str]]  # yields seconds to sleep, returns a step's result
LOGGED = {Kind.TRANSITION, Kind.FENCE, Kind.FAULT, Kind.SERVING, Kind.RELEASED, Kind.CLEANUP}


def node_config(i: int, policy: str, preempt: bool, heartbeat: float = 0.1) -> Config:
    """What an admin writes for node i of the pair (the witness policy's documented timings)."""
    return parse(f"""
[vrrp]
interface = "eth0"
vrid = 51
priority = {(150, 100)[i]}
version = 2
advert_interval = 1.0
preempt = {str(preempt).lower()}
vips = ["{VIP}/24"]

[drbd]
resource = "r0"
unknown_peer = "{policy}"
demote_escalation = ["retry", "force", "reboot"]

[filesystem]
device = "/dev/drbd0"
mountpoint = "/srv/nfs"

[monitor]
interval = 2.0
hold_down = 5.0
step_timeout = 30.0

[track]
witnesses = ["{WITNESS}"]
fall = 3
rise = 2

[peer]
addresses = ["{Sim.address(1 - i)}", "{Sim.replication_address(1 - i)}"]
timeout = 0.5
heartbeat = {heartbeat}

[guard]
release_deadline = 1.0
""", f"node{i}.toml")


@dataclass
class Side:
    """One node's half of the DRBD resource; `data`, `disk` and `peer_outdated` survive a crash."""

    up: bool = True
    role: str = "Secondary"
    disk: str = "UpToDate"
    peer_outdated: bool = False  # metadata: the fence-peer handler outdated the peer (exit 4) or found it dead (5)
    standalone: bool = False
    cycling: bool = False  # disconnected by the agent to outdate itself (RunOutdate with disconnect)
    frozen: bool = False  # a Primary that lost the peer: I/O suspended until the handler or a demote
    data: list[int] = field(default_factory=list)


class Drbd:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.sides = [Side(), Side()]
        self.link = True
        self.was_connected = True
        self.sync_until = 0.0
        self.connects = 0  # DRBD's connect_cnt: a handler's answer counts only within one lost connection

    def connected(self) -> bool:
        return self.link and all(s.up and not s.standalone and not s.cycling for s in self.sides)

    def status(self, i: int) -> Status | None:
        me, peer = self.sides[i], self.sides[1 - i]
        if not me.up:
            return None
        if self.connected():
            return Status("r0", me.role, me.disk, "Connected", peer.role, peer.disk)
        return Status("r0", me.role, me.disk, "StandAlone" if me.standalone else "WFConnection", "Unknown",
                      "Outdated" if me.peer_outdated else "DUnknown", suspended=me.frozen)

    def promote(self, i: int) -> str:
        me, peer = self.sides[i], self.sides[1 - i]
        if me.disk != "UpToDate":
            return "Need access to UpToDate data"
        if self.connected() and peer.role == "Primary":
            return "Multiple primaries not allowed by config"
        agent = self.sim.agents[1 - i]
        m = agent.node.machine if agent is not None and agent.alive else None
        may_serve = m is not None and (m.phase in (Phase.ACQUIRING, Phase.SERVING)
                                       or any(s in m.held for s in (Step.VIP, Step.NFS, Step.NFS_STATE)))
        may_serve = may_serve or (m is None and Step.VIP in self.sim.held[1 - i])  # a killed agent's VIP kept
        if peer.up and peer.role == "Primary" and not peer.frozen and may_serve:
            self.sim.violations.append(f"{self.sim.now:.2f}: node {i} promoted while node {1 - i} is Primary")
        lost = self.sim.acked - set(me.data)
        if lost:
            self.sim.violations.append(f"{self.sim.now:.2f}: node {i} promoted without {len(lost)} acknowledged "
                                       f"write(s), e.g. {sorted(lost)[:3]}")
        me.role = "Primary"
        self.tell()
        return ""

    def demote(self, i: int) -> None:
        self.sides[i].role = "Secondary"
        self.sides[i].frozen = False
        self.tell()

    def resume(self, i: int, why: str) -> None:
        """A frozen Primary writes again: fine unless the other node is Primary meanwhile."""
        me, peer = self.sides[i], self.sides[1 - i]
        if not me.frozen:
            return
        me.frozen = False
        if me.role == "Primary" and peer.up and peer.role == "Primary":
            self.sim.violations.append(f"{self.sim.now:.2f}: node {i} resumed I/O ({why}) while node {1 - i} "
                                       "is Primary")
        self.tell()

    def crash(self, i: int) -> None:
        s = self.sides[i]
        s.up, s.role, s.standalone, s.cycling, s.frozen = False, "Secondary", False, False, False
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
            self.tell()
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
                    s.frozen = True  # fencing resource-and-stonith
                    self.sim.at(self.sim.now + HANDLER_DELAY, self._handler(i))
        elif now and not self.was_connected:
            self.connects += 1
            self._handshake()
            if self.connected():
                for i in (0, 1):
                    self.resume(i, "reconnected")
        self.was_connected = now
        self.tell()

    def tell(self) -> None:
        """drbd.follower: any change of what `status` shows (roles, disks, connection, I/O frozen)
        reaches each live agent unasked, FOLLOWER_DELAY later."""
        for i, agent in enumerate(self.sim.agents):
            if agent is not None and agent.alive:
                st = self.status(i)
                if st != agent.told:
                    agent.told = st
                    agent.later(FOLLOWER_DELAY, ev.DrbdChanged(st))

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
            self.tell()


class Agent:
    """One failover-agent process: the real `Node`, its actions carried out in the simulated world."""

    def __init__(self, sim: Sim, i: int, policy: str, preempt: bool) -> None:
        self.sim, self.i = sim, i
        self.node = Node(node_config(i, policy, preempt, sim.heartbeat), sim.address(i))
        # this process's monotonic clock: its own offset, running up to CLOCK_RATE fast or slow
        self.rate = 1 + sim.rng.uniform(-CLOCK_RATE, CLOCK_RATE)
        self.offset = sim.rng.uniform(0, 1000)
        self.alive = True
        self.queue: list[tuple[bytes, float]] = []  # the VRRP socket's receive queue
        self.threshold = 256  # the doorbell's: adverts of this priority or above ring it
        self.told: Status | None = None  # what drbd.follower last reported
        self.timer_at: float | None = None
        self.asks: dict[int, bool] = {}  # our AskPeer ids still waiting
        self.replies: dict[int, Callable[[act.AnswerPeer], None]] = {}
        self._pending: deque[ev.Event] = deque()
        self._busy = False
        self._ip_id = 0

    def start(self) -> None:
        held = self.sim.held[self.i]
        found = [s for s in (Step.DRBD, Step.MOUNT, Step.VIP) if s in held]  # agent.chain's probe
        if Step.DRBD not in found and self.sim.drbd.sides[self.i].role == "Primary":
            found.insert(0, Step.DRBD)
        self.feed(ev.Start(tuple(found), True))
        self.told = self.sim.drbd.status(self.i)
        self.feed(ev.DrbdChanged(self.told))  # drbd.follower's first report

    # -- the adapter: one event at a time, then one timer ----------------------------------------
    def feed(self, event: ev.Event) -> None:
        if not self.alive:
            return
        self._pending.append(event)
        if self._busy:
            return
        self._busy = True
        while self._pending and self.alive:
            for action in self.node.handle(self._pending.popleft(), self.clock()):
                self.do(action)
        self._busy = False
        deadline = self.node.deadline()
        if deadline is not None and deadline != self.timer_at:
            self.timer_at = deadline
            # the loop wakes at the first sim time its clock reads the deadline (never early)
            self.sim.at(self.sim_time(deadline) + 1e-9, lambda: self._timer(deadline))

    def clock(self) -> float:
        return self.offset + self.rate * self.sim.now

    def sim_time(self, t: float) -> float:
        return (t - self.offset) / self.rate

    def span(self, d: float) -> float:
        """A duration this node measures as `d`, in the world's time."""
        return d / self.rate

    def _timer(self, at: float) -> None:
        if self.timer_at == at:
            self.timer_at = None
            self.feed(ev.Timer())

    def later(self, dt: float, event: ev.Event) -> None:
        self.sim.at(self.sim.now + dt, lambda: self.feed(event))

    def do(self, a: act.Action) -> None:
        sim, i = self.sim, self.i
        if isinstance(a, act.SendAdvert):
            sim.advert(i, self._datagram(a), a.priority)
        elif isinstance(a, act.DrainAdverts):
            self._pending.append(ev.AdvertsHeard(tuple(self.queue)))
            self.queue = []
        elif isinstance(a, act.SetWakeThreshold):
            self.threshold = a.threshold
        elif isinstance(a, act.RunStep):
            self._resume(a, self.run(a))
        elif isinstance(a, act.ReadDrbd):
            self.later(DRBD_CALL, ev.DrbdRead(sim.drbd.status(i)))
        elif isinstance(a, act.Promote):
            sim.at(sim.now + DRBD_CALL, self._promote)
        elif isinstance(a, act.SendProbe):
            ok = sim.reaches_witness(i)
            self.later(LATENCY if ok else self.span(a.timeout),
                       ev.ProbeResult(a.target, ok, "echo reply" if ok else "no echo reply", a.fresh))
        elif isinstance(a, act.AskPeer):
            sim.ask_peer(self, a)
        elif isinstance(a, act.SendHeartbeat):
            sim.send_heartbeat(i, a)
        elif isinstance(a, act.SelfFence):
            sim.log(f"node {i}: self-fence ({a.action}): {a.reason}")
            sim.fenced += 1
            sim.crash_node(i)
            sim.at(sim.now + sim.rng.uniform(*FENCE_REBOOT), lambda: sim.boot_node(i))
        elif isinstance(a, act.AnswerPeer):
            reply = self.replies.pop(a.id, None)
            if reply is not None:
                reply(a)
        elif isinstance(a, act.RunOutdate):
            sim.at(sim.now + OUTDATE_CALL, lambda: self._outdate(a))
        elif isinstance(a, act.AdminAnswer):
            sim.fence_peer_answered(i, fence_exit_code(a.body), str(a.body.get("answer")))
        elif isinstance(a, act.Emit) and a.kind in LOGGED:
            sim.log(f"node {i}: {a.message}")

    def _datagram(self, a: act.SendAdvert) -> bytes:
        v = self.node.cfg.vrrp
        self._ip_id += 1
        adv = Advertisement(version=v.version, vrid=v.vrid, priority=a.priority,
                            interval=v.advert_interval if a.interval is None else a.interval, addresses=(VIP,))
        return encode(adv, self.sim.address(self.i), GROUP, self._ip_id)

    def heard(self, datagram: bytes, priority: int) -> None:
        self.queue.append((datagram, self.clock()))
        if priority == 0 or priority >= self.threshold:
            self.feed(ev.Doorbell())

    def _promote(self) -> None:
        refused = self.sim.drbd.promote(self.i) if self.alive else "agent gone"
        self.feed(ev.Promoted(not refused, refused))

    def _outdate(self, a: act.RunOutdate) -> None:
        why = self.sim.drbd.outdate(self.i, may_disconnect=a.disconnect)
        done = why in ("", "cycled")
        self.feed(ev.OutdateDone(a.id, done, ("cycled",) if why == "cycled" else (), "" if done else why))

    # -- the steps (what agent.chain runs), in virtual time ------------------------------------------
    def run(self, step: act.RunStep) -> Task:
        # up to 1.5 s a step: a whole release fits in witness_grace, which the witness policy relies on
        yield self.sim.rng.uniform(0.005, 1.5)
        drbd = self.sim.drbd
        if step.step != Step.DRBD:
            return True, f"{step.step} {step.op}"
        if step.op == Op.RELEASE:
            drbd.demote(self.i)
            return True, "Secondary"
        st = drbd.status(self.i)
        return (st is not None and st.primary), "check"

    def _resume(self, step: act.RunStep, task: Task) -> None:
        if not self.alive:
            return
        try:
            delay = next(task)
        except StopIteration as done:
            ok, detail = done.value
            if ok and step.op == Op.ACQUIRE:
                self.sim.held[self.i].add(step.step)
            elif ok and step.op == Op.RELEASE:
                self.sim.held[self.i].discard(step.step)
            self.feed(ev.StepDone(step.step, step.op, ok, detail))
            return
        self.sim.at(self.sim.now + delay, lambda: self._resume(step, task))


class Sim:
    def __init__(self, policy: str, seed: int, preempt: bool = False, heartbeat: float = 0.1) -> None:
        self.policy, self.preempt, self.heartbeat = policy, preempt, heartbeat
        self.fenced = 0
        self.rng = random.Random(seed)
        self.now = 0.0
        self.violations: list[str] = []
        self.events: list[str] = []
        self.acked: set[int] = set()
        self.writes = 0
        self.service = [True, True]
        self.switch_split = False
        self.node_up = [True, True]
        self.held: list[set[ChainStep]] = [set(), set()]
        self.drbd = Drbd(self)
        self.agents: list[Agent | None] = [None, None]
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._rid = 0
        self.fencing: dict[int, int] = {}  # node -> DRBD's connect count when its fence-peer handler started
        for i in (0, 1):
            self.start_agent(i)
        self.at(0.1, self._client)

    # -- the clock -------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn))

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

    @staticmethod
    def replication_address(i: int) -> IPv4Address:
        return IPv4Address(f"198.51.100.{i + 1}")

    def replication_up(self) -> bool:
        return self.drbd.link and all(self.node_up)

    def send_heartbeat(self, i: int, a: act.SendHeartbeat) -> None:
        """On each path that works now, with its own delay (and sometimes lost)."""
        for path, up in ((self.address(i), self.peers_talk), (self.replication_address(i), self.replication_up)):
            if not up() or self.rng.random() < LOSS:
                continue
            self.at(self.now + self.rng.uniform(*DELAY),
                    partial(self._beat, 1 - i, ev.PeerHeard(str(path), a.vrrp, a.holding, a.hears_peer, a.bound), up))

    def _beat(self, j: int, event: ev.PeerHeard, up: Callable[[], bool]) -> None:
        agent = self.agents[j]
        if agent is not None and agent.alive and up():
            agent.feed(event)

    def reaches_witness(self, i: int) -> bool:
        return self.node_up[i] and self.service[i]

    def peers_talk(self) -> bool:
        return all(self.service) and all(self.node_up) and not self.switch_split

    def advert(self, i: int, datagram: bytes, priority: int) -> None:
        if self.peers_talk():
            self.at(self.now + LATENCY, lambda: self._deliver(1 - i, datagram, priority))

    def _deliver(self, j: int, datagram: bytes, priority: int) -> None:
        agent = self.agents[j]
        if agent is not None and agent.alive and self.peers_talk():
            agent.heard(datagram, priority)

    def ask_peer(self, asker: Agent, a: act.AskPeer) -> None:
        """Over the peer channel (agent.peer): the peer's `Node` answers, or the asker times out."""
        i = asker.i
        asker.asks[a.id] = True

        def answered(body: dict[str, object] | None) -> None:
            if asker.asks.pop(a.id, None) and asker.alive:
                if a.kind == "outdate" and body is not None:
                    self.log(f"node {i} asked node {1 - i} to outdate: {body.get('result')}")
                asker.feed(ev.PeerAnswer(a.id, body))

        def arrive() -> None:
            peer = self.agents[1 - i]
            if not self.peers_talk() or peer is None or not peer.alive:
                return
            self._rid += 1
            peer.replies[self._rid] = lambda reply: self.at(self.now + LATENCY, lambda: self._back(reply, answered))
            peer.feed(ev.PeerRequest(self._rid, a.kind, str(self.address(i)), self.drbd.status(1 - i)))

        self.at(self.now + LATENCY, arrive)
        self.at(self.now + asker.span(a.timeout), lambda: answered(None))

    def _back(self, reply: act.AnswerPeer, answered: Callable[[dict[str, object] | None], None]) -> None:
        if self.peers_talk():
            answered(dict(reply.body))

    def fence_peer_handler(self, i: int) -> None:
        """DRBD on node i lost the peer while Primary: it runs `failoverctl fence-peer` (agent.cli)."""
        agent = self.agents[i]
        self.fencing[i] = self.drbd.connects
        if not self.drbd.sides[i].up or self.drbd.connected() or agent is None or not agent.alive:
            return
        self._rid += 1
        agent.feed(ev.AdminRequest(self._rid, ev.Admin.FENCE_PEER))

    def fence_peer_answered(self, i: int, code: int, answer: str) -> None:
        # DRBD applies the exit code only while still disconnected since the handler started
        # (drbd_nl.c conn_try_outdate_peer: "Ignoring fence-peer exit code" once connect_cnt moved)
        current = self.fencing.pop(i, None) == self.drbd.connects and not self.drbd.connected()
        if code in (4, 5) and current and self.drbd.sides[i].up:
            self.drbd.sides[i].peer_outdated = True  # DRBD records the peer as Outdated
            self.drbd.resume(i, f"fence-peer exit {code}")
            self.drbd.tell()
        late = "" if current else ", ignored by DRBD: it reconnected meanwhile"
        self.log(f"node {i} fence-peer: {answer} (exit {code}{late})")

    def serves(self, i: int) -> bool:
        """Node i acknowledges its clients' writes: a writable Primary whose agent serves, or whose
        killed agent left the VIP (ExecStopPost keeps it on a connected Primary: agent.cli cleanup)."""
        side, agent = self.drbd.sides[i], self.agents[i]
        if not (self.node_up[i] and side.up and side.role == "Primary" and not side.frozen):
            return False
        if agent is not None and agent.alive:
            return agent.node.machine.serving
        return Step.VIP in self.held[i]

    def _client(self) -> None:
        serving = [i for i in range(2) if self.serves(i)]
        if len(serving) > 1 and not any("both serve" in v for v in self.violations[-1:]):
            self.violations.append(f"{self.now:.2f}: both serve as writable Primaries: node 0 is Primary while "
                                   "node 1 is Primary")
        for i in range(2):
            side = self.drbd.sides[i]
            if self.serves(i) and self.service[i]:
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
                # systemd runs ExecStopPost (agent.cli cleanup): the VIPs stay only on a node
                # serving with DRBD Primary, UpToDate and connected to a Secondary peer
                st = self.drbd.status(i)
                if Step.VIP in self.held[i] and not (st is not None and st.primary and st.disk == "UpToDate"
                                                     and st.connected and not st.peer_primary):
                    self.held[i].discard(Step.VIP)
                    self.log(f"node {i}: ExecStopPost removed the VIP")
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
