"""`failoverctl check-config`: host checks with fakes and temp files, line numbers, takeover time, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Coroutine, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from agent import checkconfig, cli
from agent import config as configmod
from agent.checkconfig import Finding
from agent.peerwire import load_secret
from vrrp.packet import Address

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "drbd"

BASE = """\
[vrrp]
interface = "eth0"
vrid = 51
priority = 100
vips = ["192.0.2.100/24"]
"""

STORAGE = BASE + """
[drbd]
resource = "r0"

[filesystem]
device = "/dev/drbd0"
mountpoint = "{mnt}"

[nfs]
backend = "kernel"
exports = [{{ path = "{mnt}/data", clients = "192.0.2.0/24", options = "rw,sync,fsid=1" }}]
versions = [4]

[peer]
address = "192.0.2.2"
secret_file = "{secret}"

[track]
witnesses = ["192.0.2.254"]

[[track.check]]
argv = ["{check}", "--quick"]
weight = -20
"""


def _unknown_resource(name: str) -> tuple[int, str, str]:
    """drbdadm's own refusal of a name drbd.conf does not define, as captured on drbd-utils 9.22
    (`drbdadm primary nosuch`: the same ctx_by_name() check runs for every command that takes a
    resource, `dump` included)."""
    captured = json.loads((FIXTURES / "drbdadm-primary-unknown-resource.json").read_text())
    return captured["returncode"], "", captured["stderr"].replace("nosuch", name)


def _dump(name: str, host: str = "a", ignored: bool = False) -> str:
    return (f"# /etc/drbd.conf\n# resource {name} on {host}: {'ignored' if ignored else 'not ignored'}, not stacked\n"
            f"# defined at /etc/drbd.d/{name}.res:1\nresource {name} {{\n    on a {{ device minor 0; }}\n}}\n\n")


class FakeDrbdadm:
    """`drbdadm dump RES` as drbd-utils answers it, for a drbd.conf defining `known`."""

    def __init__(self, known: dict[str, bool], missing: bool = False, hang: bool = False,
                 no_conf: bool = False) -> None:
        self.known, self.missing, self.hang, self.no_conf = known, missing, hang, no_conf
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if self.missing:
            raise FileNotFoundError(2, "No such file or directory", "drbdadm")
        if self.hang:
            return 124, "", f"{argv[0]} timed out after {timeout:g} s"
        if self.no_conf:  # assign_default_config_file(): exit(E_CONFIG_INVALID)
            return 10, "", "Can not open '/etc/drbd.conf': No such file or directory\n"
        assert argv[:2] == ["drbdadm", "dump"]
        name = argv[2]
        if name not in self.known:
            return _unknown_resource(name)
        return 0, _dump(name, ignored=self.known[name]), ""


def run(coro: Coroutine[Any, Any, Finding]) -> Finding:
    return asyncio.run(coro)


# -- each host check ----------------------------------------------------------------------------
def _lookup(table: Mapping[str, Address | None]) -> checkconfig.PrimaryOf:
    async def primary_of(name: str) -> Address | None:
        if name not in table:
            raise LookupError(f"interface {name} not found")
        return table[name]

    return primary_of


def test_interface_exists_with_an_address_of_its_own() -> None:
    table = {"eth0": IPv4Address("192.0.2.1"), "eth1": None}
    assert run(checkconfig.check_interface("eth0", _lookup(table))).line() == "interface eth0: ok (IPv4 192.0.2.1)"
    assert "no such interface" in run(checkconfig.check_interface("eth9", _lookup(table))).line()
    six = {"eth0": IPv6Address("fe80::1"), "eth1": None}
    found = run(checkconfig.check_interface("eth0", _lookup(six), ipv6=True)).line()
    assert found == "interface eth0: ok (IPv6 fe80::1)"
    assert "has no IPv6 link-local address" in run(checkconfig.check_interface("eth1", _lookup(six), ipv6=True)).line()
    only_vips = run(checkconfig.check_interface("eth1", _lookup(table)))
    assert not only_vips.ok and "no IPv4 address of its own" in only_vips.problem


def test_secret_file_is_read_as_the_agent_reads_it(tmp_path: Path) -> None:
    def load(p: str) -> bytes:
        return load_secret(p, owner=os.getuid())

    key = tmp_path / "peer.key"
    assert "does not exist" in checkconfig.check_secret_file(str(key), load).problem
    key.write_text("x" * 32)
    key.chmod(0o644)
    loose = checkconfig.check_secret_file(str(key), load)
    assert not loose.ok and "mode 644" in loose.problem and "chmod 600" in loose.problem
    key.chmod(0o600)
    assert checkconfig.check_secret_file(str(key), load).line() == f"peer secret {key}: ok (32 bytes, private to root)"
    key.write_text("short")
    assert "use at least 16" in checkconfig.check_secret_file(str(key), load).problem


def test_check_programs_exist_and_are_executable(tmp_path: Path) -> None:
    prog = tmp_path / "check-nfs"
    assert checkconfig.check_executable(str(prog), "check").problem == "does not exist"
    prog.write_text("#!/bin/sh\nexit 0\n")
    prog.chmod(0o644)
    assert "is not executable (mode 644" in checkconfig.check_executable(str(prog), "check").problem
    prog.chmod(0o755)
    assert checkconfig.check_executable(str(prog), "check").ok
    assert checkconfig.check_executable(str(tmp_path), "check").problem == "is not a regular file"


def test_mountpoint(tmp_path: Path) -> None:
    assert checkconfig.check_mountpoint(str(tmp_path)).ok
    assert "does not exist (mkdir -p" in checkconfig.check_mountpoint(str(tmp_path / "nope")).problem
    (tmp_path / "file").write_text("")
    assert checkconfig.check_mountpoint(str(tmp_path / "file")).problem == "exists but is not a directory"


def test_drbd_resource_as_drbdadm_answers() -> None:
    drbdadm = FakeDrbdadm({"r0": False, "r1": True})
    ok = run(checkconfig.check_drbd_resource("r0", drbdadm))
    assert ok.line() == "DRBD resource r0: ok (defined at /etc/drbd.d/r0.res:1)"
    assert drbdadm.calls == [["drbdadm", "dump", "r0"]]
    unknown = run(checkconfig.check_drbd_resource("r9", drbdadm))
    assert unknown.line() == ("DRBD resource r9: FAILED: drbdadm dump r9 exit 1: 'r9' not defined in your config "
                              "(for this host).")
    other_host = run(checkconfig.check_drbd_resource("r1", drbdadm))
    assert "not for this host (a)" in other_host.problem
    missing = run(checkconfig.check_drbd_resource("r0", FakeDrbdadm({}, missing=True)))
    assert missing.problem == "drbdadm not found in PATH: install drbd-utils"
    no_conf = run(checkconfig.check_drbd_resource("r0", FakeDrbdadm({}, no_conf=True)))
    assert no_conf.problem == "drbdadm dump r0 exit 10: Can not open '/etc/drbd.conf': No such file or directory"
    hung = run(checkconfig.check_drbd_resource("r0", FakeDrbdadm({}, hang=True), timeout=3))
    assert hung.problem == "drbdadm dump r0 did not finish within 3 s"


def test_drbd_check_against_the_real_runner_without_drbdadm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real runner (drbd.runner.run) raises FileNotFoundError for a missing binary: said so."""
    from drbd.runner import run as real_run

    monkeypatch.setenv("PATH", str(tmp_path))
    finding = run(checkconfig.check_drbd_resource("r0", real_run))
    assert finding.problem == "drbdadm not found in PATH: install drbd-utils"


