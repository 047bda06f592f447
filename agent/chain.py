"""Runs the commands of the steps the node asks for: DRBD, the filesystem, NFS, services, the VIPs.

Each step has three operations (acquire, release, check), runs under its own timeout, and
reports `(ok, detail)` instead of raising: a missing binary, garbage output or a refused
command is a failed step with a sentence naming it, which the machine turns into a rollback
and a FAULT, never a crash of the daemon. It decides nothing: whether DRBD may be promoted
is the node's plan (`agent.node`), which asks for one read or `promote` at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from agent import actions as act
from agent import events as ev
from agent import fs, services
from agent.config import Config
from agent.fence import self_fence
from agent.machine import ChainStep, Op, RunStep, Step
from drbd import drbdadm
from drbd.follower import Follower
from drbd.runner import Runner, run
from drbd.status import Status, auto_promote_on
from nfs.backend import Backend, NfsError
from nfs.ganesha import GaneshaBackend
from nfs.kernel import KernelBackend
from nfs.statedir import StateDir
from vrrp.vip import Garp, VipHolder

log = logging.getLogger("failover-agent")


class StepFailed(Exception):
    pass


class Chain:
    def __init__(self, cfg: Config, vips: VipHolder, garp: Garp, runner: Runner = run) -> None:
        self.cfg = cfg
        self.vips = vips
        self.garp = garp
        self.runner = runner
        self.drbd = drbdadm.Drbdadm(cfg.drbd.resource, runner=runner) if cfg.drbd else None
        self.follower: Follower | None = None  # set by the daemon: DRBD's state without a process per read
        self.nfs: Backend | None = None
        self.state: StateDir | None = None
        self._build_nfs(cfg)
        self._garp_task: asyncio.Task[None] | None = None

    def _build_nfs(self, cfg: Config) -> None:
        if cfg.nfs is None or cfg.filesystem is None:
            return
        if cfg.nfs.backend == "ganesha":
            self.nfs = GaneshaBackend(cfg.nfs, cfg.state_path)
            self.state = StateDir(cfg.state_path, None, self.runner)
        else:
            self.nfs = KernelBackend(cfg.nfs, cfg.filesystem.mountpoint, self.runner,
                                     notify_name=str(cfg.vrrp.vips[0].ip))
            self.state = StateDir(cfg.state_path, cfg.nfs.state_target, self.runner)

    @property
    def mount_spec(self) -> fs.MountSpec | None:
        return self.cfg.filesystem

    async def run(self, step: RunStep) -> tuple[bool, str]:
        """Carry out one step; never raises (except cancellation)."""
        try:
            return True, await asyncio.wait_for(self._dispatch(step), step.timeout)
        except TimeoutError:
            return False, f"{step.step} {step.op} did not finish within {step.timeout:g} s"
        except (StepFailed, fs.FsError, drbdadm.DrbdError, NfsError, services.ServiceError) as e:
            return False, str(e)
        except OSError as e:
            return False, f"{step.step} {step.op}: {e}"

    async def _dispatch(self, step: RunStep) -> str:
        svc = self.cfg.service(step.step)  # the admin's [[service]] steps, from the config now (a reload's timeout)
        if svc is not None:
            service = services.control(svc)
            return await {Op.ACQUIRE: service.acquire, Op.RELEASE: service.release, Op.CHECK: service.check}[step.op]()
        handler: dict[tuple[ChainStep, Op], Callable[[], Awaitable[str]]] = {
            (Step.DRBD, Op.RELEASE): self._drbd_release, (Step.DRBD, Op.CHECK): self._drbd_check,
            (Step.MOUNT, Op.ACQUIRE): self._mount_acquire, (Step.MOUNT, Op.RELEASE): self._mount_release,
            (Step.MOUNT, Op.CHECK): self._mount_check,
            (Step.VIP, Op.ACQUIRE): self._vip_acquire, (Step.VIP, Op.RELEASE): self._vip_release,
            (Step.VIP, Op.CHECK): self._vip_check,
            **self._nfs_handlers(),
        }
        fn = handler.get((step.step, step.op))
        if fn is None:
            raise StepFailed(f"no handler for {step.step} {step.op}")
        return await fn()

    # -- probing (startup reconciliation) ------------------------------------------------
    async def probe(self) -> list[ChainStep]:
        """Steps an earlier run left held: released at startup, or adopted if that is the whole chain."""
        held: list[ChainStep] = []
        if self.drbd and (st := await self.drbd_status()) is not None and st.primary:
            held.append(Step.DRBD)
        if self.drbd and self.cfg.drbd is not None:
            res = self.cfg.drbd.resource
            code, out, _ = await self.runner(["drbdsetup", "show", "--show-defaults", res], 10.0)
            if code == 0 and auto_promote_on(out):
                log.warning("DRBD auto-promote is on for %s: anything opening its device (a mount, a backup job) "
                            "promotes it behind the agent's back; set `options { auto-promote no; }` in drbd.conf",
                            res)
        spec = self.mount_spec
        if spec is not None and fs.mounted(spec):
            held.append(Step.MOUNT)
        if self.state is not None and self.state.held(Step.MOUNT in held):
            held.append(Step.NFS_STATE)
        if self.nfs is not None and self.nfs.running():
            held.append(Step.NFS)
        for svc in self.cfg.services:
            if await services.control(svc).running():
                held.append(svc.step)
        if await self.vips.present():
            held.append(Step.VIP)
        return held

    # -- DRBD ----------------------------------------------------------------------------
    async def drbd_status(self) -> Status | None:
        """DRBD's view of our resource: the follower's while it runs, else one `events2 --now`."""
        assert self.cfg.drbd is not None
        if self.follower is not None and self.follower.live:
            return self.follower.status
        try:
            return await drbdadm.status_now(self.cfg.drbd.resource, self.runner)
        except drbdadm.DrbdError as e:
            raise StepFailed(str(e)) from None

    async def prepare(self) -> str:
        """Ahead of any takeover (the agent's start): what the NFS start can do without the data."""
        if self.nfs is None:
            return ""
        return await self.nfs.prepare(self._inner_timeout())

    async def prepare_ahead(self) -> None:
        """`prepare` for the agent's start, so a takeover starts only what needs the data (a failure here
        is only logged: the NFS step then does the same itself, and fails there if it must)."""
        try:
            done = await self.prepare()
        except Exception as e:
            log.warning("preparing the NFS server ahead of a takeover failed (the takeover will try again): %s", e)
            return
        if done:
            log.info("prepared for a takeover: %s", done)

    # -- the same, answered as the node's events (agent.instance feeds them back) ---------------
    async def step_done(self, step: RunStep) -> ev.StepDone:
        t0 = time.monotonic()
        ok, detail = await self.run(step)
        return ev.StepDone(step.step, step.op, ok, detail, (time.monotonic() - t0) * 1000)

    async def drbd_read(self) -> ev.DrbdRead:
        try:
            return ev.DrbdRead(await self.drbd_status())
        except Exception as e:
            return ev.DrbdRead(None, str(e) or type(e).__name__)

    async def promoted(self) -> ev.Promoted:
        try:
            await self.promote()
            return ev.Promoted(True, "")
        except (drbdadm.DrbdError, OSError) as e:
            return ev.Promoted(False, str(e))

    async def outdated(self, a: act.RunOutdate) -> ev.OutdateDone:
        notes: list[str] = []
        try:
            assert self.drbd is not None
            await self.drbd.outdate(notes, disconnect=a.disconnect)
            return ev.OutdateDone(a.id, True, tuple(notes))
        except (drbdadm.DrbdError, OSError, AssertionError) as e:
            return ev.OutdateDone(a.id, False, tuple(notes), str(e) or "no [drbd] section")

    async def nfs_applied(self) -> ev.NfsApplied:
        try:
            return ev.NfsApplied(True, await self.apply_nfs())
        except Exception as e:
            return ev.NfsApplied(False, str(e) or type(e).__name__)

    async def apply_nfs(self) -> str:
        """The `[nfs]` section changed (same backend and layout): the backend takes it, live if it serves."""
        if self.nfs is None or self.cfg.nfs is None:
            return "no NFS server in the chain"
        return await self.nfs.reconfigure(self.cfg.nfs, self._inner_timeout())

    async def promote(self) -> None:
        """`drbdadm primary`; the role read back from the follower when it runs (no second drbdadm)."""
        drbd, follower = self.drbd, self.follower
        assert drbd is not None
        if follower is None or not follower.live:
            await drbd.promote()
            return

        async def role_now() -> str:
            if await follower.wait_for(lambda st: st is not None and st.primary, 2.0):
                return "Primary"
            return await drbd.role()  # no event in time: ask DRBD itself

        await drbd.promote(role_now)

    async def _drbd_release(self) -> str:
        assert self.drbd is not None and self.cfg.drbd is not None
        notes: list[str] = []
        try:
            await self.drbd.demote(self.cfg.drbd.demote_escalation, notes)
        except drbdadm.DemoteFailed as e:
            if e.fence != "none":
                self_fence(self.cfg, e.fence, str(e))
            raise
        return f"{self.cfg.drbd.resource} Secondary" + (f" ({'; '.join(notes)})" if notes else "")

    async def _drbd_check(self) -> str:
        status = await self.drbd_status()
        if status is None or not status.primary:
            raise StepFailed(f"DRBD is no longer Primary: {status.summary() if status else 'resource down'}")
        return status.summary()

    # -- filesystem ----------------------------------------------------------------------
    async def _mount_acquire(self) -> str:
        spec = self.mount_spec
        assert spec is not None
        await fs.mount(spec)
        return f"{spec.device} mounted on {spec.mountpoint}"

    async def _mount_release(self) -> str:
        spec = self.mount_spec
        assert spec is not None
        notes: list[str] = []
        await fs.unmount(spec, report=notes)
        return f"{spec.mountpoint} unmounted" + (f" ({'; '.join(notes)})" if notes else "")

    async def _mount_check(self) -> str:
        spec = self.mount_spec
        assert spec is not None
        if not fs.mounted(spec):
            raise StepFailed(f"{spec.device} is no longer mounted on {spec.mountpoint}")
        return "mounted"

    # -- NFS -----------------------------------------------------------------------------
    def _inner_timeout(self) -> float:
        """Inside the step's own timeout, so a backend cleans up after itself before it is cancelled."""
        return max(1.0, self.cfg.monitor.step_timeout - 2.0)

    def _nfs_handlers(self) -> dict[tuple[ChainStep, Op], Callable[[], Awaitable[str]]]:
        state, nfs, timeout = self.state, self.nfs, self._inner_timeout()
        if state is None or nfs is None:
            return {}

        async def state_check() -> str:
            return state.check()

        return {
            (Step.NFS_STATE, Op.ACQUIRE): lambda: state.acquire(timeout),
            (Step.NFS_STATE, Op.RELEASE): lambda: state.release(timeout),
            (Step.NFS_STATE, Op.CHECK): state_check,
            (Step.NFS, Op.ACQUIRE): lambda: nfs.start(timeout),
            (Step.NFS, Op.RELEASE): lambda: nfs.stop(timeout),
            (Step.NFS, Op.CHECK): nfs.check,
        }

    # -- VIPs ----------------------------------------------------------------------------
    async def _vip_acquire(self) -> str:
        v = self.cfg.vrrp
        await self.vips.add()
        self._garp_task = asyncio.create_task(self._garp_loop(), name="garp")
        vips = ", ".join(str(x) for x in v.vips)
        return f"VIP {vips} up; {v.garp_count} gratuitous ARP round(s) every {v.garp_interval:g} s"

    async def _vip_release(self) -> str:
        if self._garp_task:
            self._garp_task.cancel()
            self._garp_task = None
        removed = await self.vips.remove()
        return f"VIP {', '.join(str(x) for x in removed) or '(none present)'} down"

    async def _vip_check(self) -> str:
        missing = set(self.vips.vips) - await self.vips.present()
        if missing:
            raise StepFailed(f"VIP {', '.join(str(m) for m in missing)} vanished from the interface")
        return "VIPs held"

    async def _garp_loop(self) -> None:
        v = self.cfg.vrrp
        await self.garp.burst(v.vips, v.garp_count, v.garp_interval)
        while v.garp_refresh > 0:
            await asyncio.sleep(v.garp_refresh)
            v = self.cfg.vrrp
            self.garp.send(v.vips)

    def cancel(self, keep: bool = False) -> None:
        """The agent exits; `keep`: its chain stays held for the next agent (agent.handoff)."""
        if self._garp_task:
            self._garp_task.cancel()
        if keep and isinstance(self.nfs, GaneshaBackend):
            self.nfs.detach()
        if isinstance(self.nfs, KernelBackend):
            self.nfs.disarm()
