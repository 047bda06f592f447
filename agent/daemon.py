"""`failover-agent`: the process around a VRRP instance: signals, reload, systemd, control.

Startup order matters for systemd's Type=notify: READY=1 is sent only once the stale VIPs
are cleaned, the sockets and the link monitor are up and the control socket answers, so a
unit that is "active" really is taking part. The watchdog is pinged from a timer on the
same event loop that runs the protocol: if that loop hangs, the pings stop and systemd
kills and restarts us.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from typing import Any

from agent import config as configmod
from agent import handoff, snapshot
from agent.alerts import Alerts
from agent.config import Config, ConfigError
from agent.control import ControlError, ControlServer
from agent.events import Admin
from agent.fence import can_fence
from agent.instance import Counters, Instance, PeerSetupError, ReconcileError, addrs
from agent.journal import Event, emit, setup_logging, under_journal
from agent.metrics import MetricsServer
from agent.sched import Scheduling, apply_priority
from agent.version import version
from vrrp.netlink import AsyncIPRoute
from vrrp.vip import LinkInfo

log = logging.getLogger("failover-agent")

VERSION = version()


class SetupError(Exception):
    """The instance cannot start (interface missing, no address, no privilege)."""


class Notifier:
    """sd_notify without surprises: a no-op outside systemd, never raises into the loop."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notify: Any = None
        if self.enabled:
            try:
                self._notify = importlib.import_module("systemd.daemon").notify
            except ImportError:
                self.enabled = False

    def __call__(self, state: str) -> None:
        if not self.enabled:
            return
        try:
            self._notify(state)
        except OSError as e:  # systemd gone or socket refused: keep running
            log.debug("sd_notify(%s) failed: %s", state.split("=")[0], e)

    @staticmethod
    def watchdog_interval() -> float | None:
        """Half of WatchdogSec, if systemd asked us (and not another PID) for pings."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None


class Agent:
    """The process: owns the config and runs instances until told to stop.

    ``text`` is the config as parsed; it is snapshotted for `failoverctl cleanup` (agent.snapshot).
    """

    def __init__(self, cfg: Config, text: str | None = None) -> None:
        self.cfg = cfg
        self.text = text
        self.counters = Counters()
        self.instance: Instance | None = None
        self.notify = Notifier()
        self.alerts = Alerts(cfg)  # [[notify]] hooks: one queue and bound for every instance this agent runs
        self.started = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self._stop: asyncio.Event | None = None
        self._stop_reason = ""
        self._stop_signal: signal.Signals | None = None
        self._reload = asyncio.Queue[None]()
        self._ipr: AsyncIPRoute | None = None
        self._control_socket = cfg.agent.control_socket  # [agent] changes wait for a restart
        self._lock = asyncio.Lock()
        self.scheduling = Scheduling(0)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload.put_nowait, None)
        self.scheduling = apply_priority(self.cfg.agent.realtime_priority)
        control = ControlServer(self._control_socket, self.handle)
        metrics: MetricsServer | None = None
        # the control socket first: it is also how we notice a second agent for the same
        # config, which must not touch the first one's VIPs
        try:
            await control.start()
        except (ControlError, OSError) as e:
            raise SetupError(f"{self.cfg.file}: agent.control_socket: {e}") from None
        # after the socket (a second agent for this config must not replace the first one's
        # snapshot) and before the instance (nothing may be acquired that cleanup cannot see)
        self._snapshot("start")
        async with AsyncIPRoute() as ipr:
            self._ipr = ipr
            try:
                self.instance = await self._start_instance(self.cfg)
            except BaseException:
                await control.close()
                raise
            if self.cfg.agent.metrics:
                metrics = MetricsServer(self.cfg.agent.metrics, self.status)
                try:
                    await metrics.start()
                except OSError as e:
                    log.error("metrics endpoint %s unavailable: %s (continuing without)", self.cfg.agent.metrics, e)
                    metrics = None
            v = self.cfg.vrrp
            emit(Event.STARTED, f"failover-agent running (version {VERSION}): VRRPv{v.version} VRID {v.vrid} "
                 f"on {v.interface}, priority {v.priority}, VIPs {addrs(v.vips)}", CONFIG_FILE=self.cfg.file,
                 VRID=v.vrid, INTERFACE=v.interface, VRRP_PRIORITY=v.priority)
            self.notify(f"READY=1\nSTATUS={self.status_line()}")
            reload_task = asyncio.create_task(self._reload_loop())
            watchdog = self._start_watchdog(loop)
            gc.collect()
            gc.freeze()  # startup objects never need collecting: keeps idle wakeups cheap
            await self._stop.wait()
            self.notify("STOPPING=1")
            restart, how = await self._restarting()
            reload_task.cancel()
            if watchdog:
                watchdog.cancel()
            t0 = time.monotonic()
            await control.close()
            if metrics:
                await metrics.close()
            async with self._lock:
                await self.instance.stop(self._stop_reason, restart=restart)
            ms = (time.monotonic() - t0) * 1000
            kept = self.instance.kept
            note = f"; kept {', '.join(kept)} held for the restarted agent to adopt ({how})" if kept else ""
            emit(Event.STOPPED, f"stopped ({self._stop_reason}) in {ms:.0f} ms{note}", REASON=self._stop_reason,
                 DURATION_MS=f"{ms:.0f}", KEPT=",".join(kept) or None)
            await self.alerts.close()  # released already: the hooks' last alerts delay no takeover
        return 0

    def _snapshot(self, reason: str) -> None:
        """Record the running config for ExecStopPost's cleanup; a failure only costs that fallback."""
        if self.text is None:
            return
        try:
            path = snapshot.write(self.cfg.file, self.text, reason, self._control_socket)
        except OSError as e:
            log.warning("cannot write the running-config snapshot (%s): after a crash, cleanup will read %s",
                        e, self.cfg.file)
            return
        log.debug("running config (%s) snapshotted to %s", reason, path)

    def _start_watchdog(self, loop: asyncio.AbstractEventLoop) -> _WatchdogHandle | None:
        interval = self.notify.watchdog_interval()
        if interval is None:
            return None
        holder: list[asyncio.TimerHandle] = []

        def ping() -> None:
            self.notify("WATCHDOG=1")
            holder[:] = [loop.call_later(interval, ping)]

        ping()
        return _WatchdogHandle(holder)

    def _request_stop(self, sig: signal.Signals) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            return
        self._stop_reason, self._stop_signal = f"{sig.name} received", sig
        self._stop.set()

    async def _restarting(self) -> tuple[bool, str]:
        """Is this stop part of a restart (agent.handoff)? SIGTERM: ask systemd; SIGUSR2 says so itself."""
        if self._stop_signal == signal.SIGUSR2:
            return True, "SIGUSR2: stop for a restart"
        if self._stop_signal != signal.SIGTERM:
            return False, ""
        restart, how = await handoff.systemd_restart_pending()
        log.debug("stop or restart? %s", how)
        return restart, how

    async def _start_instance(self, cfg: Config) -> Instance:
        assert self._ipr is not None
        v = cfg.vrrp
        try:
            info = await LinkInfo.query(self._ipr, v.interface, exclude=[vip.ip for vip in v.vips],
                                        ipv6=v.ipv6)
        except LookupError as e:
            raise SetupError(f"{cfg.file}: vrrp.interface: {e}") from None
        if info.primary is None:
            own = "IPv6 link-local address" if v.ipv6 else "IPv4 address of its own"
            raise SetupError(f"{cfg.file}: vrrp.interface: {v.interface} has no {own} "
                             "(adverts need a source address that is not a VIP)")
        problem = can_fence(cfg)
        if problem and cfg.drbd is not None and cfg.drbd.unknown_peer == "witness":
            raise SetupError(f"{cfg.file}: drbd.demote_escalation: {problem}; the peer's takeover (unknown_peer = "
                             "\"witness\") relies on this node fencing itself when isolated")
        if problem:
            log.warning("%s", problem)
        inst = Instance(cfg, self._ipr, info, self.counters, on_state=self._state_changed, alerts=self.alerts)
        try:
            await inst.start()
        except PermissionError as e:
            raise SetupError(f"raw sockets need root or CAP_NET_RAW/CAP_NET_ADMIN: {e}") from None
        except (ReconcileError, PeerSetupError) as e:
            await inst.stop(f"startup failed: {e}")
            raise SetupError(str(e)) from None
        return inst

    def _state_changed(self, inst: Instance) -> None:
        self.notify(f"STATUS={self.status_line(inst)}")

    def status_line(self, inst: Instance | None = None) -> str:
        inst = inst or self.instance
        if inst is None:
            return "starting"
        s = inst.status()
        extra = " (maintenance)" if s["maintenance"] else ""
        master = f"; master {s['master']}" if s["master"] and s["state"] != "MASTER" else ""
        held = f"; VIP {', '.join(s['vips'])} held" if s["vips_held"] else ""
        return f"{s['state']}{extra}, priority {s['priority']}{master}{held}"

    # -- control requests ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        assert self.instance is not None
        inst = self.instance.status()
        return {
            "agent": {"version": VERSION, "pid": os.getpid(), "config": self.cfg.file,
                      "started": self.started, "uptime": round(time.time() - self.started, 1),
                      "reloads": self.reloads, "reload_failures": self.reload_failures,
                      "scheduling": self.scheduling.describe()},
            "instance": inst,
            "steps": inst["steps"],
            "storage": None if inst["chain"] == ["vip"] else {
                "chain": inst["chain"], "phase": inst["phase"], "held": inst["held"]},
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["command"]
        if self.instance is None:
            raise ControlError("the agent is still starting")
        if command == "status":
            drbd = await self.instance.refresh()
            answer = self.status()
            if answer["storage"] is not None:
                answer["storage"]["drbd"] = drbd
            return answer
        async with self._lock:
            if command == "handover":
                return {"message": await self.instance.handover()}
            if command == "maintenance":
                on = request.get("on")
                if not isinstance(on, bool):
                    raise ControlError("maintenance needs on: true or false")
                return {"message": await self.instance.maintenance(on)}
            if command == "reset":
                return await self.instance.admin(Admin.RESET)
        if command == "fence-peer":
            waited = request.get("waited", 0.0)
            if not isinstance(waited, int | float) or isinstance(waited, bool) or not 0 <= waited < 3600:
                raise ControlError("fence-peer: waited must be a number of seconds")
            return await self.instance.fence_peer(float(waited))
        raise ControlError(f"unknown command {command!r} (status, handover, maintenance, reset, fence-peer)")

    # -- reload -------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        while True:
            await self._reload.get()
            async with self._lock:
                await self.reload()

    async def reload(self) -> None:
        assert self.instance is not None
        try:
            new, text = snapshot.read_config(self.cfg.file)
        except ConfigError as e:
            self.reload_failures += 1
            emit(Event.RELOAD_FAILED, f"reload refused, keeping the running config: {e}", logging.ERROR,
                 FILE=e.file, KEY=e.key or None, REASON=e.reason)
            return
        changes = configmod.describe_changes(self.cfg, new)
        self.reloads += 1
        # before applying: a VIP the new config adds must already be in what cleanup reads
        old_text, self.text = self.text, text
        self._snapshot("reload")
        if not changes:
            emit(Event.RELOAD, f"reload: {new.file} unchanged", CHANGES="")
            return
        emit(Event.RELOAD, f"reload: {'; '.join(changes)}", CHANGES="; ".join(changes))
        if new.agent.realtime_priority != self.cfg.agent.realtime_priority:
            self.scheduling = apply_priority(new.agent.realtime_priority)
        if replace(new.agent, realtime_priority=0) != replace(self.cfg.agent, realtime_priority=0):
            log.warning("reload: [agent] settings (control socket, metrics, state file) take effect at the "
                        "next restart")
        identity = configmod.identity_changes(self.cfg, new)
        if not identity:
            try:
                await self.instance.reconfigure(new)
            except PeerSetupError as e:
                self.reload_failures += 1
                self.text = old_text
                self._snapshot("reload (refused)")
                emit(Event.RELOAD_FAILED, f"reload refused, keeping the running config: {e}", logging.ERROR,
                     FILE=new.file, KEY="peer", REASON=str(e))
                return
            self.cfg = new
            return
        old, self.cfg = self.cfg, new
        log.info("reload: %s changed: the instance restarts after an ordered leave", ", ".join(identity))
        await self.instance.stop("reload")
        try:
            self.instance = await self._start_instance(new)
        except SetupError as e:
            log.error("reload: new instance cannot start (%s); back to the old config", e)
            self.cfg, self.text = old, old_text
            self._snapshot("reload (rolled back)")
            self.instance = await self._start_instance(old)


class _WatchdogHandle:
    """Cancels whichever ping timer is pending at the time."""

    def __init__(self, holder: list[asyncio.TimerHandle]) -> None:
        self.holder = holder

    def cancel(self) -> None:
        for h in self.holder:
            h.cancel()


def _fatal(message: str) -> None:
    """Why we exit, on stderr: under systemd that is the journal stream, whose lines are tied to
    the unit when it is connected, so `systemctl status` shows them even though we exit at once
    (a journal.send datagram from a process already gone can lose its unit).  The "<3>" prefix
    gives the line priority err there."""
    print(f"{'<3>' if under_journal() else ''}failover-agent: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failover-agent", description="VRRP failover agent (runs in the foreground)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--config", "-c", default=str(configmod.DEFAULT_PATH), help="TOML config file")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging (every dropped packet)")
    parser.add_argument("--log-target", choices=("auto", "journal", "stderr"), default="auto",
                        help="auto: journald when run by systemd, else stderr")
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.log_target)
    try:
        cfg, text = snapshot.read_config(args.config)
    except ConfigError as e:
        _fatal(f"config error: {e}")
        return 2  # the unit's RestartPreventExitStatus=2: restarting will not fix the file
    try:
        return asyncio.run(Agent(cfg, text).run())
    except SetupError as e:
        _fatal(f"cannot start: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
