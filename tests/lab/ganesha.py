"""nfs-ganesha servers, per-node mount namespaces and a shared ext4 disk for the netns lab.

The host has no kernel nfsd and no DRBD, so storage failover is rehearsed with user-space
pieces that behave the same way from a client's point of view:

* ``NodeNamespace`` gives a lab node a private **mount** namespace next to its network
  namespace.  Inside it the node has its own ``/run`` and ``/var/lib/nfs`` (bind mounts of
  per-node directories): without that, every node's rpcbind would fight over the single
  host-wide ``/run/rpcbind.sock`` (a path, not a network object), and a filesystem mounted
  by one node would be visible to all.  Anything that must act "on the node" - mount, umount,
  ganesha, rpcbind, later the failover-agent itself - runs through ``nsenter --net --mount``
  (``argv()``, ``run()``, ``popen()``).  The namespace lives as long as a tiny holder process
  (a shell waiting on a pipe from us); ``kill()`` SIGKILLs every process in the namespace,
  holder included, which is the closest thing to a node losing power: the kernel then tears
  the namespace down and with it every mount it had.
* ``SharedDisk`` is one ext4 image on a loop device, the stand-in for the DRBD device.  Only
  the active node mounts it, in its own mount namespace, at the same path on every node.
  ``crash()`` emulates a node dying with the filesystem mounted: ext4's shutdown ioctl
  without log flush (nothing written after that instant reaches the disk, like a power
  cut), then the node's whole mount namespace is killed and we wait until the kernel has
  dropped the superblock.  Only then may another node mount it; it replays the journal like
  after a real crash.  Why the wait matters: in one kernel, a second mount of a block device
  that is still mounted elsewhere does not read the disk at all, it shares the live
  superblock and page cache of the first, so a "crashed" node's unsynced data would survive
  and the test would prove nothing (and a shut-down superblock would just give EIO).
* ``GaneshaServer`` renders ganesha.conf (``render_ganesha_conf``) and runs
  ``ganesha.nfsd -F -f CONF -L LOG -p PID`` as our child inside the node's namespaces.
  ``start()`` returns once the server answers an NFS NULL call from inside the node;
  ``stop()`` is SIGTERM by PID, ``kill()`` SIGKILL.
* ``add_vip``/``del_vip``/``send_garp`` move the service address by hand, for tests that
  fail over without the agent.

Processes are only ever signalled by PID (our children, or PIDs found by comparing mount
namespace identities, guarded against PID reuse by ProcRef), never by name.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

from tests.lab.netns import (
    DEFAULT_DEV,
    PREFIXLEN,
    SUBNET,
    Closing,
    CommandError,
    LabError,
    NetnsLab,
    ProcRef,
    pids_in_namespace,
    stop_process,
    terminate_pids,
    wait_until,
)

__all__ = [
    "DEFAULT_SCOPE",
    "NFS_PORT",
    "GaneshaServer",
    "NodeNamespace",
    "SharedDisk",
    "add_vip",
    "del_vip",
    "freeze",
    "node_namespace",
    "pids_in_mntns",
    "power_cut",
    "render_ganesha_conf",
    "rpc_null",
    "send_garp",
]

NFS_PORT = 2049
NFS_PROGRAM = 100003
MOUNT_PROGRAM = 100005
# NFSv4 server scope: both nodes must present the same one, or clients treat the takeover
# node as a different server (DOMAIN.md).
DEFAULT_SCOPE = "failover-lab"
PRIVATE_DIRS = ("/run", "/var/lib/nfs")
# _IOR('X', 125, __u32) and its "no log flush" mode: the journal is not committed, as on power loss.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_LOGFLUSH = 1
EXT4_GOING_FLAGS_NOLOGFLUSH = 2

_REQUIRED_TOOLS = ("nsenter", "unshare", "mount", "umount", "losetup", "mkfs.ext4", "rpcinfo", "ganesha.nfsd")
_CONF_TOKEN = re.compile(r"[A-Za-z0-9_.:/*-]+")


def _require_tools(tools: Iterable[str]) -> None:
    """Fail with what to install instead of an ENOENT deep inside a scenario."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"ganesha lab needs {', '.join(missing)} on PATH (Debian: nfs-ganesha nfs-ganesha-vfs rpcbind "
            "util-linux mount e2fsprogs)"
        )


