"""User-mode-linux lab: nodes with a real kernel, so tests get real DRBD 8.4 and kernel nfsd.

The host kernel has neither DRBD nor nfsd (see shared/LABS.md section 4), but Debian's UML
kernel (``/usr/bin/linux.uml``, 6.1) ships both as modules.  A UML "node" is an ordinary
host process tree running a guest Linux; no KVM is needed.

Layout for ``UmlLab("t", nodes=("a", "b"), client=True)``::

    namespace t-uml (host side, nothing touches the host's own namespace)
      br-svc  192.0.2.0/24    a-svc  b-svc  client-svc   (taps, one per guest interface)
      br-rep  198.51.100.0/24 a-rep  b-rep
    node a: eth0 192.0.2.1/24    02:00:00:00:00:0a   eth1 198.51.100.1/24 02:00:00:00:01:0a
    node b: eth0 192.0.2.2/24    02:00:00:00:00:0b   eth1 198.51.100.2/24 02:00:00:00:01:0b
    client: eth0 192.0.2.10/24   02:00:00:00:00:10
    ubd0 = copy-on-write root over the shared cached image, ubd1 = DRBD backing disk

Addresses and MACs match tests/lab/netns.py, so agent configs work in both labs.  Only the
documentation ranges 192.0.2.0/24 and 198.51.100.0/24 are used.

Each node runs as ``ip netns exec NS unshare --pid --fork --kill-child linux.uml ...`` in a
new session: SIGKILL of the unshare process kills the UML kernel (PDEATHSIG), and with it
every host process of that guest (they share the PID namespace it led): a real crash,
nothing left behind.

Commands reach the guest over a UML serial line wired to two host pipes
(``ssl0=fd:R,fd:W``): the host drops ``ID.req`` into a per-node shared directory (hostfs,
``/lab`` in the guest) and writes ``ID`` to the pipe; the guest's init (tests/lab/uml/init.sh)
runs it and answers ``done ID STATUS`` with stdout/stderr left in ``ID.out``/``ID.err``.
Both sides block on pipes, so an idle node costs no CPU and a command round trip takes a
few milliseconds plus the command's own fork/exec.

Known differences from a real server (see also tests/test_uml_smoke.py):

* no systemd, no journald: the agent must run in the foreground and tolerate a missing
  NOTIFY_SOCKET and journal; ``python3`` is the image's venv ``/opt/failover-agent/venv``
  and the working tree is at ``/opt/failover-agent/src`` (read-only);
* a link cut detaches the host-side tap from its bridge: packets vanish, but the guest sees
  no carrier change (UML's vector driver has no carrier signalling);
* hostfs writes reach the host when the guest closes the file, so files a daemon keeps open
  are read through ``run(["cat", ...])`` rather than from the host side.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tests.lab.netns import (
    NETNS_DIR,
    Closing,
    CommandError,
    LabError,
    ProcRef,
    pids_in_namespace,
    pids_in_netns,
    require_root_and_tools,
    wait_until,
)

__all__ = [
    "CLIENT",
    "DRBD_DISK",
    "IMAGE_CACHE",
    "REPLICATION",
    "SERVICE",
    "WORK_ROOT",
    "DrbdResource",
    "DrbdState",
    "ImageRecipe",
    "NfsServer",
    "SpawnedProcess",
    "UmlLab",
    "UmlNode",
    "capture_drbd_fixtures",
    "connected_uptodate",
    "default_recipe",
    "drbd_bootstrap",
    "drbd_state",
    "drbd_up",
    "ensure_host_packages",
    "ensure_image",
    "nfs_mount",
    "parse_proc_drbd",
    "timed",
    "wait_drbd",
]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "uml" / "init.sh"

LINUX_UML = Path("/usr/bin/linux.uml")
UML_MODULES = Path("/usr/lib/uml/modules")
IMAGE_CACHE = Path("/var/tmp/failover-agent-images")
# tmpfs: the COW files, DRBD disks and UML's memory files are rewritten constantly and need
# no persistence; RAM keeps the (2-core) host's I/O out of the measurements.
WORK_ROOT = Path("/dev/shm/failover-agent-uml")
CONSOLE_KEEP = Path("/var/tmp/failover-agent-uml-consoles")  # the last lab's consoles, per prefix

GUEST_INIT = "/usr/sbin/lab-init"  # /sbin is a symlink (merged /usr), which debugfs does not follow
GUEST_VENV = "/opt/failover-agent/venv"
GUEST_SRC = "/opt/failover-agent/src"
GUEST_SHARED = "/lab"
GUEST_PYTHON = f"{GUEST_VENV}/bin/python3"
DRBD_DISK = "/dev/ubdb"  # ubd1

SERVICE = "svc"
REPLICATION = "rep"
CLIENT = "client"

_PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,15}")
_NODE_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
# Anything that goes onto the kernel command line: no blanks, no quotes, no commas in paths.
_CMDLINE_SAFE = re.compile(r"[A-Za-z0-9_./:@+-]+")
_HOST_TOOLS = ("ip", "bridge", "unshare", "nsenter", "truncate")


def _log(message: str) -> None:
    """Progress of slow steps (image build, boots) on stderr: pytest shows it on failure."""
    print(f"[uml] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """One L2 segment: a bridge in the lab namespace and one guest interface per member."""

    name: str
    bridge: str
    guest_dev: str
    prefix: str  # first three octets
    mac_byte: int  # 5th MAC byte, so a capture tells the networks apart


NETWORKS: dict[str, Network] = {
    SERVICE: Network(SERVICE, "br-svc", "eth0", "192.0.2", 0x00),
    REPLICATION: Network(REPLICATION, "br-rep", "eth1", "198.51.100", 0x01),
}
CLIENT_HOST_BYTE = 10  # 192.0.2.10, as in the netns lab


def _ip_of(net: Network, host_byte: int) -> str:
    return f"{net.prefix}.{host_byte}"


def _mac_of(net: Network, host_byte: int) -> str:
    # a (1) -> ..:0a, b (2) -> ..:0b, client (10) -> ..:10: the netns lab's MACs.
    last = 0x10 if host_byte == CLIENT_HOST_BYTE else 0x09 + host_byte
    return f"02:00:00:00:{net.mac_byte:02x}:{last:02x}"


# --------------------------------------------------------------------------------------------
# Host packages and the root image
# --------------------------------------------------------------------------------------------


def uml_kernel_version() -> str:
    """Version directory of the UML modules, e.g. ``6.1.0-...``; there is exactly one."""
    versions = sorted(p.name for p in UML_MODULES.iterdir() if p.is_dir()) if UML_MODULES.is_dir() else []
    if len(versions) != 1:
        raise LabError(f"expected one UML module tree under {UML_MODULES}, found {versions or 'none'}")
    return versions[0]


def ensure_host_packages(install: bool = True) -> None:
    """Make sure linux.uml and debootstrap are there, installing them if allowed.

    A fresh CI machine has neither; failing with "linux.uml not found" would only push the
    same apt-get onto every developer, so the lab installs them itself (idempotent, ~40 MB).
    """
    require_root_and_tools(_HOST_TOOLS)
    missing = [pkg for pkg, path in (("user-mode-linux", LINUX_UML), ("debootstrap", Path("/usr/sbin/debootstrap")))
               if not path.exists()]  # fmt: skip
    if not missing:
        return
    if not install:
        raise LabError(f"the UML lab needs the Debian packages {', '.join(missing)}")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600", *missing]
    _log(f"installing {' '.join(missing)}")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        # The package lists may be missing on a fresh machine: update once and retry.
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=600)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise LabError(f"could not install {' '.join(missing)}: {result.stderr.strip()[-2000:]}")


GUEST_PACKAGES = (
    "drbd-utils",
    "nfs-kernel-server",
    "nfs-common",
    "kmod",
    "iproute2",
    "e2fsprogs",
    "procps",
    "iputils-ping",
    "iputils-arping",
    "python3",
    "python3-venv",
    # Debian's build of systemd-python: `import systemd.daemon` works although no systemd
    # runs in the guest (notify() returns False without NOTIFY_SOCKET, journal.send is a
    # no-op), and it costs nothing to build.  The venv sees it via --system-site-packages.
    "python3-systemd",
    "psmisc",
    "util-linux",
)
# Bump when the build steps change in a way the inputs below do not capture.
RECIPE_VERSION = 1


def _python_requirements(pyproject: Path = REPO / "pyproject.toml") -> tuple[str, ...]:
    """The project's runtime dependencies, minus systemd-python (installed from Debian)."""
    data = tomllib.loads(pyproject.read_text())
    deps: list[str] = data["project"]["dependencies"]
    return tuple(d for d in deps if not re.match(r"systemd[-_]python\b", d))


@dataclass(frozen=True)
class ImageRecipe:
    """Everything the root image is built from; its hash names the cached image.

    Two cache levels: the debootstrapped tree (slow: minutes) depends only on the suite,
    packages and Python requirements; the ext4 image (fast: seconds) additionally on the
    init script, so editing init.sh does not re-run debootstrap.
    """

    suite: str = "bookworm"
    packages: tuple[str, ...] = GUEST_PACKAGES
    python_requirements: tuple[str, ...] = ()
    init_script: bytes = b""
    image_size: str = "1G"
    version: int = RECIPE_VERSION

    def rootfs_key(self) -> str:
        """Hash of what debootstrap and pip produce."""
        blob = json.dumps([self.version, self.suite, sorted(self.packages), list(self.python_requirements)])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def image_key(self) -> str:
        """Hash of the final image: the tree plus init script and filesystem size."""
        blob = json.dumps([self.rootfs_key(), hashlib.sha256(self.init_script).hexdigest(), self.image_size])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_recipe() -> ImageRecipe:
    """The recipe for the current working tree (its pyproject and init script)."""
    return ImageRecipe(python_requirements=_python_requirements(), init_script=INIT_SCRIPT.read_bytes())


def _host_debian_mirror() -> str | None:
    """The Debian mirror the host's apt uses, so debootstrap takes the same (proxied) path.

    Read from /etc/apt rather than written into this file; None lets debootstrap use its
    default.
    """
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
            )
            suites = fields.get("Suites", "").split()
            if "bookworm" in suites and "main" in fields.get("Components", "").split():
                candidates.extend(fields.get("URIs", "").split())
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "deb" and parts[2] == "bookworm" and not parts[1].startswith("["):
                candidates.append(parts[1])
    return next((c for c in candidates if not c.rstrip("/").endswith("-security")), None)


