"""The running-config snapshot that `failoverctl cleanup` (ExecStopPost=) reads instead of the file."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from agent import config as configmod
from agent import snapshot
from agent.daemon import Agent
from tests.lab.agent import render_agent_conf

GOOD = render_agent_conf({"control_socket": "/run/fa-test/control.sock"}, priority=150,
                         vips=["192.0.2.100/24", "192.0.2.101/24"])
BROKEN = GOOD.replace("priority = 150", "priority = 300")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "agent.toml"
    path.parent.mkdir()
    path.write_text(GOOD)
    return path


@pytest.fixture
def rundir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What systemd's RuntimeDirectory= gives the agent and its ExecStopPost= alike."""
    path = tmp_path / "run" / "failover-agent"
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(path))
    return path


def test_snapshot_round_trip_is_private_and_keyed_by_the_config_path(conf: Path, rundir: Path) -> None:
    cfg, text = snapshot.read_config(conf)
    assert text == GOOD and cfg.single().vrrp.priority == 150
    written = snapshot.write(conf, text, "start", "/run/fa-test/control.sock")
    assert written.parent == rundir and written == snapshot.path_for(conf)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600, "the text may carry auth_pass"
    assert stat.S_IMODE(rundir.stat().st_mode) == 0o700
    assert [p.name for p in rundir.iterdir()] == [written.name], "no temporary file left behind"
    snap = snapshot.read(conf)
    assert snap is not None and snap.text == GOOD and snap.reason == "start"
    assert snap.config_file == str(conf) and snap.control_socket == "/run/fa-test/control.sock"
    assert [str(v) for v in snap.config().single().vrrp.vips] == ["192.0.2.100/24", "192.0.2.101/24"]
    assert "written at start by pid" in snap.describe()
    other = conf.with_name("other.toml")
    assert snapshot.path_for(other) != written and snapshot.read(other) is None


def test_runtime_dir_defaults_to_run_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert snapshot.runtime_dir() == Path("/run/failover-agent")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/a:/run/b")
    assert snapshot.runtime_dir() == Path("/run/a")


def test_cleanup_prefers_the_snapshot_over_a_file_edited_into_nonsense(conf: Path, rundir: Path) -> None:
    snapshot.write(conf, GOOD, "reload", "/run/fa-test/control.sock")
    conf.write_text(BROKEN)
    with pytest.raises(configmod.ConfigError):
        configmod.load(conf)
    source = snapshot.for_cleanup(conf, env={})
    [cfg] = source.instances
    assert cfg.vrrp.priority == 150 and [str(v) for v in cfg.vrrp.vips] == ["192.0.2.100/24", "192.0.2.101/24"]
    assert source.control_socket == "/run/fa-test/control.sock"
    assert "uses the config the agent ran (snapshot " in source.note and "written at reload" in source.note


def test_cleanup_without_a_snapshot_reads_the_file(conf: Path, rundir: Path) -> None:
    source = snapshot.for_cleanup(conf, env={})
    assert [c.vrrp.priority for c in source.instances] == [150]
    assert "no snapshot" in source.note and str(conf) in source.note
    conf.write_text(BROKEN)
    with pytest.raises(configmod.ConfigError, match=r"vrrp\.priority"):
        snapshot.for_cleanup(conf, env={})


def test_cleanup_after_a_config_error_exit_has_nothing_to_do(conf: Path, rundir: Path) -> None:
    """EXIT_STATUS=2 is the agent refusing the file before it could acquire anything."""
    conf.write_text(BROKEN)
    source = snapshot.for_cleanup(conf, env={"EXIT_CODE": "exited", "EXIT_STATUS": "2",
                                             "SERVICE_RESULT": "exit-code"})
    assert source.instances == () and "config error" in source.note
    with pytest.raises(configmod.ConfigError):  # any other death: the file is all there is
        snapshot.for_cleanup(conf, env={"EXIT_CODE": "killed", "EXIT_STATUS": "KILL"})


@pytest.mark.parametrize("damage", ["garbage", "other-config", "bad-text"])
def test_an_unusable_snapshot_falls_back_to_the_file(conf: Path, rundir: Path, damage: str) -> None:
    path = snapshot.write(conf, GOOD, "start", "/run/fa-test/control.sock")
    data = json.loads(path.read_text())
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "other-config":
        path.write_text(json.dumps({**data, "config_file": "/etc/elsewhere.toml"}))
    else:
        path.write_text(json.dumps({**data, "text": "[vrrp]\n"}))
    def use() -> None:
        snap = snapshot.read(conf)
        assert snap is not None
        snap.config()

    with pytest.raises(snapshot.SnapshotError):
        use()
    conf.write_text(GOOD.replace("priority = 150", "priority = 120"))
    source = snapshot.for_cleanup(conf, env={"EXIT_CODE": "exited", "EXIT_STATUS": "2"})
    assert [c.vrrp.priority for c in source.instances] == [120]
    assert source.note.startswith("ignoring an unusable running-config snapshot")


def test_agent_snapshots_what_it_parsed_and_each_accepted_reload(conf: Path, rundir: Path) -> None:
    """Start and reload write the text the agent parsed; a refused reload leaves the snapshot alone."""

    class FakeInstance:
        def __init__(self, cfg: configmod.Config) -> None:
            self.applied: list[int] = []
            self.cfg, self.label = cfg, ""

        async def reconfigure(self, cfg: configmod.Config) -> None:
            snap = snapshot.read(conf)
            assert snap is not None
            # written before the new config is applied: cleanup already sees what may be added
            assert snap.config().single().vrrp.priority == cfg.vrrp.priority
            self.applied.append(cfg.vrrp.priority)
            self.cfg = cfg

    cfg, text = snapshot.read_config(conf)
    agent = Agent(cfg, text)
    agent._snapshot("start")
    first = snapshot.read(conf)
    assert first is not None and first.text == GOOD and first.control_socket == "/run/fa-test/control.sock"
    fake = FakeInstance(cfg.single())
    agent.instances = {"vrrp-51": fake}  # type: ignore[dict-item]
    agent._running = True
    conf.write_text(GOOD.replace("priority = 150", "priority = 160"))
    asyncio.run(agent.reload())
    assert fake.applied == [160]
    after = snapshot.read(conf)
    assert after is not None and after.reason == "reload" and "priority = 160" in after.text
    conf.write_text(BROKEN)
    asyncio.run(agent.reload())
    kept = snapshot.read(conf)
    assert kept is not None and "priority = 160" in kept.text, "a refused reload must not touch the snapshot"


def test_agent_without_a_writable_runtime_dir_still_runs(conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Losing the snapshot only costs cleanup its fallback to the file: never a reason not to run."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(blocker / "sub"))  # mkdir fails: ENOTDIR
    cfg, text = snapshot.read_config(conf)
    Agent(cfg, text)._snapshot("start")  # raises nothing
    assert "cannot write the running-config snapshot" in caplog.text and str(conf) in caplog.text
