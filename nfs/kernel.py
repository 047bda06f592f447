"""Kernel nfsd, started and stopped the way nfs-server.service would, with HA settings first.

What makes kernel nfsd fail over cleanly, and why each step is here:
* grace and lease are written to /proc/fs/nfsd before nfsd starts (the kernel refuses them
  while it runs) and bound how long clients stall after a takeover;
* the exports come from our config, with an explicit fsid, so file handles survive the move;
* both nodes start nfsd with the same NFSv4 server scope, otherwise clients may not reclaim
  their opens and locks on the new node. nfsd takes the scope from the UTS host name of the
  process that starts its threads (nfs-utils 2.6 has no option for it), so `rpc.nfsd` runs in
  a UTS namespace of its own whose host name is the scope;
* rpc.mountd, rpc.statd and nfsdcld run as our children (foreground), because they keep files
  open in /var/lib/nfs, which is the state folder on the replicated filesystem: on stop they are
  stopped by PID, or the filesystem could not be unmounted. nfsdcld keeps the NFSv4 client
  records there (/var/lib/nfs/nfsdcld; at its first start it imports what nfsdcltrack or the
  legacy v4recovery folder recorded): nfsd waits up to a second for it at every start and only
  then falls back to the nfsdcltrack upcall, so it is started whenever it is installed;
* what needs no data runs ahead, on the backup (`prepare`, at the agent's start): the nfsd
  module, /proc/fs/nfsd, rpc_pipefs and rpcbind. A takeover then exports, starts the helpers
  above on the replicated state and starts nfsd's threads (which opens the grace period);
* on stop, nfsd is stopped, the exports withdrawn and the filesystem's locks dropped
  (`unlock_filesystem`), or the unmount that follows would fail with the device busy;
* after start, `sm-notify -f -v VIP` tells NFSv3 clients to reclaim their locks (the VIP
  should resolve, e.g. through /etc/hosts, or sm-notify refuses it); it runs in the background
  while the chain adds the VIP, and its result is logged.
With `service = "systemd"` the start and stop go through nfs-server.service instead; the scope
then is the node's host name unless the unit is given the same one on both nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from drbd.runner import Runner
from nfs.backend import NfsError, run_checked
from nfs.exports import render_kernel
from nfs.rpc import nfs_answers
from nfs.settings import NfsConfig

log = logging.getLogger("failover-agent")

NFSD = Path("/proc/fs/nfsd")
UNIT = "nfs-server.service"
PIPEFS = "/run/rpc_pipefs"  # where rpc_pipefs goes if it is mounted nowhere (Debian's nfs.conf default)
# set the UTS host name (nfsd's server scope) in a fresh UTS namespace, then become rpc.nfsd;
# a fixed script, the values come as arguments
_SCOPED_NFSD = 'printf %s "$1" >/proc/sys/kernel/hostname && shift && exec rpc.nfsd "$@"'
# the same, started ahead on a backup: it becomes rpc.nfsd only when a line arrives on its stdin;
# end of input (the agent gone, or `disarm`) ends it without starting anything
_SCOPED_NFSD_LATER = 'printf %s "$1" >/proc/sys/kernel/hostname && shift && read -r _ && exec rpc.nfsd "$@"'


async def _spawn_waiting(argv: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


Spawn = Callable[[list[str]], Awaitable[asyncio.subprocess.Process]]


async def _spawn_quiet(argv: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


def _pipefs() -> str | None:
    """Where rpc_pipefs is mounted in our mount namespace, if anywhere."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["rpc_pipefs"] and len(left.split()) > 4:
            return left.split()[4]
    return None


def _has_inotify(pid: int) -> bool:
    """Does the process hold an inotify descriptor (nfsdcld's last startup step)?"""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                    return True
    return False


def _helper_running(name: str) -> bool:
    """Is an nfs-utils daemon (rpcbind, rpc.mountd, rpc.statd) running in our mount namespace?"""
    ours = os.readlink("/proc/self/ns/mnt")
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == name:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{proc.pid}/ns/mnt") == ours:
                    return True
    return False