def test_nfs_programs_follow_the_backend() -> None:
    cfg = configmod.parse(STORAGE.format(mnt="/srv/nfs", secret="/k", check="/c"))
    assert cfg.nfs is not None
    label, programs, _ = checkconfig.nfs_programs(cfg.nfs)
    assert label == "kernel nfsd (direct)" and "rpc.nfsd" in programs and "rpc.statd" not in programs  # v4 only
    found = checkconfig.check_programs("NFS", programs, "apt", which=lambda p: None if p == "rpc.mountd" else f"/x/{p}")
    assert found.line() == "NFS: FAILED: rpc.mountd not found in PATH (apt)"
    ganesha = configmod.parse(STORAGE.format(mnt="/srv/nfs", secret="/k", check="/c").replace(
        'backend = "kernel"', 'backend = "ganesha"\nganesha_binary = "/opt/ganesha/bin/ganesha.nfsd"'))
    assert ganesha.nfs is not None
    assert checkconfig.nfs_programs(ganesha.nfs)[1] == ["/opt/ganesha/bin/ganesha.nfsd"]


def test_host_findings_cover_the_whole_config(tmp_path: Path) -> None:
    check = tmp_path / "check"
    check.write_text("#!/bin/sh\n")
    check.chmod(0o755)
    secret = tmp_path / "peer.key"
    secret.write_text("s" * 20)
    secret.chmod(0o600)
    (tmp_path / "mnt").mkdir()
    cfg = configmod.parse(STORAGE.format(mnt=tmp_path / "mnt", secret=secret, check=check))
    findings = asyncio.run(checkconfig.host_findings(
        cfg, _lookup({"eth0": IPv4Address("192.0.2.1")}), FakeDrbdadm({"r0": False}),
        load=lambda p: load_secret(p, owner=os.getuid()), which=lambda p: f"/usr/sbin/{p}"))
    assert [f.what.split()[0] for f in findings] == ["interface", "peer", "check", "DRBD", "mountpoint", "NFS"]
    assert all(f.ok for f in findings), [f.line() for f in findings]


