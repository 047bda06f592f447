"""A restart's hand-off (`agent.handoff`): telling a restart from a stop, the record, and cleanup's use of it.

The whole path runs for real in tests/test_systemd_restart.py (nspawn, real systemd); these
pin the parsing and the record's rules without a container.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent import cli, handoff
from tests.lab.agent import render_agent_conf

CGROUP_V2 = "0::/system.slice/failover-agent.service\n"
CGROUP_V1 = "12:pids:/system.slice/failover-agent.service\n1:name=systemd:/system.slice/failover-agent.service\n"
JOBS_RESTART = "1234 failover-agent.service restart running\n"
JOBS_STOP = "1235 failover-agent.service stop running\n"


def test_the_unit_comes_from_the_cgroup_and_only_a_restart_job_counts() -> None:
    assert handoff.own_unit(CGROUP_V2) == "failover-agent.service"
    assert handoff.own_unit(CGROUP_V1) == "failover-agent.service"
    assert handoff.own_unit("0::/user.slice/user-0.slice/session-1.scope\n") is None
    assert handoff.restart_job(JOBS_RESTART, "failover-agent.service")
    assert not handoff.restart_job(JOBS_STOP, "failover-agent.service")
    assert not handoff.restart_job(JOBS_RESTART, "other.service")
    assert not handoff.restart_job("", "failover-agent.service")


def test_outside_systemd_a_sigterm_is_a_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert asyncio.run(handoff.systemd_restart_pending()) == (False, "not a systemd service")


def test_the_record_is_read_once_and_only_fresh_and_of_this_boot(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    assert handoff.read(state) is None
    now = time.monotonic()
    path = handoff.write(state, now - 0.3, "eth0", ["192.0.2.100/24"], ["drbd", "vip"])
    assert path == tmp_path / "state.handoff.json"
    record = handoff.take(state)
    assert record is not None and record.held == ("drbd", "vip") and record.vips == ("192.0.2.100/24",)
    age = record.advert_age()
    assert age is not None and 0.3 <= age < 5
    assert handoff.take(state) is None and not path.exists(), "a hand-off is for the next agent only"
    handoff.write(state, None, "eth0", [], ["vip"])
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "boot_id": "another boot"}))
    assert handoff.read(state) is None
    path.write_text(json.dumps({**data, "written": time.monotonic() - handoff.VALID_FOR - 1}))
    assert handoff.read(state) is None
    path.write_text("{not json")
    assert handoff.read(state) is None


@pytest.fixture
def cleanup_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    state = str(tmp_path / "state.json")
    conf = tmp_path / "agent.toml"
    conf.write_text(render_agent_conf({"control_socket": str(tmp_path / "none.sock"), "state_file": state},
                                      interface="fa-no-such-if"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    return conf, state


def test_cleanup_leaves_the_vips_of_a_clean_restart_exit(cleanup_env: tuple[Path, str],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    conf, state = cleanup_env
    handoff.write(state, time.monotonic(), "fa-no-such-if", ["192.0.2.100/24"], ["vip"])
    monkeypatch.setenv("EXIT_CODE", "exited")
    monkeypatch.setenv("EXIT_STATUS", "0")
    assert cli.main(["cleanup", "--config", str(conf)]) == 0
    assert "left vip held for the next agent to adopt" in capsys.readouterr().out
    assert handoff.read(state) is not None, "the record stays for the agent that starts next"


def test_cleanup_after_the_adopting_start_failed_removes_the_recorded_vips(cleanup_env: tuple[Path, str],
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    conf, _ = cleanup_env
    conf.write_text("[vrrp]\npriority = 999\n")  # the new start failed on this file: no snapshot either
    monkeypatch.setenv("EXIT_CODE", "exited")
    monkeypatch.setenv("EXIT_STATUS", "2")
    # without a config, cleanup looks at the default state file's record (stubbed: not the host's)
    record = handoff.Handoff("b", 1, time.monotonic(), None, "fa-no-such-if", ("192.0.2.100/24",), ("vip",))
    taken: list[str] = []
    monkeypatch.setattr(handoff, "read", lambda path: record)
    monkeypatch.setattr(handoff, "take", lambda path: taken.append(path))
    assert cli.main(["cleanup", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "did not start: removing its VIPs" in out and "no VIP of ours was present" in out
    assert taken == ["/var/lib/failover-agent/state.json"]


@pytest.mark.parametrize("fixture, result, kept", [
    ("events2-connected-primary.txt", "signal", True),  # SIGKILL of a serving master: its node serves on
    ("events2-connected-primary.txt", "watchdog", True),
    ("events2-wfconnection-primary.txt", "signal", False),  # cut off: the peer may take over, the VIPs go
    ("events2-connected-secondary.txt", "signal", False),  # a backup: nothing to keep
    ("events2-connected-primary.txt", "exit-code", False),  # not a kill: the agent exited, as before
])
def test_cleanup_after_a_kill_keeps_the_vips_only_of_a_connected_drbd_primary(
        cleanup_env: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], fixture: str, result: str, kept: bool) -> None:
    """The real drbdsetup argv against the faithful fake (tests/fake_drbdsetup.py) printing a capture."""
    from tests.test_drbd_follower import Fake

    conf, _ = cleanup_env
    conf.write_text(conf.read_text() + '[drbd]\nresource = "r0"\n\n[filesystem]\ndevice = "/dev/drbd0"\n'
                    'mountpoint = "/srv/nfs"\n')
    fake = Fake(tmp_path / "drbd", fixture)
    monkeypatch.setenv("FAKE_DRBD_DIR", str(fake.base))
    monkeypatch.setenv("PATH", f"{fake.base}:{os.environ['PATH']}")
    monkeypatch.setenv("SERVICE_RESULT", result)
    monkeypatch.setenv("EXIT_CODE", "killed" if result != "exit-code" else "exited")
    assert cli.main(["cleanup", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    asked = fake.calls()
    if result == "exit-code":
        assert not asked and "no VIP of ours was present" in out
    elif kept:
        assert asked == [["events2", "--now", "r0"]]
        assert "the VIPs stay and the node keeps serving" in out and "no VIP of ours" not in out
    else:
        assert asked == [["events2", "--now", "r0"]]
        assert "so the VIPs go" in out and "no VIP of ours was present" in out