class KernelBackend:
    name = "kernel nfsd"

    def __init__(self, cfg: NfsConfig, mountpoint: str, runner: Runner, notify_name: str = "",
                 nfsd: Path = NFSD, spawn: Spawn | None = None) -> None:
        self.cfg = cfg
        self.mountpoint = mountpoint
        self.runner = runner
        self.notify_name = notify_name
        self.nfsd = nfsd
        self.helpers: list[asyncio.subprocess.Process] = []  # rpc.mountd, rpc.statd in the foreground
        self.spawn = spawn or _spawn_quiet
        self.which: Callable[[str], str | None] = shutil.which
        self.pipefs_dir = PIPEFS
        self.spawn_waiting: Spawn = _spawn_waiting
        self._armed: tuple[list[str], asyncio.subprocess.Process] | None = None  # rpc.nfsd, started ahead
        self._notify: asyncio.Task[None] | None = None  # sm-notify after a start
        self._laps: list[str] = []  # how long each part of the last start took
        self._setup = asyncio.Lock()  # prepare and start never load, mount or start rpcbind at once
        self._lap_at = 0.0

    def threads(self) -> int:
        try:
            return int((self.nfsd / "threads").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def running(self) -> bool:
        return self.threads() > 0

    async def _ensure_nfsd_fs(self) -> None:
        if (self.nfsd / "threads").exists():
            return
        await self.runner(["modprobe", "nfsd"], 30.0)
        if not (self.nfsd / "threads").exists():
            await run_checked(self.runner, ["mount", "-t", "nfsd", "nfsd", str(self.nfsd)], 30.0, "mounting nfsd fs")
        if not (self.nfsd / "threads").exists():
            raise NfsError(f"kernel nfsd is not available ({self.nfsd}/threads missing after modprobe nfsd)")

    def _write(self, name: str, value: str) -> None:
        try:
            (self.nfsd / name).write_text(value + "\n")
        except OSError as e:
            raise NfsError(f"writing {value} to {self.nfsd / name}: {e.strerror or e}") from None

    def _lap(self, what: str) -> None:
        """Note how long the part of the start that just ended took (shown in the step's detail)."""
        now = time.monotonic()
        self._laps.append(f"{what} {(now - self._lap_at) * 1000:.0f}")
        self._lap_at = now

    async def prepare(self, timeout: float) -> str:
        """Ahead of a takeover, on a backup: the nfsd module, /proc/fs/nfsd and rpcbind.

        None of it touches the data or the NFS state that moves with it (/var/lib/nfs stays
        unbound; rpcbind keeps its warm-start files in /run): that is why it may run while the
        peer serves. What must see the replicated state stays in `start`: rpc.statd (its
        monitor list), rpc.mountd (the export table), the export itself and nfsd's threads,
        whose start reads the NFSv4 client records and opens the grace period.
        """
        t0 = time.monotonic()
        done = []
        async with self._setup:
            if not (self.nfsd / "threads").exists():
                await asyncio.wait_for(self._ensure_nfsd_fs(), timeout)
                done.append(f"nfsd module loaded, {self.nfsd} mounted")
            if self.cfg.service == "direct" and 3 in self.cfg.versions and not _helper_running("rpcbind"):
                await run_checked(self.runner, ["rpcbind", "-w"], timeout, "starting rpcbind")
                done.append("rpcbind started")
            if self._cld_wanted() and _pipefs() is None:
                await self._mount_pipefs(timeout)
                done.append(f"rpc_pipefs mounted on {self.pipefs_dir}")
            if await self._arm():
                done.append("rpc.nfsd waiting in the server scope's UTS namespace")
        return f"{'; '.join(done) or 'nothing left to prepare'} ({(time.monotonic() - t0) * 1000:.0f} ms)"

    def _cld_wanted(self) -> bool:
        """nfsdcld keeps the NFSv4 client records (and imports nfsdcltrack's or the legacy folder's at its
        first start). Without it running, nfsd's start waits a whole second for it before falling back
        to the nfsdcltrack upcall: the largest part of a takeover on a small machine."""
        return self.cfg.service == "direct" and 4 in self.cfg.versions and self.which("nfsdcld") is not None

    async def _mount_pipefs(self, timeout: float) -> None:
        Path(self.pipefs_dir).mkdir(parents=True, exist_ok=True)
        await run_checked(self.runner, ["mount", "-t", "rpc_pipefs", "sunrpc", self.pipefs_dir], timeout,
                          "mounting rpc_pipefs")

    async def start(self, timeout: float) -> str:
        t0 = self._lap_at = time.monotonic()
        self._laps = []
        c = self.cfg
        async with self._setup:
            await self._ensure_nfsd_fs()
        self._lap("nfsd fs")
        if self.running():
            raise NfsError(f"kernel nfsd already runs with {self.threads()} threads, started outside the agent "
                           f"(disable {UNIT} at boot: the agent starts it)")
        self._write("nfsv4gracetime", str(c.grace_time))
        self._write("nfsv4leasetime", str(c.lease_time))
        exports = Path(c.exports_file)
        exports.parent.mkdir(parents=True, exist_ok=True)
        exports.write_text(render_kernel(c.exports))
        try:
            # the daemons first: their startup (nfsdcld's database work above all) overlaps the export
            cld = await self._start_cld()
            helpers = await self._spawn_helpers() if c.service == "direct" else []
            self._lap("daemons spawned")
            await run_checked(self.runner, ["exportfs", "-r"], 30.0, "exporting")
            self._lap("exportfs")
            if c.service == "systemd":
                await run_checked(self.runner, ["systemctl", "start", UNIT], timeout, "starting nfsd")
            else:
                await self._start_direct(timeout, cld, helpers)
            why = "not asked yet"
            while time.monotonic() - t0 < timeout:
                why = await nfs_answers(c.versions, timeout=1.0)
                if not why:
                    break
                await asyncio.sleep(0.02)
            else:
                raise NfsError(f"kernel nfsd started but does not answer: {why}")
            self._lap("answers")
        except (NfsError, OSError):
            # not held, so the machine will not release it: undo here, or nfsd pins the filesystem
            with contextlib.suppress(NfsError, OSError):
                await self.stop(10.0)
            raise
        notes = ""
        if 3 in c.versions and self.notify_name:
            # NFSv3 clients reclaim their locks at the VIP, which the next step adds: not worth its wait
            self._notify = asyncio.create_task(self._sm_notify(), name="sm-notify")
            notes = "; sm-notify started"
        return (f"kernel nfsd serving {len(c.exports)} export(s) with {self.threads()} threads{notes} "
                f"(ms: {', '.join(self._laps)})")

    async def _sm_notify(self) -> None:
        code, _, err = await self.runner(["sm-notify", "-f", "-v", self.notify_name], 10.0)
        if code == 0:
            log.info("sm-notify sent: NFSv3 clients reclaim their locks at %s", self.notify_name)
        else:
            log.warning("sm-notify -f -v %s failed (exit %d): %s", self.notify_name, code, err.strip()[:200])

    async def _start_cld(self) -> asyncio.subprocess.Process | None:
        """nfsdcld on the state folder, if wanted and not running (None: nfsd finds its own way)."""
        if not self._cld_wanted() or _helper_running("nfsdcld"):
            return None
        async with self._setup:
            pipefs = _pipefs()
            if pipefs is None:
                await self._mount_pipefs(30.0)
        try:
            proc = await self.spawn(["nfsdcld", "-F", "-p", pipefs or self.pipefs_dir])
        except OSError as e:
            self._laps.append(f"nfsdcld not started: {e.strerror or e}")
            return None
        self.helpers.append(proc)
        return proc

    async def _cld_ready(self, proc: asyncio.subprocess.Process, limit: float = 2.0) -> None:
        """Until nfsdcld watches rpc_pipefs for nfsd's pipe (its inotify descriptor is its last startup
        step, after its database): nfsd gives it one second from the thread start, and its database
        work on the replicated disk can take longer on a small machine. Gives up quietly after `limit`."""
        deadline = time.monotonic() + limit
        while proc.returncode is None and time.monotonic() < deadline:
            if _has_inotify(proc.pid):
                self._lap("nfsdcld ready")
                return
            await asyncio.sleep(0.01)
        self._lap("nfsdcld exited" if proc.returncode is not None else "nfsdcld not ready")

    async def _spawn_helpers(self) -> list[tuple[list[str], asyncio.subprocess.Process]]:
        """rpc.statd (after rpcbind: it registers there) and rpc.mountd, started side by side, not waited for."""
        c = self.cfg
        skip = [arg for v in (3, 4) if v not in c.versions for arg in ("-N", str(v))]
        argvs = []
        if 3 in c.versions:
            async with self._setup:
                if not _helper_running("rpcbind"):
                    await run_checked(self.runner, ["rpcbind", "-w"], 30.0, "starting rpcbind")
                    self._lap("rpcbind")
            if not _helper_running("rpc.statd"):
                argvs.append(["rpc.statd", "-F", "--no-notify"])
        if not _helper_running("rpc.mountd"):
            argvs.append(["rpc.mountd", "-F", *skip])
        started = []
        for argv in argvs:
            try:
                proc = await self.spawn(argv)
            except OSError as e:
                raise NfsError(f"starting {argv[0]}: {e.strerror or e}") from None
            self.helpers.append(proc)
            started.append((argv, proc))
        return started

    async def _start_direct(self, timeout: float, cld: asyncio.subprocess.Process | None = None,
                            helpers: list[tuple[list[str], asyncio.subprocess.Process]] | None = None) -> None:
        await self._helpers_alive(helpers or [])
        self._lap(" + ".join(argv[0] for argv, _ in helpers or []) + " alive" if helpers else "helpers")
        if cld is not None:
            await self._cld_ready(cld)
        armed, self._armed = self._armed, None
        if armed is not None and armed[0] == self._nfsd_argv(True) and armed[1].returncode is None:
            proc = armed[1]
            try:
                _, err = await asyncio.wait_for(proc.communicate(b"go\n"), timeout)
            except TimeoutError:
                proc.kill()
                raise NfsError(f"starting nfsd: rpc.nfsd did not finish within {timeout:g} s") from None
            if proc.returncode != 0:
                text = " ".join(err.decode(errors="replace").split()) or "no message"
                raise NfsError(f"starting nfsd: rpc.nfsd (started ahead) failed (exit {proc.returncode}): {text[:400]}")
            self._lap("rpc.nfsd (started ahead)")
            return
        if armed is not None:
            self._disarm(armed[1])
        await run_checked(self.runner, self._nfsd_argv(), timeout, "starting nfsd")
        self._lap("rpc.nfsd")

    def _nfsd_argv(self, later: bool = False) -> list[str]:
        """rpc.nfsd in a UTS namespace named after the server scope (`later`: waiting for a line first)."""
        c = self.cfg
        skip = [arg for v in (3, 4) if v not in c.versions for arg in ("-N", str(v))]
        return ["unshare", "--uts", "sh", "-c", _SCOPED_NFSD_LATER if later else _SCOPED_NFSD, "sh", c.server_scope,
                *skip, str(c.threads)]

    async def _arm(self) -> bool:
        """Start rpc.nfsd's process ahead (a backup's takeover then only tells it to go): its two execs
        (unshare, sh) cost tens of ms on a small machine. False if one waits already or none is wanted."""
        if self.cfg.service != "direct" or (self._armed is not None and self._armed[1].returncode is None):
            return False
        argv = self._nfsd_argv(True)
        try:
            self._armed = (argv, await self.spawn_waiting(argv))
        except OSError:
            self._armed = None  # `start` runs it the ordinary way
            return False
        return True

    def disarm(self) -> None:
        """The agent leaves: the process started ahead ends without starting anything."""
        armed, self._armed = self._armed, None
        if armed is not None:
            self._disarm(armed[1])

    @staticmethod
    def _disarm(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _helpers_alive(self, started: list[tuple[list[str], asyncio.subprocess.Process]]) -> None:
        """Each daemon must still run a moment after its start (one moment for all of them)."""
        if not started:
            return
        waits = [asyncio.ensure_future(proc.wait()) for _, proc in started]
        await asyncio.wait(waits, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        for argv, proc in started:
            if proc.returncode is not None:
                raise NfsError(f"{argv[0]} exited with {proc.returncode} at startup")

    async def _stop_helpers(self) -> list[str]:
        stopped = []
        for proc in self.helpers:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 3.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                stopped.append(str(proc.pid))
        self.helpers = []
        return stopped

    async def stop(self, timeout: float) -> str:
        c = self.cfg
        notes = []
        if self._notify is not None and not self._notify.done():
            self._notify.cancel()  # its clients would reclaim at a server that is going away
        Path(c.exports_file).unlink(missing_ok=True)
        if c.service == "systemd":
            await run_checked(self.runner, ["systemctl", "stop", UNIT], timeout, "stopping nfsd")
        else:
            if self.running():
                await run_checked(self.runner, ["rpc.nfsd", "0"], timeout, "stopping nfsd")
            for e in c.exports:
                code, _, err = await self.runner(["exportfs", "-u", f"{e.clients}:{e.path}"], 30.0)
                if code != 0:
                    notes.append(f"exportfs -u {e.clients}:{e.path}: {err.strip()[:200]}")
        helpers = await self._stop_helpers()
        if helpers:
            notes.append(f"rpc.mountd/rpc.statd/nfsdcld (pid {', '.join(helpers)}) stopped")
        if self.running():
            raise NfsError(f"kernel nfsd still has {self.threads()} threads after stopping")
        with contextlib.suppress(OSError):
            await self._arm()  # a backup again: ready for the next takeover
        if (self.nfsd / "unlock_filesystem").exists():
            self._write("unlock_filesystem", self.mountpoint)
        if self.notify_name and (self.nfsd / "unlock_ip").exists():
            with contextlib.suppress(NfsError):
                self._write("unlock_ip", self.notify_name)
        return "kernel nfsd stopped, exports withdrawn, locks on " + self.mountpoint + " released" + \
            (f" ({'; '.join(notes)})" if notes else "")

    async def reconfigure(self, cfg: NfsConfig, timeout: float) -> str:
        old, self.cfg = self.cfg, cfg
        if not self.running():
            return "kernel nfsd not running: the new settings apply when it starts"
        done = []
        if cfg.exports != old.exports:
            Path(cfg.exports_file).write_text(render_kernel(cfg.exports))
            # -r also withdraws what left the file, from etab and from the kernel's table
            await run_checked(self.runner, ["exportfs", "-r"], timeout, "re-exporting")
            done.append(f"{len(cfg.exports)} export(s) applied with exportfs -r")
        if cfg.threads != old.threads:
            self._write("threads", str(cfg.threads))
            done.append(f"{self.threads()} threads")
        if (cfg.grace_time, cfg.lease_time) != (old.grace_time, old.lease_time):
            done.append("grace and lease time apply at nfsd's next start (the kernel fixes them while it runs)")
        return "kernel nfsd: " + ("; ".join(done) or "nothing to change")

    def _helpers_needed(self) -> list[str]:
        """The user-space daemons kernel nfsd needs beside its threads, as `start` runs them."""
        if self.cfg.service != "direct":
            return []  # nfs-server.service keeps its own
        return ["rpc.mountd"] + (["rpc.statd"] if 3 in self.cfg.versions else [])

    async def check(self) -> str:
        if not self.running():
            raise NfsError("kernel nfsd has no threads running")
        # nfsd answers NULL calls without them, but exports (mountd's cache) and NFSv3 locks
        # (statd) do not work: e.g. after an agent restart under systemd killed them
        missing = [name for name in self._helpers_needed() if not _helper_running(name)]
        if missing:
            raise NfsError(f"kernel nfsd runs, but {', '.join(missing)} do(es) not")
        why = await nfs_answers(self.cfg.versions)
        if why:
            raise NfsError(f"kernel nfsd does not answer: {why}")
        return f"kernel nfsd answers ({self.threads()} threads)"
