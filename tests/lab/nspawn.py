"""Lab nodes that run real systemd and journald: systemd-nspawn containers inside a NetnsLab.

A NetnsLab node is a bare network namespace: the agent runs there as our child process, so
nothing checks what only a service manager checks - Type=notify readiness, the watchdog,
ExecReload/ExecStopPost, KillMode, capability bounding, journald's structured fields.  Here
each lab node instead boots a Debian bookworm container with ``systemd-nspawn --boot`` *in
the node's network namespace*, so the container's eth0 is the lab's eth0 (192.0.2.1, .2...)
and every NetnsLab helper (addresses, set_link, ping, captures) keeps working unchanged.

Image
    Built once by ``mmdebstrap --variant=minbase`` plus ``nspawn_image.sh`` (venv with the
    project's runtime dependencies at /opt/failover-agent/venv, keepalived and timers
    disabled, empty machine-id and /var/log/journal), cached as a tarball in
    /var/tmp/failover-agent-images/ as ``nspawn-bookworm-<key>.tar.zst``.  The key hashes
    the recipe: RECIPE_VERSION, suite, mirrors, package list, the dependencies as
    pyproject.toml lists them *at test time*, and the text of nspawn_image.sh - change any of
    them and the next session rebuilds; otherwise nothing is built.  The tarball is extracted
    once next to it (``.rootfs``), which is the read-only lower layer of every node's overlay.
    Measured here: build 40-70 s (mmdebstrap is most of it), tarball 193 MB, tree 600 MB,
    re-extraction from the tarball 11 s.

The project
    Not in the image, and not pip-installed per session: every node bind-mounts the working
    tree read-only at /opt/failover-agent/src, a .pth file in the image's venv puts that
    directory on sys.path, and /usr/local/bin gets one wrapper per ``[project.scripts]``
    entry (failover-agent, failoverctl) that execs the venv python.  That costs nothing per
    boot, always runs exactly the tree under test (edits show up at the next process start,
    no stale copy), never writes into the tree (no build/, *.egg-info or __pycache__ there:
    bytecode goes to /var/cache/failover-agent/pycache inside the node), and cannot fail on
    a half-edited pyproject.toml.  ``pip install --no-deps`` would need setuptools and a
    writable tree, and would snapshot it.

Node mechanics (the host has no systemd)
    * Cgroups: nspawn puts the container into the cgroup it was started in, and refuses the
      root cgroup.  The launcher shell first moves itself into a fresh per-node cgroup in
      every systemd-relevant hierarchy (cgroup2 and the v1 ``name=systemd`` one), then execs
      nspawn with ``--register=no --keep-unit``; nspawn splits it into ``supervisor`` and
      ``payload``, the container's systemd builds its tree below ``payload``.  At stop the
      members of those cgroups are killed by PID and the directories removed bottom-up.
    * Network: nspawn itself is started *inside* the node's namespace (nsenter --net) and
      also given ``--network-namespace-path``.  With the option alone, nspawn mounts the
      container's /sys while still in the host namespace, and /sys/class/net inside shows
      the *host's* interfaces (eth0 there would be the host's eth0).
    * /proc/sys/net: nspawn makes it writable only for namespaces it creates itself; a unit
      in the image (lab-proc-sys-net-rw.service, before sysinit) re-mounts it read-write, as
      on a real host.  The rest of /proc/sys stays read-only.
    * Overlay: mounted by the launcher inside a private mount namespace (``unshare -m``)
      that nspawn then runs in, so the mount exists only for the container's lifetime and
      cannot leak into the host's mount table even if the test process is SIGKILLed.  Upper
      and work dirs live in the lab's workdir and are removed with the node.
    * Other nspawn options: ``--capability=CAP_NET_ADMIN,CAP_NET_RAW`` (VIPs, raw VRRP and
      packet sockets), ``--console=read-only`` (boot messages go to console.log for error
      reports), ``--link-journal=no`` (journal files stay in the node's upper layer, readable
      with ``journalctl -D`` after the container died), ``--uuid`` derived from the machine
      name (a stable machine-id, so a rebooted node keeps one journal directory).
    * A node boots to ``running`` in ~0.3-0.5 s (two in parallel ~0.5 s) and powers off in
      ~0.3 s.  If the test process is SIGKILLed, the containers keep running; the next lab
      with the same prefix removes them (NetnsLab kills everything in its namespaces, which
      now includes nspawn; the node purges its cgroups by PID).

Running commands inside
    ``run(..., unit=True)`` (the default) is ``nsenter -t LEADER -a systemd-run --quiet --wait
    --pipe --collect -p RuntimeMaxSec=T CMD``: the command becomes a transient service of the
    container's own systemd, so it sees what a unit or an admin shell sees - the manager's
    clean environment instead of pytest's, a cgroup inside the container (journald and
    sd_notify attribute its messages to a unit, ``systemctl kill`` reaches it), and it is
    stopped by the container's systemd even if the host side times out.  ~20 ms per call.
    ``unit=False`` is plain ``nsenter -t LEADER -a CMD`` with a clean environment: ~5 ms,
    works before systemd is up, but the process stays in the *host's* cgroup and is parented
    by nsenter.  Queries (systemctl, journalctl, ip, file reads/writes) use that.

Agent as a service in a node (what a test does)::

    node.install_agent(render_agent_conf(priority=150))   # agent.toml + repo's unit, daemon-reload
    node.systemctl("enable", "--now", "failover-agent")   # enable: survives node.shutdown()/boot()
    node.unit_properties("failover-agent.service")        # ActiveState, SubState, MainPID, NRestarts
    node.journal_json("failover-agent.service", ["MESSAGE_ID=..."])

Note that addresses belong to the namespace, not to the container: after ``node.kill()`` a
VIP the node held stays on eth0 and keeps answering ARP.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.lab.netns import Closing, CommandError, LabError, NetnsLab, ProcRef, wait_until

__all__ = [
    "CONTAINER_PATH",
    "IMAGE_DIR",
    "IMAGE_PACKAGES",
    "REPO",
    "SRC_DIR",
    "VENV_DIR",
    "Image",
    "ImageError",
    "ImageRecipe",
    "NspawnLab",
    "NspawnNode",
    "default_recipe",
    "ensure_image",
    "mounts_mentioning",
]

REPO = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).with_name("nspawn_image.sh")
IMAGE_DIR = Path(os.environ.get("FAILOVER_AGENT_IMAGE_DIR", "/var/tmp/failover-agent-images"))
# Bump to force a rebuild when something outside the hashed inputs changes (e.g. build flags).
RECIPE_VERSION = "1"
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
IMAGE_PACKAGES = (
    # init and the bus
    "systemd", "systemd-sysv", "dbus",
    # the agent's runtime and the venv it lives in
    "python3", "python3-venv",
    # to build systemd-python from PyPI (and any future C extension) inside the image
    "python3-dev", "libsystemd-dev", "pkg-config", "gcc", "libc6-dev",
    # network tools tests use inside a node
    "iproute2", "iputils-ping", "iputils-arping", "tcpdump", "procps", "libcap2-bin",
    # interop peer and reference, installed but disabled
    "keepalived",
)  # fmt: skip
VENV_DIR = "/opt/failover-agent/venv"
SRC_DIR = "/opt/failover-agent/src"
PYCACHE_DIR = "/var/cache/failover-agent/pycache"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CLEAN_ENV = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "TERM": "dumb"}
_CGROUP_PREFIX = "failover-nspawn."
_IMAGE_PREFIX = "nspawn-"
_IMAGE_FILE_RE = re.compile(r"nspawn-[a-z]+-[0-9a-f]{16}(\.tar|\.tar\.zst|\.rootfs|\.json|\.build\.log|\.build)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class ImageError(LabError):
    """The node image could not be built or extracted; the message says why (tests fail, never skip)."""


# --------------------------------------------------------------------------------------------
# Small host helpers
# --------------------------------------------------------------------------------------------


def _tail(path: Path, chars: int = 3000) -> str:
    """End of a log file without ANSI colours, for error messages that must say *why*."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            data = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return _ANSI_RE.sub("", data).replace("\r\n", "\n").replace("\r", "\n").strip()


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_mountpoints() -> list[str]:
    """Mount points of our own mount namespace."""
    points: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(_unescape_mountinfo(line.split()[4]))
    return points


