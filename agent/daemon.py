"""`failover-agent`: the asyncio wiring between sockets, netlink and the sans-I/O router.

This module decides nothing about VRRP: it feeds the router packets, timer expiries and
link events with `now`, and carries out what the router returns (send an advert, a
transition). VIP changes run in one worker task so that adds and removes happen in the
order the transitions did and never overlap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from pyroute2 import AsyncIPRoute

from agent import config as configmod
from agent.config import Config, ConfigError
from vrrp.link import LinkMonitor
from vrrp.packet import AUTH_NONE, AUTH_PASS, Advertisement, Drop, Validator, auth_bytes, encode
from vrrp.router import Action, Heard, Params, Router, SendAdvert, State, Transition
from vrrp.socket import WAKE_NEVER, VrrpSocket
from vrrp.vip import Garp, LinkInfo, VipHolder

log = logging.getLogger("failover-agent")

RESTART_KEYS = ("interface", "vrid", "version", "unicast_peers")
FAULT_RETRY = 5.0


class SetupError(Exception):
    """The instance cannot start (interface missing, no address, no privilege)."""


def router_params(cfg: Config, address: IPv4Address) -> Params:
    v = cfg.vrrp
    return Params(vrid=v.vrid, priority=v.priority, address=address, version=v.version,
                  advert_interval=v.advert_interval, preempt=v.preempt, preempt_delay=v.preempt_delay)


@dataclass
class Counters:
    transitions: int = 0
    became_master: int = 0
    adverts_sent: int = 0
    adverts_received: int = 0
    drops: dict[str, int] = field(default_factory=dict)


class Instance:
    """One VRRP instance on one interface, for the lifetime of one config's restart-keys."""

    def __init__(self, cfg: Config, ipr: AsyncIPRoute, info: LinkInfo, counters: Counters) -> None:
        assert info.primary is not None
        self.cfg = cfg
        self.ipr = ipr
        self.info = info
        self.counters = counters
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
        self.link = LinkMonitor(info.index, info.up, self._on_link)
        self._ip_id = 0
        self._templates: dict[tuple[int, IPv4Address], bytearray] = {}
        self._wake_threshold = WAKE_NEVER
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._vip_wake = asyncio.Event()
        self._vip_idle = asyncio.Event()
        self._vips_held = False
        self._garp_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._master_since = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        stale = await self.vips.remove()
        if stale:
            log.warning("removed VIP(s) %s left on %s by an earlier run", _addrs(stale), self.info.name)
        v = self.cfg.vrrp
        self.sock.open(first_byte=(v.version << 4) | 1, vrid=v.vrid)
        self.garp.open()
        self._tasks = [asyncio.create_task(self.link.run(), name="link-monitor"),
                       asyncio.create_task(self._vip_worker(), name="vip-worker")]
        now = self.loop.time()
        if self.info.up:
            self.apply(self.router.start(now))
        else:
            self.apply(self.router.fault(f"interface {self.info.name} is down at startup", now))

    async def stop(self, reason: str) -> None:
        """Ordered leave: priority 0 advert, then the VIPs go, then sockets close."""
        self.apply(self.router.shutdown(self.loop.time()), why=reason)
        await self._vips_settled()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._garp_task:
            self._garp_task.cancel()
        for h in (self._timer, self._retry):
            if h:
                h.cancel()
        if self._vips_held or await self.vips.present():
            await self.vips.remove()
        self.sock.close()
        self.garp.close()
        self.counters.drops = dict(self.validator.drops)

    async def _vips_settled(self, timeout: float = 0.8) -> None:
        self._vip_idle.clear()
        self._vip_wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._vip_idle.wait(), timeout)

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
        self._process()

    def _on_link(self, up: bool, detail: str) -> None:
        now = self.loop.time()
        if up:
            log.info("interface %s is up again (%s)", self.info.name, detail)
            self.apply(self.router.recover(now, f"interface {self.info.name} up again"))
        else:
            self.apply(self.router.fault(f"interface {self.info.name} down ({detail})", now))

    def fault(self, reason: str) -> None:
        """A failure outside VRRP: say priority 0 while we still can, go quiet, retry later."""
        self.apply(self.router.fault(reason, self.loop.time(), farewell=True))
        if self._retry is None:
            self._retry = self.loop.call_later(FAULT_RETRY, self._retry_after_fault)

    def _retry_after_fault(self) -> None:
        self._retry = None
        if self.link.up:
            self.apply(self.router.recover(self.loop.time(), "retrying after fault"))

    # -- actions out --------------------------------------------------------------------
    def apply(self, actions: list[Action], why: str = "") -> None:
        for action in actions:
            if isinstance(action, SendAdvert):
                self._send_advert(action.priority)
            elif isinstance(action, Transition):
                self._on_transition(action, why)
        deadline = self.router.deadline
        timer = self._timer
        if timer is None or deadline is None or timer.when() != deadline:
            if timer is not None:
                timer.cancel()
            self._timer = None if deadline is None else self.loop.call_at(deadline, self._on_timer)
        threshold = self.router.priority if self.router.state == State.MASTER else WAKE_NEVER
        if threshold != self._wake_threshold:
            self._wake_threshold = threshold
            self.sock.wake_at_or_above(threshold)

    def _send_advert(self, priority: int) -> None:
        def datagram(dst: IPv4Address) -> bytearray:
            template = self._templates.get((priority, dst))
            if template is None:
                template = self._templates[(priority, dst)] = self._encode(priority, dst)
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            struct.pack_into("!H", template, 4, self._ip_id)
            struct.pack_into("!H", template, 10, 0)  # IP_HDRINCL: the kernel fills the checksum
            return template

        before = self.sock.sent
        self.sock.send(datagram)
        self.counters.adverts_sent += self.sock.sent - before

    def _encode(self, priority: int, dst: IPv4Address) -> bytearray:
        v = self.cfg.vrrp
        adv = Advertisement(
            version=v.version, vrid=v.vrid, priority=priority, interval=v.advert_interval,
            addresses=tuple(vip.ip for vip in v.vips),
            auth_type=AUTH_PASS if v.auth_pass else AUTH_NONE, auth_data=auth_bytes(v.auth_pass))
        assert self.info.primary is not None
        return bytearray(encode(adv, self.info.primary, dst, 0))

    def _on_transition(self, t: Transition, why: str) -> None:
        self.counters.transitions += 1
        reason = f"{why}: {t.reason}" if why and why != t.reason else t.reason
        log.info("VRRP %d on %s: %s -> %s: %s", self.cfg.vrrp.vrid, self.info.name, t.old, t.new, reason)
        if t.new == State.MASTER:
            self.counters.became_master += 1
            self._master_since = time.monotonic()
        self._vip_wake.set()

    async def _vip_worker(self) -> None:
        while True:
            await self._vip_wake.wait()
            self._vip_wake.clear()
            want = self.router.state == State.MASTER
            try:
                if want and not self._vips_held:
                    await self._raise_vips()
                elif not want and self._vips_held:
                    await self._drop_vips()
            except Exception as e:  # netlink refused: not fatal to the daemon
                log.error("changing VIPs on %s failed: %s", self.info.name, e)
                if want:
                    self.fault(f"could not add VIPs: {e}")
            if not self._vip_wake.is_set():
                self._vip_idle.set()

    async def _raise_vips(self) -> None:
        v = self.cfg.vrrp
        t0 = time.monotonic()
        await self.vips.add()
        self._vips_held = True
        t1 = time.monotonic()
        log.info("VIP %s up on %s in %.1f ms (%.1f ms after MASTER); %d gratuitous ARP round(s) every %g s",
                 _addrs(v.vips), self.info.name, (t1 - t0) * 1000, (t1 - self._master_since) * 1000,
                 v.garp_count, v.garp_interval)
        self._garp_task = asyncio.create_task(self._garp_loop(), name="garp")

    async def _drop_vips(self) -> None:
        if self._garp_task:
            self._garp_task.cancel()
            self._garp_task = None
        t0 = time.monotonic()
        removed = await self.vips.remove()
        self._vips_held = False
        log.info("VIP %s down on %s in %.1f ms", _addrs(removed) or "(none present)", self.info.name,
                 (time.monotonic() - t0) * 1000)

    async def _garp_loop(self) -> None:
        v = self.cfg.vrrp
        await self.garp.burst(v.vips, v.garp_count, v.garp_interval)
        while v.garp_refresh > 0:
            await asyncio.sleep(v.garp_refresh)
            v = self.cfg.vrrp
            self.garp.send(v.vips)

    # -- reload -------------------------------------------------------------------------
    async def reconfigure(self, new: Config) -> None:
        """Live changes only; the caller restarts the instance for RESTART_KEYS."""
        old_vips, new_vips = set(self.cfg.vrrp.vips), set(new.vrrp.vips)
        self.cfg = new
        self._templates.clear()
        v = new.vrrp
        self.validator.configure(v.advert_interval, v.auth_pass)
        self.vips.vips = v.vips
        if self._vips_held:
            gone, added = old_vips - new_vips, new_vips - old_vips
            if gone:
                await self.vips.remove(gone)
            if added:
                await self.vips.add(added)
                self.garp.send(added)
        assert self.info.primary is not None
        self.apply(self.router.reconfigure(router_params(new, self.info.primary), self.loop.time()))


