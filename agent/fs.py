"""Mounting and unmounting the replicated filesystem, verified against the kernel's own table.

`mount` and `umount` exit codes are not trusted on their own: success means the kernel's
/proc/self/mountinfo shows (or no longer shows) that device's filesystem on that mountpoint.
A busy unmount is the classic reason a failover half-fails (a shell left in the export, a
backup job): with `kill_holders` the processes holding the mount are found, told to stop
(SIGTERM), killed after a grace period (SIGKILL), and the unmount is retried. Only processes
in our own mount namespace are considered: in a lab, or with containers, another namespace's
process can show a path that is not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.config import FilesystemConfig
from drbd.runner import run


class FsError(Exception):
    """A mount step failed; the message names the device, mountpoint and what went wrong."""


# what to mount is exactly the [filesystem] section of the config
MountSpec = FilesystemConfig


@dataclass(frozen=True)
class MountEntry:
    major_minor: str
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if not sep or len(parts) < 5 or len(rest) < 2:
            continue
        entries.append(MountEntry(parts[2], _unescape(parts[4]), rest[0], _unescape(rest[1])))
    return entries


def mounts() -> list[MountEntry]:
    return parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _device_number(device: str) -> str | None:
    try:
        st = os.stat(device)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def mounted(spec: MountSpec) -> bool:
    """True if the kernel shows `device` mounted on `mountpoint` (topmost mount there)."""
    target = os.path.realpath(spec.mountpoint)
    here = [m for m in mounts() if m.mountpoint == target]
    if not here:
        return False
    top = here[-1]
    number = _device_number(spec.device)
    return top.major_minor == number if number else top.source == spec.device


def anything_mounted_on(mountpoint: str) -> bool:
    target = os.path.realpath(mountpoint)
    return any(m.mountpoint == target for m in mounts())


async def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    code, out, err = await run(argv, timeout)
    if code == 124 and err.endswith(f"timed out after {timeout:g} s"):
        raise FsError(f"{argv[0]} did not finish within {timeout:g} s")
    return code, (out + err).strip()


async def mount(spec: MountSpec, timeout: float = 30.0) -> None:
    if mounted(spec):
        return
    if not Path(spec.mountpoint).is_dir():
        raise FsError(f"mountpoint {spec.mountpoint} does not exist or is not a directory")
    if _device_number(spec.device) is None:
        raise FsError(f"device {spec.device} does not exist or is not a block device")
    if anything_mounted_on(spec.mountpoint):
        raise FsError(f"something else is mounted on {spec.mountpoint}; refusing to mount over it")
    argv = ["mount", "-t", spec.fstype]
    if spec.options:
        argv += ["-o", ",".join(spec.options)]
    code, out = await _run([*argv, spec.device, spec.mountpoint], timeout)
    if code != 0:
        raise FsError(f"mount {spec.device} on {spec.mountpoint} failed (exit {code}): {out}")
    if not mounted(spec):
        raise FsError(f"mount {spec.device} on {spec.mountpoint} said success but the kernel does not show it")


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


async def unmount(spec: MountSpec, timeout: float = 30.0, report: list[str] | None = None,
                  present: Callable[[], bool] | None = None) -> None:
    """Unmount and verify; with kill_holders, SIGTERM then SIGKILL what keeps it busy, then retry.

    `present` says whether the mount is still there when it is not the device itself (a bind).
    """
    notes = report if report is not None else []
    deadline = time.monotonic() + timeout
    still: Callable[[], bool] = present if present is not None else (lambda: mounted(spec))
    if not still():
        return
    code, out = await _run(["umount", spec.mountpoint], max(1.0, deadline - time.monotonic()))
    if code != 0 and still():
        holders = find_holders(spec.mountpoint)
        if not spec.kill_holders:
            raise FsError(f"umount {spec.mountpoint} failed (exit {code}): {out}; held by "
                          f"{_describe(holders)} and kill_holders is off")
        notes.append(f"{spec.mountpoint} busy: SIGTERM to {_describe(holders)}")
        _signal_all(holders, signal.SIGTERM)
        grace_end = time.monotonic() + spec.kill_grace
        while time.monotonic() < grace_end and any(psutil.pid_exists(h.pid) for h in holders):
            await asyncio.sleep(0.05)
        stubborn = [h for h in find_holders(spec.mountpoint)]
        if stubborn:
            notes.append(f"SIGKILL to {_describe(stubborn)} after {spec.kill_grace:g} s")
            _signal_all(stubborn, signal.SIGKILL)
            await asyncio.sleep(0.1)
        while True:
            code, out = await _run(["umount", spec.mountpoint], max(1.0, deadline - time.monotonic()))
            if code == 0 or not still() or time.monotonic() >= deadline:
                break
            _signal_all(find_holders(spec.mountpoint), signal.SIGKILL)
            await asyncio.sleep(0.2)
    if still():
        raise FsError(f"umount {spec.mountpoint} failed (exit {code}): {out}; still held by "
                      f"{_describe(find_holders(spec.mountpoint))}")


def _describe(holders: Iterable[Holder]) -> str:
    items = [f"{h.name}[{h.pid}] ({h.why})" for h in holders]
    return ", ".join(items) if items else "no process we can see (a kernel user such as nfsd or a loop device?)"
