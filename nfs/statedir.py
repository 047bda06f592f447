"""The NFS state directory on the replicated filesystem.

NFS keeps client state outside the exported data: kernel nfsd's client records
(nfsdcltrack), statd's monitor list and the export tables in /var/lib/nfs; ganesha its
recovery records under RecoveryRoot. If that state stayed on the old node, clients would be
refused their reclaims (or lose their locks) after a takeover, so it lives on the replicated
filesystem and moves with the data. For kernel nfsd it is bind-mounted onto /var/lib/nfs;
the first time, it is seeded with the node's own /var/lib/nfs (statd needs its sm folders,
owned by statd). Ganesha is pointed at the folder directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from drbd.mounts import FsError, unmount_path
from drbd.runner import Runner
from nfs.backend import NfsError, run_checked


class StateDir:
    def __init__(self, path: str, bind_to: str | None, runner: Runner) -> None:
        self.path = path
        self.bind_to = bind_to
        self.runner = runner

    def bound(self) -> bool:
        """Is `bind_to` a mount showing exactly our state folder?"""
        if self.bind_to is None:
            return False
        try:
            a, b = os.stat(self.path), os.stat(self.bind_to)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and os.path.ismount(self.bind_to)

    def held(self, mounted: bool) -> bool:
        """Does this node hold the state folder? Bound for kernel nfsd; for ganesha, which is pointed at
        the folder directly, present on the filesystem this node has mounted."""
        if self.bind_to is not None:
            return self.bound()
        return mounted and Path(self.path).is_dir()

    async def acquire(self, timeout: float) -> str:
        folder = Path(self.path)
        created = not folder.exists()
        if created:
            try:
                folder.mkdir(mode=0o755)
            except OSError as e:
                raise NfsError(f"cannot create the NFS state folder {self.path}: {e.strerror or e}") from None
        if not folder.is_dir():
            raise NfsError(f"{self.path} exists and is not a folder")
        target = self.bind_to
        if target is None:
            return f"NFS state in {self.path}" + (" (created)" if created else "")
        if self.bound():
            return f"{self.path} already on {target}"
        if not Path(target).is_dir():
            raise NfsError(f"{target} does not exist (is nfs-common installed?)")
        seeded = ""
        if not any(folder.iterdir()):
            await run_checked(self.runner, ["cp", "-a", f"{target}/.", f"{self.path}/"], timeout,
                              "seeding the NFS state folder")
            seeded = f", seeded from this node's {target}"
        await run_checked(self.runner, ["mount", "--bind", self.path, target], timeout, "binding NFS state")
        if not self.bound():
            raise NfsError(f"mount --bind {self.path} {target} succeeded but the kernel does not show it")
        return f"{self.path} bound on {target}{seeded}"

    async def release(self, timeout: float) -> str:
        target = self.bind_to
        if target is None or not self.bound():
            return "NFS state folder not bound" if target else "nothing to release"
        # Never a lazy unmount: it would keep the replicated filesystem busy, and DRBD could not
        # be demoted. A daemon still holding a state file (an rpc.statd left by a killed agent)
        # is stopped like any holder of the filesystem.
        notes: list[str] = []
        try:
            await unmount_path(target, timeout, present=self.bound, kill_holders=True, kill_grace=2.0, report=notes)
        except FsError as e:
            raise NfsError(str(e)) from None
        return f"{target} unbound" + (f" ({'; '.join(notes)})" if notes else "")

    def check(self) -> str:
        if not Path(self.path).is_dir():
            raise NfsError(f"the NFS state folder {self.path} is gone")
        if self.bind_to is not None and not self.bound():
            raise NfsError(f"{self.bind_to} no longer shows {self.path}")
        return "NFS state in place"
