"""The node image for the Debian package test: plain Debian 12 + systemd, without the project.

Unlike the nspawn lab's image (tests/lab/nspawn.py: a venv with the PyPI dependencies, the
working tree bind-mounted), this one has nothing of failover-agent: the test installs the
built .deb with apt, as an admin would.  The package's Debian dependencies are *downloaded*
into /var/cache/apt/archives and the package lists kept, not installed, so apt resolves
``Depends:`` against bookworm itself inside a node whose network namespace has no route out.

Cached like the nspawn image, in the same directory, as ``pkgtest-bookworm-<key>.tar.zst``
(+ ``.rootfs``, ``.json``, ``.build.log``); the key hashes suite, mirrors, both package lists
and pkg_image.sh.  The ``pkgtest-`` names never match the nspawn image's pruning pattern and
vice versa, so the two images do not evict each other.  Build ~60-90 s, once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab import nspawn
from tests.lab.nspawn import IMAGE_DIR, MIRRORS, SUITE, Image, ImageError

__all__ = ["CACHED_DEBS", "PACKAGES", "PkgRecipe", "ensure_pkg_image"]

HOOK = Path(__file__).with_name("pkg_image.sh")
RECIPE_VERSION = "1"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "iproute2", "procps", "iputils-ping")
# What the .deb depends on beyond PACKAGES: downloaded, not installed.
CACHED_DEBS = ("python3-pyroute2", "python3-psutil", "python3-systemd", "python3-scapy")
_FILE_RE = re.compile(r"pkgtest-[a-z]+-[0-9a-f]{16}(\.tar\.zst|\.tar|\.rootfs|\.json|\.build\.log|\.build)")


@dataclass(frozen=True)
class PkgRecipe:
    suite: str
    mirrors: tuple[str, ...]
    packages: tuple[str, ...]
    cached: tuple[str, ...]
    hook_text: str
    version: str = RECIPE_VERSION

    @property
    def key(self) -> str:
        blob = json.dumps({"version": self.version, "suite": self.suite, "mirrors": list(self.mirrors),
                           "packages": sorted(self.packages), "cached": sorted(self.cached),
                           "hook": self.hook_text}, sort_keys=True).encode()  # fmt: skip
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"pkgtest-{self.suite}-{self.key}"


def default_recipe() -> PkgRecipe:
    return PkgRecipe(SUITE, MIRRORS, PACKAGES, CACHED_DEBS, HOOK.read_text())


def ensure_pkg_image(recipe: PkgRecipe | None = None, cache_dir: Path = IMAGE_DIR) -> Image:
    """The package-test image, built only if not cached (ImageError with the log tail on failure)."""
    recipe = recipe or default_recipe()
    if os.geteuid() != 0:
        raise ImageError("building and booting nspawn nodes needs root")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{recipe.name}.tar.zst"
    rootfs = cache_dir / f"{recipe.name}.rootfs"
    manifest_path = cache_dir / f"{recipe.name}.json"
    with nspawn._locked(cache_dir / "nspawn.lock"):
        if not tarball.exists() or not manifest_path.exists():
            _build(recipe, cache_dir)
        if not (rootfs / "usr/bin/python3").exists():
            nspawn._extract(tarball, rootfs)
        manifest = json.loads(manifest_path.read_text())
    return Image(recipe.key, tarball, rootfs, manifest)


def _build(recipe: PkgRecipe, cache_dir: Path) -> None:
    if shutil.which("mmdebstrap") is None or shutil.which("zstd") is None:
        nspawn._apt_install(["mmdebstrap", "systemd-container", "zstd"])
    staging = cache_dir / f"{recipe.name}.build"
    log_path = cache_dir / f"{recipe.name}.build.log"
    rootfs = cache_dir / f"{recipe.name}.rootfs"
    tarball = cache_dir / f"{recipe.name}.tar.zst"
    nspawn._safe_rmtree(staging)
    started = time.monotonic()
    private = ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child"]
    download = shlex.join(["apt-get", "install", "--download-only", "-y", "-q", "--no-install-recommends",
                           *recipe.cached])  # fmt: skip
    try:
        with log_path.open("w") as log:
            nspawn._logged(
                [*private, "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
                 f"--include={','.join(recipe.packages)}", '--aptopt=Acquire::Retries "3"', "--skip=cleanup/apt",
                 f'--customize-hook=chroot "$1" {download}', recipe.suite, str(staging), *recipe.mirrors],
                log, "mmdebstrap", log_path, timeout=1800,
            )  # fmt: skip
            nspawn._logged([*private, "sh", str(HOOK), str(staging)], log, "pkg_image.sh", log_path, timeout=600)
            (staging / "etc/failover-agent-image").write_text(f"{recipe.name}\n")
            partial = tarball.with_name(tarball.name + ".partial")
            nspawn._logged(["tar", "-I", "zstd -T0 -3", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                            "-C", str(staging), "-cf", str(partial), "."], log, "tar", log_path, timeout=900)
    except BaseException:
        nspawn._safe_rmtree(staging)
        raise
    cached = sorted(p.name for p in (staging / "var/cache/apt/archives").glob("*.deb"))
    manifest = {"name": recipe.name, "key": recipe.key, "packages": list(recipe.packages),
                "cached": list(recipe.cached), "cached_debs": cached,
                "build_seconds": round(time.monotonic() - started, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    nspawn._safe_rmtree(rootfs)
    os.replace(partial, tarball)
    staging.rename(rootfs)
    (cache_dir / f"{recipe.name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for entry in cache_dir.iterdir():  # older package-test images
        if _FILE_RE.fullmatch(entry.name) and not entry.name.startswith(recipe.name + "."):
            if entry.name.endswith(".rootfs") and nspawn.mounts_mentioning(str(entry)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                nspawn._safe_rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
