"""The Debian package, as an admin meets it: build it, install it with apt on a fresh Debian 12,
configure a VIP-only node, start the unit.

1. ``dpkg-buildpackage -us -uc -b`` in a copy of the working tree under tmp (the build
   dependencies are installed on the host if missing; Debian's own python3 does the build,
   never the project's venv).
2. A node booted from the package-test image (tests/lab/pkgimage.py: Debian 12 with systemd,
   no venv, no project; the package's dependencies downloaded into apt's cache, not
   installed) in a network namespace without a route out.  ``apt-get install ./failover-agent
   _*.deb`` must resolve and install python3-pyroute2 (bookworm's 0.7.2), python3-scapy,
   python3-psutil and python3-systemd from bookworm, with no pip and no compiler.
3. The unit is installed but neither enabled nor started; the admin writes a VIP-only
   config, starts it: ``systemctl is-active`` says active, ``failoverctl status`` answers and
   the node becomes MASTER holding the VIP; a stop releases it.

Needs root; runs under the lab lock (conftest). Never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netns import NetnsLab, wait_until
from tests.lab.nspawn import NspawnNode, _apt_install
from tests.lab.pkgimage import CACHED_DEBS, ensure_pkg_image

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
BUILD_DEPS = ("dpkg-dev", "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-all",
              "python3-setuptools", "python3-wheel")  # fmt: skip
DEBIAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive"}  # fmt: skip
VIP = "192.0.2.100"
CONFIG = f"""# VIP-only, written by tests/test_debian_package.py
[vrrp]
interface = "eth0"
vrid = 61
priority = 150
vips = ["{VIP}/24"]
"""


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def source_files() -> list[str]:
    """The files of the working tree (tracked and new, not ignored): no .venv, no caches."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [p for p in out.split("\0") if p and (REPO / p).is_file()]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    missing = [p for p in BUILD_DEPS if subprocess.run(["dpkg-query", "-W", "-f", "${Status}", p],
                                                       capture_output=True, text=True).stdout != "install ok installed"]
    if missing:
        _apt_install(missing)
    out = tmp_path_factory.mktemp("deb")
    tree = out / "failover-agent"
    for rel in source_files():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, tree / rel)
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, env=DEBIAN_ENV,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, f"dpkg-buildpackage failed:\n{(result.stdout + result.stderr)[-4000:]}"
    debs = sorted(out.glob("failover-agent_*_all.deb"))
    assert [d.name for d in debs] == [f"failover-agent_{project_version()}_all.deb"]
    shutil.rmtree(tree)
    yield debs[0]
    shutil.rmtree(out, ignore_errors=True)


def test_package_contents(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    files = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    for path in ("/usr/bin/failover-agent", "/usr/bin/failoverctl", "/lib/systemd/system/failover-agent.service",
                 "/etc/failover-agent/agent.toml.example", "/usr/share/bash-completion/completions/failoverctl",
                 "/usr/share/man/man8/failover-agent.8.gz", "/usr/share/man/man8/failoverctl.8.gz",
                 "/usr/share/man/man5/failover-agent.toml.5.gz", "/usr/share/doc/failover-agent/copyright",
                 "/usr/share/doc/failover-agent/examples/vip-only.toml",
                 "/usr/share/doc/failover-agent/examples/drbd-kernel-nfs.toml",
                 "/usr/share/doc/failover-agent/examples/drbd-ganesha.toml",
                 "/usr/lib/python3/dist-packages/vrrp/netlink.py"):  # fmt: skip
        assert path in files, f"{path} missing from {deb.name}"
    assert not any("/usr/local/" in f for f in files)
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Architecture", "Depends"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    assert "Architecture: all" in fields
    for dep in CACHED_DEBS:
        assert dep in fields
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True).stdout
    assert "/etc/failover-agent/agent.toml.example" in conffiles
    tarball = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    unit = subprocess.run(["tar", "-xOf", "-", "./lib/systemd/system/failover-agent.service"], input=tarball,
                          capture_output=True, check=True).stdout.decode()  # fmt: skip
    execs = [line for line in unit.splitlines() if line.startswith("Exec")]
    assert len(execs) == 3 and all("/usr/bin/failover" in line for line in (execs[0], execs[2])), execs
    assert execs[1] == "ExecReload=/bin/kill -HUP $MAINPID", execs
    assert not [line for line in execs if "/usr/local/" in line], execs


def test_install_with_apt_offline_and_run_the_unit(deb: Path) -> None:
    image = ensure_pkg_image()
    want = project_version()
    with NetnsLab(f"pkg{os.getpid() % 10000}", nodes=("a",), client=True) as lab:
        node = NspawnNode(lab, "a", image, project=False, extra_nspawn_args=[f"--bind-ro={deb.parent}:/mnt/debs"])
        assert node.boot() in ("running", "degraded")
        # a fresh Debian 12: no project, no venv, dependencies not installed, no way out
        assert node.run(["sh", "-c", "ls /opt/failover-agent /usr/local/bin/failoverctl"], check=False,
                        unit=False).returncode != 0  # fmt: skip
        for dep in CACHED_DEBS:
            status = node.run(["dpkg-query", "-W", "-f", "${Status}", dep], check=False, unit=False).stdout
            assert status != "install ok installed", f"{dep} is preinstalled: the test would prove nothing"
        assert node.run(["ip", "-4", "route", "show", "default"], unit=False).stdout.strip() == ""

        install = node.run(["apt-get", "install", "-y", "--no-install-recommends",
                            f"/mnt/debs/{deb.name}"], check=False, timeout=600, unit=False,
                           env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        assert install.returncode == 0, f"apt-get install failed:\n{install.stdout[-3000:]}{install.stderr[-3000:]}"
        versions = node.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "failover-agent", *CACHED_DEBS],
                            unit=False).stdout  # fmt: skip
        assert f"failover-agent {want}" in versions and "python3-pyroute2 0.7" in versions, versions
        for prog in ("failover-agent", "failoverctl"):
            assert node.run([prog, "--version"], unit=False).stdout.strip() == f"{prog} {want}"
        # installed, not enabled, not started: there is no config yet
        assert node.systemctl("is-enabled", "failover-agent", check=False).stdout.strip() == "disabled"
        assert node.systemctl("is-active", "failover-agent", check=False).stdout.strip() == "inactive"

        node.write_file("/etc/failover-agent/agent.toml", CONFIG, 0o600)
        assert node.run(["failoverctl", "check-config"], unit=False).returncode == 0
        node.systemctl("start", "failover-agent", timeout=60)
        assert node.systemctl("is-active", "failover-agent").stdout.strip() == "active"
        status = ""

        def master() -> bool:
            nonlocal status
            result = node.run(["failoverctl", "status"], check=False, unit=False)
            status = result.stdout + result.stderr
            return result.returncode == 0 and "MASTER" in status

        assert wait_until(master, 15.0, interval=0.2), f"failoverctl status:\n{status}"
        assert f"failover-agent {want}" in status
        assert VIP in node.run(["ip", "-4", "addr", "show", "dev", "eth0"], unit=False).stdout
        assert wait_until(lambda: lab.ping("client", VIP), 5.0), f"the client cannot ping {VIP}"
        node.systemctl("stop", "failover-agent", timeout=30)
        assert VIP not in node.run(["ip", "-4", "addr", "show", "dev", "eth0"], unit=False).stdout
        journal = node.run(["journalctl", "-u", "failover-agent", "--no-pager", "-o", "cat"], unit=False).stdout
        assert "Traceback" not in journal, journal[-3000:]