# -- worst-case takeover time -------------------------------------------------------------------
def test_takeover_time_vip_only() -> None:
    lines = checkconfig.takeover_time(configmod.parse(BASE))
    assert lines == ["takeover: worst case 3.609 s after the master's last advert: Master_Down_Interval 3.609 s "
                     "(3 x advert_interval 1 s + Skew_Time 0.609 s at priority 100)"]


def test_takeover_time_refuse_and_witness_as_the_guard_computes_it() -> None:
    text = STORAGE.format(mnt="/srv/nfs", secret="/k", check="/c")
    refuse = checkconfig.takeover_time(configmod.parse(text))
    # a failing weight -20 check lowers the priority to 80: Skew_Time (256 - 80) / 256
    assert refuse[0].startswith("takeover: worst case 3.688 s after the master's last advert while DRBD sees the peer")
    assert "at priority 80, lowered from 100" in refuse[0]
    assert "never taken over automatically" in refuse[1]
    witness = configmod.parse(text.replace('resource = "r0"', 'resource = "r0"\nunknown_peer = "witness"\n'
                                                              "witness_grace = 4"))
    lines = checkconfig.takeover_time(witness)
    # guard.isolation_bound with the fast [track] defaults a [peer] brings (interval 0.2 s, timeout
    # 0.1 s): (heartbeat 0.1 + 3 x 0.2 + 0.1 + release_deadline 1 + witness_grace 4) x 1.01 / 0.99
    assert lines[0].startswith("takeover: worst case 5.917 s after the peer's last sign of life when DRBD cannot")
    assert "gone after 0.3 s of silence on every path (192.0.2.2)" in lines[1]
    assert "5.917 s = (heartbeat 0.1 s + noticing 0.7 s + guard.release_deadline 1 s + drbd.witness_grace 4 s)" \
           in lines[2] and "overlap, they do not add" in lines[2]
    assert "ends with 'none' (NONE: an isolated peer" in lines[3]
    fenced = configmod.parse(text.replace('resource = "r0"', 'resource = "r0"\nunknown_peer = "witness"\n'
                                                             'demote_escalation = ["retry", "reboot"]'))
    lines = checkconfig.takeover_time(fenced)
    assert lines[0].startswith("takeover: worst case 1.836 s") and "ends with 'reboot'" in lines[3]
    long = configmod.parse(text.replace('resource = "r0"', 'resource = "r0"\nunknown_peer = "witness"\n'
                                                           "witness_grace = 60"))
    assert "the first attempt gives up" in checkconfig.takeover_time(long)[-1]


