"""One storage node wired to the kernel. `agent.node.Node` decides everything; this adapter turns
what it sees into `agent.events`, carries out the `agent.actions` and keeps the node's one timer.
Events are handled one at a time, in order: one that arrives while actions run (a status refresh
during a transition, a doorbell rung by a callback) waits its turn, so no decision is re-entered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from agent import actions as act
from agent import events as ev
from agent import handoff
from agent.alerts import Alerts
from agent.chain import Chain
from agent.config import Config
from agent.fence import self_fence
from agent.healer import Healer
from agent.journal import emit
from agent.node import Counters, Node, addrs
from agent.peer import PeerChannel, PeerSetupError, open_channel
from agent.peerwire import Message
from agent.probes import Pinger, run_check
from agent.statefile import maintenance_kept, save_state
from agent.status import Wire, as_json
from agent.tickle import Tickler, client_connections, parse_connections
from agent.timer import PreciseTimer
from drbd.follower import Follower
from vrrp.link import LinkMonitor
from vrrp.netlink import AsyncIPRoute
from vrrp.packet import AUTH_NONE, AUTH_PASS, Advertisement, Templates, auth_bytes
from vrrp.socket import VrrpSocket
from vrrp.vip import Garp, LinkInfo, VipHolder

log = logging.getLogger("failover-agent")

__all__ = ["Counters", "Instance", "PeerSetupError", "ReconcileError", "addrs"]


class ReconcileError(Exception):
    """What an earlier run left held could not be released: do not take part in VRRP."""


class Instance:
    """One VRRP instance and its chain on one interface, for the lifetime of one config's identity keys."""

    def __init__(self, cfg: Config, ipr: AsyncIPRoute, info: LinkInfo, counters: Counters,
                 on_state: Callable[[Instance], None] = lambda _: None, alerts: Alerts | None = None) -> None:
        assert info.primary is not None
        self.cfg, self.ipr, self.info, self.counters, self.on_state = cfg, ipr, info, counters, on_state
        self.alerts = alerts or Alerts()  # the agent's: kept across restarts
        self.alerts.configure(cfg)
        self.loop = asyncio.get_running_loop()
        self.node = Node(cfg, info.primary, counters)
        v = cfg.vrrp
        source = info.primary if isinstance(info.primary, IPv6Address) else None  # IPv6: the link-local address
        self.sock = VrrpSocket(v.interface, info.index, v.unicast_peers, self._doorbell, ipv6_source=source)
        self.garp = Garp(v.interface, info.mac, ipv6=v.ipv6)
        self.vips = VipHolder(ipr, info.index, v.vips, keep={info.primary})
        self.link = LinkMonitor(info.index, info.up, lambda up, why: self.feed(ev.LinkChanged(up, why)),
                                lambda address: self.feed(ev.VipDeleted(address)))
        self.chain = Chain(cfg, self.vips, self.garp)
        if cfg.drbd is not None:  # one `drbdsetup events2` for the instance's life: state changes as events
            self.chain.follower = Follower(cfg.drbd.resource, lambda st: self.feed(ev.DrbdChanged(st)))
        self.healer = Healer(cfg, self.chain.drbd_status, self.vips.remove, self._holds_vips) if cfg.drbd else None
        self.peer_channel: PeerChannel | None = None
        self.pinger: Pinger | None = None
        self.tickler: Tickler | None = None
        self._pending: deque[ev.Event] = deque()
        self._busy = False
        self._timer = PreciseTimer(self.loop, self._on_timer)  # the node's one timer (agent.timer: why not call_at)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = iter(range(1, 1 << 62))
        self._tasks: set[asyncio.Task[None]] = set()
        self._joined: asyncio.Future[None] = self.loop.create_future()
        self._stopped: asyncio.Future[None] = self.loop.create_future()
        self.last_advert: float | None = None  # loop time (monotonic) of our last advert
        self.kept: tuple[str, ...] = ()  # what a stop for a restart left held for the next agent
        self.label = ""  # "NAME: " before its messages while the agent runs several instances
        self.templates = self._templates()
        self._do: dict[type, Callable[[Any], None]] = {
            act.SendAdvert: self._send_advert, act.Garp: lambda _: self.garp.send(self.cfg.vrrp.vips),
            act.DrainAdverts: lambda _: self._pending.append(ev.AdvertsHeard(tuple(self.sock.drain()))),
            act.SetWakeThreshold: lambda a: self.sock.wake_at_or_above(a.threshold),
            act.RunStep: lambda a: self._feed_when(self.chain.step_done(a)),
            act.ReadDrbd: lambda a: self._feed_when(self.chain.drbd_read()),
            act.Promote: lambda _: self._feed_when(self.chain.promoted()),
            act.SendProbe: lambda a: self._feed_when(self._probe(a)),
            act.RunCheck: lambda a: self._feed_when(self._check(a)),
            act.AskPeer: lambda a: self._feed_when(self._ask_peer(a)),
            act.SendHeartbeat: lambda a: self.peer_channel.beat(a) if self.peer_channel else None,
            act.SelfFence: lambda a: self_fence(self.cfg, a.action, a.reason),
            act.AnswerPeer: self._answer_peer, act.AdminAnswer: lambda a: self._reply(a.id, dict(a.body)),
            act.RunOutdate: lambda a: self._feed_when(self.chain.outdated(a)),
            act.ApplyNfs: lambda _: self._feed_when(self.chain.nfs_applied()),
            act.Tickle: self._tickle,
            act.ChangeVips: lambda a: self._spawn(self._change_vips(a)),
            act.Emit: self._emit, act.StatusChanged: lambda _: self.on_state(self),
            act.SaveState: lambda a: save_state(self.cfg.agent.state_file, a.maintenance),
            act.Joined: lambda _: self._settle(self._joined, None),
            act.StartFailed: lambda a: self._settle(self._joined, ReconcileError(a.reason)),
            act.Stopped: lambda _: self._settle(self._stopped, None),
        }

    # -- the event queue and the one timer --------------------------------------------------
    def feed(self, event: ev.Event) -> None:
        """Hand the node one event; while actions run, later events wait their turn."""
        self._pending.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._pending:
                for action in self.node.handle(self._pending.popleft(), self.loop.time()):
                    try:
                        self._do[type(action)](action)
                    except Exception:  # an adapter bug must not take the decisions down with it
                        log.exception("carrying out %s failed", type(action).__name__)
        finally:
            self._busy = False
        self._timer.set(self.node.deadline())

    def _on_timer(self) -> None:
        self.feed(ev.Timer())

    def _doorbell(self) -> None:
        """A due timer goes first: under a flood that rings, the bell is always ready and the loop
        would run the advert timer only after it."""
        self._timer.fire_if_due()
        self.feed(ev.Doorbell())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _feed_when(self, answer: Coroutine[Any, Any, ev.Event]) -> None:
        """An action carried out in the background: its answer is the node's next event."""
        async def run() -> None:
            self.feed(await answer)
        self._spawn(run())

    @staticmethod
    def _settle(fut: asyncio.Future[None], error: Exception | None) -> None:
        if not fut.done():
            fut.set_result(None) if error is None else fut.set_exception(error)

    async def _request(self, make: Callable[[int], ev.Event]) -> dict[str, Any]:
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._replies[rid] = fut
        self.feed(make(rid))
        try:
            return await fut
        finally:
            self._replies.pop(rid, None)

    def _reply(self, rid: int, body: dict[str, Any]) -> None:
        fut = self._replies.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(body)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self._start_peer_channel(self.cfg)
        self.sock.open(first_byte=(self.cfg.vrrp.version << 4) | 1, vrid=self.cfg.vrrp.vrid)
        self.garp.open()
        self._spawn(self.link.run())
        for runner in (self.chain.follower, self.healer):  # DRBD's events; StandAlone heals
            if runner is not None:
                self._spawn(runner.run())
        self._open_pinger()
        age = handoff.take_age(self.cfg.agent.state_file, self.info.name)
        try:
            found = await self.chain.probe()
        except Exception as e:
            raise ReconcileError(f"cannot tell what an earlier run left held: {e}") from None
        self._spawn(self.chain.prepare_ahead())
        self.feed(ev.Start(tuple(found), self.info.up, maintenance_kept(self.cfg.agent.state_file), age))
        await self._joined

    def _open_pinger(self) -> None:
        if self.cfg.track and self.cfg.track.witnesses and self.pinger is None:
            self.pinger = Pinger(self.info.name, self.loop)

    async def stop(self, reason: str, restart: bool = False) -> None:
        """Ordered leave: everything released in reverse, then the priority-0 advert, then sockets close.
        `restart`: a serving master keeps its chain for the next agent instead (agent.handoff)."""
        if not self.node.stopped:
            self.feed(ev.AdminRequest(next(self._ids), ev.Admin.RESTART if restart else ev.Admin.STOP, reason))
        await self._stopped  # the node's deadline is None from now on: no timer left
        self.kept = self.node.kept
        for closer in (self.peer_channel, self.tickler, self.pinger):
            if closer is not None:
                closer.close()
        for t in list(self._tasks):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.chain.cancel(keep=bool(self.kept))
        self.sock.close()
        self.garp.close()
        self._timer.close()
        if self.kept:
            handoff.record(self.cfg.agent.state_file, self.last_advert, self.info.name,
                           [str(v) for v in self.cfg.vrrp.vips], self.kept)

    async def admin(self, command: ev.Admin) -> dict[str, Any]:
        return await self._request(lambda rid: ev.AdminRequest(rid, command))

    async def fence_peer(self, waited: float) -> dict[str, Any]:
        """DRBD's fence-peer handler asks (again after `waited` s): the node's answer, then the verdict."""
        answer = await self.admin(ev.Admin.FENCE_PEER)
        return answer if self.healer is None else await self.healer.fence_peer(answer, waited)

    def _holds_vips(self) -> tuple[bool, bool]:
        snap = self.node.snapshot()
        return "vip" in snap.held, snap.maintenance

    async def handover(self) -> str:
        return str((await self.admin(ev.Admin.HANDOVER))["message"])

    async def maintenance(self, on: bool) -> str:
        return str((await self.admin(ev.Admin.MAINTENANCE_ON if on else ev.Admin.MAINTENANCE_OFF))["message"])

    async def reconfigure(self, new: Config) -> None:
        """Live changes only (the daemon restarts the instance for identity keys). A new peer channel
        that cannot start raises PeerSetupError before anything changed: the running config stays."""
        if new.peer != self.cfg.peer:
            old = self.peer_channel
            if old is not None:
                old.close()
            try:
                await self._start_peer_channel(new)
            except PeerSetupError:
                if old is not None:
                    await self._start_peer_channel(self.cfg)
                raise
        self.cfg = self.chain.cfg = new
        if self.healer is not None:
            self.healer.cfg = new
        self.alerts.configure(new)
        self.templates = self._templates()
        self.vips.vips = new.vrrp.vips
        self._open_pinger()
        self.feed(ev.Reconfigure(new))

    # -- actions out --------------------------------------------------------------------------
    def _emit(self, a: act.Emit) -> None:
        """The node's log lines and events, after the instance's label; every event carries INSTANCE=."""
        if a.kind is None:
            if log.isEnabledFor(a.level):  # the dropped-packet lines of a flood are DEBUG: cheap when off
                log.log(a.level, self.label + a.message, *a.args, extra={"journal_fields": {"INSTANCE": self.cfg.name}})
        else:
            named = replace(a, message=self.label + a.message, fields={**a.fields, "INSTANCE": self.cfg.name})
            emit(a.kind, named.message, named.level, **named.fields)
            self.alerts.send(named, self.cfg)

    def _send_advert(self, a: act.SendAdvert) -> None:
        before = self.sock.sent
        self.sock.send(lambda dst: self.templates.datagram(a.priority, dst, a.interval))
        self.last_advert = self.loop.time()
        self.counters.adverts_sent += self.sock.sent - before

    def _templates(self) -> Templates:
        v = self.cfg.vrrp
        assert self.info.primary is not None
        return Templates(Advertisement(version=v.version, vrid=v.vrid, priority=v.priority,
                                       interval=v.advert_interval, addresses=tuple(vip.ip for vip in v.vips),
                                       auth_type=AUTH_PASS if v.auth_pass else AUTH_NONE,
                                       auth_data=auth_bytes(v.auth_pass)), self.info.primary)

    async def _probe(self, a: act.SendProbe) -> ev.ProbeResult:
        ok, detail = (False, "no ICMP socket") if self.pinger is None else await self.pinger.ping(a.target, a.timeout)
        return ev.ProbeResult(a.target, ok, detail, a.fresh)

    async def _check(self, a: act.RunCheck) -> ev.CheckResult:
        return ev.CheckResult(a.name, *await run_check(a.argv, a.timeout))

    def _tickle(self, a: act.Tickle) -> None:
        if self.tickler is not None:
            self.tickler.send(a.connections)

    async def _change_vips(self, a: act.ChangeVips) -> None:
        if a.gone:
            await self.vips.remove(a.gone)
        if a.added:
            await self.vips.add(a.added)
            self.garp.send(a.added)

    # -- the peer channel ----------------------------------------------------------------------
    async def _start_peer_channel(self, cfg: Config) -> None:
        self.peer_channel = await open_channel(cfg, str(self.info.primary), self._peer_request, self.feed)
        if self.peer_channel is None or self.tickler is not None:
            return
        try:
            self.tickler = Tickler(self.info.name)
        except OSError as e:
            log.warning("no tickle ACKs after a takeover (clients wait for their TCP retransmission): %s", e)

    async def _peer_request(self, msg: Message) -> dict[str, Any]:
        status = await self.chain.drbd_status() if self.chain.drbd else None
        return await self._request(lambda rid: ev.PeerRequest(rid, msg.kind, msg.sender, status))

    def _answer_peer(self, a: act.AnswerPeer) -> None:
        body = dict(a.body)
        if a.connections:
            body["connections"] = client_connections(v.ip for v in self.cfg.vrrp.vips if isinstance(v.ip, IPv4Address))
        self._reply(a.id, body)

    async def _ask_peer(self, a: act.AskPeer) -> ev.PeerAnswer:
        reply = None if self.peer_channel is None else await self.peer_channel.ask(a.kind, a.timeout)
        body = None if reply is None else reply.body
        return ev.PeerAnswer(a.id, body, tuple(parse_connections(body.get("connections"))) if body else ())

    async def refresh(self) -> dict[str, str] | None:
        """For the status command: count the adverts waiting in the queue, and read DRBD's view now."""
        self.feed(ev.Doorbell())
        try:
            st = await self.chain.drbd_status() if self.chain.drbd else None
        except Exception as e:
            return {"error": str(e)}
        return None if st is None else st.view()

    def status(self) -> dict[str, Any]:
        rejected = None if self.peer_channel is None else self.peer_channel.rejected
        wire = Wire(self.info.name, str(self.info.primary), self.counters.adverts_sent, self.sock.wakeups,
                    self.garp.sent, rejected)
        return {"name": self.cfg.name, **as_json(self.node.snapshot(), self.cfg, wire, self.loop.time(), time.time()),
                "notify": self.alerts.stats(), "heal": self.healer.note if self.healer else ""}