def _addrs(vips: object) -> str:
    return ", ".join(str(x) for x in vips)  # type: ignore[attr-defined]


class Agent:
    """The process: owns the config and runs instances until told to stop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.counters = Counters()
        self.instance: Instance | None = None
        self._stop: asyncio.Event | None = None
        self._stop_reason = ""
        self._reload = asyncio.Queue[None]()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload.put_nowait, None)
        async with AsyncIPRoute() as ipr:
            self.instance = await self._start_instance(ipr, self.cfg)
            log.info("failover-agent running: VRRPv%d VRID %d on %s, priority %d, VIPs %s",
                     self.cfg.vrrp.version, self.cfg.vrrp.vrid, self.cfg.vrrp.interface,
                     self.cfg.vrrp.priority, _addrs(self.cfg.vrrp.vips))
            reload_task = asyncio.create_task(self._reload_loop(ipr))
            gc.collect()
            gc.freeze()  # startup objects never need collecting: keeps idle wakeups cheap
            await self._stop.wait()
            reload_task.cancel()
            t0 = time.monotonic()
            await self.instance.stop(self._stop_reason)
            log.info("stopped (%s) in %.0f ms", self._stop_reason, (time.monotonic() - t0) * 1000)
        return 0

    def _request_stop(self, sig: signal.Signals) -> None:
        assert self._stop is not None
        self._stop_reason = f"{sig.name} received"
        self._stop.set()

    async def _start_instance(self, ipr: AsyncIPRoute, cfg: Config) -> Instance:
        v = cfg.vrrp
        try:
            info = await LinkInfo.query(ipr, v.interface, exclude=[vip.ip for vip in v.vips])
        except LookupError as e:
            raise SetupError(f"{cfg.file}: vrrp.interface: {e}") from None
        if info.primary is None:
            raise SetupError(f"{cfg.file}: vrrp.interface: {v.interface} has no IPv4 address of its own "
                             "(adverts need a source address that is not a VIP)")
        inst = Instance(cfg, ipr, info, self.counters)
        try:
            await inst.start()
        except PermissionError as e:
            raise SetupError(f"raw sockets need root or CAP_NET_RAW/CAP_NET_ADMIN: {e}") from None
        return inst

    async def _reload_loop(self, ipr: AsyncIPRoute) -> None:
        while True:
            await self._reload.get()
            await self.reload(ipr)

    async def reload(self, ipr: AsyncIPRoute) -> None:
        assert self.instance is not None
        try:
            new = configmod.load(self.cfg.file)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s", e)
            return
        changes = configmod.describe_changes(self.cfg, new)
        if not changes:
            log.info("reload: %s unchanged", new.file)
            return
        log.info("reload: %s", "; ".join(changes))
        old, self.cfg = self.cfg, new
        if any(getattr(old.vrrp, k) != getattr(new.vrrp, k) for k in RESTART_KEYS):
            log.info("reload: %s change needs the instance restarted: handing over first",
                     "/".join(RESTART_KEYS))
            await self.instance.stop("reload")
            try:
                self.instance = await self._start_instance(ipr, new)
            except SetupError as e:
                log.error("reload: new instance cannot start (%s); back to the old config", e)
                self.cfg = old
                self.instance = await self._start_instance(ipr, old)
            return
        await self.instance.reconfigure(new)


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failover-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default=str(configmod.DEFAULT_PATH), help="TOML config file")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging (every dropped packet)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = configmod.load(args.config)
    except ConfigError as e:
        print(f"failover-agent: config error: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(Agent(cfg).run())
    except SetupError as e:
        print(f"failover-agent: cannot start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
