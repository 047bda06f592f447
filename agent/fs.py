"""Mounting and unmounting the replicated filesystem, verified against the kernel's own table.

`mount` and `umount` exit codes are not trusted on their own: success means the kernel's
/proc/self/mountinfo shows (or no longer shows) that device's filesystem on that mountpoint.
A busy unmount is the classic reason a failover half-fails (a shell left in the export, a
backup job): with `kill_holders` the processes holding the mount are stopped and the unmount
is retried (drbd.mounts, shared with nfs.statedir).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.config import FilesystemConfig
from drbd.mounts import FsError as FsError  # re-exported: the chain catches fs.FsError
from drbd.mounts import run_mount_tool, unmount_path

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
    code, out = await run_mount_tool([*argv, spec.device, spec.mountpoint], timeout)
    if code != 0:
        raise FsError(f"mount {spec.device} on {spec.mountpoint} failed (exit {code}): {out}")
    if not mounted(spec):
        raise FsError(f"mount {spec.device} on {spec.mountpoint} said success but the kernel does not show it")


async def unmount(spec: MountSpec, timeout: float = 30.0, report: list[str] | None = None) -> None:
    """Unmount and verify; with kill_holders, SIGTERM then SIGKILL what keeps it busy, then retry."""
    await unmount_path(spec.mountpoint, timeout, present=lambda: mounted(spec), kill_holders=spec.kill_holders,
                       kill_grace=spec.kill_grace, report=report)
