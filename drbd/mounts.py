"""Running mount(8) and umount(8), and unmounting a mount that processes keep busy.

A busy unmount is the classic reason a failover half-fails (a shell left in the export, a
backup job, an rpc.statd left by a killed agent holding the NFS state folder), so the
holders are found, told to stop (SIGTERM), killed after a grace period (SIGKILL), and the
unmount is retried. Only processes in our own mount namespace are considered: in a lab, or
with containers, another namespace's process can show a path that is not ours. Never a lazy
unmount: it would keep the replicated filesystem busy, and DRBD could not be demoted.

Two callers need this, `agent.fs` (the replicated filesystem on the DRBD device) and
`nfs.statedir` (the NFS state folder bound onto /var/lib/nfs); it lives in `drbd`, the
lowest of our packages, because nfs may not import agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from drbd.runner import run


class FsError(Exception):
    """A mount step failed; the message names the device, mountpoint and what went wrong."""


async def run_mount_tool(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run mount/umount: (exit code, its output); not finishing in time is an FsError."""
    code, out, err = await run(argv, timeout)
    if code == 124 and err.endswith(f"timed out after {timeout:g} s"):
        raise FsError(f"{argv[0]} did not finish within {timeout:g} s")
    return code, (out + err).strip()


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str
    why: str


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def find_holders(mountpoint: str) -> list[Holder]:
    """Processes in our mount namespace with a cwd, root, open file or mapping under the mount."""
    top = os.path.realpath(mountpoint)
    ours = os.readlink("/proc/self/ns/mnt")
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        pid = proc.info["pid"]
        if pid == me:
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != ours:
                continue
            why = None
            if _under(proc.cwd(), top):
                why = "cwd"
            elif _under(os.readlink(f"/proc/{pid}/root"), top):
                why = "root"
            elif any(_under(f.path, top) for f in proc.open_files()):
                why = "open file"
            elif any(_under(m.path, top) for m in proc.memory_maps(grouped=True)):
                why = "mapped file"
            if why:
                found.append(Holder(pid, proc.info["name"] or "?", why))
        except (psutil.Error, OSError):
            continue
    return found


def _signal_all(holders: Iterable[Holder], sig: signal.Signals) -> None:
    for h in holders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(h.pid, sig)


async def unmount_path(mountpoint: str, timeout: float, *, present: Callable[[], bool], kill_holders: bool,
                       kill_grace: float, report: list[str] | None = None) -> None:
    """Unmount and verify; with kill_holders, SIGTERM then SIGKILL what keeps it busy, then retry.

    `present` says whether the mount is still there (the caller knows what it mounted there).
    """
    notes = report if report is not None else []
    deadline = time.monotonic() + timeout
    if not present():
        return
    code, out = await run_mount_tool(["umount", mountpoint], max(1.0, deadline - time.monotonic()))
    if code != 0 and present():
        holders = find_holders(mountpoint)
        if not kill_holders:
            raise FsError(f"umount {mountpoint} failed (exit {code}): {out}; held by "
                          f"{_describe(holders)} and kill_holders is off")
        notes.append(f"{mountpoint} busy: SIGTERM to {_describe(holders)}")
        _signal_all(holders, signal.SIGTERM)
        grace_end = time.monotonic() + kill_grace
        while time.monotonic() < grace_end and any(psutil.pid_exists(h.pid) for h in holders):
            await asyncio.sleep(0.05)
        stubborn = [h for h in find_holders(mountpoint)]
        if stubborn:
            notes.append(f"SIGKILL to {_describe(stubborn)} after {kill_grace:g} s")
            _signal_all(stubborn, signal.SIGKILL)
            await asyncio.sleep(0.1)
        while True:
            code, out = await run_mount_tool(["umount", mountpoint], max(1.0, deadline - time.monotonic()))
            if code == 0 or not present() or time.monotonic() >= deadline:
                break
            _signal_all(find_holders(mountpoint), signal.SIGKILL)
            await asyncio.sleep(0.2)
    if present():
        raise FsError(f"umount {mountpoint} failed (exit {code}): {out}; still held by "
                      f"{_describe(find_holders(mountpoint))}")


def _describe(holders: Iterable[Holder]) -> str:
    items = [f"{h.name}[{h.pid}] ({h.why})" for h in holders]
    return ", ".join(items) if items else "no process we can see (a kernel user such as nfsd or a loop device?)"
