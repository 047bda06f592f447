"""Config validation: every bad value is refused with a message naming file and key."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from agent import config
from agent.config import ConfigError

BASE = """
[vrrp]
interface = "eth0"
vrid = 51
vips = ["192.0.2.100/24"]
"""


def parse_with(extra: str) -> config.Config:
    return config.parse(BASE + extra, "agent.toml")


def test_defaults_match_the_documented_contract() -> None:
    v = config.parse(BASE, "agent.toml").vrrp
    assert v.priority == 100 and v.version == 2 and v.advert_interval == 1.0
    assert v.preempt is True and v.preempt_delay == 0.0
    assert v.unicast_peers == () and v.auth_pass == ""
    assert (v.garp_count, v.garp_interval, v.garp_refresh) == (5, 0.2, 0.0)
    assert v.vips == (IPv4Interface("192.0.2.100/24"),)


def test_full_example_parses() -> None:
    cfg = config.parse("""
[vrrp]
interface = "eth1"
vrid = 7
priority = 255
version = 3
advert_interval = 0.1
preempt = false
vips = ["192.0.2.100/24", "198.51.100.7"]
unicast_peers = ["192.0.2.2"]
garp_count = 3
garp_interval = 0.05
garp_refresh = 30
""", "x.toml")
    v = cfg.vrrp
    assert v.version == 3 and v.advert_interval == 0.1 and v.priority == 255
    assert v.vips[1] == IPv4Interface("198.51.100.7/32")
    assert v.unicast_peers == (IPv4Address("192.0.2.2"),)


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[vrrp]\nvrid = 1\nvips = ["192.0.2.1"]\n', "vrrp.interface", "required"),
    ('[vrrp]\ninterface = "eth0"\nvips = ["192.0.2.1"]\n', "vrrp.vrid", "required"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\n', "vrrp.vips", "required"),
    (BASE + "bogus = 1\n", "vrrp.bogus", "unknown key"),
    (BASE + "priority = 0\n", "vrrp.priority", "1..255"),
    (BASE + "priority = 256\n", "vrrp.priority", "1..255"),
    (BASE + "priority = true\n", "vrrp.priority", "integer"),
    (BASE + 'priority = "100"\n', "vrrp.priority", "integer"),
    (BASE + "version = 4\n", "vrrp.version", "2..3"),
    (BASE + "advert_interval = 0.5\n", "vrrp.advert_interval", "whole seconds"),
    (BASE + "version = 3\nadvert_interval = 0.015\n", "vrrp.advert_interval", "steps of 0.01"),
    (BASE + "version = 3\nadvert_interval = 41\n", "vrrp.advert_interval", "0.01..40.95"),
    (BASE + "advert_interval = 300\n", "vrrp.advert_interval", "0.01..255"),
    (BASE + 'auth_pass = "123456789"\n', "vrrp.auth_pass", "at most 8"),
    (BASE + 'version = 3\nadvert_interval = 1\nauth_pass = "x"\n', "vrrp.auth_pass", "no authentication"),
    (BASE + "preempt = false\npreempt_delay = 5\n", "vrrp.preempt_delay", "no effect"),
    (BASE + 'unicast_peers = ["192.0.2.300"]\n', "vrrp.unicast_peers", "not an IPv4"),
    (BASE + 'unicast_peers = ["192.0.2.2", "192.0.2.2"]\n', "vrrp.unicast_peers", "duplicate"),
    (BASE + "garp_count = -1\n", "vrrp.garp_count", "0..100"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nvips = []\n', "vrrp.vips", "at least 1"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nvips = ["224.0.0.18"]\n', "vrrp.vips", "cannot be a virtual"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nvips = ["nope"]\n', "vrrp.vips", "entry 1"),
    ('[vrrp]\ninterface = "eth0"\nvrid = 1\nvips = ["192.0.2.5/24", "192.0.2.5/32"]\n', "vrrp.vips", "twice"),
    ('[vrrp]\ninterface = "a/b"\nvrid = 1\nvips = ["192.0.2.5"]\n', "vrrp.interface", "not an interface"),
    ('[vrrp]\ninterface = "averyveryverylongname"\nvrid = 1\nvips = ["192.0.2.5"]\n', "vrrp.interface", "15"),
    (BASE + "[nonsense]\n", "nonsense", "unknown section"),
    ("vrrp = 3\n", "vrrp", "must be a table"),
    ("[vrrp\n", "", "not valid TOML"),
    ("", "vrrp", "required"),
])
def test_errors_name_the_key(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "agent.toml")
    assert info.value.key == key
    assert words in str(info.value)
    assert str(info.value).startswith("agent.toml: ")


@pytest.mark.parametrize(("text", "key", "words"), [
    ("a = " + "1" * 5000 + "\n", "", "not valid TOML"),  # tomllib's own ValueError: beyond 4300 digits
    ("a = " + "[" * 2000 + "]" * 2000 + "\n", "", "not valid TOML"),  # tomllib's RecursionError
    (BASE + "advert_interval = 1" + "0" * 400 + "\n", "vrrp.advert_interval", "64-bit"),  # float() overflowed
    (BASE + "priority = 0x" + "f" * 4000 + "\n", "vrrp.priority", "64-bit"),  # too long for the message
    (BASE + "unicast_peers = [1, -9223372036854775809]\n", "vrrp.unicast_peers[2]", "64-bit"),
    (BASE + "priority = 9223372036854775807\n", "vrrp.priority", "1..255"),
])
def test_what_tomllib_lets_through_is_a_config_error(text: str, key: str, words: str) -> None:
    """Found by bench.fuzz: these raised ValueError, RecursionError or OverflowError out of parse()."""
    with pytest.raises(ConfigError) as info:
        config.parse(text, "agent.toml")
    assert (info.value.key, words in str(info.value)) == (key, True)


def test_loads_reads_bytes_as_load_does() -> None:
    assert config.loads(BASE.encode(), "agent.toml").vrrp.vrid == 51
    with pytest.raises(ConfigError, match="cannot read"):
        config.loads(BASE.encode() + b"# \xff\n", "agent.toml")


def test_describe_changes_lists_each_key_and_hides_the_password() -> None:
    old = parse_with('priority = 100\nauth_pass = "a"\n')
    new = config.parse(BASE.replace('"192.0.2.100/24"', '"192.0.2.100/24", "192.0.2.101/24"')
                       + 'priority = 120\nauth_pass = "b"\n', "agent.toml")
    changes = config.describe_changes(old, new)
    assert "vrrp.priority: 100 -> 120" in changes
    assert "vrrp.vips: [192.0.2.100/24] -> [192.0.2.100/24, 192.0.2.101/24]" in changes
    assert "vrrp.auth_pass: *** -> ***" in changes
    assert not any("a -> b" in c for c in changes)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "missing.toml")
    assert "cannot read" in str(info.value)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)


def test_daemon_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text(BASE + "priority = 999\n")
    proc = _run("-m", "agent.daemon", "--config", str(bad))
    assert proc.returncode == 2
    assert f"{bad}: vrrp.priority: must be in 1..255" in proc.stderr


def test_failoverctl_check_config(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(BASE)
    bad.write_text(BASE + "vrid = 0\n")
    ok = _run("-m", "agent.cli", "check-config", "--offline", str(good))
    assert ok.returncode == 0 and "valid" in ok.stdout
    # TOML refuses the duplicate key before we see it: still exit 2, still names the file
    ko = _run("-m", "agent.cli", "check-config", "--offline", str(bad))
    assert ko.returncode == 2 and str(bad) in ko.stderr


def test_console_scripts_installed_next_to_the_interpreter() -> None:
    """`pip install .` must give both commands (CI installs the project into .venv)."""
    bindir = Path(sys.executable).parent
    for name in ("failover-agent", "failoverctl"):
        assert (bindir / name).exists(), f"{name} is not installed in {bindir}: run .ci/setup"


def test_identity_changes_name_what_needs_an_ordered_leave_and_nothing_else() -> None:
    from agent.config import identity_changes, parse

    base = parse('[vrrp]\ninterface = "eth0"\nvrid = 51\nvips = ["192.0.2.100/24"]\n'
                 '[filesystem]\ndevice = "/dev/drbd0"\nmountpoint = "/srv/nfs"\n'
                 '[nfs]\nexports = [{ path = "/srv/nfs/a", clients = "*", options = "rw,fsid=1" }]\n'
                 '[monitor]\nstep_timeout = 30\n')
    text = ('[vrrp]\ninterface = "eth0"\nvrid = 51\nvips = ["192.0.2.100/24"]\npriority = 120\n'
            '[filesystem]\ndevice = "/dev/drbd0"\nmountpoint = "/srv/nfs"\noptions = ["noatime"]\n'
            '[nfs]\nthreads = 16\ngrace_time = 30\nexports = [{ path = "/srv/nfs/a", clients = "*", '
            'options = "rw,fsid=1" }, { path = "/srv/nfs/b", clients = "*", options = "rw,fsid=2" }]\n'
            '[monitor]\nstep_timeout = 10\n')
    assert identity_changes(base, parse(text)) == []
    moved = parse(text.replace('mountpoint = "/srv/nfs"', 'mountpoint = "/srv/data"')
                  .replace("/srv/nfs/", "/srv/data/").replace("[nfs]\n", '[nfs]\nbackend = "ganesha"\n'))
    assert identity_changes(base, moved) == ["filesystem.mountpoint", "nfs.backend"]
    assert identity_changes(base, parse(text.split("[filesystem]")[0])) == ["[filesystem] removed", "[nfs] removed"]