def _ns_key(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def pids_in_mntns(key: tuple[int, int]) -> list[int]:
    """PIDs whose mount namespace has identity ``key`` ((st_dev, st_ino) of its nsfs inode).

    All lab nodes share the host's PID space, so "every process of node a" can only be found
    by comparing namespace identities; a name or a path would also match node b's ganesha.
    """
    return pids_in_namespace("mnt", key)


# --------------------------------------------------------------------------------------------
# Per-node mount namespace
# --------------------------------------------------------------------------------------------


class NodeNamespace(Closing):
    """A node's network namespace plus its own private mount namespace (see module docstring).

    Usually obtained through ``node_namespace(lab, node)`` so that the disk, ganesha and the
    agent of one node all share one namespace.  ``start()`` may be called again after
    ``kill()``/``stop()``: the node "reboots" with a fresh, empty mount table.
    """

    def __init__(self, lab: NetnsLab, node: str, private_dirs: Sequence[str] = PRIVATE_DIRS) -> None:
        _require_tools(("nsenter", "unshare", "mount"))
        lab.ns(node)  # KeyError for a name that is not a lab member
        for target in private_dirs:
            if not Path(target).is_dir():
                raise LabError(f"{target} does not exist on the host; cannot give node {node} its own copy")
        self.lab = lab
        self.node = node
        self.private_dirs = tuple(private_dirs)
        self.root = lab.workdir / f"node-{node}"
        self._holder: subprocess.Popen[bytes] | None = None
        self._key: tuple[int, int] | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._rpcbind: subprocess.Popen[bytes] | None = None
        self._closed = False
        lab.add_cleanup(self.close)

    def private_dir(self, target: str) -> Path:
        """Host-side directory that the node sees as ``target`` (e.g. its /run)."""
        if target not in self.private_dirs:
            raise KeyError(f"{target} is not private to node {self.node} ({self.private_dirs})")
        return self.root / target.strip("/").replace("/", "-")

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """The namespace exists (its holder process runs)."""
        return self._holder is not None and self._holder.poll() is None

    @property
    def holder_pid(self) -> int:
        """PID whose /proc entry names the namespace; raises if the node is down."""
        if self._holder is None or self._holder.poll() is not None:
            raise LabError(f"node {self.node}: mount namespace is not running (start() it)")
        return self._holder.pid

    @property
    def mntns_path(self) -> str:
        """Path usable as ``nsenter --mount=``."""
        return f"/proc/{self.holder_pid}/ns/mnt"

    def start(self, timeout: float = 5.0) -> Self:
        """Create the mount namespace with fresh private dirs; no-op if it already runs."""
        if self._closed:
            raise LabError(f"node {self.node}: namespace object is closed")
        if self.running:
            return self
        self._reap()
        shutil.rmtree(self.root, ignore_errors=True)
        sources = [self.private_dir(t) for t in self.private_dirs]
        for src in sources:
            src.mkdir(parents=True, mode=0o755)
        binds = " && ".join(f'mount --bind "${i + 1}" "${i + 1 + len(sources)}"' for i in range(len(sources)))
        # The holder waits on a pipe from us: if the test process dies, the pipe closes, the
        # holder exits and the namespace goes away with the last process in it.
        script = f"set -e; {binds}; echo ready; read -r _ || true"
        argv = [
            "nsenter", f"--net={self.lab.netns_path(self.node)}", "--",
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "holder", *map(str, sources), *self.private_dirs,
        ]  # fmt: skip
        holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._holder = holder
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], timeout)
        line = holder.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            stop_process(holder)
            err = holder.stderr.read().decode(errors="replace") if holder.stderr else ""
            self._holder = None
            raise LabError(f"node {self.node}: could not build its mount namespace: {err.strip() or line!r}")
        self._key = _ns_key(f"/proc/{holder.pid}/ns/mnt")
        if self._key == _ns_key("/proc/self/ns/mnt"):
            self.kill()
            raise LabError(f"node {self.node}: unshare --mount did not create a new mount namespace")
        return self

    def pids(self) -> list[int]:
        """Every process in this mount namespace (holder included)."""
        return pids_in_mntns(self._key) if self._key is not None and self.running else []

    def kill(self, timeout: float = 5.0) -> None:
        """The node loses power: SIGKILL to every process in the namespace, holder included.

        Returns once none of them runs any more; the kernel then releases the namespace and
        its mounts (asynchronously: SharedDisk.wait_released tells when the disk is free).
        """
        if self._holder is None or self._key is None:
            return
        key, deadline = self._key, time.monotonic() + timeout
        # Rescan until the namespace is empty: a process may fork (a mount helper, a script)
        # between one scan and the signals.  Dead processes (zombies too) no longer show a
        # mount namespace, so they drop out of the scan.
        while True:
            refs = [ref for ref in map(ProcRef.of, pids_in_mntns(key)) if ref is not None and ref.alive()]
            if not refs:
                break
            if time.monotonic() >= deadline:
                raise LabError(f"node {self.node}: processes survived SIGKILL: {[r.pid for r in refs]}")
            for ref in refs:
                ref.send_signal(signal.SIGKILL)
            time.sleep(0.005)
        self._reap(timeout)

    def stop(self, grace: float = 3.0) -> None:
        """Orderly node shutdown: SIGTERM everything in the namespace (SIGKILL after ``grace``)."""
        if self._holder is None:
            return
        holder_pid = self._holder.pid
        refs = [ref for ref in map(ProcRef.of, self.pids()) if ref is not None and ref.pid != holder_pid]
        terminate_pids(refs, grace)
        for proc in self._procs:
            if proc.poll() is None:
                stop_process(proc, grace)
        self._stop_holder()
        self._reap()

    def _stop_holder(self) -> None:
        holder = self._holder
        if holder is None:
            return
        if holder.stdin is not None and not holder.stdin.closed:
            holder.stdin.close()  # "read" sees EOF and the shell exits
        try:
            holder.wait(3)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()

    def _reap(self, timeout: float = 5.0) -> None:
        """Collect exit statuses of our children so that none lingers as a zombie."""
        deadline = time.monotonic() + timeout
        for proc in [*self._procs, *([self._holder] if self._holder else [])]:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None and not stream.closed:
                    stream.close()
        self._procs = [p for p in self._procs if p.poll() is None]
        if self._holder is not None and self._holder.poll() is not None:
            self._holder = None
            self._rpcbind = None

    @property
    def closed(self) -> bool:
        """close() ran; node_namespace() then builds a new object."""
        return self._closed

    def close(self) -> None:
        """Stop everything in the namespace, drop it and remove the private directories."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            shutil.rmtree(self.root, ignore_errors=True)

    # -- running things inside -------------------------------------------------------------------

    def argv(self, argv: Sequence[str], cwd: str | Path | None = None) -> list[str]:
        """``nsenter --net=... --mount=... [--wd=cwd] -- argv``.

        Entering a mount namespace resets the working directory to its root, so a command
        that needs one (``python -m agent.daemon`` from the repository) must pass ``cwd``
        here: Popen's own ``cwd`` would be lost at the setns().
        """
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a shell string")
        wd = [f"--wd={cwd}"] if cwd is not None else []
        return ["nsenter", f"--net={self.lab.netns_path(self.node)}", f"--mount={self.mntns_path}", *wd, "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the node (both namespaces); CommandError with stderr on failure."""
        cmd = self.argv(argv, cwd)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def popen(self, argv: Sequence[str], cwd: str | Path | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process on the node (e.g. the agent); stop()/kill()/close() end it.

        nsenter execs the command without forking (no --pid/--fork), so the PID returned is
        the command's own and it stays our child: signal it and wait() on it directly.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv, cwd), **kwargs)
        self._procs = [p for p in self._procs if p.poll() is None]
        self._procs.append(proc)
        return proc

    def mountinfo(self) -> str:
        """The node's mount table, as its processes see it."""
        return Path(f"/proc/{self.holder_pid}/mountinfo").read_text()

    # -- rpcbind ---------------------------------------------------------------------------------

    def start_rpcbind(self, timeout: float = 5.0) -> subprocess.Popen[bytes]:
        """rpcbind for this node (NFSv3 clients look up MOUNT through it); idempotent.

        It lives in the node's private /run (rpcbind.sock, rpcbind.lock), so each node has
        its own registrations.
        """
        if self._rpcbind is not None and self._rpcbind.poll() is None:
            return self._rpcbind
        _require_tools(("rpcbind", "rpcinfo"))
        proc: subprocess.Popen[bytes] = self.popen(
            ["rpcbind", "-f"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._rpcbind = proc

        def answers() -> bool:
            if proc.poll() is not None:
                return True
            return self.run(["rpcinfo", "-p", "127.0.0.1"], check=False, timeout=5).returncode == 0

        if not wait_until(answers, timeout, interval=0.05) or proc.poll() is not None:
            stop_process(proc)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise LabError(f"node {self.node}: rpcbind did not start: {err.strip()}")
        return proc

    @property
    def rpcbind_pid(self) -> int | None:
        """PID of this node's rpcbind while it runs."""
        return self._rpcbind.pid if self._rpcbind is not None and self._rpcbind.poll() is None else None


_NAMESPACES: weakref.WeakKeyDictionary[NetnsLab, dict[str, NodeNamespace]] = weakref.WeakKeyDictionary()


def node_namespace(lab: NetnsLab, node: str, start: bool = True) -> NodeNamespace:
    """The one NodeNamespace of ``node`` in ``lab`` (created and started on first use)."""
    per_lab = _NAMESPACES.setdefault(lab, {})
    ns = per_lab.get(node)
    if ns is None or ns.closed:
        ns = per_lab[node] = NodeNamespace(lab, node)
    return ns.start() if start else ns


# --------------------------------------------------------------------------------------------
# Shared disk
# --------------------------------------------------------------------------------------------

# The ioctl goes to whatever filesystem the path resolves to at that instant: if the node
# unmounted just before, that would be the host's own. So it only runs when the open directory
# is on the shared disk's device (argv[4], st_rdev of the loop device).
_SHUTDOWN_CODE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
if os.fstat(fd).st_dev != int(sys.argv[4]):
    sys.exit(f"{sys.argv[1]} is not on the shared disk any more (unmounted meanwhile?): no shutdown")
fcntl.ioctl(fd, int(sys.argv[2]), struct.pack("I", int(sys.argv[3])))
"""


def _detach_stale_loops(image: Path) -> None:
    """Detach loop devices left on our image path by a crashed earlier run (same lab prefix)."""
    out = subprocess.run(["losetup", "--list", "--json"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0 or not out.stdout.strip():
        return
    for dev in json.loads(out.stdout).get("loopdevices", []):
        backing = str(dev.get("back-file") or "").removesuffix(" (deleted)")
        if backing == str(image):
            subprocess.run(["losetup", "-d", dev["name"]], capture_output=True, timeout=10)


class SharedDisk(Closing):
    """One ext4 image on a loop device, mounted by at most one node at a time.

    The mountpoint path is the same on every node (a host directory; mounts made inside a
    node's private namespace are invisible to the host and to the other node).  Paths on the
    disk (``path("export")``) are only meaningful inside the node that has it mounted: the
    test process itself cannot see them, use ``ns.run`` for anything on the disk.
    """

    def __init__(self, lab: NetnsLab, *, size_mb: int = 128, mountpoint: str | Path | None = None,
                 label: str = "labshared") -> None:  # fmt: skip
        _require_tools(("losetup", "mkfs.ext4", "mount", "umount"))
        self.lab = lab
        self.image = lab.workdir / "shared-disk.img"
        self.mountpoint = Path(mountpoint) if mountpoint is not None else lab.workdir / "srv"
        self.device: str | None = None
        self._closed = False
        _detach_stale_loops(self.image)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.image.open("wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        # Initialise inode tables and journal now, not in a kernel thread after the first mount
        # (ext4lazyinit would write in the background while a benchmark measures).
        self._host(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    str(self.image)])  # fmt: skip
        self.device = self._host(["losetup", "--find", "--show", str(self.image)]).stdout.strip()
        if not self.device.startswith("/dev/loop"):
            raise LabError(f"losetup returned {self.device!r}")
        lab.add_cleanup(self.close)

    @staticmethod
    def _host(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise CommandError(result.returncode, list(argv), result.stdout, result.stderr)
        return result

    @property
    def dev(self) -> str:
        """The loop device (/dev/loopN); raises after close()."""
        if self.device is None:
            raise LabError("shared disk is detached")
        return self.device

    def path(self, *parts: str) -> str:
        """Absolute path of ``parts`` on the disk, as seen by the node that mounts it."""
        return str(self.mountpoint.joinpath(*parts))

    def _major_minor(self) -> str:
        rdev = os.stat(self.dev).st_rdev
        return f"{os.major(rdev)}:{os.minor(rdev)}"

    def mounted_in(self, ns: NodeNamespace) -> bool:
        """The kernel shows our device mounted on the mountpoint in ``ns``."""
        if not ns.running:
            return False
        target, number = str(self.mountpoint), self._major_minor()
        for line in ns.mountinfo().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == target and fields[2] == number:
                return True
        return False

    def mount(self, ns: NodeNamespace, options: Sequence[str] = ("noatime",), timeout: float = 30) -> float:
        """Mount the disk on ``ns``; returns seconds taken (journal replay after a crash included)."""
        if self.mounted_in(ns):
            return 0.0
        t0 = time.monotonic()
        argv = ["mount", "-t", "ext4", *(["-o", ",".join(options)] if options else []), self.dev, str(self.mountpoint)]
        ns.run(argv, timeout=timeout)
        if not self.mounted_in(ns):
            raise LabError(f"mount {self.dev} on node {ns.node} reported success but the mount is not there")
        return time.monotonic() - t0

    def unmount(self, ns: NodeNamespace, timeout: float = 30) -> float:
        """Clean unmount on ``ns`` (fails if busy); returns seconds taken."""
        if not self.mounted_in(ns):
            return 0.0
        t0 = time.monotonic()
        ns.run(["umount", str(self.mountpoint)], timeout=timeout)
        if self.mounted_in(ns):
            raise LabError(f"umount on node {ns.node} reported success but {self.mountpoint} is still mounted")
        return time.monotonic() - t0

    def in_use(self) -> bool:
        """Some namespace still has the ext4 superblock (mounted, or being torn down)."""
        return Path("/sys/fs/ext4", Path(self.dev).name).exists()

    def wait_released(self, timeout: float = 10.0) -> bool:
        """Wait until no namespace holds the filesystem any more (safe for another node to mount)."""
        return wait_until(lambda: not self.in_use(), timeout, interval=0.01)

    def shutdown(self, ns: NodeNamespace, flush_log: bool = False) -> None:
        """ext4 "going down" on ``ns``: from now on nothing reaches the disk (EIO for writers).

        Without ``flush_log`` the journal's uncommitted transactions are dropped as well, as
        after a power cut; committed ones (everything fsync'd, which includes every NFS
        COMMIT ganesha acknowledged) are on the disk and will be replayed by the next mount.
        """
        flags = EXT4_GOING_FLAGS_LOGFLUSH if flush_log else EXT4_GOING_FLAGS_NOLOGFLUSH
        rdev = os.stat(self.dev).st_rdev
        ns.run([sys.executable, "-c", _SHUTDOWN_CODE, str(self.mountpoint), str(EXT4_IOC_SHUTDOWN), str(flags),
                str(rdev)])

    def crash(self, ns: NodeNamespace, timeout: float = 10.0) -> float:
        """Node ``ns`` dies with the disk mounted; returns seconds until the disk is free.

        Order: ext4 shutdown (no further writes), SIGKILL of everything in the node's mount
        namespace, then wait until the kernel dropped the superblock (see module docstring).
        The node's namespace is gone afterwards; ``ns.start()`` "reboots" it.
        """
        t0 = time.monotonic()
        if self.mounted_in(ns):
            self.shutdown(ns)
        ns.kill()
        if not self.wait_released(timeout):
            raise LabError(f"{self.dev} still in use {timeout:g} s after node {ns.node} was killed")
        return time.monotonic() - t0

    def fsck(self) -> subprocess.CompletedProcess[str]:
        """Read-only ``e2fsck -fn`` (exit 0 = clean); only while no node has the disk mounted."""
        if self.in_use():
            raise LabError("fsck needs the disk unmounted everywhere")
        return subprocess.run(["e2fsck", "-fn", self.dev], capture_output=True, text=True, timeout=120)

    def close(self) -> None:
        """Detach the loop device and delete the image; safe to call twice.

        A device still mounted somewhere cannot be detached at once: ``losetup -d`` then only
        marks it for auto-clear and the kernel detaches it when the last mount goes away.
        """
        if self._closed:
            return
        self._closed = True
        if self.device is not None:
            subprocess.run(["losetup", "-d", self.device], capture_output=True, timeout=10)
            self.device = None
        self.image.unlink(missing_ok=True)


def freeze(ns: NodeNamespace, timeout: float = 2.0) -> None:
    """SIGSTOP every process of the node and return once all of them are stopped.

    The first instant of a power cut: from here on no daemon of the node can react, so what
    follows (cable pulled, ext4 shut down, processes killed) cannot turn into an orderly release.
    Without it, pulling the cable first lets a daemon see the carrier loss and unmount before
    the ext4 shutdown, which then finds no mount.
    """
    deadline = time.monotonic() + timeout
    while True:
        refs = [ref for ref in map(ProcRef.of, ns.pids()) if ref is not None]
        running = [ref for ref in refs if ref.state() not in (None, "T", "t", "Z", "X")]
        if not running:
            return
        if time.monotonic() > deadline:
            raise LabError(f"node {ns.node}: processes not stopped: {[r.pid for r in running]}")
        for ref in running:
            ref.send_signal(signal.SIGSTOP)
        time.sleep(0.001)


def power_cut(lab: NetnsLab, disk: SharedDisk, ns: NodeNamespace) -> bool:
    """The node loses power; returns whether it still had the disk mounted at that instant.

    Freeze, cable pulled, ext4 shut down without log flush, every process killed, as close
    together as possible. The time between freezing and pulling the cable matters to the
    client: meanwhile the node's kernel still acknowledges at TCP level a request its frozen
    server will never answer, and the client then waits for its RPC timeout.
    """
    freeze(ns)
    lab.set_link(ns.node, False)
    held = disk.mounted_in(ns)
    disk.crash(ns)
    return held


# --------------------------------------------------------------------------------------------
# ganesha
# --------------------------------------------------------------------------------------------


def _conf_string(value: str, what: str) -> str:
    if any(c in value for c in '"\n\r\\') or not value:
        raise ValueError(f"{what} {value!r} cannot be written into ganesha.conf")
    return f'"{value}"'


def _conf_path(value: str | Path, what: str) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, got {text!r}")
    return _conf_string(text, what)


def _conf_client(entry: str) -> str:
    """A CLIENT list entry: an address, a network or *, validated so the config cannot break."""
    if entry != "*":
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"client {entry!r} is not an address, a network or *") from None
    return entry


def render_ganesha_conf(
    *,
    export_path: str | Path,
    recovery_root: str | Path,
    export_id: int = 1,
    pseudo: str = "/export",
    clients: Sequence[str] = (str(SUBNET),),
    protocols: Sequence[int] = (3, 4),
    graceless: bool = True,
    grace_period: int | None = None,
    lease_lifetime: int | None = None,
    server_scope: str = DEFAULT_SCOPE,
    squash: str = "no_root_squash",
    nfs_port: int = NFS_PORT,
    log_level: str = "EVENT",
    extra: str = "",
) -> str:
    """ganesha.conf for one VFS export, with the HA-relevant settings explicit.

    * ``Protocols`` lists the NFS versions served; NFSv3 needs rpcbind on the node.
    * ``Enable_NLM = false`` (no lock manager, so no rpc.statd), ``Enable_RQUOTA = false``,
      ``Enable_UDP = false``: nothing a failover would have to carry beyond the data.
    * ``Mount_Path_Pseudo = true``: NFSv3 mounts the same path (``pseudo``) as NFSv4.
    * ``Graceless``/``Grace_Period``/``Lease_Lifetime`` bound how long clients stall after a
      takeover (ranges from ganesha-core-config(8): grace 0-180 s, lease 0-120 s).
    * ``RecoveryRoot`` must be on the shared disk but outside the export, so the NFSv4
      client records move with the data and are not visible to clients.
    * ``squash`` defaults to no_root_squash because lab clients are root (AUTH_SYS uid 0).
    """
    if not 0 < export_id < 65536:
        raise ValueError("export_id must be 1..65535 (0 is reserved for the pseudo root)")
    if not protocols or set(protocols) - {3, 4}:
        raise ValueError(f"protocols must be a non-empty subset of (3, 4), got {protocols!r}")
    if grace_period is not None and not 0 <= grace_period <= 180:
        raise ValueError("grace_period must be within 0..180 s")
    if lease_lifetime is not None and not 0 <= lease_lifetime <= 120:
        raise ValueError("lease_lifetime must be within 0..120 s")
    if not clients:
        raise ValueError("an export without clients serves nobody")
    export_text, recovery_text = str(export_path), str(recovery_root)
    if recovery_text.rstrip("/") == export_text.rstrip("/") or recovery_text.startswith(export_text.rstrip("/") + "/"):
        raise ValueError("recovery_root must be outside the export (clients would see the client records)")
    for token, what in ((squash, "squash"), (log_level, "log_level")):
        if not _CONF_TOKEN.fullmatch(token):
            raise ValueError(f"{what} {token!r} is not a plain ganesha token")
    protos = ", ".join(str(p) for p in sorted(set(protocols)))
    v4 = [
        f"    Graceless = {'true' if graceless else 'false'};",
        *([f"    Grace_Period = {grace_period};"] if grace_period is not None else []),
        *([f"    Lease_Lifetime = {lease_lifetime};"] if lease_lifetime is not None else []),
        "    RecoveryBackend = fs;",
        f"    RecoveryRoot = {_conf_path(recovery_root, 'recovery_root')};",
        f"    Server_Scope = {_conf_string(server_scope, 'server_scope')};",
    ]
    lines = [
        "# Generated by tests/lab/ganesha.py.",
        "NFS_CORE_PARAM {",
        f"    Protocols = {protos};",
        f"    NFS_Port = {int(nfs_port)};",
        "    Enable_NLM = false;",
        "    Enable_RQUOTA = false;",
        "    Enable_UDP = false;",
        "    Mount_Path_Pseudo = true;",
        "}",
        "NFSv4 {",
        *v4,
        "}",
        "EXPORT {",
        f"    Export_Id = {export_id};",
        f"    Path = {_conf_path(export_path, 'export_path')};",
        f"    Pseudo = {_conf_path(pseudo, 'pseudo')};",
        f"    Protocols = {protos};",
        "    Transports = TCP;",
        "    SecType = sys;",
        f"    Squash = {squash};",
        "    Access_Type = None;",
        "    FSAL { Name = VFS; }",
        "    CLIENT {",
        f"        Clients = {', '.join(_conf_client(c) for c in clients)};",
        "        Access_Type = RW;",
        "    }",
        "}",
        # No Kerberos: saves a keytab lookup and CRIT noise at every start.
        "NFS_KRB5 {",
        "    Active_krb5 = false;",
        "}",
        "LOG {",
        f"    Default_Log_Level = {log_level};",
        "}",
    ]
    if extra:
        lines.append(extra.rstrip("\n"))
    return "\n".join(lines) + "\n"


class GaneshaServer(Closing):
    """ganesha.nfsd for one lab node, as a child process inside the node's namespaces.

    Config, log, pid file and stderr live in ``workdir`` (default ``lab.workdir/ganesha-NODE``),
    a host directory so tests can read them; the export and recovery paths are on the shared
    disk and exist only inside the node that mounted it.
    """

    def __init__(
        self,
        lab: NetnsLab,
        node: str,
        export_dir: str | Path,
        recovery_root: str | Path,
        *,
        ns: NodeNamespace | None = None,
        export_id: int = 1,
        pseudo: str = "/export",
        clients: Sequence[str] = (str(SUBNET),),
        protocols: Sequence[int] = (3, 4),
        graceless: bool = True,
        grace_period: int | None = None,
        lease_lifetime: int | None = None,
        server_scope: str = DEFAULT_SCOPE,
        rpcbind: bool | None = None,
        log_level: str = "EVENT",
        extra_conf: str = "",
        workdir: Path | None = None,
    ) -> None:
        _require_tools(_REQUIRED_TOOLS)
        self.lab = lab
        self.node = node
        self.ns = ns if ns is not None else node_namespace(lab, node, start=False)
        self.export_dir = str(export_dir)
        self.recovery_root = str(recovery_root)
        self.pseudo = pseudo
        self.protocols = tuple(sorted(set(protocols)))
        # NFSv3 clients find MOUNT through rpcbind; ganesha also registers NFS there when it runs.
        self.use_rpcbind = (3 in self.protocols) if rpcbind is None else rpcbind
        self.dir = workdir if workdir is not None else lab.workdir / f"ganesha-{node}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.dir / "ganesha.conf"
        self.log_path = self.dir / "ganesha.log"
        self.pid_path = self.dir / "ganesha.pid"
        self.stderr_path = self.dir / "ganesha.stderr"
        self.conf_path.write_text(
            render_ganesha_conf(
                export_path=export_dir, recovery_root=recovery_root, export_id=export_id, pseudo=pseudo,
                clients=clients, protocols=self.protocols, graceless=graceless, grace_period=grace_period,
                lease_lifetime=lease_lifetime, server_scope=server_scope, log_level=log_level, extra=extra_conf,
            )
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None
        self.stopped_in: float | None = None
        self._closed = False
        lab.add_cleanup(self.close)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> float:
        """Start and wait until the server answers NFS NULL (and MOUNT NULL with v3) inside the node.

        Returns the seconds from spawning to the first good answer.  Raises LabError with the
        log's tail if the export directory is missing on the node (disk not mounted there?),
        if ganesha exits, or on timeout.
        """
        if self.running:
            raise LabError(f"ganesha on {self.node} already runs (pid {self.pid})")
        self.ns.start()
        check = self.ns.run(["test", "-d", self.export_dir], check=False)
        if check.returncode != 0:
            raise LabError(f"node {self.node}: export dir {self.export_dir} does not exist in its mount namespace "
                           "(is the shared disk mounted there?)")  # fmt: skip
        self.ns.run(["mkdir", "-p", self.recovery_root])
        if self.use_rpcbind:
            self.ns.start_rpcbind()
        self.pid_path.unlink(missing_ok=True)
        with self.log_path.open("a") as log:
            log.write(f"==== lab: starting ganesha on {self.node} at monotonic {time.monotonic():.6f}\n")
        t0 = time.monotonic()
        with self.stderr_path.open("ab") as err:
            self.proc = self.ns.popen(
                ["ganesha.nfsd", "-F", "-f", str(self.conf_path), "-L", str(self.log_path), "-p", str(self.pid_path)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            )  # fmt: skip
        proc = self.proc
        if not wait_until(lambda: proc.poll() is not None or self.healthy(), timeout, interval=0.02):
            self.kill()
            raise LabError(f"ganesha on {self.node} not answering after {timeout:g} s:\n{self.log_tail()}")
        if proc.poll() is not None:
            raise LabError(f"ganesha on {self.node} exited with {proc.returncode} at startup:\n{self.log_tail()}")
        self.started_in = time.monotonic() - t0
        return self.started_in

    @property
    def running(self) -> bool:
        """Our ganesha child has not exited."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the running server (our child), None when not running."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def pid_from_file(self) -> int | None:
        """What ganesha wrote to its pid file (-p); the agent would read this one."""
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID and wait (SIGKILL after ``timeout``); returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stopped_in = time.monotonic() - t0
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL by PID (a crash of the server process alone) and reap it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    def close(self) -> None:
        """Stop the server if it still runs; safe to call twice."""
        if not self._closed:
            self._closed = True
            self.stop()

    # -- health ----------------------------------------------------------------------------------

    def nfs_null(self, version: int = 4, timeout: float = 2.0) -> bool:
        """NFS NULL call over TCP to 127.0.0.1:2049 from inside the node (no rpcbind involved).

        Not ``rpcinfo -n 2049``: Debian's rpcinfo asks rpcbind first even with -n and so
        fails on an NFSv4-only node, which needs no rpcbind.
        """
        return rpc_null(self.lab, self.node, "127.0.0.1", NFS_PORT, NFS_PROGRAM, version, timeout)

    def mount_null(self, timeout: float = 3.0) -> bool:
        """MOUNT v3 NULL, looked up through the node's rpcbind (what an NFSv3 client does)."""
        argv = ["rpcinfo", "-t", "127.0.0.1", str(MOUNT_PROGRAM), "3"]
        try:
            return self.ns.run(argv, check=False, timeout=timeout).returncode == 0
        except (subprocess.TimeoutExpired, LabError):
            return False

    def healthy(self) -> bool:
        """Process alive, NFS NULL answered for every served version, MOUNT too with v3 + rpcbind."""
        if not self.running:
            return False
        if not all(self.nfs_null(v) for v in self.protocols):
            return False
        return not (3 in self.protocols and self.use_rpcbind) or self.mount_null()

    # -- logs ------------------------------------------------------------------------------------

    def log(self) -> str:
        """ganesha's log file plus anything it wrote to stderr."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            if text:
                parts.append(text)
        return "".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of log(), for error messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def grace_state(self) -> bool | None:
        """True while ganesha reports being in grace, False after it left (or skipped) it, None if unknown."""
        state: bool | None = None
        for line in self.log().splitlines():
            # ganesha 4.3: "NFS Server Now IN GRACE, duration N", "NFS Server Now NOT IN GRACE",
            # "NFS Server skipping GRACE (Graceless is true)"
            if "NOT IN GRACE" in line or "skipping GRACE" in line:
                state = False
            elif "IN GRACE" in line:
                state = True
        return state


_RPC_NULL_CODE = """
import os, socket, struct, sys
host, port, prog, vers, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
xid = int.from_bytes(os.urandom(4), "big")
# CALL, RPC version 2, procedure 0 (NULL), AUTH_NONE credential and verifier
call = struct.pack("!IIIIIIIIII", xid, 0, 2, prog, vers, 0, 0, 0, 0, 0)
with socket.create_connection((host, port), timeout=timeout) as s:
    s.sendall(struct.pack("!I", 0x80000000 | len(call)) + call)
    data = b""
    while len(data) < 4 or len(data) < 4 + (struct.unpack("!I", data[:4])[0] & 0x7FFFFFFF):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed before the reply")
        data += chunk
rxid, mtype, stat, _flavor, vlen = struct.unpack("!IIIII", data[4:24])
accept = struct.unpack("!I", data[24 + vlen : 28 + vlen])[0] if stat == 0 else None
if (rxid, mtype, stat, accept) != (xid, 1, 0, 0):
    sys.exit(f"bad reply: xid ok {rxid == xid}, type {mtype}, reply_stat {stat}, accept_stat {accept}")
"""


def rpc_null(lab: NetnsLab, node: str, host: str, port: int, program: int, version: int,
             timeout: float = 2.0) -> bool:  # fmt: skip
    """ONC RPC NULL procedure over TCP from ``node``'s network namespace; True if it succeeded.

    A NULL reply with accept_stat SUCCESS proves the RPC dispatcher is up and serves that
    program and version (PROG_UNAVAIL / PROG_MISMATCH count as failure).
    """
    argv = [sys.executable, "-I", "-S", "-c", _RPC_NULL_CODE, host, str(port), str(program), str(version),
            repr(timeout)]  # fmt: skip
    try:
        return lab.run(node, argv, check=False, timeout=timeout + 5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# --------------------------------------------------------------------------------------------
# Moving the service address by hand
# --------------------------------------------------------------------------------------------

_GARP_CODE = """
import socket, struct, sys, time
dev, ip, count, gap = sys.argv[1], socket.inet_aton(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0x0806))
mac = s.getsockname()[4]
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip
frame = (b"\\xff" * 6 + mac + b"\\x08\\x06" + arp).ljust(60, b"\\0")
for i in range(count):
    if i:
        time.sleep(gap)
    s.send(frame)
"""


def _with_prefix(ip: str) -> str:
    return ip if "/" in ip else f"{ip}/{PREFIXLEN}"


def add_vip(lab: NetnsLab, node: str, vip: str, dev: str = DEFAULT_DEV) -> None:
    """``ip addr add VIP dev eth0`` on the node (prefix defaults to the lab's /24)."""
    lab.run(node, ["ip", "addr", "add", _with_prefix(vip), "dev", dev])


def del_vip(lab: NetnsLab, node: str, vip: str, dev: str = DEFAULT_DEV) -> None:
    """Remove the VIP from the node; not an error if it is not there."""
    if lab.has_address(node, vip, dev):
        lab.run(node, ["ip", "addr", "del", _with_prefix(vip), "dev", dev])


def send_garp(lab: NetnsLab, node: str, ip: str, dev: str = DEFAULT_DEV, count: int = 3, gap: float = 0.05) -> None:
    """Gratuitous ARP for ``ip`` from the node's interface, the way keepalived sends it.

    An ARP *request* with sender = target = ip and target MAC 00:00:00:00:00:00: Linux
    neighbours accept that even within their 1 s locktime (DOMAIN.md).  Without it a client
    keeps sending to the old node's MAC for tens of seconds.  Written here (raw AF_PACKET)
    rather than with arping, whose two Debian flavours differ in flags and in the frame -U sends.
    """
    bare = ip.split("/", 1)[0]
    ipaddress.IPv4Address(bare)
    lab.run(node, [sys.executable, "-c", _GARP_CODE, dev, bare, str(count), repr(gap)])