def mounts_mentioning(text: str) -> list[str]:
    """Mount table lines of *any* mount namespace on the host that mention ``text``.

    An overlay shows its lower/upper/work dirs in its options, so searching for a node's
    directory finds its overlay even inside a private mount namespace that outlived nspawn.
    """
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/mnt")
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            lines = Path(f"/proc/{entry.name}/mountinfo").read_text().splitlines()
        except OSError:
            continue
        found.extend(f"pid {entry.name}: {line}" for line in lines if text in _unescape_mountinfo(line))
    return found


def _safe_rmtree(path: Path) -> None:
    """rm -rf that refuses to descend into anything mounted below ``path``.

    A build or node directory with a leftover bind mount (/dev, the repository) must never be
    deleted through: that would delete the host's files.
    """
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve())
    busy = [p for p in _own_mountpoints() if p == prefix or p.startswith(prefix + "/")]
    if busy:
        raise LabError(f"refusing to delete {path}: still mounted below it: {busy}")
    shutil.rmtree(path)


def _apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages the lab needs on the host (once; `apt-get update` only if needed)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600", *packages]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=1200)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, stdin=subprocess.DEVNULL,
                       timeout=600)  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=1200)
    if result.returncode != 0:
        raise LabError(f"apt-get install {' '.join(packages)} failed: {(result.stdout + result.stderr)[-2000:]}")


