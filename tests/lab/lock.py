"""One lab at a time on a machine: an exclusive flock on /var/tmp/failover-agent-lab.lock.

Labs share the host's kernel, /run, loop devices, the image cache and two slow cores: a
benchmark that runs next to a test suite measures the suite, and two UML labs starve each other
until their timing bounds fail.  Whoever runs a lab (the pytest session at its first lab test,
bench modules, the demo, the fixture capture) calls ``hold_lab_lock`` once; the lock is held
until the process exits, so no second release path can free it while a lab still runs.

Not taken again when ``FAILOVER_AGENT_LAB_LOCKED=1`` says a parent holds it (for instance
``FAILOVER_AGENT_LAB_LOCKED=1 flock /var/tmp/failover-agent-lab.lock pytest ...``), nor when the
holder is one of our ancestors (``flock LOCK pytest`` without the variable): waiting for our
own parent would never end.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_ENV", "LOCK_PATH", "hold_lab_lock"]

LOCK_PATH = Path("/var/tmp/failover-agent-lab.lock")
LOCK_ENV = "FAILOVER_AGENT_LAB_LOCKED"

_held: int | None = None  # our descriptor of the lock file, open until exit


def _holders(path: Path) -> list[int]:
    """PIDs holding a flock on ``path`` (/proc/locks; waiters, lines with "->", excluded)."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: list[int] = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return pids
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key and fields[4].isdigit():
            pids.append(int(fields[4]))
    return pids


def _ancestors() -> set[int]:
    pids: set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def _describe(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return f"pid {pid}"
    return f"pid {pid}: {' '.join(a.decode(errors='replace') for a in argv)[:160]}"


def hold_lab_lock(who: str, say: Callable[[str], None] | None = None, path: Path = LOCK_PATH) -> None:
    """Block until this process holds the lab lock; later calls return at once.

    ``who`` names the waiter in the one line printed when the lock is busy; ``say`` prints it
    (stderr by default; pytest passes a function that gets past its output capture).  The
    variable is set for our children, which run inside our lab and must not wait for us.
    """
    global _held
    if _held is not None or os.environ.get(LOCK_ENV) == "1":
        return
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders(path)
            if set(holders) & _ancestors():
                os.close(fd)
                os.environ[LOCK_ENV] = "1"
                return
            held_by = "; ".join(_describe(p) for p in holders) or "unknown"
            line = f"{who} (pid {os.getpid()}) waits for the lab lock {path}, held by {held_by}"
            (say or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    _held = fd
    os.environ[LOCK_ENV] = "1"
