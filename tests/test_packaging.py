"""What the Debian package and a pip install ship, checked without building anything.

The examples parse with agent.config; the man pages and the bash completion are what
tools/gen_docs.py renders from the parsers and key tables now (not stale); the version is
defined once; pyproject.toml builds with Debian 12's setuptools; the pyroute2 0.7 adapter reads
messages the way the agent's code expects.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.version import version
from tools import gen_docs
from vrrp import netlink

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize(("name", "steps", "backend"), [
    ("vip-only.toml", ("vip",), None),
    ("drbd-kernel-nfs.toml", ("drbd", "mount", "nfs_state", "nfs", "vip"), "kernel"),
    ("drbd-ganesha.toml", ("drbd", "mount", "nfs_state", "nfs", "vip"), "ganesha"),
    ("drbd-mariadb.toml", ("drbd", "mount", "service:mariadb", "vip"), None),
    ("vip-dns.toml", ("service:dns", "vip"), None),
])  # fmt: skip
def test_examples_parse(name: str, steps: tuple[str, ...], backend: str | None) -> None:
    cfg = config.load(EXAMPLES / name)
    assert tuple(str(s.value) for s in cfg.steps) == steps
    assert (cfg.nfs.backend if cfg.nfs else None) == backend


def test_the_example_of_two_instances_parses() -> None:
    process = config.load_process(EXAMPLES / "two-instances.toml")
    assert process.names == ("nfs", "db")
    assert [tuple(str(s.value) for s in c.steps) for c in process.instances] == [
        ("drbd", "mount", "nfs_state", "nfs", "vip"), ("drbd", "mount", "service:mariadb", "vip")]


def test_debian_ships_every_example() -> None:
    listed = (REPO / "debian/failover-agent.examples").read_text().split()
    assert sorted(listed) == sorted(f"examples/{p.name}" for p in EXAMPLES.glob("*.toml"))


def test_example_conffile_parses_as_shipped_and_with_every_section_uncommented() -> None:
    path = EXAMPLES / "agent.toml.example"
    assert [str(s.value) for s in config.load(path).steps] == ["vip"]
    text = path.read_text()
    full = "\n".join(re.sub(r"^#(?=[\[\w])", "", line) for line in text.splitlines())
    cfg = config.parse(full, "agent.toml.example (uncommented)")
    assert cfg.drbd and cfg.filesystem and cfg.nfs and cfg.peer and cfg.track and cfg.track.checks
    assert "examples/agent.toml.example etc/failover-agent/" in (REPO / "debian/failover-agent.install").read_text()


def test_man_pages_and_completion_are_current() -> None:
    assert gen_docs.undocumented() == [], "describe these config keys in tools/gen_docs.py KEY_DOCS"
    for path, text in gen_docs.outputs().items():
        assert path.exists() and path.read_text() == text, f"{path} is stale: run python -m tools.gen_docs"
    man = (REPO / "debian/failover-agent.manpages").read_text().split()
    assert sorted(man) == ["man/failover-agent.8", "man/failover-agent.toml.5", "man/failoverctl.8"]


def test_man_pages_cover_every_subcommand_and_config_key() -> None:
    ctl = (REPO / "man/failoverctl.8").read_text()
    for cmd in ("status", "history", "check\\-config", "handover", "maintenance", "reset", "cleanup",
                "fence\\-peer", "import\\-keepalived"):
        assert f".SS failoverctl {cmd}" in ctl
    page = (REPO / "man/failover-agent.toml.5").read_text()
    assert "\\fBinterface\\fR = required" in page and "\\fBpriority\\fR = 100" in page


def test_completion_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "completion/failoverctl")], check=True)


def test_version_is_defined_once() -> None:
    want = pyproject()["project"]["version"]
    assert version() == want
    top = (REPO / "debian/changelog").read_text().splitlines()[0]
    assert top.startswith(f"failover-agent ({want})"), f"debian/changelog says {top!r}, pyproject {want}"
    assert f"## {want}" in (REPO / "CHANGELOG.md").read_text()
    for module, prog in (("agent.cli", "failoverctl"), ("agent.daemon", "failover-agent")):
        out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                             cwd=REPO, check=True).stdout  # fmt: skip
        assert out.strip() == f"{prog} {want}"


def test_pyproject_builds_with_debian_12_setuptools() -> None:
    data = pyproject()
    (req,) = data["build-system"]["requires"]
    match = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", req)
    assert match and int(match.group(1)) <= 66, f"{req}: Debian 12 has setuptools 66"
    # PEP 639 license strings need setuptools 77; the table form works with both
    assert data["project"]["license"] == {"text": "GPL-2.0-or-later"}
    control = (REPO / "debian/control").read_text()
    assert f"python3-setuptools (>= {match.group(1)})" in control


def test_license_is_the_gpl2() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    assert "GPL-2.0-or-later" in (REPO / "debian/copyright").read_text()


class FakeNlmsg(dict[str, Any]):
    """What pyroute2 0.7 hands out: a dict of header fields plus NLAs reached by get_attr."""

    prefix = "IFA_"

    def __init__(self, fields: dict[str, Any], attrs: dict[str, Any]) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def name2nla(self, name: str) -> str:
        return self.prefix + name.upper()

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def test_pyroute2_07_messages_read_like_09_ones() -> None:
    msg = netlink.Message(FakeNlmsg({"index": 3, "flags": 128, "prefixlen": 24, "event": "RTM_NEWADDR"},
                                    {"IFA_ADDRESS": "192.0.2.100"}))  # fmt: skip
    assert msg.get("address") == "192.0.2.100" and msg["prefixlen"] == 24 and msg["flags"] == 128
    assert msg.get("index") == 3 and msg.get("event") == "RTM_NEWADDR"
    assert msg.get("operstate") is None and msg.get("operstate", "x") == "x"


def test_the_adapter_is_used_only_where_pyroute2_lacks_async() -> None:
    import pyroute2

    assert (netlink.AsyncIPRoute is netlink.IPRouteAdapter) == (not hasattr(pyroute2, "AsyncIPRoute"))
