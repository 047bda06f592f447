"""The one way the agent runs a command: an argument list, no shell, killed on timeout.

Every adapter that shells out (drbdadm, mount and umount, the NFS servers' tools, admin
checks, notify hooks) takes a `Runner`, so tests can hand in a fake and the daemon hands in
`run`. It lives in `drbd` because that is the lowest of our packages: drbd imports nothing of
ours, and agent, nfs and drbd itself may all import drbd, so this is the one place all of
them can share without nfs or drbd reaching up into agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence

#: `(argv, timeout) -> (exit code, stdout, stderr)`; a timeout is exit 124, like timeout(1)
Runner = Callable[[Sequence[str], float], Awaitable[tuple[int, str, str]]]


async def run(argv: Sequence[str], timeout: float, *, env: Mapping[str, str] | None = None,
              own_group: bool = False) -> tuple[int, str, str]:
    """The real runner: argument list, no shell, killed on timeout.

    `env` replaces the environment (None: inherit ours). `own_group` is for programs the admin
    wrote (notify hooks): the command starts its own session, and on timeout or cancellation
    its whole process group is killed. Killing only the direct child is not enough for them: a
    shell script's `sleep` or `curl` would survive it, keep the output pipes open and so keep
    this call waiting long past its timeout.
    """
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=None if env is None else dict(env),
                                                start_new_session=own_group)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill(proc, own_group)
        await proc.wait()
        return 124, "", f"{argv[0]} timed out after {timeout:g} s"
    except asyncio.CancelledError:
        if own_group:
            _kill(proc, own_group)
            await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _kill(proc: asyncio.subprocess.Process, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group id is its pid
        else:
            proc.kill()
