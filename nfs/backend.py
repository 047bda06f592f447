"""What the failover chain needs from an NFS server, whichever one runs it.

Two very different servers (kernel nfsd, driven by writing /proc/fs/nfsd and running
nfs-utils; nfs-ganesha, a user-space process we supervise) look the same to `agent.chain`:
start and return only when clients can be served, stop and return only when nothing is
served and no lock is held on the replicated filesystem, say whether it is healthy, and say
whether an earlier run left it running (startup reconciliation). Failures raise NfsError
with a sentence naming the server and the command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from drbd.runner import Runner
from nfs.settings import NfsConfig


class NfsError(Exception):
    pass


class Backend(Protocol):
    name: str

    async def prepare(self, timeout: float) -> str:
        """On a backup, ahead of any takeover: what `start` would otherwise do first and that touches
        no data and no state that moves with it (kernel modules, rpcbind). Safe to skip: `start`
        does whatever is missing itself."""
        ...

    async def start(self, timeout: float) -> str: ...

    async def stop(self, timeout: float) -> str: ...

    async def check(self) -> str: ...

    def running(self) -> bool: ...

    async def reconfigure(self, cfg: NfsConfig, timeout: float) -> str:
        """Take `cfg` (same backend and layout): a running server gets exports and threads live."""
        ...


async def run_checked(runner: Runner, argv: Sequence[str], timeout: float, what: str = "") -> str:
    """Run a command; NfsError with its exit code and output if it fails."""
    code, out, err = await runner(argv, timeout)
    if code != 0:
        text = " ".join((err.strip() or out.strip() or "no message").split())
        raise NfsError(f"{what or argv[0]}: `{' '.join(argv)}` failed (exit {code}): {text[:400]}")
    return out
