"""The one way the agent runs a command: an argument list, no shell, killed on timeout.

Every adapter that shells out (drbdadm, mount and umount, the NFS servers' tools, admin
checks) takes a `Runner`, so tests can hand in a fake and the daemon hands in `run`. It
lives in `drbd` because that is the lowest of our packages: drbd imports nothing of ours,
and agent, nfs and drbd itself may all import drbd, so this is the one place all of them
can share without nfs or drbd reaching up into agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

#: `(argv, timeout) -> (exit code, stdout, stderr)`; a timeout is exit 124, like timeout(1)
Runner = Callable[[Sequence[str], float], Awaitable[tuple[int, str, str]]]


async def run(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """The real runner: argument list, no shell, killed on timeout."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return 124, "", f"{argv[0]} timed out after {timeout:g} s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