# -- where the offending key is -----------------------------------------------------------------
FILE = """\
# a comment with priority = 1 in it
[vrrp]
interface = "eth0"
vrid = 51
priority = 999
vips = ["192.0.2.100/24"]
notes = \"\"\"
timeout = 1
\"\"\"

[nfs]
exports = [
  { path = "/srv/x", clients = "*", options = "rw" },
]

[[track.check]]
argv = ["/a"]

[[track.check]]
argv = ["/b"]
"timeout" = 9
"""


@pytest.mark.parametrize(("key", "line"), [
    ("vrrp.priority", 5),
    ("vrrp.interface", 3),
    ("vrrp.preempt", 2),  # not written: the section header
    ("nfs.exports[1]", 12),
    ("track.check[2].timeout", 21),
    ("track.check[2].interval", 19),
    ("track.check[1]", 16),
    ("track", None),  # only implied by [[track.check]]
    ("peer", None),
    ("vrrp.a.b", None),
    ("", None),
])
def test_key_line(key: str, line: int | None) -> None:
    assert checkconfig.key_line(FILE, key) == line


INSTANCES = """[agent]
metrics = ""

[[instance]]
name = "nfs"
[instance.vrrp]
vrid = 51

[[instance]]
name = "db"
sync_group = "g"
[instance.vrrp]
vrid = 52
[[instance.service]]
name = "a"
[[instance.service]]
name = "b"
unit = "x"
"""


@pytest.mark.parametrize(("key", "line"), [
    ("instance[2].vrrp.vrid", 13),
    ("instance[1].vrrp.vrid", 7),
    ("instance[2].name", 10),
    ("instance[2].sync_group", 11),
    ("instance[1].sync_group", 4),  # not written: the instance's header
    ("instance[2].service[2].unit", 18),
    ("instance[2].drbd", 9),
    ("instance[2]", 9),
    ("instance[3].vrrp.vrid", None),
])
def test_key_line_in_instance_tables(key: str, line: int | None) -> None:
    assert checkconfig.key_line(INSTANCES, key) == line


def test_a_key_inside_a_multiline_string_is_not_taken() -> None:
    assert checkconfig.key_line(FILE, "vrrp.timeout") == 2


# -- the command ----------------------------------------------------------------------------------
def _ctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *argv], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def test_exit_codes_and_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace("priority = 100", "priority = 999"))
    ko = _ctl("check-config", "-c", str(bad))
    assert ko.returncode == 2
    assert ko.stderr.strip() == f"invalid: {bad}:4: vrrp.priority: must be in 1..255, got 999"
    assert _ctl("check-config", "--config", str(bad), "--offline").returncode == 2
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    offline = _ctl("check-config", str(good), "--offline")
    assert offline.returncode == 0 and offline.stdout.startswith(f"{good}: valid (VRRPv2 VRID 51 on eth0")
    assert "interface" not in offline.stdout
    usage = _ctl("check-config", "--no-such-option")
    assert usage.returncode == 64 and "usage:" in usage.stderr
    assert _ctl("check-config", str(good), "-c", str(bad)).returncode == 64
    assert _ctl("no-such-command").returncode == 64


def test_host_checks_in_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Through cli.main with the network lookup replaced: one line per check, exit 1 on a failure."""
    path = tmp_path / "agent.toml"
    path.write_text(BASE + '\n[filesystem]\ndevice = "/dev/sdb1"\nmountpoint = "' + str(tmp_path / "m") + '"\n')

    async def primary_of(name: str, exclude: list[Address], ipv6: bool) -> Address | None:
        return IPv4Address("192.0.2.1")

    monkeypatch.setattr(cli, "_primary_of", primary_of)
    assert cli.main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    mnt = tmp_path / "m"
    assert out[1:] == ["interface eth0: ok (IPv4 192.0.2.1)",
                       f"mountpoint {mnt}: FAILED: does not exist (mkdir -p {mnt}, on both nodes)",
                       "takeover: worst case 3.609 s after the master's last advert: Master_Down_Interval 3.609 s "
                       "(3 x advert_interval 1 s + Skew_Time 0.609 s at priority 100)"]
    (tmp_path / "m").mkdir()
    assert cli.main(["check-config", "-c", str(path)]) == 0
