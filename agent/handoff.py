"""A restart that does not fail over: how the stopping agent knows, and what it tells the next one.

`systemctl restart failover-agent` (an upgrade) used to be a stop and a start: an ordered
release with a priority-0 advert, so the backup took over, and the restarted agent took over
back. Now a master that stops *for a restart* keeps its chain held and sends no priority 0;
the agent that starts next finds the chain held, verifies it and adopts it (`agent.node`).

Knowing it is a restart
    SIGTERM is the same signal for a stop and for a restart, but systemd queues the restart
    as one job of type ``restart`` on our unit, and that job is running while we stop
    (``systemctl list-jobs`` shows it; it becomes a start job only after the stop part ended).
    So at SIGTERM the agent asks systemd for the jobs of its own unit, the unit named by its
    cgroup. ``systemctl stop`` queues a ``stop`` job: an ordered release as before. Anything
    that cannot be read (no systemd, a timeout) counts as a stop: that side is safe. Outside
    systemd, SIGUSR2 asks for the same (for a supervisor that starts the agent again at once).

The hand-off record
    The stopping agent writes a small JSON file beside the state file (it must outlive the
    unit's RuntimeDirectory, which systemd removes between the stop and the start): the boot,
    the time of its last advert on the monotonic clock (shared by every process of a boot),
    the interface, the VIPs and the steps it kept. The next agent reads and removes it: a
    hand-off seconds old lets it adopt at once, because the backup's Master_Down timer is still
    far off; without one (a kill) it listens for another master first. `failoverctl cleanup`
    (ExecStopPost) leaves the VIPs in place for a fresh record after a clean exit, and removes
    the recorded VIPs when the start that should have adopted them failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VALID_FOR", "Handoff", "own_unit", "path_for", "read", "record", "restart_job", "take", "write"]

log = logging.getLogger("failover-agent")

#: a record older than this is stale: no restart takes that long (systemd's TimeoutStopSec is 10 s)
VALID_FOR = 60.0
_FORMAT = 1


@dataclass(frozen=True)
class Handoff:
    """What a stopping agent kept held for the next one."""

    boot_id: str
    pid: int
    written: float  # monotonic
    last_advert: float | None  # monotonic
    interface: str
    vips: tuple[str, ...]
    held: tuple[str, ...]

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.written

    def advert_age(self, now: float | None = None) -> float | None:
        """Seconds since the previous agent's last advert (None: it never sent one)."""
        if self.last_advert is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_advert


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def path_for(state_file: str) -> Path:
    """Beside the state file (/var/lib/failover-agent/state.handoff.json): it survives the unit's stop."""
    return Path(state_file).with_suffix(".handoff.json")


def write(state_file: str, last_advert: float | None, interface: str, vips: Sequence[str],
          held: Sequence[str]) -> Path:
    """Atomically write the record (OSError if it cannot be written)."""
    path = path_for(state_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = json.dumps({"format": _FORMAT, "boot_id": _boot_id(), "pid": os.getpid(), "written": time.monotonic(),
                       "last_advert": last_advert, "interface": interface, "vips": list(vips), "held": list(held)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(blob + "\n")
    os.replace(tmp, path)
    return path


def record(state_file: str, last_advert: float | None, interface: str, vips: Sequence[str],
           held: Sequence[str]) -> None:
    """`write`, logging a failure: the next agent then listens first, and cleanup removes the VIPs."""
    try:
        write(state_file, last_advert, interface, vips, held)
    except OSError as e:
        log.error("cannot record the hand-off for the next agent (%s): %s", path_for(state_file), e)


def read(state_file: str) -> Handoff | None:
    """The record, if there is a usable one of this boot and not older than VALID_FOR."""
    try:
        data = json.loads(path_for(state_file).read_text())
        record = Handoff(boot_id=str(data["boot_id"]), pid=int(data["pid"]), written=float(data["written"]),
                         last_advert=None if data["last_advert"] is None else float(data["last_advert"]),
                         interface=str(data["interface"]), vips=tuple(str(v) for v in data["vips"]),
                         held=tuple(str(s) for s in data["held"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if record.boot_id != _boot_id() or not 0 <= record.age() <= VALID_FOR:
        return None
    return record


def take(state_file: str) -> Handoff | None:
    """Read and remove the record: a hand-off is for the one agent that starts next."""
    record = read(state_file)
    with contextlib.suppress(OSError):
        path_for(state_file).unlink()
    return record


def take_age(state_file: str, interface: str) -> float | None:
    """For the agent's start: seconds since the last advert of a predecessor that handed over on
    `interface` (None: no usable hand-off); the record is removed either way."""
    record = take(state_file)
    return record.advert_age() if record is not None and record.interface == interface else None


def own_unit(cgroup_text: str | None = None) -> str | None:
    """The systemd service we run in, from /proc/self/cgroup (None outside a service)."""
    if cgroup_text is None:
        try:
            cgroup_text = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[0] == "0" or "name=systemd" in parts[1]):
            for name in reversed(parts[2].split("/")):
                if name.endswith(".service"):
                    return name
    return None


def restart_job(list_jobs_output: str, unit: str) -> bool:
    """Does `systemctl list-jobs --no-legend` show a restart job for `unit`?"""
    for line in list_jobs_output.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == unit and fields[2] in ("restart", "try-restart"):
            return True
    return False


async def systemd_restart_pending(timeout: float = 2.0) -> tuple[bool, str]:
    """(is systemd restarting our unit right now?, how we know or why we could not tell)."""
    unit = own_unit()
    if unit is None or not os.environ.get("INVOCATION_ID"):
        return False, "not a systemd service"
    try:
        proc = await asyncio.create_subprocess_exec(
            "systemctl", "list-jobs", "--no-legend", "--no-pager", "--full", unit,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    except OSError as e:
        return False, f"systemctl list-jobs: {e}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"systemctl list-jobs did not answer within {timeout:g} s"
    if restart_job(out.decode(errors="replace"), unit):
        return True, f"systemd restart job for {unit}"
    return False, f"no restart job for {unit}"