def _run_logged(cmd: Sequence[str], log: TextIO, timeout: float, what: str, **kwargs: Any) -> None:
    """Run a build step with its output in the build log; raise with the log's tail on failure."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, **kwargs)
    if result.returncode != 0:
        log.flush()
        tail = Path(log.name).read_text(errors="replace")[-3000:]
        raise LabError(f"image build: {what} failed (exit {result.returncode}); log {log.name}:\n{tail}")


def _chroot_cmd(root: Path, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` chrooted into ``root`` with /proc mounted in a private mount namespace.

    The private namespace means the proc mount disappears with the command: an interrupted
    build cannot leave mounts inside the cache directory.
    """
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *argv]


def _build_rootfs(recipe: ImageRecipe, dest: Path, log: TextIO) -> None:
    """debootstrap + venv + pip into ``dest`` (a fresh directory)."""
    mirror = _host_debian_mirror()
    cmd = ["debootstrap", "--variant=minbase", "--components=main",
           "--include=" + ",".join(recipe.packages), recipe.suite, str(dest)]  # fmt: skip
    if mirror:
        cmd.append(mirror)
    _run_logged(cmd, log, 1800, "debootstrap")

    # pip runs inside the guest's own Python 3.11 so wheels match it.  It needs the host's
    # resolver, pip settings and CA bundle (a proxy's CA may only be in the host's) for the
    # install only.  The bundle replaces the guest's at the standard path, because the
    # host's environment (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE...) points
    # there and pip honours those over --cert; the guest's own bundle is put back after.
    saved: dict[Path, bytes | None] = {}
    for host_file in (Path("/etc/resolv.conf"), Path("/etc/pip.conf"), Path("/etc/ssl/certs/ca-certificates.crt")):
        inside = dest / host_file.relative_to("/")
        if host_file.is_file():
            saved[inside] = inside.read_bytes() if inside.is_file() else None
            inside.parent.mkdir(parents=True, exist_ok=True)
            inside.unlink(missing_ok=True)
            shutil.copyfile(host_file, inside)
    try:
        _run_logged(_chroot_cmd(dest, ["python3", "-m", "venv", "--system-site-packages", GUEST_VENV]),
                    log, 600, "python venv")  # fmt: skip
        if recipe.python_requirements:
            pip = [f"{GUEST_VENV}/bin/pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                   *recipe.python_requirements]  # fmt: skip
            what = "pip install " + " ".join(recipe.python_requirements)
            _run_logged(_chroot_cmd(dest, pip), log, 1200, what)
    finally:
        for inside, content in saved.items():
            inside.unlink(missing_ok=True)
            if content is not None:
                inside.write_bytes(content)
    site = dest / GUEST_VENV.lstrip("/") / "lib"
    site_dirs = list(site.glob("python3*/site-packages"))
    if len(site_dirs) != 1:
        raise LabError(f"image build: expected one site-packages under {site}, found {site_dirs}")
    # The working tree is mounted there at boot: `python3 -m agent.daemon` runs current code.
    (site_dirs[0] / "failover-agent-src.pth").write_text(GUEST_SRC + "\n")
    (dest / GUEST_SRC.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (dest / "etc/fstab").write_text("# filesystems are mounted by /sbin/lab-init\n")
    # Shrink: package caches and docs are never used in the guest.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
        target = dest / junk
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                elif child.name != "lock":
                    child.unlink(missing_ok=True)


def _make_image(recipe: ImageRecipe, rootfs: Path, dest: Path, log: TextIO) -> None:
    """mkfs.ext4 -d (no loop device, no mount) and drop the init script in with debugfs.

    debugfs instead of copying init.sh into the cached tree keeps that tree immutable, so
    concurrent builds of different init scripts cannot see each other's file.
    """
    with tempfile.NamedTemporaryFile(prefix="lab-init-", delete=False) as tmp:
        tmp.write(recipe.init_script)
        init_path = Path(tmp.name)
    try:
        os.chmod(init_path, 0o755)
        subprocess.run(["truncate", "-s", recipe.image_size, str(dest)], check=True)
        _run_logged(["mkfs.ext4", "-q", "-F", "-L", "lab-root", "-d", str(rootfs), str(dest)], log, 600, "mkfs.ext4")
        for request in (f"write {init_path} {GUEST_INIT}", f"sif {GUEST_INIT} mode 0100755",
                        f"sif {GUEST_INIT} uid 0", f"sif {GUEST_INIT} gid 0"):  # fmt: skip
            _run_logged(["debugfs", "-w", "-R", request, str(dest)], log, 60, f"debugfs {request}")
        check = subprocess.run(["debugfs", "-R", f"stat {GUEST_INIT}", str(dest)], capture_output=True, text=True)
        if "Mode:  0755" not in check.stdout:
            raise LabError(f"image build: {GUEST_INIT} not installed executable: {check.stdout[:500]}")
    finally:
        init_path.unlink(missing_ok=True)


def ensure_image(recipe: ImageRecipe | None = None, cache: Path = IMAGE_CACHE) -> Path:
    """Path of the root image for ``recipe``, building what the cache lacks.

    Cache layout (keys are recipe hashes): ``rootfs-KEY/`` the debootstrapped tree,
    ``image-KEY.img`` the ext4 image, ``image-KEY.json`` its manifest (build times, sizes),
    ``build-KEY.log`` the last build log.  A flock serialises builds between processes;
    everything is built under a temporary name and renamed, so a killed build leaves no
    half-made entry that a later run would trust.
    """
    recipe = recipe or default_recipe()
    ensure_host_packages()
    cache.mkdir(parents=True, exist_ok=True)
    image = cache / f"image-{recipe.image_key()}.img"
    if image.exists():
        os.utime(image)  # mtime = last use, for _prune_cache
        return image
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.exists():
            return image
        manifest: dict[str, Any] = {"recipe": {
            "suite": recipe.suite, "packages": list(recipe.packages),
            "python_requirements": list(recipe.python_requirements), "version": recipe.version,
            "init_sha256": hashlib.sha256(recipe.init_script).hexdigest(), "image_size": recipe.image_size,
        }, "rootfs_key": recipe.rootfs_key(), "image_key": recipe.image_key()}  # fmt: skip
        rootfs = cache / f"rootfs-{recipe.rootfs_key()}"
        log_path = cache / f"build-{recipe.image_key()}.log"
        with log_path.open("w") as log:
            if not rootfs.is_dir():
                _log(f"building root tree {rootfs.name} (debootstrap, minutes; log {log_path})")
                started = time.monotonic()
                partial = cache / f".partial-{rootfs.name}"
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                try:
                    _build_rootfs(recipe, partial, log)
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                partial.rename(rootfs)
                seconds = round(time.monotonic() - started, 1)
                rootfs_info = {"rootfs_build_seconds": seconds, "rootfs_bytes": _du(rootfs)}
                rootfs.with_name(rootfs.name + ".json").write_text(json.dumps(rootfs_info) + "\n")
            with contextlib.suppress(OSError, ValueError):
                manifest.update(json.loads(rootfs.with_name(rootfs.name + ".json").read_text()))
            os.utime(rootfs)
            _log(f"making image {image.name}")
            started = time.monotonic()
            partial_img = cache / f".partial-{image.name}"
            try:
                _make_image(recipe, rootfs, partial_img, log)
            except BaseException:
                partial_img.unlink(missing_ok=True)
                raise
            manifest["image_build_seconds"] = round(time.monotonic() - started, 1)
            manifest["image_bytes_used"] = partial_img.stat().st_blocks * 512
            (cache / f"image-{recipe.image_key()}.json").write_text(json.dumps(manifest, indent=2) + "\n")
            partial_img.rename(image)
        _prune_cache(cache, rootfs.name, image.name)
    return image


def _prune_cache(cache: Path, keep_rootfs: str, keep_image: str) -> None:
    """Drop entries of other recipes: images unused for an hour, trees unused for a day.

    Only names this module creates are touched (the directory is shared with other lab
    builders).  The age threshold spares a lab of another work tree that is running now: a
    COW file names its backing image, so deleting that image would break the lab's reboots.
    """
    now = time.time()
    for entry in cache.iterdir():
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:  # an image's manifest or log, removed with it above
            continue
        if entry.name.startswith("image-") and entry.suffix == ".img" and entry.name != keep_image and age > 3600:
            entry.unlink(missing_ok=True)
            entry.with_suffix(".json").unlink(missing_ok=True)
            (cache / f"build-{entry.stem.removeprefix('image-')}.log").unlink(missing_ok=True)
        elif entry.name.startswith("rootfs-") and entry.is_dir() and entry.name != keep_rootfs and age > 86400:
            shutil.rmtree(entry, ignore_errors=True)
            entry.with_name(entry.name + ".json").unlink(missing_ok=True)


def _du(path: Path) -> int:
    """Allocated bytes below ``path`` (what `du -s` says), without following symlinks."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


# --------------------------------------------------------------------------------------------
# Host CPU quirk: UML 6.1 and large XSAVE areas
# --------------------------------------------------------------------------------------------

# Debian bookworm's UML 6.1 (user-mode-linux 6.1um4+b13, kernel 6.1.176) saves and restores
# its guests' FPU state with ptrace(PTRACE_{GET,SET}REGSET, NT_X86_XSTATE) and a buffer of a
# fixed 2696 bytes (0xa88 in the binary: the standard XSAVE layout up to PKRU, AVX-512 + PKU).
# The host kernel clamps the request to its own XSAVE size but takes a SETREGSET only with
# exactly that size, so the buffer does on hosts whose XSAVE area is at most 2696 bytes
# (measured on an AVX-512 host without AMX, 2688 bytes: UML gets and sets 2688 bytes and a guest
# program's YMM, ZMM and mask registers survive page faults), and not on larger ones (AMX:
# 11 KiB), where every guest process dies with "userspace - ptrace set fp regs failed, errno =
# 14" and the init's death panics the node.
#
# On those hosts a seccomp filter on the node's host processes makes UML's probing GETREGSET
# fail (EIO); UML then falls back to PTRACE_{GET,SET}FPREGS (the 512-byte FXSAVE area: x87 +
# SSE), which every x86-64 host supports, and carries only that part of a guest process's
# registers.  Measured with a guest program checking its registers: every guest page fault
# (UML lets the host SIGSEGV run its stub's signal handler, which starts with a reset FPU, and
# restores only the FXSAVE part) zeroes the upper halves of YMM0-15, bits 256-511 of ZMM0-15,
# all of ZMM16-31 and the masks k1-k7; XMM0-15 survive, and everything survives system calls
# and timer ticks.  What breaks depends on the code glibc picks for the CPU: on an AMX host,
# glibc's EVEX strchrnul broke printf in every guest program; on the AVX-512 host without AMX,
# bash run as init segfaulted in its startup qsort (of its builtins) before reading a line of
# init.sh, dash lost an exported variable and modprobe misparsed its options; with glibc's AVX
# code switched off (GLIBC_TUNABLES) each of them worked.
#
# So the filter goes only where UML's buffer is too small (_xstate_filter_needed() asks the
# host kernel for its size the way UML does), and on every host the guest's glibc and OpenSSL
# leave AVX alone (GUEST_NO_AVX_ENV), so that guests run the same code everywhere and survive
# the fallback: the variables are on the kernel command line, whose KEY=VALUE words the kernel
# passes to init as its environment, so they hold from the first instruction of the first guest
# program.  Programs the guest kernel starts itself (modprobe, DRBD's and nfsd's helpers) get a
# fixed environment without them; init.sh wraps those in dash scripts that add them, which under
# the filter relies on dash starting without them (it did on the AMX host).
# Newer upstream UML kernels size the buffer by the host's answer to their probe (read in their
# source, not tried here) and need none of this.
GUEST_NO_AVX_ENV = {
    # glibc 2.36's names; AVX_Fast_Unaligned_Load also selects AVX code
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL,"
    "-AVX512ER,-AVX512PF,-AVX_VNNI,-FMA,-FMA4,-AVX_Fast_Unaligned_Load",
    # OpenSSL_ia32cap layout: AVX, FMA, F16C in the first word; AVX2, AVX-512*, VAES,
    # VPCLMULQDQ in the second
    "OPENSSL_ia32cap": "~0x3000100000000000:~0x5e42dc230020",
}
UML_XSTATE_BYTES = 2696
_IS_X86_64 = os.uname().machine == "x86_64"
_AUDIT_ARCH_X86_64 = 0xC000003E
_NR_PTRACE_X86_64 = 101
_PTRACE_GETREGSET, _PTRACE_SETREGSET, _NT_X86_XSTATE = 0x4204, 0x4205, 0x202
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_PTRACE_ATTACH, _PTRACE_DETACH = 16, 17


def host_xstate_bytes() -> int | None:
    """The host's XSAVE area as ptrace's NT_X86_XSTATE regset has it; None if unknown.

    Asked of a stopped ``sleep`` child with a 64 KiB buffer, which the kernel shortens to its
    regset size: the size a SETREGSET must have.
    """
    import ctypes

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    libc = ctypes.CDLL(None, use_errno=True)
    ptrace = libc.ptrace
    ptrace.restype = ctypes.c_long
    ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    buf = ctypes.create_string_buffer(1 << 16)
    iov = Iovec(ctypes.addressof(buf), len(buf))
    child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        if ptrace(_PTRACE_ATTACH, child.pid, None, None) != 0:
            return None
        os.waitpid(child.pid, 0)  # the attach stop
        ok = ptrace(_PTRACE_GETREGSET, child.pid, _NT_X86_XSTATE, ctypes.addressof(iov)) == 0
        ptrace(_PTRACE_DETACH, child.pid, None, None)
        return int(iov.len) if ok else None
    finally:
        child.kill()
        child.wait()


@functools.cache
def _xstate_filter_needed() -> bool:
    """Whether UML's XSTATE buffer is too small for this host (asked once; unknown: yes)."""
    size = host_xstate_bytes() if _IS_X86_64 else 0
    return size is None or size > UML_XSTATE_BYTES


def _xstate_filter() -> bytes:
    """Classic BPF: ptrace(PTRACE_GET/SETREGSET, _, NT_X86_XSTATE, _) -> EIO, everything else allowed."""
    import struct

    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    # seccomp_data: nr @0, arch @4, ip @8, args[i] @16+8i (low 32 bits first, little-endian)
    prog = [
        (ld_abs, 0, 0, 4),
        (jeq, 0, 8, _AUDIT_ARCH_X86_64),  # other ABIs: allow (index 10)
        (ld_abs, 0, 0, 0),
        (jeq, 0, 6, _NR_PTRACE_X86_64),
        (ld_abs, 0, 0, 16),  # request
        (jeq, 1, 0, _PTRACE_GETREGSET),
        (jeq, 0, 3, _PTRACE_SETREGSET),
        (ld_abs, 0, 0, 32),  # addr: the regset type
        (jeq, 0, 1, _NT_X86_XSTATE),
        (ret, 0, 0, _SECCOMP_RET_ERRNO | 5),  # EIO
        (ret, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


class _NoXstate:
    """A preexec_fn installing the filter; everything is allocated before the fork."""

    def __init__(self) -> None:
        import ctypes

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        code = _xstate_filter()
        self._buf = ctypes.create_string_buffer(code, len(code))
        self._prog = SockFprog(len(code) // 8, ctypes.addressof(self._buf))
        libc = ctypes.CDLL(None, use_errno=True)
        self._prctl = libc.prctl
        self._prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
        self._arg = ctypes.cast(ctypes.pointer(self._prog), ctypes.c_void_p)

    def __call__(self) -> None:
        # root (CAP_SYS_ADMIN) needs no PR_SET_NO_NEW_PRIVS; the filter survives exec and fork
        if self._prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self._arg, 0, 0) != 0:
            os.write(2, b"lab: cannot install the XSTATE seccomp filter\n")
            os._exit(126)


# --------------------------------------------------------------------------------------------
# The command channel
# --------------------------------------------------------------------------------------------


class _Channel:
    """The host ends of the guest's serial line: requests out, ``ready``/``done`` lines in."""

    def __init__(self) -> None:
        self.guest_in, self.host_out = os.pipe()  # guest reads requests from guest_in
        self.host_in, self.guest_out = os.pipe()  # guest writes answers to guest_out
        self._buf = b""

    @property
    def guest_fds(self) -> tuple[int, int]:
        """The fds the UML process inherits (ssl0=fd:IN,fd:OUT)."""
        return self.guest_in, self.guest_out

    def spawned(self) -> None:
        """Drop our copies of the guest's ends, so the guest's death shows as EOF."""
        for fd in (self.guest_in, self.guest_out):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.guest_in = self.guest_out = -1

    def send(self, line: str) -> None:
        try:
            os.write(self.host_out, line.encode() + b"\n")
        except BrokenPipeError:
            raise LabError("the guest's command channel is closed (node down?)") from None

    def expect(self, predicate: Callable[[str], bool], deadline: float) -> str | None:
        """Next line satisfying ``predicate``; None on timeout; LabError on EOF."""
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode(errors="replace").strip("\r\x00 ")
                if predicate(line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.host_in], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.host_in, 4096)
            if not chunk:
                raise LabError("the guest closed its command channel (node halted or crashed)")
            self._buf += chunk

    def close(self) -> None:
        for fd in (self.guest_in, self.guest_out, self.host_in, self.host_out):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.guest_in = self.guest_out = self.host_in = self.host_out = -1


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


@dataclass
class SpawnedProcess:
    """A background process in a guest (a daemon under test), identified by its guest PID."""

    node: UmlNode
    pid: int
    log_path: str

    def alive(self) -> bool:
        """Whether the PID still runs and is not a zombie (init reaps those promptly).

        Read from /proc rather than ps(1): procps 4's ps fails in UML for some formats
        ("Unable to get system boot time").
        """
        result = self.node.run(["cat", f"/proc/{self.pid}/stat"], check=False, timeout=10)
        if result.returncode != 0 or ")" not in result.stdout:
            return False
        return result.stdout[result.stdout.rindex(")") + 2 :].split()[0] not in ("Z", "X")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` inside the guest (PIDs are the guest's, not the host's)."""
        self.node.run(["kill", f"-{int(sig)}", str(self.pid)], check=False, timeout=10)

    def log(self) -> str:
        """The process' stdout+stderr so far (read in the guest: hostfs would lag)."""
        return self.node.run(["cat", self.log_path], check=False, timeout=10).stdout


@dataclass(eq=False)
class UmlNode:
    """One guest: its disks, taps, UML process and command channel.

    Created by UmlLab; ``boot()`` may be called again after ``crash()`` or ``shutdown()``:
    the COW root and the DRBD disk survive, like a machine's disks across a power cycle.
    """

    lab: UmlLab
    name: str
    host_byte: int
    networks: tuple[str, ...]
    disk_mb: int
    mem: str
    boot_seconds: float | None = None
    guest_uptime_at_ready: float | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _channel: _Channel | None = None
    _pidns: tuple[int, int] | None = None
    _next_id: int = 0
    _started_at: float = 0.0
    _cut: set[str] = field(default_factory=set)
    # One request at a time on the command channel (the guest serves them in order anyway):
    # lets a watcher thread sample a node while the test drives it.  Reentrant: write_file runs.
    _chan_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _ready: bool = False
    # requests that got no answer within 2 s, so the channel was nudged: (id, argv[:3], nudges, answered)
    nudges: list[tuple[int, list[str], int, bool]] = field(default_factory=list, repr=False)

    # -- names and paths -----------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        """Host directory with this node's COW root, DRBD disk, console log and shared dir."""
        return self.lab.workdir / self.name

    @property
    def shared(self) -> Path:
        """Host side of the guest's /lab (hostfs)."""
        return self.dir / "lab"

    @property
    def cow(self) -> Path:
        return self.dir / "root.cow"

    @property
    def disk(self) -> Path | None:
        """Host file behind /dev/ubdb, None for a node without a DRBD disk (the client)."""
        return self.dir / "drbd.img" if self.disk_mb else None

    @property
    def console_path(self) -> Path:
        return self.dir / "console.log"

    def tap(self, net: str) -> str:
        """Host-side tap of this node's interface on ``net`` (in the lab namespace)."""
        self._require_net(net)
        return f"{self.name}-{net}"

    def ip(self, net: str = SERVICE) -> str:
        """The node's address on ``net`` (no prefix length)."""
        self._require_net(net)
        return _ip_of(NETWORKS[net], self.host_byte)

    def mac(self, net: str = SERVICE) -> str:
        self._require_net(net)
        return _mac_of(NETWORKS[net], self.host_byte)

    def dev(self, net: str = SERVICE) -> str:
        """Guest interface name on ``net`` (eth0 service, eth1 replication)."""
        self._require_net(net)
        return NETWORKS[net].guest_dev

    def _require_net(self, net: str) -> None:
        if net not in self.networks:
            raise KeyError(f"node {self.name!r} is not on network {net!r} (it is on {self.networks})")

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def host_pid(self) -> int | None:
        """PID of the node's unshare process on the host (what crash() kills), None when down."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """The UML process tree is alive (not necessarily ready for commands)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def ready(self) -> bool:
        """Booted and taking commands (running, and its init said ``ready``)."""
        return self._ready and self.running

    def start(self, fresh_root: bool = False) -> None:
        """Launch the UML process; ``wait_ready()`` completes the boot.

        Split from ``boot()`` so that a lab can start all nodes before waiting for any.
        """
        if self.running:
            raise LabError(f"node {self.name} is already running")
        self._ready = False
        with self._chan_lock:
            self._reap()
        if fresh_root:
            self.cow.unlink(missing_ok=True)
        self.shared.mkdir(parents=True, exist_ok=True)
        (self.shared / "q").mkdir(exist_ok=True)
        self._channel = _Channel()
        argv = self.lab.uml_argv(self, self._channel.guest_fds)
        env = {**os.environ, "TMPDIR": "/dev/shm"}  # UML's guest RAM is a file in TMPDIR
        with self.console_path.open("ab") as console:
            console.write(f"\n==== boot at {time.strftime('%H:%M:%S')} ====\n".encode())
            console.flush()
            self._started_at = time.monotonic()
            # start_new_session: the `setsid` of LABS.md without an extra exec; the node gets
            # no controlling terminal and a test runner's Ctrl-C does not reach it.
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                pass_fds=self._channel.guest_fds, start_new_session=True, env=env,
                preexec_fn=_NoXstate() if _xstate_filter_needed() else None,
            )  # fmt: skip
        self._channel.spawned()
        self._pidns = None

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for init's ``ready`` line; returns the boot time in seconds (host clock)."""
        with self._chan_lock:  # a concurrent request must not swallow the ready line
            return self._wait_ready_locked(timeout)

    def _wait_ready_locked(self, timeout: float) -> float:
        assert self._channel is not None, "start() first"
        deadline = time.monotonic() + timeout
        line = None
        while line is None and time.monotonic() < deadline:
            try:
                line = self._channel.expect(lambda s: s.startswith("ready "), min(deadline, time.monotonic() + 1))
            except LabError as exc:
                raise LabError(f"node {self.name} died while booting: {exc}\n{self.console_tail()}") from None
            # A panicking UML kernel does not exit: say so now rather than after the timeout.
            if line is None and self._panicked():
                raise LabError(f"node {self.name}: kernel panic while booting\n{self.console_tail()}")
        if line is None:
            raise LabError(f"node {self.name} not ready after {timeout:.0f}s\n{self.console_tail()}")
        self._ready = True
        self.boot_seconds = time.monotonic() - self._started_at
        with contextlib.suppress(ValueError, IndexError):
            self.guest_uptime_at_ready = float(line.split()[2])
        self._pidns = self._find_pidns()
        for net in self._cut:  # a cut cable stays cut across a reboot
            self.lab._set_tap_bridged(self, net, False)
        return self.boot_seconds

    def _panicked(self) -> bool:
        """Whether this boot's console shows a kernel panic."""
        try:
            text = self.console_path.read_text(errors="replace")
        except OSError:
            return False
        return "Kernel panic" in text[text.rfind("==== boot at ") :]

    def boot(self, timeout: float = 90.0, fresh_root: bool = False) -> float:
        """start() + wait_ready(): boot time in seconds."""
        self.start(fresh_root=fresh_root)
        return self.wait_ready(timeout)

    def _find_pidns(self) -> tuple[int, int] | None:
        """Identity of the PID namespace the UML kernel leads, to prove it empty after a kill.

        The kernel is unshare's only child; found by parent PID since /proc/PID/task/*/children
        is not configured in every host kernel.
        """
        if self._proc is None:
            return None
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = _read_ppid(int(entry.name))
            if stat == self._proc.pid:
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{entry.name}/ns/pid")
                    return st.st_dev, st.st_ino
        return None

    def _pidns_members(self) -> list[int]:
        if self._pidns is None:
            return []
        return pids_in_namespace("pid", self._pidns)

    def crash(self) -> None:
        """SIGKILL the node: no shutdown, no flush, peers see it vanish (a real crash).

        Returns once every host process of the guest is gone, so the taps are free for a
        reboot and nothing of the guest can still send a packet.
        """
        self._ready = False
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        # the kill ends a request in flight (EOF on the channel): then the channel is ours to close
        with self._chan_lock:
            self._reap()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Orderly power-off (stop processes, unmount, drbdadm down, sync); crash on timeout."""
        if not self.running or self._channel is None:
            self._reap()
            return
        with contextlib.suppress(LabError):
            self._request("poweroff", [], timeout=timeout, cwd="/")
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log(f"node {self.name} did not power off within {timeout:.0f}s: killing it")
        self.crash()

    def _reap(self) -> None:
        """Wait for the UML process and its PID namespace to be gone; release the channel."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            if not wait_until(lambda: not self._pidns_members(), 10.0, interval=0.05):
                raise LabError(f"node {self.name}: processes {self._pidns_members()} outlived the UML kernel")
            self._proc = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def console_tail(self, chars: int = 3000) -> str:
        """End of the console log (kernel messages and lab-init's), for error messages."""
        try:
            text = self.console_path.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return f"--- console of {self.name} (tail) ---\n{text[-chars:]}"

    # -- commands ------------------------------------------------------------------------------

    def _request(
        self,
        mode: str,
        argv: Sequence[str],
        timeout: float,
        cwd: str,
        input: str | bytes | None = None,
        log_path: str = "",
    ) -> tuple[int, int]:
        """Send one request; returns (request id, value of the ``done`` line)."""
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a shell string")
        if not self.running or self._channel is None:
            raise LabError(f"node {self.name} is not running")
        if mode in ("run", "spawn", "read") and not argv:
            raise ValueError("empty argv")
        fields = [mode, f"{timeout:g}", cwd, "/dev/null", log_path, *argv]
        if any("\0" in f for f in fields):
            raise ValueError("arguments cannot contain NUL bytes")
        with self._chan_lock:
            return self._request_locked(fields, argv, timeout, input)

    def _request_locked(
        self, fields: list[str], argv: Sequence[str], timeout: float, input: str | bytes | None
    ) -> tuple[int, int]:
        if not self.running or self._channel is None:  # crashed while we waited for the channel
            raise LabError(f"node {self.name} is not running")
        self._next_id += 1
        rid = self._next_id
        queue = self.shared / "q"
        if input is not None:
            (queue / f"{rid}.in").write_bytes(input.encode() if isinstance(input, str) else input)
            fields[3] = f"{GUEST_SHARED}/q/{rid}.in"
        tmp = queue / f".{rid}.req"
        tmp.write_bytes(b"".join(f.encode() + b"\0" for f in fields))
        tmp.rename(queue / f"{rid}.req")  # atomic: the guest never sees half a request
        self._channel.send(str(rid))
        # The guest enforces `timeout`; the margin covers a loaded host and UML's own latency.
        deadline = time.monotonic() + timeout + 15.0
        prefix = f"done {rid} "
        nudged = 0
        try:
            while True:
                line = self._channel.expect(lambda s: s.startswith(prefix), min(deadline, time.monotonic() + 2.0))
                if line is not None or time.monotonic() >= deadline:
                    break
                # No answer yet: the command may simply be slow, or the guest may have missed the
                # wakeup for our line (once a node left two requests unanswered for 45 s, cause
                # not found).  An empty line costs nothing (init skips it) and would wake it;
                # `nudges` keeps a record, so a real stall shows in the tests' reports.
                self._channel.send("")
                nudged += 1
        except LabError as exc:
            raise LabError(f"node {self.name}: {exc} while running {list(argv)}\n{self.console_tail()}") from None
        if nudged:
            self.nudges.append((rid, list(argv)[:3], nudged, line is not None))
        if line is None:
            raise LabError(f"node {self.name} did not answer request {rid} {list(argv)} within {timeout + 15:.0f}s\n"
                           f"{self.console_tail()}")  # fmt: skip
        return rid, int(line[len(prefix) :])

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        check: bool = True,
        input: str | bytes | None = None,
        cwd: str = "/",
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the guest (no shell) and capture its output.

        The guest kills the command after ``timeout`` s; it then exits with 124 (GNU timeout)
        and, with ``check``, subprocess.TimeoutExpired is raised.  Other failures raise
        CommandError (message includes stderr) when ``check`` is set.
        """
        rid, status = self._request("run", argv, timeout, cwd, input=input)
        queue = self.shared / "q"
        stdout = _read_and_remove(queue / f"{rid}.out")
        stderr = _read_and_remove(queue / f"{rid}.err")
        for suffix in (".req", ".in"):
            (queue / f"{rid}{suffix}").unlink(missing_ok=True)
        result = subprocess.CompletedProcess(list(argv), status, stdout, stderr)
        if check and status == 124:
            raise subprocess.TimeoutExpired(list(argv), timeout, stdout, stderr)
        if check and status != 0:
            raise CommandError(status, [f"[{self.name}]", *argv], stdout, stderr)
        return result

    def read_kernel_file(self, path: str, timeout: float = 10.0) -> str | None:
        """A (kernel) file's content read by the guest's init itself, without a fork or exec.

        Cheap enough to poll several times a second (``run(["cat", ...])`` costs a fork and two
        execs, tens of ms of host ptrace work under UML).  None if the file cannot be read.
        """
        rid, status = self._request("read", [path], timeout, "/")
        queue = self.shared / "q"
        out = _read_and_remove(queue / f"{rid}.out")
        _read_and_remove(queue / f"{rid}.err")
        (queue / f"{rid}.req").unlink(missing_ok=True)
        return out if status == 0 else None

    def sh(
        self, script: str, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Explicit shell: ``sh -c SCRIPT sh ARGS...``; pass values as ARGS ($1...), never in SCRIPT."""
        return self.run(["sh", "-c", script, "sh", *args], timeout=timeout, check=check)

    def spawn(self, argv: Sequence[str], log_path: str | None = None, cwd: str = "/") -> SpawnedProcess:
        """Start a background process (own session) in the guest; output goes to ``log_path``."""
        log = log_path or f"/run/lab/spawn-{self._next_id + 1}.log"
        _rid, pid = self._request("spawn", argv, 10.0, cwd, log_path=log)
        return SpawnedProcess(self, pid, log)

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Create or replace a guest file (through the shared dir and install(1))."""
        name = f"file-{self._next_id + 1}"
        staged = self.shared / name
        staged.write_bytes(content.encode() if isinstance(content, str) else content)
        try:
            self.run(["install", "-D", "-m", f"{mode:o}", f"{GUEST_SHARED}/{name}", path], timeout=20)
        finally:
            staged.unlink(missing_ok=True)

    def write_sysfs(self, path: str, value: str) -> None:
        """Write to an existing kernel file (/proc, /sys) where install(1) cannot replace it."""
        # dd without truncation: O_TRUNC is not something every kernel file accepts.
        data = value if value.endswith("\n") else value + "\n"
        self.run(["dd", f"of={path}", "conv=notrunc", "status=none"], input=data, timeout=20)

    def read_file(self, path: str) -> str:
        """A guest file's content (raises CommandError if it cannot be read)."""
        return self.run(["cat", path], timeout=20).stdout

    # -- network -------------------------------------------------------------------------------

    def set_link(self, net: str, up: bool) -> None:
        """Cut or restore this node's cable on ``net`` (host side: tap off/on the bridge).

        The guest keeps its interface up and sees no carrier change; frames in both directions
        are lost, like a dead switch port.  Survives reboots of the node until restored.
        """
        self._require_net(net)
        (self._cut.discard if up else self._cut.add)(net)
        self.lab._set_tap_bridged(self, net, up)

    def cut(self, net: str) -> None:
        """set_link(net, up=False)."""
        self.set_link(net, False)

    def restore(self, net: str) -> None:
        """set_link(net, up=True)."""
        self.set_link(net, True)

    def ping(self, ip: str, count: int = 1, wait: float = 1.0) -> bool:
        """One-shot reachability from the guest."""
        result = self.run(["ping", "-n", "-q", "-c", str(count), "-W", f"{wait:g}", "-i", "0.2", ip],
                          check=False, timeout=count * (wait + 0.3) + 5)  # fmt: skip
        return result.returncode == 0


def _read_ppid(pid: int) -> int | None:
    """Parent PID from /proc/PID/stat (comm may contain blanks and parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def _read_and_remove(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    return data.decode(errors="replace")


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------


class UmlLab(Closing):
    """Namespace with bridges and taps, plus UML nodes; torn down completely on close().

    Construction builds the network and the node directories but boots nothing (booting
    needs the image, which may take minutes to build the first time); call ``boot()``.
    A crashed earlier lab with the same prefix (namespace, processes, work dir) is purged
    first.  If construction fails, whatever was created is removed before the error
    propagates.
    """

    def __init__(
        self,
        prefix: str,
        nodes: Sequence[str] = ("a", "b"),
        client: bool = True,
        replication: bool = True,
        disk_mb: int = 256,
        mem: str = "256M",
        client_mem: str = "160M",
        image: Path | None = None,
        src: Path = REPO,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"lab prefix {prefix!r} must match {_PREFIX_RE.pattern}")
        nodes = tuple(nodes)
        if not nodes or len(nodes) > 6 or len(set(nodes)) != len(nodes):
            raise ValueError(f"1-6 distinct node names needed, got {nodes!r}")
        for name in nodes:
            if not _NODE_RE.fullmatch(name) or name == CLIENT:
                raise ValueError(f"node name {name!r} must match {_NODE_RE.pattern} and not be {CLIENT!r}")
        for path in (src, UML_MODULES):
            if not _CMDLINE_SAFE.fullmatch(str(path)):
                raise ValueError(f"{path} cannot be passed on a kernel command line")
        ensure_host_packages()
        self.prefix = prefix
        self.ns = f"{prefix}-uml"
        self.workdir = WORK_ROOT / prefix
        self.src = src
        self._image = image
        self._closed = False
        nets = (SERVICE, REPLICATION) if replication else (SERVICE,)
        self.nodes: dict[str, UmlNode] = {
            name: UmlNode(self, name, index + 1, nets, disk_mb, mem) for index, name in enumerate(nodes)
        }
        if client:
            self.nodes[CLIENT] = UmlNode(self, CLIENT, CLIENT_HOST_BYTE, (SERVICE,), 0, client_mem)
        self._lock: TextIO | None = None
        atexit.register(self.close)
        try:
            self._lock = _lock_prefix(prefix)
            self._purge_leftovers()
            self._build()
        except BaseException:
            self.close()
            raise

    # -- access --------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> UmlNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"lab {self.prefix!r} has no node {name!r} (nodes: {list(self.nodes)})") from None

    @property
    def image(self) -> Path:
        """The root image, built (or found in the cache) on first use."""
        if self._image is None:
            self._image = ensure_image()
        return self._image

    def hosts_entries(self) -> str:
        """LAB_HOSTS value: every node's name on every network it is on."""
        entries = []
        for node in self.nodes.values():
            for net in node.networks:
                entries.append(f"{node.ip(net)}:{node.name if net == SERVICE else f'{node.name}-{net}'}")
        return ",".join(entries)

    def uml_argv(self, node: UmlNode, fds: tuple[int, int]) -> list[str]:
        """The full command line that boots ``node`` (exposed for debugging and docs)."""
        image = self.image
        for path in (image, node.dir):
            if not _CMDLINE_SAFE.fullmatch(str(path)):
                raise LabError(f"{path} cannot be passed on a kernel command line")
        ubd = [f"ubd0={node.cow},{image}"]
        if node.disk is not None:
            ubd.append(f"ubd1={node.disk}")
        params = [
            f"LAB_HOSTNAME={node.name}",
            f"LAB_HOSTS={self.hosts_entries()}",
            f"LAB_MODULES={UML_MODULES}",
            f"LAB_SHARED={node.shared}",
            f"LAB_SRC={self.src}",
            "LAB_CHANNEL=/dev/ttyS0",
        ]
        vecs = []
        for index, net in enumerate(node.networks):
            params.append(f"LAB_IF{index}={NETWORKS[net].guest_dev},{node.ip(net)}/24")
            # gro=1: without it DRBD's resync crawls (LABS.md).
            vecs.append(f"vec{index}:transport=tap,ifname={node.tap(net)},mac={node.mac(net)},gro=1")
        return [
            "ip", "netns", "exec", self.ns,
            "unshare", "--pid", "--fork", "--kill-child",
            str(LINUX_UML), f"mem={node.mem}", f"umid={self.prefix}-{node.name}", f"uml_dir={self.workdir}/uml",
            *ubd, "root=/dev/ubda", "rw", f"init={GUEST_INIT}",
            # Applied by modprobe when something (sunrpc, nfsd) loads ipv6 later: the lab is
            # IPv4-only, and link-local addresses and router solicitations would only be noise.
            "ipv6.disable_ipv6=1",
            *params, *(f"{key}={value}" for key, value in GUEST_NO_AVX_ENV.items()), *vecs,
            "con=null", "con0=null,fd:1", "ssl=null", f"ssl0=fd:{fds[0]},fd:{fds[1]}",
        ]  # fmt: skip

    # -- booting -------------------------------------------------------------------------------

    def boot(self, names: Sequence[str] | None = None, timeout: float = 120.0) -> dict[str, float]:
        """Boot nodes in parallel (all started, then waited for); seconds to ready per node."""
        chosen = [self[n] for n in (names if names is not None else list(self.nodes))]
        _ = self.image  # build before starting any clock
        for node in chosen:
            node.start()
        return {node.name: node.wait_ready(timeout) for node in chosen}

    # -- host side network ---------------------------------------------------------------------

    def _ip(self, *args: str, timeout: float = 10) -> str:
        cmd = ["ip", "-n", self.ns, *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
        return result.stdout

    def _build(self) -> None:
        self.workdir.mkdir(parents=True, mode=0o700)
        (self.workdir / "uml").mkdir()
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True, timeout=10)
        self._ip("link", "set", "lo", "up")
        for key in ("all", "default"):
            subprocess.run(["nsenter", f"--net={NETNS_DIR / self.ns}", "sysctl", "-q", "-w",
                            f"net.ipv6.conf.{key}.disable_ipv6=1"], capture_output=True, timeout=10)  # fmt: skip
        used = {net for node in self.nodes.values() for net in node.networks}
        for net in sorted(used):
            bridge = NETWORKS[net].bridge
            self._ip("link", "add", bridge, "type", "bridge")
            self._ip("link", "set", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0",
                     "mcast_snooping", "0")  # fmt: skip
            self._ip("link", "set", bridge, "up")
        for node in self.nodes.values():
            node.dir.mkdir()
            node.shared.mkdir()
            if node.disk is not None:
                # Sparse: 256 MB costs nothing until DRBD's initial sync writes it.
                with node.disk.open("wb") as disk:
                    disk.truncate(node.disk_mb * 1024 * 1024)
            for net in node.networks:
                tap = node.tap(net)
                self._ip("tuntap", "add", "dev", tap, "mode", "tap")
                self._ip("link", "set", tap, "master", NETWORKS[net].bridge, "up")

    def _set_tap_bridged(self, node: UmlNode, net: str, bridged: bool) -> None:
        """Attach/detach a tap: detached, its frames reach no bridge and none reach it."""
        tap = node.tap(net)
        if bridged:
            self._ip("link", "set", tap, "master", NETWORKS[net].bridge, "up")
        else:
            self._ip("link", "set", tap, "nomaster")

    # -- tear down -----------------------------------------------------------------------------

    def _purge_leftovers(self) -> None:
        """Kill what a crashed earlier run left in our namespace, delete it and its work dir."""
        if (NETNS_DIR / self.ns).exists():
            _kill_netns_processes(NETNS_DIR / self.ns)
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def close(self) -> None:
        """Kill every node (by PID), delete the namespace (taps, bridges) and the work dir.

        No graceful shutdown: a test's lab holds nothing worth flushing and killing is fast.
        Safe to call twice; errors are collected and raised at the end, after everything that
        could be removed was removed.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for node in self.nodes.values():
            try:
                node.crash()
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
        if (NETNS_DIR / self.ns).exists():
            try:
                _kill_netns_processes(NETNS_DIR / self.ns)
            except LabError as exc:
                errors.append(str(exc))
            result = subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, text=True, timeout=10)
            if result.returncode != 0:
                errors.append(f"ip netns del {self.ns}: {result.stderr.strip()}")
        self._keep_consoles()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock: the next lab with this prefix may start
            self._lock = None
        atexit.unregister(self.close)
        if errors:
            raise LabError(f"UML lab {self.prefix!r} teardown problems: " + " | ".join(errors))

    @property
    def closed(self) -> bool:
        return self._closed

    def _keep_consoles(self) -> None:
        """Copy the nodes' consoles to CONSOLE_KEEP/<prefix>/ (the last lab's only): a guest that
        rebooted or died mid-test says why there, after the work dir is gone."""
        keep = CONSOLE_KEEP / self.prefix
        shutil.rmtree(keep, ignore_errors=True)
        for node in self.nodes.values():
            with contextlib.suppress(OSError):
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(node.console_path, keep / f"{node.name}-console.log")


def _lock_prefix(prefix: str, timeout: float = 900.0) -> TextIO:
    """Hold an flock on the prefix for the lab's lifetime.

    A new lab purges what an earlier lab with its prefix left behind; without this lock it
    would also destroy a lab that is still running (the same test started twice, e.g. by a
    developer and by CI on one machine).  A crashed owner's lock is released by the kernel,
    so leftovers are still purged.
    """
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    lock = (WORK_ROOT / f".lock-{prefix}").open("w")
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.close()
                raise LabError(f"another UML lab with prefix {prefix!r} still runs after {timeout:.0f}s") from None
            if not waited:
                _log(f"waiting for another UML lab with prefix {prefix!r} to finish")
                waited = True
            time.sleep(0.5)


def _kill_netns_processes(path: Path) -> None:
    """SIGKILL everything in a lab namespace: only UML trees live there, and they need no grace."""
    refs = [ref for ref in map(ProcRef.of, pids_in_netns(path)) if ref is not None]
    for ref in refs:
        ref.send_signal(signal.SIGKILL)
    if not wait_until(lambda: not any(ref.alive() for ref in refs), 10.0, interval=0.05):
        raise LabError(f"processes {[r.pid for r in refs if r.alive()]} in {path} survived SIGKILL")


# --------------------------------------------------------------------------------------------
# DRBD (8.4 module driven by drbd-utils 9.22: 8.4 configuration syntax)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrbdResource:
    """A two-node DRBD 8.4 resource over the replication network.

    ``ping-int 1; ping-timeout 5`` (tenths) make a dead peer noticed within ~2 s instead of
    ~16 s; ``connect-int 1`` makes a rebooted peer reconnect within a second.  8.4 requires
    ``timeout`` (tenths) below ping-int and connect-int, hence 5.  No fencing handlers: tests
    that need them pass their own ``handlers``/``extra_net``.
    """

    name: str = "r0"
    nodes: tuple[str, ...] = ("a", "b")
    minor: int = 0
    port: int = 7789
    disk: str = DRBD_DISK
    protocol: str = "C"
    net: tuple[tuple[str, str], ...] = (
        ("ping-int", "1"),
        ("ping-timeout", "5"),
        ("connect-int", "1"),
        ("timeout", "5"),
        ("after-sb-0pri", "disconnect"),
        ("after-sb-1pri", "disconnect"),
        ("after-sb-2pri", "disconnect"),
    )
    disk_options: tuple[tuple[str, str], ...] = (("c-plan-ahead", "0"), ("resync-rate", "200M"))
    handlers: tuple[tuple[str, str], ...] = ()

    @property
    def device(self) -> str:
        return f"/dev/drbd{self.minor}"

    def render(self, lab: UmlLab) -> str:
        """The complete /etc/drbd.conf (no includes: the package's global_common.conf is 9.x)."""

        def section(title: str, options: Sequence[tuple[str, str]]) -> list[str]:
            if not options:
                return []
            return [f"  {title} {{", *(f"    {k} {v};" for k, v in options), "  }"]

        lines = [
            "# written by tests/lab/uml.py",
            "global { usage-count no; }",
            f"resource {self.name} {{",
            f"  protocol {self.protocol};",
            f"  device {self.device} minor {self.minor};",
            f"  disk {self.disk};",
            "  meta-disk internal;",
            *section("net", self.net),
            *section("disk", self.disk_options),
            *section("handlers", [(k, f'"{v}"') for k, v in self.handlers]),
        ]
        for name in self.nodes:
            lines.append(f"  on {name} {{ address {lab[name].ip(REPLICATION)}:{self.port}; }}")
        lines.append("}")
        return "\n".join(lines) + "\n"


_PROC_DRBD_RE = re.compile(
    r"^\s*(?P<minor>\d+): cs:(?P<cs>\S+) ro:(?P<role>\w+)/(?P<peer_role>\w+) ds:(?P<disk>\w+)/(?P<peer_disk>\w+)",
    re.M,
)
_SYNCED_RE = re.compile(r"sync'ed:\s*([\d.]+)%")


@dataclass(frozen=True)
class DrbdState:
    """The few /proc/drbd fields the lab waits on (the agent has its own, complete parser)."""

    cs: str
    role: str
    peer_role: str
    disk: str
    peer_disk: str
    synced: float | None  # percent, only while resyncing
    raw: str

    @property
    def summary(self) -> str:
        pct = f" {self.synced}%" if self.synced is not None else ""
        return f"{self.cs} {self.role}/{self.peer_role} {self.disk}/{self.peer_disk}{pct}"


def drbd_state(node: UmlNode, minor: int = 0) -> DrbdState | None:
    """Parse the node's /proc/drbd for ``minor``; None if the module or minor is absent."""
    return parse_proc_drbd(node.read_kernel_file("/proc/drbd"), minor)


def parse_proc_drbd(text: str | None, minor: int = 0) -> DrbdState | None:
    """``minor``'s state in a /proc/drbd text; None if the text is None or lacks the minor."""
    if text is None:
        return None
    for m in _PROC_DRBD_RE.finditer(text):
        if int(m["minor"]) == minor:
            rest = text[m.end() :]
            nxt = re.search(r"^\s*\d+: cs:", rest, re.M)
            block = rest[: nxt.start()] if nxt else rest
            synced = _SYNCED_RE.search(block)
            return DrbdState(m["cs"], m["role"], m["peer_role"], m["disk"], m["peer_disk"],
                             float(synced[1]) if synced else None, text)  # fmt: skip
    return None


def wait_drbd(
    node: UmlNode,
    predicate: Callable[[DrbdState], bool],
    timeout: float,
    what: str = "",
    interval: float = 0.1,
) -> DrbdState:
    """Poll /proc/drbd until ``predicate`` holds; LabError with the last state otherwise."""
    last: list[DrbdState | None] = [None]

    def check() -> bool:
        last[0] = drbd_state(node)
        return last[0] is not None and predicate(last[0])

    if not wait_until(check, timeout, interval):
        state = last[0].raw if last[0] else "(no /proc/drbd)"
        raise LabError(f"node {node.name}: DRBD did not reach {what or predicate} in {timeout:.0f}s:\n{state}")
    assert last[0] is not None
    return last[0]


def connected_uptodate(state: DrbdState) -> bool:
    """Both sides connected and UpToDate: the resource is fully redundant."""
    return state.cs == "Connected" and state.disk == state.peer_disk == "UpToDate"


@dataclass
class DrbdTimings:
    """What drbd_bootstrap measured (seconds)."""

    create_md: float = 0.0
    connect: float = 0.0
    initial_sync: float = 0.0
    mkfs: float = 0.0


def drbd_bootstrap(
    lab: UmlLab,
    resource: DrbdResource | None = None,
    primary: str | None = None,
    mkfs: bool = True,
) -> DrbdTimings:
    """Lab setup of a fresh resource: config, create-md, up, connect, initial full sync.

    ``drbdadm primary --force`` happens here and only here: it declares one side's garbage
    authoritative, which is right for two empty disks and never right for the agent.
    With ``primary`` set the node stays Primary afterwards (and gets an ext4 if ``mkfs``);
    without, the resource is left Secondary/Secondary UpToDate/UpToDate.
    """
    res = resource or DrbdResource()
    first = primary or res.nodes[0]
    nodes = [lab[n] for n in res.nodes]
    timings = DrbdTimings()
    conf = res.render(lab)
    t0 = time.monotonic()
    for node in nodes:
        node.write_file("/etc/drbd.conf", conf)
        node.run(["modprobe", "drbd"], timeout=30)
        node.run(["drbdadm", "create-md", "--force", res.name], timeout=60, input="yes\n")
    timings.create_md = time.monotonic() - t0
    t0 = time.monotonic()
    for node in nodes:
        node.run(["drbdadm", "up", res.name], timeout=60)
    for node in nodes:
        wait_drbd(node, lambda s: s.cs == "Connected", 30, "Connected")
    timings.connect = time.monotonic() - t0
    t0 = time.monotonic()
    lab[first].run(["drbdadm", "primary", "--force", res.name], timeout=30)
    for node in nodes:
        wait_drbd(node, connected_uptodate, 600, "Connected UpToDate/UpToDate", interval=0.5)
    timings.initial_sync = time.monotonic() - t0
    if mkfs:
        t0 = time.monotonic()
        lab[first].run(["mkfs.ext4", "-q", "-F", "-L", "export", res.device], timeout=120)
        timings.mkfs = time.monotonic() - t0
    if primary is None:
        lab[first].run(["drbdadm", "secondary", res.name], timeout=30)
    return timings


def drbd_up(node: UmlNode, resource: DrbdResource, lab: UmlLab | None = None) -> None:
    """(Re)attach a node to an existing resource: config, module, ``drbdadm up``.

    What a rebooted node does before the agent takes over; the metadata on its disk decides
    whether it resyncs, and it comes up Secondary.
    """
    node.write_file("/etc/drbd.conf", resource.render(lab or node.lab))
    node.run(["modprobe", "drbd"], timeout=30)
    node.run(["drbdadm", "up", resource.name], timeout=60)


# --------------------------------------------------------------------------------------------
# Kernel nfsd
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NfsServer:
    """How a node serves the DRBD-backed export with the kernel nfsd.

    ``fsid`` is fixed so that file handles stay valid when the export moves to the peer;
    ``scope`` is the UTS name rpc.nfsd runs under, which nfsd takes as its NFSv4 server scope:
    both nodes must present the same one or clients refuse to reclaim state after failover.
    Lease and grace are cut from 90 s to ``lease``/``grace`` (the kernel's minimum is 10).
    """

    export: str = "/srv/nfs"
    fsid: int = 1
    clients: str = "192.0.2.0/24"
    threads: int = 8
    lease: int = 10
    grace: int = 10
    scope: str = "nfs-ha"

    def exports_line(self) -> str:
        return f"{self.export} {self.clients}(rw,sync,no_subtree_check,no_root_squash,fsid={self.fsid})\n"

    def start(self, node: UmlNode) -> float:
        """Load nfsd, set lease/grace, start rpcbind, statd, mountd and nfsd; returns seconds."""
        t0 = time.monotonic()
        node.write_file("/etc/exports", self.exports_line())
        node.run(["modprobe", "nfsd"], timeout=30)
        mounted = node.run(["grep", "-q", " /proc/fs/nfsd ", "/proc/mounts"], check=False)
        if mounted.returncode != 0:
            node.run(["mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd"], timeout=30)
        node.write_sysfs("/proc/fs/nfsd/nfsv4leasetime", str(self.lease))
        node.write_sysfs("/proc/fs/nfsd/nfsv4gracetime", str(self.grace))
        node.run(["rpcbind", "-w"], timeout=30)
        node.run(["rpc.statd"], timeout=30)
        node.run(["exportfs", "-ra"], timeout=30)
        node.run(["rpc.mountd"], timeout=30)
        # nfsd copies the UTS nodename of the process that starts it into its server scope.
        script = 'echo "$1" >/proc/sys/kernel/hostname && exec rpc.nfsd "$2"'
        node.run(["unshare", "--uts", "sh", "-c", script, "sh", self.scope, str(self.threads)], timeout=60)
        return time.monotonic() - t0

    def stop(self, node: UmlNode) -> float:
        """Release the export so the filesystem can be unmounted; returns seconds."""
        t0 = time.monotonic()
        node.run(["exportfs", "-ua"], timeout=30, check=False)
        node.run(["rpc.nfsd", "0"], timeout=60, check=False)
        node.write_sysfs("/proc/fs/nfsd/unlock_filesystem", self.export)
        node.run(["killall", "-q", "rpc.mountd", "rpc.statd"], timeout=30, check=False)
        return time.monotonic() - t0


def nfs_mount(client: UmlNode, server: str, export: str, mountpoint: str, vers: str = "4.2",
              options: str = "timeo=10,retrans=3") -> float:  # fmt: skip
    """Mount ``server:export`` on the client (hard mount); returns seconds taken."""
    t0 = time.monotonic()
    opts = f"vers={vers},{options}" + (",nolock" if vers.startswith("3") else "")
    client.run(["mkdir", "-p", mountpoint])
    client.run(["mount", "-t", "nfs", "-o", opts, f"{server}:{export}", mountpoint], timeout=60)
    return time.monotonic() - t0


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record how long the block took under ``key`` (for the smoke test's report)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        timings[key] = round(time.monotonic() - t0, 3)


# --------------------------------------------------------------------------------------------
# DRBD fixtures: real outputs for the parser tests, reproducible with
#   python -m tests.lab.uml capture-drbd-fixtures tests/fixtures/drbd
# --------------------------------------------------------------------------------------------


@dataclass
class FixtureRecorder:
    """Writes captured outputs and keeps the README rows saying how each was produced."""

    outdir: Path
    rows: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self, name: str, node: UmlNode, argv: Sequence[str], situation: str) -> str:
        """Exact stdout of a command as ``name`` (.txt); stderr, if any, is kept in the row."""
        result = node.run(argv, check=False, timeout=30)
        (self.outdir / name).write_text(result.stdout)
        extra = f" (stderr: {result.stderr.strip()})" if result.stderr.strip() else ""
        self.rows.append((name, node.name, " ".join(argv), situation + extra, result.returncode))
        return result.stdout

    def command(self, name: str, node: UmlNode, argv: Sequence[str], situation: str, input: str | None = None) -> int:
        """argv, exit code, stdout and stderr as JSON: for refusals, where all of it matters."""
        result = node.run(argv, check=False, timeout=60, input=input)
        record = {"argv": list(argv), "returncode": result.returncode, "stdout": result.stdout,
                  "stderr": result.stderr, "node": node.name, "situation": situation}  # fmt: skip
        (self.outdir / name).write_text(json.dumps(record, indent=1) + "\n")
        self.rows.append((name, node.name, " ".join(argv), situation, result.returncode))
        return result.returncode

    def write_readme(self, header: str) -> None:
        lines = [header, "", "| file | node | command | situation | exit |", "| --- | --- | --- | --- | --- |"]
        for name, node, cmd, situation, rc in self.rows:
            lines.append(f"| `{name}` | {node} | `{cmd}` | {situation.replace('|', '/')} | {rc} |")
        if self.notes:
            lines += ["", "## Observations", "", *(f"- {n}" for n in self.notes)]
        (self.outdir / "README.md").write_text("\n".join(lines) + "\n")


def capture_drbd_fixtures(outdir: Path, prefix: str = "umlfix") -> FixtureRecorder:
    """Drive a two-node DRBD 8.4 resource through its states and record real outputs.

    Order matters: the resync is throttled to 12 MB/s first so that the SyncSource/SyncTarget
    files catch a progress line, then sped up.  ``primary --force`` appears once, for the
    initial sync, as in drbd_bootstrap.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    rec = FixtureRecorder(outdir)
    slow = DrbdResource(disk_options=(("c-plan-ahead", "0"), ("resync-rate", "12M")))
    fast = DrbdResource()
    proc = ["cat", "/proc/drbd"]
    events2 = ["drbdsetup", "events2", "--now", "r0"]
    status = ["drbdsetup", "status", "r0"]
    with UmlLab(prefix, nodes=("a", "b"), client=False) as lab:
        a, b = lab["a"], lab["b"]
        lab.boot()
        for node in (a, b):
            node.write_file("/etc/drbd.conf", slow.render(lab))
            node.run(["modprobe", "drbd"])
        rec.text("drbdadm-version.txt", a, ["drbdadm", "--version"], "drbd-utils 9.22 on the 8.4.11 module")
        rec.text("proc_drbd-unconfigured.txt", a, proc, "module loaded, no resource up")
        rec.command("drbdadm-primary-not-up.json", a, ["drbdadm", "primary", "r0"], "resource configured, not up")
        rec.command("drbdadm-primary-unknown-resource.json", a, ["drbdadm", "primary", "nosuch"],
                    "resource name not in drbd.conf")  # fmt: skip
        for node in (a, b):
            rec.command(f"drbdadm-create-md-{node.name}.json", node, ["drbdadm", "create-md", "--force", "r0"],
                        "fresh zeroed disk", input="yes\n")  # fmt: skip
        t0 = time.monotonic()
        for node in (a, b):
            node.run(["drbdadm", "up", "r0"])
        for node in (a, b):
            wait_drbd(node, lambda s: s.cs == "Connected", 30, "Connected")
        rec.notes.append(f"`drbdadm up` on both to Connected: {time.monotonic() - t0:.2f}s")
        rec.text("proc_drbd-connected-secondary-secondary-inconsistent.txt", a, proc, "fresh metadata, connected")
        rec.text("events2-connected-inconsistent.txt", a, events2, "fresh metadata, connected")
        rec.text("status-connected-inconsistent.txt", a, status, "fresh metadata, connected")
        rec.command("drbdadm-primary-inconsistent.json", b, ["drbdadm", "primary", "r0"],
                    "both Inconsistent before the initial sync (no UpToDate data)")  # fmt: skip

        t0 = time.monotonic()
        rec.command("drbdadm-primary-force-initial.json", a, ["drbdadm", "primary", "--force", "r0"],
                    "initial full sync (lab setup only)")  # fmt: skip
        wait_drbd(a, lambda s: s.cs == "SyncSource" and (s.synced or 0) >= 1.0, 60, "SyncSource with progress")
        rec.text("proc_drbd-syncsource-primary.txt", a, proc, "initial sync running, this side Primary")
        rec.text("proc_drbd-synctarget-secondary.txt", b, proc, "initial sync running, this side Secondary")
        rec.text("events2-syncsource.txt", a, events2, "initial sync running")
        rec.text("events2-synctarget.txt", b, events2, "initial sync running")
        rec.text("status-syncsource.txt", a, status, "initial sync running")
        rec.text("status-synctarget.txt", b, status, "initial sync running")
        rec.command("drbdadm-primary-synctarget.json", b, ["drbdadm", "primary", "r0"],
                    "SyncTarget (Inconsistent) while the peer is Primary")  # fmt: skip
        for node in (a, b):
            node.write_file("/etc/drbd.conf", fast.render(lab))
            node.run(["drbdadm", "adjust", "r0"])
        for node in (a, b):
            wait_drbd(node, connected_uptodate, 300, "UpToDate/UpToDate", interval=0.5)
        rec.notes.append(f"initial sync of 256 MiB (12 MB/s for the first captures, then 200M): "
                         f"{time.monotonic() - t0:.1f}s")  # fmt: skip

        rec.text("proc_drbd-connected-primary-secondary.txt", a, proc, "in sync, this side Primary")
        rec.text("proc_drbd-connected-secondary-primary.txt", b, proc, "in sync, this side Secondary")
        for node, role in ((a, "primary"), (b, "secondary")):
            rec.text(f"events2-connected-{role}.txt", node, events2, f"in sync, this side {role}")
            rec.text(f"status-connected-{role}.txt", node, status, f"in sync, this side {role}")
            verbose = ["drbdsetup", "status", "r0", "--verbose", "--statistics"]
            rec.text(f"status-verbose-connected-{role}.txt", node, verbose, f"in sync, this side {role}")
        rec.text("drbdadm-status-connected-primary.txt", a, ["drbdadm", "status", "r0"], "in sync, this side Primary")
        for sub in ("role", "cstate", "dstate"):
            rec.text(f"drbdadm-{sub}-connected-primary.txt", a, ["drbdadm", sub, "r0"], "in sync, this side Primary")
        rec.command("status-json-connected-primary.json", a, ["drbdsetup", "status", "r0", "--json"],
                    "in sync; --json is a DRBD 9 feature")  # fmt: skip
        rec.command("drbdadm-primary-peer-primary.json", b, ["drbdadm", "primary", "r0"], "the peer is Primary")

        a.run(["mkfs.ext4", "-q", "-F", fast.device], timeout=120)
        a.run(["mkdir", "-p", "/srv/nfs"])
        a.run(["mount", fast.device, "/srv/nfs"])
        rec.command("drbdadm-secondary-mounted.json", a, ["drbdadm", "secondary", "r0"],
                    "Primary with the device mounted (held open)")  # fmt: skip

        # Switchover both ways, timed: the agent's planned-migration path.
        t0 = time.monotonic()
        a.run(["umount", "/srv/nfs"])
        rec.command("drbdadm-secondary-ok.json", a, ["drbdadm", "secondary", "r0"], "unmounted Primary demotes")
        rec.text("proc_drbd-connected-secondary-secondary-uptodate.txt", a, proc, "both Secondary, in sync")
        rec.command("drbdadm-primary-ok.json", b, ["drbdadm", "primary", "r0"], "peer Secondary, in sync")
        b.run(["mkdir", "-p", "/srv/nfs"])
        b.run(["mount", fast.device, "/srv/nfs"])
        rec.notes.append(f"switchover a->b (umount, secondary, primary, mount): {time.monotonic() - t0:.2f}s")
        b.run(["dd", "if=/dev/urandom", "of=/srv/nfs/probe", "bs=64k", "count=4", "conv=fsync"])
        digest = b.run(["sha256sum", "/srv/nfs/probe"]).stdout.split()[0]
        t0 = time.monotonic()
        b.run(["umount", "/srv/nfs"])
        b.run(["drbdadm", "secondary", "r0"])
        a.run(["drbdadm", "primary", "r0"])
        a.run(["mount", fast.device, "/srv/nfs"])
        rec.notes.append(f"switchover b->a: {time.monotonic() - t0:.2f}s")
        if a.run(["sha256sum", "/srv/nfs/probe"]).stdout.split()[0] != digest:
            raise LabError("data written on b is not what a reads after switching back")

        stream_a = a.spawn(["drbdsetup", "events2", "--timestamps", "r0"])
        t0 = time.monotonic()
        b.crash()
        wait_drbd(a, lambda s: s.cs == "WFConnection", 30, "WFConnection")
        rec.notes.append(f"peer crash (SIGKILL of b) noticed by a (WFConnection) after {time.monotonic() - t0:.2f}s "
                         "with ping-int 1, ping-timeout 5")  # fmt: skip
        rec.text("proc_drbd-wfconnection-primary-peer-crashed.txt", a, proc, "Primary, peer crashed")
        rec.text("events2-wfconnection-primary.txt", a, events2, "Primary, peer crashed")
        rec.text("status-wfconnection-primary.txt", a, status, "Primary, peer crashed")
        a.run(["dd", "if=/dev/urandom", "of=/srv/nfs/while-alone", "bs=64k", "count=4", "conv=fsync"])

        t0 = time.monotonic()
        b.boot()
        drbd_up(b, fast, lab)
        wait_drbd(b, connected_uptodate, 60, "UpToDate after rejoin")
        rec.notes.append(f"b reboot + drbdadm up + resync of the changes to UpToDate: {time.monotonic() - t0:.2f}s")
        stream_a.signal()
        rec.text("events2-stream-peer-crash-and-rejoin.txt", a, ["cat", stream_a.log_path],
                 "`drbdsetup events2 --timestamps r0` running on the Primary while the peer crashes, reboots, "
                 "runs `drbdadm up` and resyncs")  # fmt: skip
        stream_b = b.spawn(["drbdsetup", "events2", "--timestamps", "r0"])

        b.run(["drbdadm", "disconnect", "r0"])
        wait_drbd(a, lambda s: s.cs == "WFConnection", 30, "WFConnection")
        rec.text("proc_drbd-standalone-secondary.txt", b, proc, "after `drbdadm disconnect` on this side")
        rec.text("proc_drbd-wfconnection-primary-peer-disconnected.txt", a, proc, "peer ran `drbdadm disconnect`")
        rec.text("events2-standalone-secondary.txt", b, events2, "after `drbdadm disconnect`")
        rec.command("drbdadm-outdate.json", b, ["drbdadm", "outdate", "r0"], "StandAlone Secondary marks itself")
        rec.text("proc_drbd-standalone-outdated.txt", b, proc, "StandAlone after `drbdadm outdate`")
        rec.text("events2-standalone-outdated.txt", b, events2, "StandAlone after `drbdadm outdate`")
        rec.command("drbdadm-primary-outdated.json", b, ["drbdadm", "primary", "r0"], "disk Outdated, peer unknown")
        b.run(["drbdadm", "connect", "r0"])
        wait_drbd(b, connected_uptodate, 60, "UpToDate after reconnect")
        stream_b.signal()
        rec.text(
            "events2-stream-disconnect-outdate-connect.txt",
            b,
            ["cat", stream_b.log_path],
            "`drbdsetup events2 --timestamps r0` on the Secondary during disconnect, outdate, connect, resync",
        )

        # Split brain: cut the replication link, promote the Secondary (allowed: no fencing),
        # write on both sides, restore the link.
        stream_a = a.spawn(["drbdsetup", "events2", "--timestamps", "r0"])
        marker = "lab-marker: split-brain capture starts"
        for node in (a, b):
            node.write_sysfs("/dev/kmsg", marker)
        t0 = time.monotonic()
        b.cut(REPLICATION)
        wait_drbd(b, lambda s: s.cs == "WFConnection", 30, "WFConnection after the link cut")
        wait_drbd(a, lambda s: s.cs == "WFConnection", 30, "WFConnection after the link cut")
        rec.notes.append(f"replication link cut noticed on both sides after {time.monotonic() - t0:.2f}s")
        rec.text("proc_drbd-wfconnection-secondary-link-cut.txt", b, proc, "replication link cut, peer Primary")
        rec.command(
            "drbdadm-primary-peer-unknown-no-fencing.json",
            b,
            ["drbdadm", "primary", "r0"],
            "link cut, peer (really Primary) Unknown, no fencing: DRBD allows it (split brain ahead)",
        )
        b.run(["mkdir", "-p", "/srv/nfs"])  # b's crash lost the unsynced mkdir of before
        b.run(["mount", fast.device, "/srv/nfs"])
        for node in (a, b):
            node.run(["dd", "if=/dev/urandom", f"of=/srv/nfs/diverged-{node.name}", "bs=4k", "count=4", "conv=fsync"])
        t0 = time.monotonic()
        b.restore(REPLICATION)
        for node in (a, b):
            wait_drbd(node, lambda s: s.cs == "StandAlone", 30, "StandAlone after split brain")
        rec.notes.append(
            f"after restoring the link, split brain detected (both StandAlone) in {time.monotonic() - t0:.2f}s"
        )
        rec.text("proc_drbd-standalone-split-brain-primary-a.txt", a, proc, "split brain detected, both Primary")
        rec.text("proc_drbd-standalone-split-brain-primary-b.txt", b, proc, "split brain detected, both Primary")
        rec.text("events2-standalone-split-brain.txt", a, events2, "split brain detected, both Primary")
        for node in (a, b):
            rec.text(f"dmesg-split-brain-{node.name}.txt", node,
                     ["sh", "-c", 'dmesg | sed -n "/$1/,\\$p" | grep -i -e drbd -e lab-marker', "sh", marker],
                     "DRBD kernel messages from the link cut to the split brain")  # fmt: skip
        stream_a.signal()
        rec.text(
            "events2-stream-link-cut-split-brain.txt",
            a,
            ["cat", stream_a.log_path],
            "`drbdsetup events2 --timestamps r0` on a while the link is cut, b promoted, the link restored",
        )
        # Manual recovery: b's changes are discarded.
        b.run(["umount", "/srv/nfs"])
        b.run(["drbdadm", "secondary", "r0"])
        rec.command("drbdadm-connect-discard-my-data.json", b, ["drbdadm", "connect", "--discard-my-data", "r0"],
                    "split-brain victim reconnects, dropping its changes")  # fmt: skip
        a.run(["drbdadm", "connect", "r0"])
        wait_drbd(b, connected_uptodate, 60, "UpToDate after split-brain recovery")
        if "diverged-a" not in a.run(["ls", "/srv/nfs"]).stdout:
            raise LabError("a lost its own writes in the split-brain recovery")

        b.run(["drbdadm", "detach", "r0"])
        wait_drbd(b, lambda s: s.disk == "Diskless", 30, "Diskless")
        rec.text("proc_drbd-diskless-secondary.txt", b, proc, "after `drbdadm detach` on this side")
        rec.text("proc_drbd-connected-primary-peer-diskless.txt", a, proc, "the peer detached its disk")
        rec.text("events2-diskless-secondary.txt", b, events2, "after `drbdadm detach`")
        rec.command("drbdadm-primary-diskless-peer-primary.json", b, ["drbdadm", "primary", "r0"],
                    "Diskless while the peer is Primary")  # fmt: skip
        b.run(["drbdadm", "attach", "r0"])
        wait_drbd(b, connected_uptodate, 60, "UpToDate after attach")
        b.run(["drbdadm", "down", "r0"])
        rec.text("proc_drbd-down.txt", b, proc, "after `drbdadm down` (module still loaded)")
        rec.text("proc_drbd-wfconnection-primary-peer-down.txt", a, proc, "peer ran `drbdadm down`")
        rec.notes.append("UML kernel " + a.run(["uname", "-r"]).stdout.strip())
    rec.write_readme(
        "# Real DRBD outputs (DRBD 8.4.11 kernel module, drbd-utils 9.22)\n\n"
        "Captured in the user-mode-linux lab (tests/lab/uml.py) by\n"
        "`python -m tests.lab.uml capture-drbd-fixtures tests/fixtures/drbd`, which rewrites this folder.\n"
        "Two nodes `a` (198.51.100.1) and `b` (198.51.100.2), resource `r0`, minor 0, `/dev/ubdb` (256 MiB),\n"
        "protocol C, `net { ping-int 1; ping-timeout 5; connect-int 1; timeout 5; }`, no fencing.\n"
        "`.txt` files hold the exact stdout; `.json` files hold argv, returncode, stdout and stderr.\n\n"
        "Format notes (8.4 module seen through drbd-utils 9.22):\n\n"
        "- `drbdadm` execs `drbdadm-84`/`drbdsetup-84`; refusals come from drbdsetup, whose exit code drbdadm\n"
        "  passes on, with `Command 'drbdsetup-84 primary 0' terminated with exit code N` on stderr.\n"
        "  Errors found by drbdadm itself (unknown resource) exit 1 without that line.\n"
        "- `drbdsetup events2` and `drbdsetup status` work (synthesised from 8.4 state): the peer is\n"
        "  `peer-node-id:0 conn-name:peer`, 8.4's WFConnection appears as `connection:Connecting`, there is\n"
        "  no `may_promote` and no `--json`; a StandAlone connection loses `conn-name`.\n"
        "- `/proc/drbd` keeps its 8.4 layout; a SyncTarget's progress block adds `want: N K/sec`;\n"
        "  after `drbdadm down` only the two version lines remain.\n"
        "- `dmesg-split-brain-*.txt` are kernel messages (times are seconds since that node booted)."
    )
    return rec


# --------------------------------------------------------------------------------------------
# Command line: build the image ahead of the tests (CI), inspect it
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.lab.uml build-image`` builds/caches the image and prints its manifest."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.lab.uml", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build-image", help="build the root image if the cache lacks it")
    sub.add_parser("image-path", help="print the cached image path for the current recipe (no build)")
    capture = sub.add_parser("capture-drbd-fixtures", help="record real DRBD outputs into a folder")
    capture.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    recipe = default_recipe()
    if args.cmd == "image-path":
        print(IMAGE_CACHE / f"image-{recipe.image_key()}.img")
        return 0
    if args.cmd == "capture-drbd-fixtures":
        rec = capture_drbd_fixtures(args.outdir)
        print("\n".join(rec.notes))
        return 0
    t0 = time.monotonic()
    image = ensure_image(recipe)
    manifest = image.with_suffix(".json")
    print(manifest.read_text() if manifest.exists() else image)
    print(f"ready in {time.monotonic() - t0:.1f}s: {image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
