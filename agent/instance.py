"""One VRRP instance wired to the kernel: sockets, timers, link events and VIPs.

This module decides nothing: it feeds the router packets, timer expiries and link events,
feeds the failover machine (`agent.machine`) the router's transitions and the steps'
results, and carries out what both return. One step runs at a time (`agent.chain`), in the
machine's order; a priority-0 advert that accompanies a release is held back until
everything is released, so the peer never promotes data or adds an address we still hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute

from agent.chain import Chain
from agent.config import CheckConfig, Config
from agent.guard import PeerView
from agent.journal import Event, emit
from agent.machine import Action as MachineAction
from agent.machine import Machine, Phase, PhaseChange, RunStep, Settings, VrrpFault, VrrpRecover
from agent.peer import PeerChannel
from agent.peerwire import Message, load_secret
from agent.probes import Pinger, run_check
from agent.tickle import Connection, Tickler, established, parse_connections
from agent.track import Tracker
from drbd.drbdadm import DrbdError
from vrrp.link import LinkMonitor
from vrrp.packet import AUTH_NONE, AUTH_PASS, Advertisement, Drop, Validator, auth_bytes, encode
from vrrp.router import Action, Heard, OtherMaster, Params, Router, SendAdvert, State, Transition
from vrrp.socket import WAKE_NEVER, VrrpSocket
from vrrp.vip import Garp, LinkInfo, VipHolder

log = logging.getLogger("failover-agent")
#: seconds after we cycled our connection to outdate during which a new request does not cycle it again
OUTDATE_CYCLE_HOLD = 30.0
OUTDATE_ANSWER_TIMEOUT = 20.0  # how long a peer that answered "state" gets to outdate its disk
PEER_POLL_INTERVAL = 2.0  # how often a backup learns the master's client connections
TICKLE_ROUNDS = (0.0, 0.3, 1.0)  # a client answers out-of-window segments at most every 0.5 s

def router_params(cfg: Config, address: IPv4Address) -> Params:
    v = cfg.vrrp
    return Params(vrid=v.vrid, priority=v.priority, address=address, version=v.version,
                  advert_interval=v.advert_interval, preempt=v.preempt, preempt_delay=v.preempt_delay)


def machine_settings(cfg: Config) -> Settings:
    m = cfg.monitor
    return Settings(steps=cfg.steps, timeouts={s: m.step_timeout for s in cfg.steps}, monitor_interval=m.interval,
                    max_restarts=m.max_restarts, hold_down=m.hold_down, event_watched=frozenset({"vip"}))


class PeerSetupError(Exception):
    """The peer channel cannot start (secret file missing or too open, port taken)."""


class ReconcileError(Exception):
    """What an earlier run left held could not be released: do not take part in VRRP."""


def addrs(items: Iterable[object]) -> str:
    return ", ".join(str(x) for x in items)


@dataclass
class Counters:
    """Survive instance restarts (reload of restart keys), so they count for the process."""

    transitions: int = 0
    became_master: int = 0
    adverts_sent: int = 0
    adverts_received: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    faults: int = 0


@dataclass
class LastTransition:
    at: float  # wall clock, for people
    old: str
    new: str
    reason: str


class Instance:
    """One VRRP instance on one interface, for the lifetime of one config's restart-keys."""

    def __init__(self, cfg: Config, ipr: AsyncIPRoute, info: LinkInfo, counters: Counters,
                 on_state: Callable[[Instance], None] = lambda _: None) -> None:
        assert info.primary is not None
        self.cfg = cfg
        self.ipr = ipr
        self.info = info
        self.counters = counters
        self.on_state = on_state
        self.loop = asyncio.get_running_loop()
        v = cfg.vrrp
        self.router = Router(router_params(cfg, info.primary))
        self.validator = Validator(version=v.version, vrid=v.vrid, interval=v.advert_interval,
                                   auth_pass=v.auth_pass, own=frozenset({info.primary}),
                                   peers=frozenset(v.unicast_peers))
        self.validator.drops.update(counters.drops)
        self.sock = VrrpSocket(v.interface, info.index, v.unicast_peers, self._process)
        self.garp = Garp(v.interface, info.mac)
        self.vips = VipHolder(ipr, info.index, v.vips, keep={info.primary})
        self.link = LinkMonitor(info.index, info.up, self._on_link, self._on_addr_removed)
        self.last: LastTransition | None = None
        self._ip_id = 0
        self._templates: dict[tuple[int, IPv4Address, float | None], bytearray] = {}
        self._wake_threshold = WAKE_NEVER
        self._next_drain = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self.machine = Machine(machine_settings(cfg))
        self.chain = Chain(cfg, self.vips, self.garp)
        self.chain.peer_view = self._peer_view
        self.peer_channel: PeerChannel | None = None
        self._vrrp_started = 0.0
        self._last_reclaim = -1e9
        self._step_task: asyncio.Task[None] | None = None
        self._machine_timer: asyncio.TimerHandle | None = None
        self._quiet = asyncio.Event()  # no step running and nothing held: released
        self._quiet.set()
        self._farewell = False
        self._tasks: list[asyncio.Task[None]] = []
        self._master_since = 0.0
        self._master_reason = ""
        # why the router must stay in FAULT, by source ("link", "hold", "track"); FAULT while any
        self._faults: dict[str, str] = {}
        self.tracker = Tracker(cfg.track) if cfg.track else None
        self.pinger: Pinger | None = None
        self._outdate_lock = asyncio.Lock()
        self._tickler: Tickler | None = None
        self._peer_connections: list[Connection] = []
        self._outdate_cycled_at: float | None = None
        self._track_tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        stale = await self.vips.remove()
        if stale:
            emit(Event.CLEANUP, f"removed VIP(s) {addrs(stale)} left on {self.info.name} by an earlier run",
                 logging.WARNING, VIPS=addrs(stale))
        v = self.cfg.vrrp
        await self._start_peer_channel()
        self.sock.open(first_byte=(v.version << 4) | 1, vrid=v.vrid)
        self.garp.open()
        self._tasks = [asyncio.create_task(self.link.run(), name="link-monitor")]
        if self.peer_channel is not None:
            self._tasks.append(asyncio.create_task(self._learn_peer_connections(), name="peer-connections"))
        await self._reconcile()
        now = self.loop.time()
        if not self.info.up:
            self._faults["link"] = f"interface {self.info.name} is down at startup"
        if self.tracker is not None and self.tracker.fault_reason:
            self._faults["track"] = f"{self.tracker.fault_reason} (no verdict yet at startup)"
        self._start_tracking()
        self._vrrp_started = now
        if self._faults:
            self.apply(self.router.fault("; ".join(self._faults.values()), now))
        else:
            self.apply(self.router.start(now))

    async def _reconcile(self) -> None:
        """Release what a crashed agent left held before taking part in VRRP: never serve twice."""
        try:
            found = await self.chain.probe()
        except Exception as e:
            raise ReconcileError(f"cannot tell what an earlier run left held: {e}") from None
        if not found:
            return
        emit(Event.CLEANUP, f"startup: {', '.join(found)} still held by an earlier run; releasing before "
             "taking part in VRRP", logging.WARNING, HELD=",".join(found))
        self._feed(self.machine.reconcile(found, self.loop.time()))
        if not await self._released(self._release_budget(found)):
            raise ReconcileError(f"startup reconciliation could not release {', '.join(self.machine.held)}")

    def _release_budget(self, held: list[str]) -> float:
        return 0.8 if list(held) == ["vip"] or not held else len(held) * self.cfg.monitor.step_timeout + 1

    async def stop(self, reason: str) -> None:
        """Ordered leave: everything released in reverse, then the priority-0 advert, then sockets close."""
        budget = self._release_budget(self.machine.held)
        self.apply(self.router.shutdown(self.loop.time()), why=reason)
        if not await self._released(budget):
            emit(Event.FAULT, f"stopping with {', '.join(self.machine.held)} still held: release did not finish "
                 f"within {budget:g} s", logging.ERROR, HELD=",".join(self.machine.held))
        self._stop_tracking()
        if self.peer_channel is not None:
            self.peer_channel.close()
        if self._tickler is not None:
            self._tickler.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for h in (self._timer, self._machine_timer):
            if h:
                h.cancel()
        self.chain.cancel()
        if self._farewell:
            self._farewell = False
            self._send_advert(0)
        self.sock.close()
        self.garp.close()
        self.counters.drops = dict(self.validator.drops)

    async def _released(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), timeout)
        return self._quiet.is_set()

    # -- admin requests -----------------------------------------------------------------
    async def handover(self) -> str:
        if self.router.state != State.MASTER:
            return f"nothing to hand over: this node is {self.router.state}"
        emit(Event.HANDOVER, f"handover requested: releasing, then priority 0 to {self.info.name}'s peers")
        budget = self._release_budget(self.machine.held)
        self.apply(self.router.handover(self.loop.time()))
        if not await self._released(budget):
            return f"release still in progress: {', '.join(self.machine.held)} held"
        return "released; the peer takes over after its Skew_Time"

    async def maintenance(self, on: bool) -> str:
        was_master = self.router.state == State.MASTER
        budget = self._release_budget(self.machine.held)
        self.apply(self.router.set_maintenance(on, self.loop.time()))
        await self._released(budget)
        word = "on: this node stays BACKUP and never takes over" if on else "off: normal VRRP rules again"
        emit(Event.MAINTENANCE, f"maintenance {word}" + (" (released mastership first)" if was_master else ""),
             MAINTENANCE="on" if on else "off")
        self.on_state(self)
        return f"maintenance {word}"

    # -- events in ----------------------------------------------------------------------
    def _process(self) -> None:
        """Feed the router everything queued, in arrival order, then let its timers run."""
        actions: list[Action] = []
        router = self.router
        for data, at in self.sock.drain():
            deadline = router.deadline
            if deadline is not None and deadline <= at:
                actions += router.tick(deadline)
            result = self.validator.check(data)
            if isinstance(result, Drop):
                log.debug("dropped VRRP packet: %s (%s)", result.reason, result.detail)
                continue
            self.counters.adverts_received += 1
            actions += router.receive(Heard(result.src, result.priority, result.interval), at)
        actions += router.tick(self.loop.time())
        self.apply(actions)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self.router.state == State.MASTER and now < self._next_drain:
            # a master's own advert timer: whatever could unseat it rings the doorbell, so the
            # queue (lower-priority adverts, counted only) is drained once a second, not per advert
            self.apply(self.router.tick(now))
            return
        self._next_drain = now + 1.0
        self._process()

    def _on_addr_removed(self, address: IPv4Interface) -> None:
        if address not in self.cfg.vrrp.vips:
            return
        detail = f"VIP {address} was removed from {self.info.name} by someone else"
        actions = self.machine.lost("vip", detail, self.loop.time())
        if actions:
            emit(Event.STEP, f"{detail}: restarting the vip step", logging.WARNING, STEP="vip_check",
                 RESULT="lost", VIPS=str(address))
        self._feed(actions)

    def _on_link(self, up: bool, detail: str) -> None:
        now = self.loop.time()
        emit(Event.LINK, f"interface {self.info.name} is {'up' if up else 'down'} ({detail})",
             logging.INFO if up else logging.WARNING, LINK="up" if up else "down", INTERFACE=self.info.name)
        self._set_fault("link", None if up else f"interface {self.info.name} down ({detail})", now)

    def _set_fault(self, source: str, reason: str | None, now: float, farewell: bool = False) -> None:
        """FAULT while any source has a reason; back to VRRP when the last one clears."""
        had = bool(self._faults)
        if reason:
            self._faults[source] = reason
        elif self._faults.pop(source, None) is None:
            return
        if self._faults and not had:
            self.apply(self.router.fault(reason or source, now, farewell=farewell))
        elif had and not self._faults:
            self.apply(self.router.recover(now, f"{source} fault cleared"))

    # -- reachability tracking ------------------------------------------------------------
    def _start_tracking(self) -> None:
        track = self.cfg.track
        if track is None or self.tracker is None:
            return
        if track.witnesses and self.pinger is None:
            self.pinger = Pinger(self.info.name, self.loop)
        self._track_tasks = [asyncio.create_task(self._probe_witness(str(w)), name=f"witness-{w}")
                             for w in track.witnesses]
        self._track_tasks += [asyncio.create_task(self._probe_check(c), name=f"check-{c.name}")
                              for c in track.checks]

    def _stop_tracking(self) -> None:
        for t in self._track_tasks:
            t.cancel()
        self._track_tasks = []
        if self.pinger is not None:
            self.pinger.close()
            self.pinger = None

    async def _probe_witness(self, address: str) -> None:
        while self.cfg.track is not None and self.pinger is not None:
            t0, track = self.loop.time(), self.cfg.track
            ok, detail = await self.pinger.ping(address, track.timeout)
            self._on_track(address, ok, detail)
            await asyncio.sleep(max(0.0, track.interval - (self.loop.time() - t0)))

    async def _probe_check(self, check: CheckConfig) -> None:
        while True:
            t0 = self.loop.time()
            ok, detail = await run_check(check.argv, check.timeout)
            self._on_track(check.name, ok, detail)
            await asyncio.sleep(max(0.0, check.interval - (self.loop.time() - t0)))

    def _on_track(self, name: str, ok: bool, detail: str) -> None:
        if self.tracker is None:
            return
        now = self.loop.time()
        for change in self.tracker.result(name, ok, detail):
            emit(Event.TRACK, change.message, logging.INFO if change.up else logging.WARNING,
                 TARGET=change.target, KIND=change.kind, UP=str(change.up).lower(),
                 REACHABLE=self.tracker.reachable, PRIORITY_DELTA=self.tracker.priority_delta)
        self._set_fault("track", self.tracker.fault_reason or None, now, farewell=True)
        self._apply_priority(now)

    # -- the peer channel -----------------------------------------------------------------
    async def _start_peer_channel(self) -> None:
        p = self.cfg.peer
        if p is None:
            return
        try:
            key = load_secret(p.secret_file)
        except (OSError, ValueError) as e:
            raise PeerSetupError(f"{self.cfg.file}: peer.secret_file: {e}") from None
        assert self.info.primary is not None
        channel = PeerChannel(str(self.info.primary), str(p.address), p.port, key, p.window, self._peer_request)
        try:
            await channel.start()
        except OSError as e:
            raise PeerSetupError(f"{self.cfg.file}: peer.port: cannot listen on {self.info.primary}:{p.port}: "
                                 f"{e.strerror or e}") from None
        self.peer_channel = channel
        self.chain.fence_peer = self.fence_peer
        try:
            self._tickler = Tickler(self.info.name)
        except OSError as e:
            log.warning("no tickle ACKs after a takeover (clients wait for their TCP retransmission): %s", e)

    async def _learn_peer_connections(self) -> None:
        """While backup, keep the master's client connections, to tickle them after a takeover."""
        while self.peer_channel is not None and self.cfg.peer is not None:
            if self.router.state == State.BACKUP and self._tickler is not None:
                reply = await self.peer_channel.ask("state", self.cfg.peer.timeout)
                if reply is not None and reply.body.get("phase") == str(Phase.SERVING):
                    self._peer_connections = parse_connections(reply.body.get("connections"))
            await asyncio.sleep(PEER_POLL_INTERVAL)

    def _tickle(self) -> None:
        """Just took over: reset the old master's client connections now (agent.tickle)."""
        own = {str(v.ip) for v in self.cfg.vrrp.vips}
        conns = [c for c in self._peer_connections if c[0] in own]
        self._peer_connections = []
        tickler = self._tickler
        if not conns or tickler is None:
            return
        for delay in TICKLE_ROUNDS:
            self.loop.call_later(delay, tickler.send, conns)
        clients = sorted({c[2] for c in conns})
        emit(Event.SERVING, f"tickled {len(conns)} TCP connection(s) of the old master's clients "
             f"({', '.join(clients[:8])}{' ...' if len(clients) > 8 else ''}) so they reconnect now",
             CONNECTIONS=len(conns))

    async def fence_peer(self) -> str:
        """Ask the peer to outdate its disk: outdated | primary | unreachable | failed: ..."""
        if self.peer_channel is None or self.cfg.peer is None:
            return "unreachable"
        # alive? within the configured timeout; then the outdate itself may take several drbdadm
        # calls (disconnect, outdate, read back, connect): a slow answer is not a dead peer
        alive = await self.peer_channel.ask("state", self.cfg.peer.timeout)
        reply = None if alive is None else \
            await self.peer_channel.ask("outdate", max(self.cfg.peer.timeout, OUTDATE_ANSWER_TIMEOUT))
        answer = "unreachable" if reply is None else str(reply.body.get("result", "failed"))
        detail = "" if reply is None else str(reply.body.get("detail", ""))
        if answer not in ("outdated", "primary", "unreachable"):
            answer = f"{answer}: {detail}" if detail else answer
        emit(Event.FENCE, f"asked the peer {self.cfg.peer.address} to outdate its disk: {answer}", logging.WARNING,
             ANSWER=answer, PEER=str(self.cfg.peer.address))
        return answer

    async def witnesses_answer_now(self) -> tuple[bool, str]:
        """Ping every witness afresh: the tracker's verdict lags by up to fall x interval, too late
        for DRBD's fence-peer handler, which declares the peer dead on our word."""
        track = self.cfg.track
        if track is None or not track.witnesses or self.pinger is None or self.tracker is None:
            return False, "no witnesses configured"
        pinger = self.pinger
        results = await asyncio.gather(*(pinger.ping(str(w), track.timeout) for w in track.witnesses))
        ok = sum(1 for answered, _ in results if answered)
        detail = "; ".join(f"{w}: {d}" for w, (_, d) in zip(track.witnesses, results, strict=True))
        if self.tracker.isolated:
            return False, f"the tracker counts us isolated ({detail})"
        return ok >= track.min_reachable, f"{ok} of {len(results)} witnesses answer now ({detail})"

    def _client_connections(self) -> list[list[str | int]]:
        if "vip" not in self.machine.held:
            return []
        try:
            text = Path("/proc/net/tcp").read_text()
        except OSError:
            return []
        return [list(c) for c in established(text, (v.ip for v in self.cfg.vrrp.vips))]

    async def _peer_request(self, msg: Message) -> dict[str, Any]:
        """Answer the peer. Only ever gives data up (outdate), and never while we hold or take it."""
        status = await self.chain.drbd_status() if self.chain.drbd else None
        if msg.kind == "state":
            return {"vrrp": str(self.router.state), "phase": str(self.machine.phase), "held": self.machine.held,
                    "drbd": status.summary() if status else None, "connections": self._client_connections()}
        busy = self.machine.phase not in (Phase.IDLE, Phase.FAULT) or bool(self.machine.held)
        if busy or (status is not None and status.primary):
            return {"result": "primary", "detail": f"phase {self.machine.phase}, holding {self.machine.held}"}
        if self.chain.drbd is None:
            return {"result": "failed", "detail": "no [drbd] section on the peer"}
        if status is not None and status.peer_disk == "Outdated" and not status.connected:
            # our fence-peer handler outdated the peer (or found it dead) and we went on writing: we
            # hold the newer data, and outdating it would leave the stale copy as the only UpToDate one
            return {"result": "failed", "detail": f"this node's DRBD records the peer as Outdated ({status.summary()}):"
                                                  " it holds newer data than the peer; not outdating it"}
        notes: list[str] = []
        try:
            async with self._outdate_lock:
                # a disk we disconnected to outdate has reconnected and resynced: the link works, and
                # the peer's DRBD asking again (its handler runs on every lost connection) must not
                # make us cycle the connection forever
                again = self._outdate_cycled_at is not None \
                    and self.loop.time() - self._outdate_cycled_at < OUTDATE_CYCLE_HOLD
                await self.chain.drbd.outdate(notes, disconnect=not again)
                if notes:
                    self._outdate_cycled_at = self.loop.time()
        except DrbdError as e:
            emit(Event.FENCE, f"the peer {msg.sender} asked us to outdate our DRBD disk and it failed: {e}",
                 logging.ERROR, ANSWER="failed", PEER=msg.sender)
            return {"result": "failed", "detail": str(e)}
        how = f" ({'; '.join(notes)})" if notes else ""
        emit(Event.FENCE, f"outdated our DRBD disk at the request of the peer {msg.sender}{how}", logging.WARNING,
             ANSWER="outdated", PEER=msg.sender)
        return {"result": "outdated"}

    def _peer_view(self) -> PeerView:
        """For the guard: the witnesses' verdict and how long the peer has been silent on VRRP."""
        now = self.loop.time()
        heard = self.router.last_heard_at
        silent = now - (heard if heard is not None else self._vrrp_started)
        drbd, track = self.cfg.drbd, self.cfg.track
        # the peer runs the same [track]: this long after its last advert it has noticed and released
        isolation = (track.fall * track.interval + track.timeout if track is not None else 0.0) \
            + (drbd.witness_grace if drbd is not None else 0.0)
        return PeerView(unknown_peer=drbd.unknown_peer if drbd else "refuse",
                        witness_reachable=None if self.tracker is None or track is None or not track.witnesses
                        else not self.tracker.isolated,
                        peer_silent_for=silent, master_down_interval=self.router.master_down_interval,
                        isolation_time=isolation)

    def _apply_priority(self, now: float) -> None:
        base = self.cfg.vrrp.priority
        prio = self.tracker.effective_priority(base) if self.tracker is not None else base
        if prio != self.router.priority:
            self.apply(self.router.with_priority(prio, now), why=f"tracked priority {prio} (configured {base})")

    # -- actions out --------------------------------------------------------------------
    def apply(self, actions: list[Action], why: str = "") -> None:
        for action in actions:
            if isinstance(action, SendAdvert):
                if action.priority == 0 and not self._quiet.is_set():
                    self._farewell = True  # sent once everything is released
                else:
                    self._send_advert(action.priority, action.interval)
            elif isinstance(action, Transition):
                self._on_transition(action, why)
            elif isinstance(action, OtherMaster):
                self._other_master(action)
        deadline = self.router.deadline
        timer = self._timer
        if timer is None or deadline is None or timer.when() != deadline:
            if timer is not None:
                timer.cancel()
            self._timer = None if deadline is None else self.loop.call_at(deadline, self._on_timer)
        # a master wakes for any advert: backups are silent, so one arriving means a challenger or
        # another master (a healed partition) to answer at once; a backup's routine ones can wait
        threshold = 1 if self.router.state == State.MASTER else WAKE_NEVER
        if threshold != self._wake_threshold:
            self._wake_threshold = threshold
            self.sock.wake_at_or_above(threshold)

    def _other_master(self, other: OtherMaster) -> None:
        """Two masters (a healed partition) and we win: gratuitous ARP now, so clients come back at once."""
        now = self.loop.time()
        if "vip" not in self.machine.held or now - self._last_reclaim < 1.0:
            return
        self._last_reclaim = now
        self._send_advert(self.router.priority)  # the loser steps down on this, not on our next scheduled one
        self.garp.send(self.cfg.vrrp.vips)
        what = ("left mastership (priority 0)" if other.priority == 0 else
                f"also acts as master (priority {other.priority} < {self.router.priority})")
        emit(Event.TRANSITION, f"{other.src} {what} while we are master: advert and gratuitous ARP sent at once",
             logging.WARNING, VRRP_STATE="MASTER", PEER=str(other.src), REASON="two masters")

    def _send_advert(self, priority: int, interval: float | None = None) -> None:
        def datagram(dst: IPv4Address) -> bytearray:
            template = self._templates.get((priority, dst, interval))
            if template is None:
                template = self._templates[(priority, dst, interval)] = self._encode(priority, dst, interval)
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            struct.pack_into("!H", template, 4, self._ip_id)
            struct.pack_into("!H", template, 10, 0)  # IP_HDRINCL: the kernel fills the checksum
            return template

        before = self.sock.sent
        self.sock.send(datagram)
        self.counters.adverts_sent += self.sock.sent - before

    def _encode(self, priority: int, dst: IPv4Address, interval: float | None = None) -> bytearray:
        v = self.cfg.vrrp
        adv = Advertisement(
            version=v.version, vrid=v.vrid, priority=priority,
            interval=v.advert_interval if interval is None or v.version == 2 else interval,
            addresses=tuple(vip.ip for vip in v.vips),
            auth_type=AUTH_PASS if v.auth_pass else AUTH_NONE, auth_data=auth_bytes(v.auth_pass))
        assert self.info.primary is not None
        return bytearray(encode(adv, self.info.primary, dst, 0))

    def _on_transition(self, t: Transition, why: str) -> None:
        self.counters.transitions += 1
        reason = f"{why}: {t.reason}" if why and why != t.reason else t.reason
        self.last = LastTransition(time.time(), t.old, t.new, reason)
        peer = self.router.master if self.router.master != self.info.primary else None
        emit(Event.TRANSITION, f"VRRP {self.cfg.vrrp.vrid} on {self.info.name}: {t.old} -> {t.new}: {reason}",
             VRRP_STATE=t.new, PREV_STATE=t.old, REASON=reason, PEER=peer, VRID=self.cfg.vrrp.vrid,
             INTERFACE=self.info.name, VRRP_PRIORITY=self.router.priority)
        self.on_state(self)
        now = self.loop.time()
        if t.old in (State.INITIALIZE, State.FAULT):
            # the router forgets the peer when it (re)starts; the guard's silence counts from when we listen
            self._vrrp_started = now
        if t.new == State.MASTER:
            self.counters.became_master += 1
            self._master_since = time.monotonic()
            self._master_reason = reason
            self._feed(self.machine.vrrp_master(now, reason))
        elif t.old == State.MASTER:
            self._feed(self.machine.vrrp_lost(now, reason))

    # -- the failover machine ----------------------------------------------------------
    def _feed(self, actions: list[MachineAction]) -> None:
        now = self.loop.time()
        for action in actions:
            if isinstance(action, RunStep):
                self._quiet.clear()
                self._step_task = asyncio.create_task(self._run_step(action), name=f"step-{action.step}")
            elif isinstance(action, VrrpFault):
                self.counters.faults += 1
                emit(Event.FAULT, f"fault: {action.reason}; rolled back, priority 0 and silence for "
                     f"{(self.machine.hold_until or now) - now:g} s", logging.ERROR, REASON=action.reason)
                self._set_fault("hold", action.reason, now, farewell=True)
            elif isinstance(action, VrrpRecover):
                self._set_fault("hold", None, now)
            elif isinstance(action, PhaseChange):
                self._on_phase(action)
        if self.machine.running is None and not self.machine.held:
            self._quiet.set()
            if self._farewell:
                self._farewell = False
                self._send_advert(0)
        elif self.machine.running is None and self.machine.phase == Phase.SERVING:
            self._quiet.clear()
        deadline = self.machine.deadline
        if self._machine_timer is not None:
            self._machine_timer.cancel()
        self._machine_timer = None if deadline is None else self.loop.call_at(deadline, self._on_machine_timer)

    def _on_machine_timer(self) -> None:
        self._machine_timer = None
        self._feed(self.machine.tick(self.loop.time()))

    async def _run_step(self, step: RunStep) -> None:
        ok, detail = await self.chain.run(step)
        self._step_task = None
        self._feed(self.machine.step_done(step.step, step.op, ok, detail, self.loop.time()))

    def _on_phase(self, change: PhaseChange) -> None:
        if change.new == Phase.SERVING:
            total = (time.monotonic() - self._master_since) * 1000
            done = "; ".join(f"{k.rsplit('_', 1)[0]} {v:g} ms" for k, v in self.chain.durations.items()
                             if k.endswith("_acquire"))
            emit(Event.SERVING, f"became MASTER: {self._master_reason}; {done}; VIP {addrs(self.cfg.vrrp.vips)} up "
                 f"({total:.1f} ms after the transition)", VRRP_STATE="MASTER", REASON=self._master_reason,
                 DURATION_MS=f"{total:.1f}", VIPS=addrs(self.cfg.vrrp.vips))
            self._tickle()
        elif change.old == Phase.RELEASING and change.new == Phase.IDLE:
            emit(Event.RELEASED, f"released: {', '.join(reversed(self.cfg.steps))} ({change.reason})",
                 VRRP_STATE=self.router.state)
        self.on_state(self)

    # -- reload -------------------------------------------------------------------------
    async def reconfigure(self, new: Config) -> None:
        """Live changes only; the caller restarts the instance for restart keys."""
        old_vips, new_vips = set(self.cfg.vrrp.vips), set(new.vrrp.vips)
        old_track = self.cfg.track
        self.cfg = new
        self._templates.clear()
        v = new.vrrp
        self.validator.configure(v.advert_interval, v.auth_pass)
        self.vips.vips = v.vips
        self.chain.cfg = new
        self.machine.s = machine_settings(new)  # monitor interval, restarts, hold-down, timeouts
        if "vip" in self.machine.held:
            gone, added = old_vips - new_vips, new_vips - old_vips
            if gone:
                await self.vips.remove(gone)
            if added:
                await self.vips.add(added)
                self.garp.send(added)
        assert self.info.primary is not None
        now = self.loop.time()
        self.apply(self.router.reconfigure(router_params(new, self.info.primary), now))
        if new.track != old_track:
            self._stop_tracking()
            if new.track is None:
                self.tracker = None
            elif self.tracker is None:
                self.tracker = Tracker(new.track)
            else:
                self.tracker.configure(new.track)
            self._start_tracking()
            self._set_fault("track", self.tracker.fault_reason or None if self.tracker else None, now, farewell=True)
        self._apply_priority(now)
        self.on_state(self)

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        self._process()  # routine adverts wait in the queue until a wakeup: count them now
        r, v = self.router, self.cfg.vrrp
        master = r.master if r.state == State.MASTER or r.last_heard_at is not None else None
        return {
            "state": str(r.state),
            "vrid": v.vrid,
            "interface": self.info.name,
            "address": str(self.info.primary),
            "version": v.version,
            "priority": r.priority,
            "advert_interval": v.advert_interval,
            "master_down_interval": round(r.master_down_interval, 4),
            "preempt": v.preempt,
            "maintenance": r.maintenance,
            "yielding": r.yielding,
            "master": str(master) if master else None,
            "link_up": self.link.up,
            "vips": [str(x) for x in v.vips],
            "vips_held": "vip" in self.machine.held,
            "phase": str(self.machine.phase),
            "held": list(self.machine.held),
            "chain": list(self.cfg.steps),
            "faults": dict(self._faults),
            "peer": None if self.peer_channel is None or self.cfg.peer is None else {
                "address": str(self.cfg.peer.address), "port": self.cfg.peer.port,
                "rejected": dict(self.peer_channel.rejected)},
            "track": self.tracker.summary() if self.tracker is not None else None,
            "monitor": {"interval": self.machine.s.monitor_interval, "max_restarts": self.machine.s.max_restarts,
                        "hold_down": self.machine.s.hold_down},
            "last_transition": None if self.last is None else {
                "at": self.last.at, "from": self.last.old, "to": self.last.new, "reason": self.last.reason},
            "counters": {
                "transitions": self.counters.transitions,
                "became_master": self.counters.became_master,
                "faults": self.counters.faults,
                "adverts_sent": self.counters.adverts_sent,
                "adverts_received": self.counters.adverts_received,
                "drops": dict(self.validator.drops),
                "doorbell_wakeups": self.sock.wakeups,
                "garp_sent": self.garp.sent,
            },
        }
