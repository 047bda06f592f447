"""nfs-ganesha as a supervised child of the agent.

Ganesha is a single user-space process, so the agent can own it outright: the config is
rendered from `[nfs]` on every start (both nodes render the same text, so export ids and the
server scope match), the recovery records (`RecoveryRoot`) live in the state directory on the
replicated filesystem so NFSv4 clients can reclaim their state on the new node, and "started"
means "answers an NFS NULL call", not "the process exists". The PID file lets a restarted
agent find a ganesha that a crashed agent left behind, checked against /proc so a recycled
PID is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from nfs.backend import NfsError
from nfs.exports import render_ganesha
from nfs.rpc import nfs_answers
from nfs.settings import NfsConfig


class GaneshaBackend:
    name = "nfs-ganesha"

    def __init__(self, cfg: NfsConfig, state_path: str) -> None:
        self.cfg = cfg
        self.recovery_root = state_path
        self.dir = Path(cfg.run_dir)
        self.conf = self.dir / "ganesha.conf"
        self.log = self.dir / "ganesha.log"
        self.pidfile = self.dir / "ganesha.pid"
        self.proc: asyncio.subprocess.Process | None = None

    def render(self) -> str:
        c = self.cfg
        return render_ganesha(c.exports, self.recovery_root, c.grace_time, c.lease_time, c.graceless, c.versions,
                              c.server_scope)

    async def prepare(self, timeout: float) -> str:
        return "nothing to prepare (ganesha is one process, started whole)"

    async def start(self, timeout: float) -> str:
        if self.running():
            raise NfsError(f"nfs-ganesha already runs (pid {self._pid()}); not starting a second one")
        missing = [e.path for e in self.cfg.exports if not Path(e.path).is_dir()]
        if missing:
            raise NfsError(f"export {missing[0]} does not exist on the mounted filesystem")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.render())
        self.pidfile.unlink(missing_ok=True)
        log_from = self.log.stat().st_size if self.log.exists() else 0
        t0 = time.monotonic()
        with (self.dir / "ganesha.stderr").open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                self.cfg.ganesha_binary, "-F", "-f", str(self.conf), "-L", str(self.log), "-p", str(self.pidfile),
                stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err)
        proc = self.proc
        why = "not started"
        try:
            while time.monotonic() - t0 < timeout:
                if proc.returncode is not None:
                    raise NfsError(f"ganesha.nfsd exited with {proc.returncode} at startup: {self._tail()}")
                why = await nfs_answers(self.cfg.versions, timeout=1.0)
                if not why:
                    # ganesha serves even when it rejected an EXPORT block; we must not
                    why = self._config_errors(log_from)
                    if not why:
                        return f"nfs-ganesha pid {proc.pid} serving in {time.monotonic() - t0:.3f} s"
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.005)
        except asyncio.CancelledError:
            if proc.returncode is None:  # not held, so nobody else would stop it
                proc.kill()
            raise
        await self.stop(5.0)
        raise NfsError(f"nfs-ganesha did not answer within {timeout:g} s ({why}): {self._tail()}")

    def detach(self) -> None:
        """Leave a serving ganesha running when the agent exits for a restart (agent.handoff).

        asyncio kills a child whose transport is closed or collected while it still runs, which
        the agent's exit would do; without its process handle the transport has nothing to kill,
        and the next agent finds ganesha by its PID file."""
        proc, self.proc = self.proc, None
        transport = getattr(proc, "_transport", None)
        if transport is not None and getattr(transport, "_proc", None) is not None:
            transport._proc = None

    async def stop(self, timeout: float) -> str:
        pid = self._pid()
        if pid is None:
            self.proc = None
            return "nfs-ganesha not running"
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        grace = max(0.5, timeout - 1.0)
        how = "SIGTERM"
        if not await self._gone(pid, grace):
            how = f"SIGKILL after {grace:g} s"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not await self._gone(pid, 1.0):
                raise NfsError(f"nfs-ganesha pid {pid} survives SIGKILL")
        self.proc = None
        return f"nfs-ganesha pid {pid} stopped ({how}) in {time.monotonic() - t0:.3f} s"

    async def check(self) -> str:
        pid = self._pid()
        if pid is None:
            raise NfsError(f"nfs-ganesha is not running: {self._tail()}")
        why = await nfs_answers(self.cfg.versions)
        if why:
            raise NfsError(f"nfs-ganesha pid {pid} does not answer: {why}")
        return f"nfs-ganesha pid {pid} answers"

    def running(self) -> bool:
        return self._pid() is not None

    async def reconfigure(self, cfg: NfsConfig, timeout: float) -> str:
        old, self.cfg = self.cfg, cfg
        pid = self._pid()
        if pid is None:
            return "nfs-ganesha not running: the new settings apply when it starts"
        if cfg.exports == old.exports:
            changed = (cfg.grace_time, cfg.lease_time, cfg.graceless) != (old.grace_time, old.lease_time, old.graceless)
            return "nfs-ganesha: " + ("grace and lease settings apply at its next start" if changed
                                      else "nothing to change")
        missing = [e.path for e in cfg.exports if not Path(e.path).is_dir()]
        if missing:
            self.cfg = old
            raise NfsError(f"export {missing[0]} does not exist on the mounted filesystem; exports unchanged")
        log_from = self.log.stat().st_size if self.log.exists() else 0
        self.conf.write_text(self.render())
        # SIGHUP makes ganesha re-read its EXPORT blocks: new ones are added, changed ones updated and
        # missing ones removed, while the clients of the others go on (the server keeps running)
        os.kill(pid, signal.SIGHUP)
        t0 = time.monotonic()
        while time.monotonic() - t0 < min(timeout, 2.0):
            await asyncio.sleep(0.05)
            errors = self._config_errors(log_from)
            if errors:
                raise NfsError(f"nfs-ganesha refused the new exports: {errors}")
        why = await nfs_answers(cfg.versions)
        if why:
            raise NfsError(f"nfs-ganesha does not answer after re-reading its exports: {why}")
        return f"nfs-ganesha pid {pid} re-read its exports ({len(cfg.exports)} now)"

    def _pid(self) -> int | None:
        """Our child if it lives, else the PID file's ganesha if /proc confirms it is ours."""
        if self.proc is not None and self.proc.returncode is None:
            return self.proc.pid
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        ours = os.path.basename(cmdline[0]) == os.path.basename(self.cfg.ganesha_binary).encode() \
            and str(self.conf).encode() in cmdline
        return pid if ours and not _zombie(pid) else None

    async def _gone(self, pid: int, timeout: float) -> bool:
        if self.proc is not None and self.proc.pid == pid:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout)
            return self.proc.returncode is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return True
            await asyncio.sleep(0.02)
        return False

    def _config_errors(self, offset: int) -> str:
        try:
            with self.log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        bad = [ln.split(" : ")[-1].strip() for ln in text.splitlines()
               if ":CONFIG :CRIT" in ln or "No export entries found" in ln]
        return "rejected its configuration: " + " | ".join(bad[:4]) if bad else ""

    def _tail(self, lines: int = 5) -> str:
        text = ""
        for path in (self.log, self.dir / "ganesha.stderr"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(tail) if tail else "(no log output)"


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
