"""`failover-agent`: the process around its VRRP instances: signals, reload, systemd, control.

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
import json
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
from agent.config import Config, ConfigError, ProcessConfig
from agent.control import ControlError, ControlServer
from agent.events import Admin
from agent.fence import can_fence
from agent.instance import Counters, Instance, PeerSetupError, ReconcileError, addrs
from agent.journal import Event, emit, setup_logging, under_journal
from agent.metrics import MetricsServer
from agent.sched import Scheduling, apply_priority
from agent.syncgroup import HandOver, SyncGroups
from agent.version import version
from vrrp.netlink import AsyncIPRoute
from vrrp.router import State
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
    """The process: owns the config and runs its instances until told to stop.

    Every instance is one `Instance` (one sans-I/O `Node` core) on this one event loop; they share
    the control socket, the metrics endpoint, the [[notify]] hooks' bound and the watchdog, and
    nothing of their protocol or chain. ``text`` is the config as parsed; it is snapshotted for
    `failoverctl cleanup` (agent.snapshot).
    """

    def __init__(self, cfg: ProcessConfig, text: str | None = None) -> None:
        self.cfg = cfg
        self.text = text
        self.instances: dict[str, Instance] = {}  # in the config's order
        self.counters: dict[str, Counters] = {}  # by instance name: kept across an instance's restarts
        self._sources: dict[str, str | None] = {}  # the text each running instance's config came from
        self.notify = Notifier()
        self.alerts = Alerts(cfg.instances[0])  # [[notify]] hooks: one queue and bound for every instance
        self.started = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self._running = False  # every instance of the config started: control requests are answered
        self._stop: asyncio.Event | None = None
        self._stop_reason = ""
        self._stop_signal: signal.Signals | None = None
        self._reload = asyncio.Queue[None]()
        self._ipr: AsyncIPRoute | None = None
        self._control_socket = cfg.agent.control_socket  # [agent] changes wait for a restart
        self._lock = asyncio.Lock()
        self.scheduling = Scheduling(0)
        self.groups = SyncGroups(configmod.sync_groups(cfg.instances))
        self._reloading = False  # an instance leaving for a reload is no failure of its sync group
        self._tasks: set[asyncio.Task[None]] = set()

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
        # snapshot) and before the instances (nothing may be acquired that cleanup cannot see)
        self._snapshot("start")
        async with AsyncIPRoute() as ipr:
            self._ipr = ipr
            try:
                for cfg in self.cfg.instances:
                    await self._add(cfg)
            except BaseException as e:
                await self._stop_all(f"startup failed: {e}")
                await control.close()
                raise
            self._running = True
            if self.cfg.agent.metrics:
                metrics = MetricsServer(self.cfg.agent.metrics, self.status)
                try:
                    await metrics.start()
                except OSError as e:
                    log.error("metrics endpoint %s unavailable: %s (continuing without)", self.cfg.agent.metrics, e)
                    metrics = None
            for name, inst in self.instances.items():
                v = inst.cfg.vrrp
                emit(Event.STARTED, f"failover-agent running (version {VERSION}): {inst.label}VRRPv{v.version} VRID "
                     f"{v.vrid} on {v.interface}, priority {v.priority}, VIPs {addrs(v.vips)}",
                     CONFIG_FILE=self.cfg.file, INSTANCE=name, VRID=v.vrid, INTERFACE=v.interface,
                     VRRP_PRIORITY=v.priority)
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
                await self._stop_all(self._stop_reason, restart=restart)
            ms = (time.monotonic() - t0) * 1000
            kept = {name: inst.kept for name, inst in self.instances.items() if inst.kept}
            several = len(self.instances) > 1
            words = "; ".join(f"{name} {', '.join(k)}" if several else ", ".join(k) for name, k in kept.items())
            note = f"; kept {words} held for the restarted agent to adopt ({how})" if kept else ""
            emit(Event.STOPPED, f"stopped ({self._stop_reason}) in {ms:.0f} ms{note}", REASON=self._stop_reason,
                 DURATION_MS=f"{ms:.0f}", KEPT=";".join(f"{name}={','.join(k)}" if several else ",".join(k)
                                                        for name, k in kept.items()) or None)
            await self.alerts.close()  # released already: the hooks' last alerts delay no takeover
        return 0

    async def _stop_all(self, reason: str, restart: bool = False) -> None:
        """Every instance leaves in order, all at once: one's release does not wait for another's."""
        for task in list(self._tasks):  # sync-group hand-overs: the instances are leaving anyway
            task.cancel()
        await asyncio.gather(*(inst.stop(reason, restart=restart) for inst in reversed(self.instances.values())))

    def _snapshot(self, reason: str) -> None:
        """Record the running config for ExecStopPost's cleanup; a failure only costs that fallback."""
        if self.text is None:
            return
        older = tuple(dict.fromkeys(t for t in self._sources.values() if t is not None and t != self.text))
        try:
            path = snapshot.write(self.cfg.file, self.text, reason, self._control_socket, older=older)
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

    def _where(self, cfg: Config) -> str:
        """Where a message about `cfg` points: the file, and the instance when the file holds several."""
        return f"{cfg.file}: instance {cfg.name}" if len(self.cfg.instances) > 1 else cfg.file

    async def _add(self, cfg: Config) -> None:
        """Start the instance `cfg` and run it beside the others (SetupError: nothing of it runs)."""
        self.instances[cfg.name] = await self._start_instance(cfg)
        self._sources[cfg.name] = self.text
        self._relabel()

    def _relabel(self) -> None:
        """Instances name themselves in their messages while the process runs more than one."""
        for name, inst in self.instances.items():
            inst.label = f"{name}: " if len(self.instances) > 1 else ""

    async def _start_instance(self, cfg: Config) -> Instance:
        assert self._ipr is not None
        v, where = cfg.vrrp, self._where(cfg)
        try:
            info = await LinkInfo.query(self._ipr, v.interface, exclude=[vip.ip for vip in v.vips],
                                        ipv6=v.ipv6)
        except LookupError as e:
            raise SetupError(f"{where}: vrrp.interface: {e}") from None
        if info.primary is None:
            own = "IPv6 link-local address" if v.ipv6 else "IPv4 address of its own"
            raise SetupError(f"{where}: vrrp.interface: {v.interface} has no {own} "
                             "(adverts need a source address that is not a VIP)")
        problem = can_fence(cfg)
        if problem and cfg.drbd is not None and cfg.drbd.unknown_peer == "witness":
            raise SetupError(f"{where}: drbd.demote_escalation: {problem}; the peer's takeover (unknown_peer = "
                             "\"witness\") relies on this node fencing itself when isolated")
        if problem:
            log.warning("%s", problem)
        counters = self.counters.setdefault(cfg.name, Counters())
        inst = Instance(cfg, self._ipr, info, counters, on_state=self._state_changed, alerts=self.alerts)
        try:
            await inst.start()
        except PermissionError as e:
            raise SetupError(f"raw sockets need root or CAP_NET_RAW/CAP_NET_ADMIN: {e}") from None
        except (ReconcileError, PeerSetupError) as e:
            await inst.stop(f"startup failed: {e}")
            raise SetupError(f"{where}: {e}" if len(self.cfg.instances) > 1 else str(e)) from None
        return inst

    def _state_changed(self, inst: Instance | None = None) -> None:
        if inst is not None and self.groups.members:
            stopping = self._stop is not None and self._stop.is_set()
            state = State(inst.node.snapshot().state)
            for move in self.groups.changed(inst.cfg.name, state, react=not (stopping or self._reloading)):
                task = asyncio.get_running_loop().create_task(self._hand_over(move))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self.notify.enabled:
            self.notify(f"STATUS={self.status_line()}")

    async def _hand_over(self, move: HandOver) -> None:
        """A sync group's member hands over because another one failed or left (agent.syncgroup)."""
        async with self._lock:
            inst = self.instances.get(move.member)
            if inst is None or inst.node.stopped or (self._stop is not None and self._stop.is_set()):
                return
            log.warning("%s: %s hands over too (sync group)", move.cause, move.member)
            await inst.handover()

    def status_line(self) -> str:
        """systemd's STATUS=: the one instance as before; with several, each after its name."""
        if not self.instances:
            return "starting" if not self._running else "no instance running (see the journal)"
        lines = {name: self._instance_line(inst) for name, inst in self.instances.items()}
        return " | ".join(f"{name}: {line}" for name, line in lines.items()) if len(lines) > 1 \
            else next(iter(lines.values()))

    @staticmethod
    def _instance_line(inst: Instance) -> str:
        s = inst.status()
        extra = " (maintenance)" if s["maintenance"] else ""
        master = f"; master {s['master']}" if s["master"] and s["state"] != "MASTER" else ""
        held = f"; VIP {', '.join(s['vips'])} held" if s["vips_held"] else ""
        return f"{s['state']}{extra}, priority {s['priority']}{master}{held}"

    # -- control requests ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """{"agent": the process, "instances": {name: block}}; a block is {"instance", "steps",
        "storage"}. While the process runs one instance, its block's keys are also at the top
        level, as before instances: scripts written for one instance read on unchanged."""
        blocks = {name: _block(inst.status()) for name, inst in self.instances.items()}
        answer: dict[str, Any] = {
            "agent": {"version": VERSION, "pid": os.getpid(), "config": self.cfg.file,
                      "started": self.started, "uptime": round(time.time() - self.started, 1),
                      "reloads": self.reloads, "reload_failures": self.reload_failures,
                      "scheduling": self.scheduling.describe()},
            "instances": blocks,
        }
        if len(blocks) == 1:
            answer.update(next(iter(blocks.values())))
        return answer

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["command"]
        if not self._running:
            raise ControlError("the agent is still starting")
        if command == "status":
            drbd = {name: await inst.refresh() for name, inst in list(self.instances.items())}
            answer = self.status()
            for name, block in answer["instances"].items():
                if block["storage"] is not None:
                    block["storage"]["drbd"] = drbd.get(name)
            return answer
        if command not in ("handover", "maintenance", "reset", "fence-peer"):
            raise ControlError(f"unknown command {command!r} (status, handover, maintenance, reset, fence-peer)")
        if command == "fence-peer":
            waited = request.get("waited", 0.0)
            if not isinstance(waited, int | float) or isinstance(waited, bool) or not 0 <= waited < 3600:
                raise ControlError("fence-peer: waited must be a number of seconds")
            return await self._pick(request).fence_peer(float(waited))
        async with self._lock:
            inst = self._pick(request)
            if command == "handover":
                return {"message": await inst.handover()}
            if command == "maintenance":
                on = request.get("on")
                if not isinstance(on, bool):
                    raise ControlError("maintenance needs on: true or false")
                return {"message": await inst.maintenance(on)}
            return await inst.admin(Admin.RESET)

    def _pick(self, request: dict[str, Any]) -> Instance:
        """The instance a request is for: by `instance` (its name), for fence-peer by the DRBD
        `resource` (DRBD_RESOURCE of its handler), else the only one; else an error naming them."""
        names = ", ".join(self.instances)
        name = request.get("instance")
        if name is not None:
            if not isinstance(name, str) or name not in self.instances:
                raise ControlError(f"no instance {json.dumps(name)} in this agent (instances: {names})")
            return self.instances[name]
        resource = request.get("resource")
        if request["command"] == "fence-peer" and isinstance(resource, str):
            serving = [i for i in self.instances.values() if i.cfg.drbd and i.cfg.drbd.resource == resource]
            if serving:
                return serving[0]  # a resource belongs to one instance (agent.config checks it)
        if len(self.instances) == 1:
            return next(iter(self.instances.values()))
        raise ControlError(f"{request['command']} needs an instance: one of {names}")

    # -- reload -------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        while True:
            await self._reload.get()
            async with self._lock:
                await self.reload()

    async def reload(self) -> None:
        """Apply the file again, instance by instance: removed ones leave in order (last first),
        changed ones apply live or, when an identity key changed, restart alone; added ones start.
        An instance whose change is refused runs on as it was (RELOAD_FAILED names it); the others
        take the new config. A file that does not parse changes nothing."""
        try:
            new, text = snapshot.read_config(self.cfg.file)
        except ConfigError as e:
            self.reload_failures += 1
            emit(Event.RELOAD_FAILED, f"reload refused, keeping the running config: {e}", logging.ERROR,
                 FILE=e.file, KEY=e.key or None, REASON=e.reason)
            return
        old = self._follow_rename(new)
        changes = configmod.describe_process_changes(old, new)
        self.reloads += 1
        # before applying: a VIP the new config adds must already be in what cleanup reads (and
        # the old text stays in it while instances still run its config)
        self.text = text
        self._snapshot("reload")
        if not changes:
            self._sources = dict.fromkeys(self._sources, text)
            self._snapshot("reload")
            emit(Event.RELOAD, f"reload: {new.file} unchanged", CHANGES="")
            return
        emit(Event.RELOAD, f"reload: {'; '.join(changes)}", CHANGES="; ".join(changes))
        if new.agent.realtime_priority != old.agent.realtime_priority:
            self.scheduling = apply_priority(new.agent.realtime_priority)
        if replace(new.agent, realtime_priority=0) != replace(old.agent, realtime_priority=0):
            log.warning("reload: [agent] settings (control socket, metrics, state file) take effect at the "
                        "next restart")
        self.cfg = replace(new, agent=replace(old.agent, realtime_priority=new.agent.realtime_priority))
        self._reloading = True
        try:
            refused = await self._apply(old, new, text)
        finally:
            self._reloading = False
        if refused:
            self.reload_failures += 1
        self.instances = {name: self.instances[name] for name in new.names if name in self.instances}
        running = tuple(inst.cfg for inst in self.instances.values())
        self.cfg = replace(self.cfg, instances=running)
        self.groups.configure(configmod.sync_groups(running))
        self._relabel()
        self._snapshot("reload (partly refused)" if refused else "reload")
        self._state_changed()

    def _follow_rename(self, new: ProcessConfig) -> ProcessConfig:
        """The running config as `new` names its instances. A file of one instance at the top names
        it after its VRID: a new VRID there changes that instance (it restarts, as before instances),
        it is not another one; from here on the running instance goes by the new name."""
        old = self.cfg
        if not (old.at_top and new.at_top) or len(old.instances) != 1 or old.names == new.names \
                or old.names[0] not in self.instances:
            return old
        before, after = old.instances[0].name, new.instances[0].name
        self.instances[after] = self.instances.pop(before)
        self.counters[after] = self.counters.pop(before, Counters())
        self._sources[after] = self._sources.pop(before, None)
        self.groups.changed(before, None, react=False)
        return replace(old, instances=(replace(old.instances[0], name=after),))

    async def _apply(self, old: ProcessConfig, new: ProcessConfig, text: str) -> bool:
        """`reload`'s instance by instance part; True if the change of some instance was refused."""
        for name in reversed(old.names):
            if new.instance(name) is None and name in self.instances:
                log.info("reload: instance %s removed: it leaves in order", name)
                await self.instances.pop(name).stop("reload: instance removed")
                self._sources.pop(name, None)
                self.groups.changed(name, None, react=False)
        refused = False
        for cfg in new.instances:
            before = old.instance(cfg.name)
            if before is None or cfg.name not in self.instances:
                try:
                    await self._add(cfg)
                except SetupError as e:
                    refused = True
                    emit(Event.RELOAD_FAILED, f"reload: new instance {cfg.name} cannot start: {e}", logging.ERROR,
                         FILE=cfg.file, KEY="instance", REASON=str(e), INSTANCE=cfg.name)
                continue
            if cfg == before or await self._change(before, cfg):
                self._sources[cfg.name] = text
            else:
                refused = True
        return refused

    async def _change(self, old: Config, new: Config) -> bool:
        """One instance's changes: live, or an ordered leave and a new instance when an identity key
        changed (back to `old` if that cannot start). True once `new` runs."""
        inst = self.instances[new.name]
        identity = configmod.identity_changes(old, new)
        if not identity:
            try:
                await inst.reconfigure(new)
            except PeerSetupError as e:
                named = f" for instance {new.name}" if inst.label else ""
                emit(Event.RELOAD_FAILED, f"reload refused{named}, keeping the running config: {e}", logging.ERROR,
                     FILE=new.file, KEY="peer", REASON=str(e), INSTANCE=new.name)
                return False
            return True
        log.info("reload: %s%s changed: the instance restarts after an ordered leave", inst.label, ", ".join(identity))
        await inst.stop("reload")
        try:
            self.instances[new.name] = await self._start_instance(new)
            return True
        except SetupError as e:
            log.error("reload: new instance cannot start (%s); back to the old config", e)
        try:
            self.instances[new.name] = await self._start_instance(old)
        except SetupError as e:
            log.error("reload: instance %s cannot start again on its old config either (%s): it stays stopped",
                      new.name, e)
            del self.instances[new.name]
            self._sources.pop(new.name, None)
        return False


def _block(inst: dict[str, Any]) -> dict[str, Any]:
    """One instance's part of the status answer."""
    return {"instance": inst, "steps": inst["steps"],
            "storage": None if inst["chain"] == ["vip"] else {
                "chain": inst["chain"], "phase": inst["phase"], "held": inst["held"]}}


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
