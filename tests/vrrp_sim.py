"""A simulated LAN for `vrrp.router`: N routers, a virtual clock, loss, crashes and partitions.

Everything happens on one heap of events ordered by (time, sequence): timer deadlines
(`Router.deadline`) and deliveries of advertisements. Each `SendAdvert` is delivered after
`delay` seconds to every other live router in the sender's partition, each copy lost
independently with probability `loss` (drawn from a seeded `random.Random`, so a hypothesis
example replays exactly).

- `crash(i)`: the router vanishes without a word (no priority 0). Frames it had in flight are
  lost with it, so timings measured from the crash instant are exact.
- `stop(i)`: graceful `shutdown`; the priority-0 advert it sends is delivered.
- `start(i)`: a fresh `Router` (new incarnation) for node i, `start(now)`.
- `partition(groups)` / `heal()`: who can hear whom; checked when sending and when delivering.

Every `Transition` is recorded with its time and node, and MASTER tenures are kept as `Span`s
(closed by a transition away from MASTER or by a crash).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vrrp.router import Action, Heard, Params, Router, SendAdvert, State, Transition

_TIMER = 0
_DELIVERY = 1


@dataclass(frozen=True)
class Record:
    """One transition of one node at one instant."""

    time: float
    node: int
    transition: Transition


@dataclass(frozen=True)
class Sent:
    time: float
    node: int
    priority: int


@dataclass
class Span:
    """A MASTER tenure of `node`: [start, end), end None while it lasts."""

    node: int
    start: float
    end: float | None = None

    def overlap(self, other: Span, lo: float, hi: float) -> float:
        """How long both tenures hold inside [lo, hi]."""
        a = max(self.start, other.start, lo)
        b = min(hi if self.end is None else self.end, hi if other.end is None else other.end, hi)
        return max(0.0, b - a)


@dataclass
class Node:
    params: Params
    router: Router | None = None
    incarnation: int = 0
    wire_epoch: int = 0  # bumped by a crash: frames sent before it are lost
    group: int = 0
    scheduled: float | None = None


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: int = field(compare=False)
    node: int = field(compare=False)
    incarnation: int = field(compare=False)
    sender: int = field(compare=False, default=-1)
    sender_epoch: int = field(compare=False, default=0)
    heard: Heard | None = field(compare=False, default=None)


class Lan:
    """One broadcast domain of VRRP routers sharing a VRID, driven by a virtual clock."""

    def __init__(self, params: Sequence[Params], *, delay: float = 0.001, loss: float = 0.0,
                 seed: int = 0) -> None:
        if len({p.address for p in params}) != len(params):
            raise ValueError("router addresses must be distinct")
        self.nodes = [Node(p) for p in params]
        self.delay = delay
        self.loss = loss
        self.rng = random.Random(seed)
        self.now = 0.0
        self.transitions: list[Record] = []
        self.sent: list[Sent] = []
        self.spans: list[Span] = []
        self.lifecycle: list[tuple[float, int, str]] = []
        self._open: dict[int, Span] = {}
        self._heap: list[_Event] = []
        self._seq = 0

    # -- observation -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def router(self, i: int) -> Router:
        r = self.nodes[i].router
        if r is None:
            raise LookupError(f"node {i} is down")
        return r

    def state(self, i: int) -> State | None:
        r = self.nodes[i].router
        return None if r is None else r.state

    def live(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n.router is not None]

    def masters(self) -> list[int]:
        return [i for i in self.live() if self.state(i) == State.MASTER]

    def takeovers(self, since: float) -> list[Record]:
        """Transitions to MASTER at or after `since`, in time order."""
        return [r for r in self.transitions if r.time >= since and r.transition.new == State.MASTER]

    def transitions_since(self, since: float) -> list[Record]:
        return [r for r in self.transitions if r.time >= since]

    # -- faults and lifecycle --------------------------------------------------------
    def start(self, i: int) -> None:
        node = self.nodes[i]
        if node.router is not None:
            raise RuntimeError(f"node {i} is already running")
        node.router = Router(node.params)
        node.incarnation += 1
        node.scheduled = None
        self.lifecycle.append((self.now, i, "start"))
        self._apply(i, node.router.start(self.now))

    def crash(self, i: int) -> None:
        node = self.nodes[i]
        if node.router is None:
            return
        node.router = None
        node.wire_epoch += 1
        self.lifecycle.append((self.now, i, "crash"))
        self._close_span(i)

    def stop(self, i: int) -> None:
        node = self.nodes[i]
        if node.router is None:
            return
        self.lifecycle.append((self.now, i, "stop"))
        self._apply(i, node.router.shutdown(self.now))
        node.router = None

    def reconfigure(self, i: int, params: Params) -> None:
        self.nodes[i].params = params
        self._apply(i, self.router(i).reconfigure(params, self.now))

    def partition(self, groups: Sequence[int]) -> None:
        """`groups[i]` is node i's partition; nodes hear each other only within one."""
        if len(groups) != len(self.nodes):
            raise ValueError("one group per node")
        for node, g in zip(self.nodes, groups, strict=True):
            node.group = g
        self.lifecycle.append((self.now, -1, f"partition {list(groups)}"))

    def heal(self) -> None:
        for node in self.nodes:
            node.group = 0
        self.lifecycle.append((self.now, -1, "heal"))

    def connected(self) -> bool:
        return len({n.group for n in self.nodes}) == 1

    # -- the clock -------------------------------------------------------------------
    def run_until(self, t: float) -> None:
        if t < self.now:
            raise ValueError("time does not run backwards")
        heap = self._heap
        while heap and heap[0].time <= t:
            ev = heapq.heappop(heap)
            self.now = ev.time
            node = self.nodes[ev.node]
            router = node.router
            if router is None or node.incarnation != ev.incarnation:
                continue
            if ev.kind == _TIMER:
                deadline = router.deadline
                if deadline is None or deadline > ev.time:
                    continue  # superseded; a newer timer event is queued
                node.scheduled = None
                self._apply(ev.node, router.tick(ev.time))
            else:
                sender = self.nodes[ev.sender]
                if sender.wire_epoch != ev.sender_epoch or sender.group != node.group:
                    continue
                assert ev.heard is not None
                self._apply(ev.node, router.receive(ev.heard, ev.time))
        self.now = t

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    # -- internals -------------------------------------------------------------------
    def _push(self, ev: _Event) -> None:
        heapq.heappush(self._heap, ev)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _apply(self, i: int, actions: Iterable[Action]) -> None:
        node = self.nodes[i]
        for action in actions:
            if isinstance(action, SendAdvert):
                self._broadcast(i, action.priority, action.interval)
            elif isinstance(action, Transition):
                self.transitions.append(Record(self.now, i, action))
                if action.new == State.MASTER:
                    span = Span(i, self.now)
                    self.spans.append(span)
                    self._open[i] = span
                elif action.old == State.MASTER:
                    self._close_span(i)
        router = node.router
        deadline = None if router is None else router.deadline
        if deadline is not None and deadline != node.scheduled:
            node.scheduled = deadline
            self._push(_Event(deadline, self._next_seq(), _TIMER, i, node.incarnation))

    def _close_span(self, i: int) -> None:
        span = self._open.pop(i, None)
        if span is not None:
            span.end = self.now

    def _broadcast(self, i: int, priority: int, interval: float | None = None) -> None:
        sender = self.nodes[i]
        self.sent.append(Sent(self.now, i, priority))
        heard = Heard(sender.params.address, priority, sender.params.advert_interval if interval is None else interval)
        at = self.now + self.delay
        for j, node in enumerate(self.nodes):
            if j == i or node.router is None or node.group != sender.group:
                continue
            if self.loss and self.rng.random() < self.loss:
                continue
            self._push(_Event(at, self._next_seq(), _DELIVERY, j, node.incarnation,
                              i, sender.wire_epoch, heard))