def require_nspawn() -> str:
    """Path of systemd-nspawn, installing systemd-container if it is missing (tests never skip)."""
    path = shutil.which("systemd-nspawn")
    if path is None:
        _apt_install(["systemd-container"])
        path = shutil.which("systemd-nspawn")
    if path is None:
        raise LabError("systemd-nspawn is missing even after installing systemd-container")
    for tool in ("nsenter", "unshare", "mount"):
        if shutil.which(tool) is None:
            raise LabError(f"the nspawn lab needs {tool} (util-linux/mount)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        if shutil.which("modprobe"):
            subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise LabError("the kernel has no overlayfs: nspawn nodes need one overlay per node")
    return path


# --------------------------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------------------------


def _project_requirements() -> tuple[str, ...]:
    """Runtime dependencies as the working tree's pyproject.toml lists them now."""
    try:
        with (REPO / "pyproject.toml").open("rb") as f:
            data = tomllib.load(f)
        deps = data["project"]["dependencies"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise ImageError(f"cannot read [project] dependencies from {REPO / 'pyproject.toml'}: {exc}") from exc
    return tuple(sorted(str(dep) for dep in deps))


def _project_scripts() -> dict[str, str]:
    """``[project.scripts]`` of the working tree: name -> "module:function"."""
    try:
        with (REPO / "pyproject.toml").open("rb") as f:
            scripts = tomllib.load(f).get("project", {}).get("scripts", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LabError(f"cannot read [project.scripts] from {REPO / 'pyproject.toml'}: {exc}") from exc
    return {str(k): str(v) for k, v in scripts.items()}


@dataclass(frozen=True)
class ImageRecipe:
    """Everything that determines the image's content; its hash names the cache entry."""

    suite: str
    mirrors: tuple[str, ...]
    packages: tuple[str, ...]
    requirements: tuple[str, ...]
    hook_text: str
    version: str = RECIPE_VERSION

    @property
    def key(self) -> str:
        """16 hex digits of sha256 over the recipe (sorted lists: order is no change)."""
        blob = json.dumps(
            {
                "version": self.version,
                "suite": self.suite,
                "mirrors": list(self.mirrors),
                "packages": sorted(self.packages),
                "requirements": sorted(self.requirements),
                "hook": self.hook_text,
            },
            sort_keys=True,
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def name(self) -> str:
        """File name stem of the cache entry, e.g. ``nspawn-bookworm-0123456789abcdef``.

        The ``nspawn-`` prefix keeps it apart from other labs' images in the same directory
        (the UML lab's rootfs-KEY/image-KEY): pruning only ever touches names of this form.
        """
        return f"{_IMAGE_PREFIX}{self.suite}-{self.key}"


def default_recipe() -> ImageRecipe:
    """The recipe for the current working tree (dependencies are read from pyproject.toml)."""
    try:
        hook_text = HOOK.read_text()
    except OSError as exc:
        raise ImageError(f"cannot read the image recipe {HOOK}: {exc}") from exc
    return ImageRecipe(SUITE, MIRRORS, IMAGE_PACKAGES, _project_requirements(), hook_text)


@dataclass(frozen=True)
class Image:
    """A built image: the cached tarball and its extracted tree (the overlay lower layer)."""

    key: str
    tarball: Path
    rootfs: Path
    manifest: dict[str, Any] = field(compare=False)


_images: dict[tuple[str, str], Image] = {}


def ensure_image(recipe: ImageRecipe | None = None, cache_dir: Path = IMAGE_DIR, rebuild: bool = False) -> Image:
    """The image for ``recipe`` (default: the working tree's), built only if not cached.

    Holds an exclusive lock on the cache directory meanwhile, so concurrent sessions build at
    most once.  Raises ImageError with the build log's tail if building fails.
    """
    recipe = recipe or default_recipe()
    memo = (str(cache_dir), recipe.key)
    if not rebuild and memo in _images and _images[memo].rootfs.is_dir():
        return _images[memo]
    if os.geteuid() != 0:
        raise ImageError("building and booting nspawn nodes needs root")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / "nspawn.lock"):
        tarball = _tarball_path(cache_dir, recipe)
        rootfs = cache_dir / f"{recipe.name}.rootfs"
        manifest_path = cache_dir / f"{recipe.name}.json"
        if rebuild or tarball is None or not manifest_path.exists():
            _build_image(recipe, cache_dir)
            tarball = _tarball_path(cache_dir, recipe)
            assert tarball is not None
        if not (rootfs / "usr/bin/python3").exists() or not (rootfs / VENV_DIR.lstrip("/") / "bin/python").exists():
            _extract(tarball, rootfs)
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    image = Image(recipe.key, tarball, rootfs, manifest)
    _images[memo] = image
    return image


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compressor() -> list[str]:
    """zstd if the host has it (3x smaller, ~1 s); plain tar otherwise."""
    return ["-I", "zstd -T0 -3"] if shutil.which("zstd") else []


def _tarball_path(cache_dir: Path, recipe: ImageRecipe) -> Path | None:
    for suffix in (".tar.zst", ".tar"):
        path = cache_dir / f"{recipe.name}{suffix}"
        if path.exists():
            return path
    return None


def _logged(cmd: Sequence[str], log: IO[str], what: str, log_path: Path, timeout: float) -> None:
    log.write(f"\n$ {shlex.join(cmd)}\n")
    log.flush()
    try:
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what} timed out after {timeout:.0f} s; log {log_path}:\n{_tail(log_path)}") from exc
    log.flush()
    if result.returncode != 0:
        raise ImageError(f"{what} failed (exit {result.returncode}); log {log_path}:\n{_tail(log_path)}")


def _build_image(recipe: ImageRecipe, cache_dir: Path) -> None:
    """mmdebstrap + nspawn_image.sh into a staging dir, then tar it; the staging dir becomes the rootfs.

    Both steps run in private mount namespaces (``unshare -m``), so a killed build leaves no
    /proc or /dev mount behind in a directory that the next attempt deletes.
    """
    if shutil.which("mmdebstrap") is None or shutil.which("systemd-nspawn") is None:
        _apt_install(["mmdebstrap", "systemd-container"])
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is missing even after apt-get install mmdebstrap")
    staging = cache_dir / f"{recipe.name}.build"
    log_path = cache_dir / f"{recipe.name}.build.log"
    _safe_rmtree(staging)
    try:
        _bootstrap_and_pack(recipe, cache_dir, staging, log_path)
    except BaseException:
        _safe_rmtree(staging)  # 600 MB of a broken tree; the log stays for the post-mortem
        raise


def _bootstrap_and_pack(recipe: ImageRecipe, cache_dir: Path, staging: Path, log_path: Path) -> None:
    rootfs = cache_dir / f"{recipe.name}.rootfs"
    started = time.monotonic()
    with log_path.open("w") as log:
        log.write(f"image {recipe.name}: packages {' '.join(recipe.packages)}; pip {' '.join(recipe.requirements)}\n")
        private = ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child"]
        _logged(
            [
                *private, "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
                f"--include={','.join(recipe.packages)}", '--aptopt=Acquire::Retries "3"',
                recipe.suite, str(staging), *recipe.mirrors,
            ],
            log, "mmdebstrap", log_path, timeout=1800,
        )  # fmt: skip
        bootstrap_seconds = time.monotonic() - started
        _logged([*private, "sh", str(HOOK), str(staging), *recipe.requirements], log,
                "nspawn_image.sh (venv, pip install, unit setup)", log_path, timeout=1800)  # fmt: skip
        (staging / "etc/failover-agent-image").write_text(f"{recipe.name}\n")
        versions = subprocess.run(
            ["chroot", str(staging), "dpkg-query", "-W", "-f", "${Package} ${Version}\\n",
             "systemd", "python3", "keepalived", "iproute2"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        compress = _compressor()
        tarball = cache_dir / f"{recipe.name}.tar{'.zst' if compress else ''}"
        partial = tarball.with_name(tarball.name + ".partial")
        _logged(
            ["tar", *compress, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(staging),
             "-cf", str(partial), "."],
            log, "tar", log_path, timeout=900,
        )  # fmt: skip
    du = subprocess.run(["du", "-sx", "-B1", str(staging)], capture_output=True, text=True, check=False).stdout
    lock = staging / "opt/failover-agent/requirements.lock"
    manifest = {
        "name": recipe.name,
        "key": recipe.key,
        "recipe_version": recipe.version,
        "suite": recipe.suite,
        "packages": list(recipe.packages),
        "requirements": list(recipe.requirements),
        "pip_freeze": lock.read_text().split() if lock.exists() else [],
        "debian_versions": versions.split("\n")[:-1] if versions else [],
        "bootstrap_seconds": round(bootstrap_seconds, 1),
        "build_seconds": round(time.monotonic() - started, 1),
        "tarball": tarball.name,
        "tarball_bytes": partial.stat().st_size,
        "rootfs_bytes": int(du.split()[0]) if du else None,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _safe_rmtree(rootfs)
    for stale in (cache_dir / f"{recipe.name}.tar", cache_dir / f"{recipe.name}.tar.zst"):
        stale.unlink(missing_ok=True)
    os.replace(partial, tarball)
    staging.rename(rootfs)
    (cache_dir / f"{recipe.name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _prune(cache_dir, keep=recipe.name)


def _extract(tarball: Path, rootfs: Path) -> None:
    """Unpack the cached tarball as the template (cache hit, but the tree was deleted)."""
    partial = rootfs.with_name(rootfs.name + ".partial")
    _safe_rmtree(partial)
    partial.mkdir()
    cmd = ["tar", *(["-I", "zstd -T0"] if tarball.suffix == ".zst" else []), "--numeric-owner", "--xattrs",
           "--xattrs-include=*", "-xpf", str(tarball), "-C", str(partial)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    if result.returncode != 0:
        _safe_rmtree(partial)
        raise ImageError(f"extracting {tarball} failed: {result.stderr.strip()[-2000:]}")
    _safe_rmtree(rootfs)
    partial.rename(rootfs)


def _prune(cache_dir: Path, keep: str) -> None:
    """Delete other recipes' images (disk stays bounded), except trees some overlay still uses."""
    for entry in cache_dir.iterdir():
        if not _IMAGE_FILE_RE.fullmatch(entry.name) or entry.name.startswith(keep + "."):
            continue
        if entry.name.endswith(".rootfs") and mounts_mentioning(str(entry)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            _safe_rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Cgroups
# --------------------------------------------------------------------------------------------


def _cgroup_hierarchies() -> list[Path]:
    """Mount points nspawn looks at: every cgroup2 mount and the v1 ``name=systemd`` one.

    Other v1 controllers (memory, cpu, ...) are left alone: the process may sit in a cgroup
    someone else manages there.
    """
    roots: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = [*right.split(), "", "", ""][:3]
        mountpoint = _unescape_mountinfo(left.split()[4])
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            roots.append(Path(mountpoint))
    if not roots:
        raise LabError("no cgroup2 or name=systemd cgroup hierarchy is mounted; systemd cannot boot in a container")
    return roots


def _cgroup_pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for dirpath, _dirs, _files in os.walk(cgroup):
        try:
            text = Path(dirpath, "cgroup.procs").read_text()
        except OSError:
            continue
        pids.extend(int(p) for p in text.split())
    return pids


def _purge_cgroup(cgroup: Path, timeout: float = 10.0) -> None:
    """SIGKILL (by PID) whatever is left in ``cgroup`` and remove it and its children, deepest first."""
    if not cgroup.exists():
        return
    refs = [ref for ref in map(ProcRef.of, _cgroup_pids(cgroup)) if ref is not None]
    for ref in refs:
        ref.send_signal(signal.SIGKILL)
    wait_until(lambda: not any(ref.alive() for ref in refs), 5.0)

    def removed() -> bool:
        for dirpath, _dirs, _files in os.walk(cgroup, topdown=False):
            with suppress(OSError):
                os.rmdir(dirpath)
        return not cgroup.exists()

    # Exited members stay in a v1 cgroup until reaped, which PID 1 here does 1-3 s late.
    if not wait_until(removed, timeout, interval=0.1):
        raise LabError(f"cgroup {cgroup} cannot be removed; members left: {_cgroup_pids(cgroup)}")


# --------------------------------------------------------------------------------------------
# A node
# --------------------------------------------------------------------------------------------

# argv: sh -c _LAUNCH launch NETNS LOWER UPPER WORK ROOT CGROUP.PROCS... -- NSPAWN ARGS...
# Moves itself into the node's cgroups and the node's network namespace, enters a private
# mount namespace, mounts the overlay there and execs nspawn: the Popen PID is nspawn's own,
# and the overlay dies with it.
_LAUNCH = r"""
set -eu
netns=$1 lower=$2 upper=$3 work=$4 root=$5
shift 5
while [ "$1" != -- ]; do echo $$ > "$1"; shift; done
shift
exec nsenter --net="$netns" -- unshare --mount --propagation private -- /bin/sh -c '
set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
shift 4
exec "$@"' overlay "$lower" "$upper" "$work" "$root" "$@"
"""

_WRITE_FILE = r"""
set -eu
mkdir -p "$(dirname "$1")"
tmp="$1.tmp.$$"
cat > "$tmp"
chmod "$2" "$tmp"
mv -f "$tmp" "$1"
"""


def _machine_name(prefix: str, node: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{node}")[:64]


class NspawnNode(Closing):
    """One lab node as a booted systemd container in the lab's namespace for that node.

    Lifecycle: ``boot()`` (or ``start()`` + ``wait_booted()`` to boot several in parallel),
    then ``shutdown()``/``kill()`` and ``boot()`` again to reboot with the same disk (the
    overlay upper layer survives), and ``stop()`` to remove everything.  The node registers
    ``stop`` with ``lab.add_cleanup``, so closing the lab removes it.

    Note that addresses belong to the namespace, not to the container: after ``kill()`` a VIP
    the node held stays on eth0 and keeps answering ARP.  For a node that vanishes from the
    wire, also pull its cable (``lab.set_link(name, up=False)``).
    """

    def __init__(
        self,
        lab: NetnsLab,
        name: str,
        image: Image | None = None,
        *,
        extra_nspawn_args: Sequence[str] = (),
        project: bool = True,
    ) -> None:
        """``project=False``: no bind mount of the working tree and no /usr/local/bin wrappers
        (a node that gets the project some other way, e.g. the Debian package test)."""
        if name not in lab.nodes:
            raise KeyError(f"{name!r} is not a node of lab {lab.prefix!r} (nodes: {lab.nodes})")
        if ":" in str(REPO) or "," in str(REPO):
            raise LabError(f"repository path {REPO} cannot be bind-mounted by nspawn (contains ':' or ',')")
        self.lab = lab
        self.name = name
        self.image = image or ensure_image()
        self.machine = _machine_name(lab.prefix, name)
        # Stable per node: a rebooted node keeps its journal directory /var/log/journal/<id>.
        self.machine_id = hashlib.sha256(f"failover-agent-nspawn:{self.machine}".encode()).hexdigest()[:32]
        self.dir = lab.workdir / "nspawn" / name
        self.upper = self.dir / "upper"
        self.console_log = self.dir / "console.log"
        self.cgroups = tuple(root / f"{_CGROUP_PREFIX}{self.machine}" for root in _cgroup_hierarchies())
        self.extra_nspawn_args = tuple(extra_nspawn_args)
        self.project = project
        self.boot_seconds: float | None = None
        self._nspawn = require_nspawn()
        self._nsenter_bin = shutil.which("nsenter") or "nsenter"
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader: ProcRef | None = None
        self._started_at = 0.0
        self._term_sent = False
        self._removed = False
        lab.add_cleanup(self.stop)

    def __repr__(self) -> str:
        return f"NspawnNode({self.machine!r}, running={self.running})"

    # -- state ---------------------------------------------------------------------------------

    @property
    def nspawn_pid(self) -> int | None:
        """PID of the systemd-nspawn process (our child), None when not started."""
        return None if self._proc is None else self._proc.pid

    @property
    def leader(self) -> ProcRef | None:
        """The container's PID 1 (systemd) as seen from the host, once it exists."""
        if self._leader is None and self._proc is not None and self._proc.poll() is None:
            self._leader = self._find_leader()
        return self._leader

    @property
    def leader_pid(self) -> int:
        """Host PID of the container's systemd; raises if the container does not run."""
        leader = self.leader
        if leader is None or not leader.alive():
            raise LabError(f"node {self.machine} is not running")
        return leader.pid

    @property
    def running(self) -> bool:
        """nspawn and the container's init are alive (booted or not)."""
        leader = self.leader
        return self._proc is not None and self._proc.poll() is None and leader is not None and leader.alive()

    def _find_leader(self) -> ProcRef | None:
        """The child of nspawn that is PID 1 of its own PID namespace."""
        assert self._proc is not None
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue
            fields = {k: v for k, _, v in (line.partition(":") for line in status.splitlines())}
            if fields.get("PPid", "").strip() != str(self._proc.pid):
                continue
            nspids = fields.get("NSpid", "").split()
            if len(nspids) >= 2 and nspids[-1] == "1":
                return ProcRef.of(int(entry.name))
        return None

    def _console(self) -> str:
        return _tail(self.console_log)

    def _check_nspawn(self, doing: str) -> None:
        if self._proc is None:
            raise LabError(f"node {self.machine}: not started ({doing})")
        rc = self._proc.poll()
        if rc is not None:
            raise LabError(f"node {self.machine}: systemd-nspawn exited with {rc} while {doing}; console:\n"
                           f"{self._console()}")  # fmt: skip

    # -- boot ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Launch nspawn without waiting for the boot; see wait_booted()."""
        if self._removed:
            raise LabError(f"node {self.machine} was removed; create a new NspawnNode")
        if self._proc is not None:
            if self._proc.poll() is None:
                raise LabError(f"node {self.machine} is already running")
            self.shutdown()
        for cgroup in self.cgroups:  # a crashed earlier session's container, by PID
            _purge_cgroup(cgroup)
        work = self.dir / "work"
        root = self.dir / "root"
        for d in (self.upper, work, root):
            d.mkdir(parents=True, exist_ok=True)
        if self.project:
            self._seed_upper()
        for cgroup in self.cgroups:
            cgroup.mkdir()
        nspawn = [
            self._nspawn, "--boot", f"--directory={root}", f"--machine={self.machine}", f"--hostname={self.name}",
            f"--uuid={self.machine_id}", "--register=no", "--keep-unit", "--console=read-only",
            "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            f"--network-namespace-path={self.lab.netns_path(self.name)}",
            "--capability=CAP_NET_ADMIN,CAP_NET_RAW", *([f"--bind-ro={REPO}:{SRC_DIR}"] if self.project else []),
            *self.extra_nspawn_args,
        ]  # fmt: skip
        argv = ["/bin/sh", "-c", _LAUNCH, "launch", self.lab.netns_path(self.name),
                str(self.image.rootfs), str(self.upper), str(work), str(root),
                *(str(cg / "cgroup.procs") for cg in self.cgroups), "--", *nspawn]  # fmt: skip
        self._started_at = time.monotonic()
        self.boot_seconds = None
        self._leader = None
        self._term_sent = False
        with self.console_log.open("ab") as console:
            # Own session: a Ctrl-C meant for pytest must not power the containers off behind
            # the teardown's back.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                          start_new_session=True, env=_CLEAN_ENV)  # fmt: skip

    def wait_booted(self, timeout: float = 60.0) -> str:
        """Wait until ``systemctl is-system-running`` says running or degraded; returns which.

        Also checks that the container really sits in the lab's namespace for this node.
        """
        deadline = time.monotonic() + timeout
        state = "no leader yet"
        while True:
            self._check_nspawn("booting")
            if self.leader is not None:
                try:
                    result = self._nsenter(["systemctl", "is-system-running"], timeout=5)
                    state = result.stdout.strip() or result.stderr.strip() or f"exit {result.returncode}"
                except subprocess.TimeoutExpired:
                    state = "systemctl is-system-running timed out"
                if state in ("running", "degraded"):
                    break
            if time.monotonic() >= deadline:
                raise LabError(f"node {self.machine} not booted after {timeout:g} s (state {state!r}); console:\n"
                               f"{self._console()}")  # fmt: skip
            time.sleep(0.05)
        self.boot_seconds = time.monotonic() - self._started_at
        ours = os.stat(self.lab.netns_path(self.name))
        theirs = os.stat(f"/proc/{self.leader_pid}/ns/net")
        if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
            raise LabError(f"node {self.machine} is not in network namespace {self.lab.netns_path(self.name)}")
        return state

    def boot(self, timeout: float = 60.0) -> str:
        """start() + wait_booted(): boot (or reboot after shutdown/kill) and return the system state."""
        self.start()
        return self.wait_booted(timeout)

    def failed_units(self) -> list[str]:
        """Units in the failed state (what makes the system 'degraded')."""
        out = self.systemctl("list-units", "--failed", "--plain", "--no-legend", "--no-pager").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def _seed_upper(self) -> None:
        """Per-node files that exist from the first instant of boot: the project's wrappers.

        Written into the overlay's upper layer before mounting; parents get the lower layer's
        owner and mode so the overlay does not change them.
        """
        for script, target in _project_scripts().items():
            module, _, func = target.partition(":")
            if not (_IDENT_RE.fullmatch(module) and _IDENT_RE.fullmatch(func) and re.fullmatch(r"[\w.-]+", script)):
                raise LabError(f"cannot make a wrapper for [project.scripts] {script} = {target!r}")
            code = f"import sys; sys.argv[0] = {script!r}; from {module} import {func}; sys.exit({func}())"
            text = (
                "#!/bin/sh\n"
                f"# {script}: the working tree bind-mounted at {SRC_DIR}, run by the image's venv\n"
                "# (generated per node by tests/lab/nspawn.py from [project.scripts]).\n"
                f"export PYTHONPYCACHEPREFIX={PYCACHE_DIR}\n"
                f'exec {VENV_DIR}/bin/python -P -c {shlex.quote(code)} "$@"\n'
            )
            self._write_upper(f"usr/local/bin/{script}", text, 0o755)

    def _write_upper(self, rel: str, text: str, mode: int) -> None:
        lower = self.image.rootfs
        parts = Path(rel).parts
        for depth in range(1, len(parts)):
            sub = Path(*parts[:depth])
            target = self.upper / sub
            if target.exists():
                continue
            target.mkdir()
            try:
                st = os.lstat(lower / sub)
                os.chown(target, st.st_uid, st.st_gid)
                os.chmod(target, st.st_mode & 0o7777)
            except FileNotFoundError:
                os.chmod(target, 0o755)
        path = self.upper / rel
        path.write_text(text)
        os.chmod(path, mode)

    # -- commands inside -------------------------------------------------------------------------

    def _nsenter(
        self,
        argv: Sequence[str],
        timeout: float,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self._nsenter_bin, "-t", str(self.leader_pid), "-a", "--", *argv]
        return subprocess.run(
            cmd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env={**_CLEAN_ENV, **(env or {})},
        )

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        *,
        unit: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node and capture its output (see module docstring).

        ``unit=True``: as a transient service via ``systemd-run --wait --pipe`` (exit status
        propagated; systemd itself stops it after ``timeout`` s).  ``unit=False``: directly via
        nsenter.  Either way, running longer than ``timeout`` raises subprocess.TimeoutExpired,
        and with ``check`` a non-zero exit raises CommandError carrying stderr.
        """
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a shell string")
        if unit:
            inner = [
                "systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                f"--property=RuntimeMaxSec={max(1, math.ceil(timeout * 1000))}ms",
                *(f"--setenv={k}={v}" for k, v in (env or {}).items()),
                "--", *argv,
            ]  # fmt: skip
            started = time.monotonic()
            result = self._nsenter(inner, timeout=timeout + 10, input=input)
            if result.returncode != 0 and time.monotonic() - started >= timeout:
                # systemd stopped it at RuntimeMaxSec (systemd-run then just exits 1): say so.
                raise subprocess.TimeoutExpired([f"[{self.machine}]", *argv], timeout, result.stdout, result.stderr)
        else:
            result = self._nsenter(argv, timeout=timeout, input=input, env=env)
        if check and result.returncode != 0:
            raise CommandError(result.returncode, [f"[{self.machine}]", *argv], result.stdout, result.stderr)
        return result

    def systemctl(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` inside (directly: it only talks to the manager)."""
        return self.run(["systemctl", *args], check=check, timeout=timeout, unit=False)

    def unit_properties(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict, e.g. ActiveState, SubState, MainPID, NRestarts."""
        wanted = props or ("ActiveState", "SubState", "Result", "MainPID", "ExecMainStatus", "NRestarts")
        out = self.systemctl("show", "-p", ",".join(wanted), "--", unit).stdout
        return {k: v for k, sep, v in (line.partition("=") for line in out.splitlines()) if sep}

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Create or replace a file inside the node (parents created, atomic rename).

        Done by a shell inside, not through /proc/PID/root, so that symlinks in the path
        resolve inside the container and can never point the write at the host.
        """
        if not path.startswith("/"):
            raise ValueError(f"path must be absolute: {path!r}")
        self.run(["/bin/sh", "-c", _WRITE_FILE, "write_file", path, f"{mode:o}"], input=text, unit=False)

    def read_file(self, path: str) -> str:
        """Content of a file inside the node."""
        return self.run(["cat", "--", path], unit=False).stdout

    def install_agent(self, config_toml: str, unit_text: str | None = None) -> None:
        """Put the agent's config and unit in place and daemon-reload; then systemctl start it.

        The unit defaults to the working tree's systemd/failover-agent.service; its
        ExecStart= paths /usr/local/bin/failover-agent and failoverctl are this module's
        wrappers, which run the bind-mounted tree.
        """
        if unit_text is None:
            unit_text = (REPO / "systemd" / "failover-agent.service").read_text()
        self.write_file("/etc/failover-agent/agent.toml", config_toml)
        self.write_file("/etc/systemd/system/failover-agent.service", unit_text)
        self.systemctl("daemon-reload")

    def journal_json(
        self,
        unit: str | None = None,
        extra_args: Sequence[str] = (),
        *,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Journal entries as dicts (``journalctl -o json``), e.g. extra_args=["MESSAGE_ID=..."].

        Read inside while the node runs; once it is down (crash, shutdown) but not yet
        stopped, from the node's journal files on the host with ``journalctl -D``.
        """
        args = ["--no-pager", "-q", "-o", "json", *(("-u", unit) if unit else ()), *extra_args]
        if self.running:
            out = self.run(["journalctl", *args], timeout=timeout, unit=False).stdout
        else:
            journal_dir = self.upper / "var/log/journal"
            host_journalctl = shutil.which("journalctl")
            if not journal_dir.is_dir() or host_journalctl is None:
                raise LabError(f"node {self.machine} is down and its journal ({journal_dir}) cannot be read")
            cmd = [host_journalctl, "-D", str(journal_dir), *args]
            result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
            if result.returncode != 0:
                raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
            out = result.stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def wait_journal(
        self,
        extra_args: Sequence[str],
        unit: str | None = None,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Poll journal_json until it returns at least ``count`` entries (journald is asynchronous)."""
        entries: list[dict[str, Any]] = []

        def enough() -> bool:
            nonlocal entries
            entries = self.journal_json(unit, extra_args)
            return len(entries) >= count

        if not wait_until(enough, timeout, interval=0.1):
            raise LabError(f"node {self.machine}: {len(entries)} < {count} journal entries for {list(extra_args)} "
                           f"after {timeout:g} s")  # fmt: skip
        return entries

    # -- stop ------------------------------------------------------------------------------------

    def shutdown(self, timeout: float = 30.0) -> int | None:
        """Power off in order (units stop as on a real poweroff), keep the disk; returns nspawn's exit code.

        SIGTERM makes nspawn send SIGRTMIN+3 to the container's systemd.  After ``timeout`` s
        nspawn is SIGKILLed and the container's init with it (by PID), so a hung unit cannot
        leave an orphaned container behind.
        """
        return self._halt(graceful=True, timeout=timeout)

    def request_shutdown(self) -> None:
        """Start an orderly poweroff without waiting (to stop several nodes in parallel).

        Only one SIGTERM is ever sent: a second one makes nspawn terminate the container at once.
        """
        if self._proc is not None and self._proc.poll() is None and not self._term_sent:
            self._term_sent = True
            self._proc.send_signal(signal.SIGTERM)

    def kill(self) -> int | None:
        """Power failure: SIGKILL the container's init (the whole PID namespace dies at once)."""
        return self._halt(graceful=False, timeout=10.0)

    def _halt(self, graceful: bool, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        leader = self.leader if proc.poll() is None else self._leader
        try:
            if proc.poll() is None:
                if graceful:
                    self.request_shutdown()
                elif leader is not None:
                    leader.send_signal(signal.SIGKILL)
                else:
                    proc.kill()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if leader is not None and leader.alive():  # nspawn died first: an orphaned container
                leader.send_signal(signal.SIGKILL)
                wait_until(lambda: not leader.alive(), 5.0)
            for cgroup in self.cgroups:
                _purge_cgroup(cgroup)
            self._proc = None
            self._leader = None
        return proc.returncode

    def stop(self) -> None:
        """Shut down and remove everything of this node (cgroups, overlay dirs); safe to call twice."""
        if self._removed:
            return
        self._removed = True
        self.shutdown()
        # The overlay lived in nspawn's private mount namespace; check no namespace kept it.
        leftovers: list[str] = []

        def unmounted() -> bool:
            nonlocal leftovers
            leftovers = mounts_mentioning(f"{self.dir}/")
            return not leftovers

        if not wait_until(unmounted, 5.0, interval=0.1):
            raise LabError(f"node {self.machine}: mounts survive the container: {leftovers}")
        _safe_rmtree(self.dir)

    def close(self) -> None:
        """Closing protocol: same as stop()."""
        self.stop()


# --------------------------------------------------------------------------------------------
# A lab of nspawn nodes
# --------------------------------------------------------------------------------------------


class NspawnLab(Closing):
    """NetnsLab whose nodes are booted nspawn containers; the client stays a plain namespace.

    The image is ensured *before* any namespace exists, so a failed build leaves nothing.
    Nodes boot in parallel; ``states`` holds what each reached (running or degraded).
    close() powers the nodes off in parallel, removes them and then the namespaces.  As a
    pytest fixture (one prefix per test, so a crashed run's leftovers are purged next time)::

        @pytest.fixture
        def sdlab() -> Iterator[NspawnLab]:
            with NspawnLab("t-svc-handover") as lab:
                yield lab

        def test_x(sdlab: NspawnLab) -> None:
            a, b = sdlab["a"], sdlab["b"]          # NspawnNode, eth0 192.0.2.1 / .2
            sdlab.net.ping("client", "192.0.2.100")  # the client is a plain namespace
    """

    def __init__(
        self,
        prefix: str,
        nodes: Sequence[str] = ("a", "b"),
        *,
        client: bool = True,
        image: Image | None = None,
        boot_timeout: float = 60.0,
    ) -> None:
        self.image = image or ensure_image()
        require_nspawn()
        self.net = NetnsLab(prefix, nodes, client=client)
        self.nodes: dict[str, NspawnNode] = {}
        try:
            for name in self.net.nodes:
                self.nodes[name] = NspawnNode(self.net, name, self.image)
            for node in self.nodes.values():
                node.start()
            self.states = {name: node.wait_booted(boot_timeout) for name, node in self.nodes.items()}
        except BaseException:
            self.net.close()
            raise

    def __getitem__(self, name: str) -> NspawnNode:
        return self.nodes[name]

    @property
    def prefix(self) -> str:
        """The NetnsLab prefix (namespaces are PREFIX-a, PREFIX-b, PREFIX-client, PREFIX-br)."""
        return self.net.prefix

    def close(self) -> None:
        """Stop every node (powered off in parallel) and delete the namespaces; safe to call twice."""
        for node in self.nodes.values():
            node.request_shutdown()
        self.net.close()
