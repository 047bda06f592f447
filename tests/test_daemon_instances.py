"""The agent runs several instances: control requests find theirs, SIGHUP adds, removes and changes them.

The instances are stand-ins that record what the agent asks of them; `Agent._start_instance`
(the part that needs an interface, raw sockets and root) is replaced by one that makes them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent import cli, snapshot
from agent import config as configmod
from agent.cli import journal_argv
from agent.control import ControlError
from agent.daemon import Agent, SetupError
from agent.events import Admin
from agent.journal import Event
from tests.test_instances_config import STORAGE

HEAD = '[agent]\ncontrol_socket = "/run/fa-test/control.sock"\nstate_file = "{state}"\n'


def text(state: Path, *instances: tuple[str, int, int]) -> str:
    """The process's [agent], then storage instances (NAME, VRID, priority) on DRBD r0, r1, ..."""
    return HEAD.format(state=state) + "".join(STORAGE.format(name=n, vrid=v, priority=p, host=v, minor=i)
                                              for i, (n, v, p) in enumerate(instances))


class FakeNode:
    """The node's part the daemon reads: its state, and whether it stopped."""

    def __init__(self) -> None:
        self.state, self.stopped = "BACKUP", False

    def snapshot(self) -> FakeNode:
        return self


class FakeInstance:
    """What the daemon uses of an `agent.instance.Instance`, and a log of what it was asked."""

    def __init__(self, cfg: configmod.Config, log: list[str]) -> None:
        self.cfg, self.log, self.label, self.kept = cfg, log, "", ()
        self.node = FakeNode()
        log.append(f"start {cfg.name} {cfg.vrrp.vrid}")

    async def stop(self, reason: str, restart: bool = False) -> None:
        self.log.append(f"stop {self.cfg.name} ({reason})")

    async def reconfigure(self, new: configmod.Config) -> None:
        self.log.append(f"reconfigure {new.name} priority {new.vrrp.priority}")
        self.cfg = new

    async def handover(self) -> str:
        self.log.append(f"handover {self.cfg.name}")
        return f"handover {self.cfg.name}"

    async def maintenance(self, on: bool) -> str:
        return f"maintenance {'on' if on else 'off'} {self.cfg.name}"

    async def admin(self, command: Admin) -> dict[str, Any]:
        return {"message": f"{command.name.lower()} {self.cfg.name}"}

    async def fence_peer(self, waited: float) -> dict[str, Any]:
        return {"message": f"fence-peer {self.cfg.name}"}

    async def refresh(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        v = self.cfg.vrrp
        return {"name": self.cfg.name, "state": "BACKUP", "vrid": v.vrid, "priority": v.priority, "master": None,
                "maintenance": False, "vips": [str(x) for x in v.vips], "vips_held": False, "chain": ["vip"],
                "phase": "IDLE", "held": [], "steps": {}}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    log: list[str] = []
    BROKEN.clear()

    async def start(self: Agent, cfg: configmod.Config) -> FakeInstance:
        if f"{cfg.name} {cfg.vrrp.vrid}" in BROKEN:
            raise SetupError(f"{cfg.name} cannot start")
        return FakeInstance(cfg, log)

    monkeypatch.setattr(Agent, "_start_instance", start)
    return tmp_path, log


BROKEN: set[str] = set()  # "NAME VRID" of the instances that cannot start


async def started(conf: Path) -> Agent:
    cfg, body = snapshot.read_config(conf)
    agent = Agent(cfg, body)
    for one in cfg.instances:
        await agent._add(one)
    agent._running = True
    return agent


def test_requests_name_their_instance(setup: tuple[Path, list[str]]) -> None:
    tmp, _ = setup
    conf = tmp / "agent.toml"
    conf.write_text(text(tmp / "state.json", ("nfs", 51, 150), ("db", 52, 100)))

    async def scenario() -> None:
        agent = await started(conf)
        assert list(agent.instances) == ["nfs", "db"]
        assert [i.label for i in agent.instances.values()] == ["nfs: ", "db: "]
        assert (await agent.handle({"command": "handover", "instance": "db"}))["message"] == "handover db"
        assert (await agent.handle({"command": "maintenance", "on": True, "instance": "nfs"}))["message"] == \
            "maintenance on nfs"
        assert (await agent.handle({"command": "reset", "instance": "db"}))["message"] == "reset db"
        for command in ("handover", "reset"):
            with pytest.raises(ControlError, match=f"{command} needs an instance: one of nfs, db"):
                await agent.handle({"command": command})
        with pytest.raises(ControlError, match='no instance "web" in this agent \\(instances: nfs, db\\)'):
            await agent.handle({"command": "handover", "instance": "web"})
        with pytest.raises(ControlError, match="no instance 7 in this agent"):
            await agent.handle({"command": "reset", "instance": 7})
        status = await agent.handle({"command": "status"})
        assert list(status["instances"]) == ["nfs", "db"] and "instance" not in status, \
            "with several instances, no top-level instance block: which one would it be?"
        assert status["instances"]["db"]["instance"]["vrid"] == 52 and status["instances"]["db"]["storage"] is None
        assert agent.status_line() == "nfs: BACKUP, priority 150 | db: BACKUP, priority 100"

    asyncio.run(scenario())


def test_one_instance_needs_no_name_and_keeps_the_old_status_shape(setup: tuple[Path, list[str]]) -> None:
    tmp, _ = setup
    conf = tmp / "agent.toml"
    conf.write_text('[vrrp]\ninterface = "eth0"\nvrid = 51\nvips = ["192.0.2.100/24"]\n'
                    '[agent]\ncontrol_socket = "/run/fa-test/control.sock"\n')

    async def scenario() -> None:
        agent = await started(conf)
        assert (await agent.handle({"command": "handover"}))["message"] == "handover vrrp-51"
        assert (await agent.handle({"command": "fence-peer", "resource": "r9"}))["message"] == "fence-peer vrrp-51"
        status = await agent.handle({"command": "status"})
        assert status["instance"]["vrid"] == 51 and status["storage"] is None and status["steps"] == {}
        assert status["instances"]["vrrp-51"]["instance"] is status["instance"]
        assert agent.status_line() == "BACKUP, priority 100"

    asyncio.run(scenario())


def test_fence_peer_finds_the_instance_of_its_drbd_resource(setup: tuple[Path, list[str]]) -> None:
    tmp, _ = setup
    conf = tmp / "agent.toml"
    conf.write_text(text(tmp / "state.json", ("nfs", 51, 150), ("db", 52, 100)))  # on r0 and r1

    async def scenario() -> None:
        agent = await started(conf)
        assert (await agent.handle({"command": "fence-peer", "resource": "r1"}))["message"] == "fence-peer db"
        assert (await agent.handle({"command": "fence-peer", "resource": "r0"}))["message"] == "fence-peer nfs"
        with pytest.raises(ControlError, match="fence-peer needs an instance"):
            await agent.handle({"command": "fence-peer", "resource": "r7"})

    asyncio.run(scenario())


def test_reload_adds_removes_and_changes_instances(setup: tuple[Path, list[str]]) -> None:
    tmp, log = setup
    conf, state = tmp / "agent.toml", tmp / "state.json"
    conf.write_text(text(state, ("nfs", 51, 150), ("db", 52, 100), ("web", 53, 100)))

    async def scenario() -> None:
        agent = await started(conf)
        log.clear()
        # db: a live change; web: removed; mail: added; nfs: a new VRID, its identity, restarts alone
        conf.write_text(text(state, ("nfs", 61, 150), ("db", 52, 120), ("mail", 54, 100)))
        await agent.reload()
        assert log == ["stop web (reload: instance removed)", "stop nfs (reload)", "start nfs 61",
                       "reconfigure db priority 120", "start mail 54"]
        assert list(agent.instances) == ["nfs", "db", "mail"] and agent.cfg.names == ("nfs", "db", "mail")
        assert agent.reloads == 1 and agent.reload_failures == 0
        snap = snapshot.read(conf)
        assert snap is not None and snap.older == () and [c.name for c in snap.instances()] == ["nfs", "db", "mail"]
        log.clear()
        await agent.reload()  # the same file again: nothing moves
        assert log == []
        # back to one instance of the old format: it is another instance (vrrp-52), db leaves
        conf.write_text('[vrrp]\ninterface = "eth0"\nvrid = 52\nvips = ["192.0.2.52/24"]\n' + HEAD.format(state=state))
        log.clear()
        await agent.reload()
        assert log == ["stop mail (reload: instance removed)", "stop db (reload: instance removed)",
                       "stop nfs (reload: instance removed)", "start vrrp-52 52"]
        assert [i.label for i in agent.instances.values()] == [""]

    asyncio.run(scenario())


def test_a_reload_refused_for_one_instance_keeps_it_and_its_text_for_cleanup(
        setup: tuple[Path, list[str]], caplog: pytest.LogCaptureFixture) -> None:
    tmp, log = setup
    conf, state = tmp / "agent.toml", tmp / "state.json"
    first = text(state, ("nfs", 51, 150), ("db", 52, 100))
    conf.write_text(first)

    async def scenario() -> None:
        agent = await started(conf)
        log.clear()
        BROKEN.update({"nfs 61", "mail 54"})
        conf.write_text(text(state, ("nfs", 61, 150), ("db", 52, 120), ("mail", 54, 100)))
        await agent.reload()
        BROKEN.clear()
        # nfs cannot start on VRID 61: back on 51; mail cannot start at all; db takes its change
        assert log == ["stop nfs (reload)", "start nfs 51", "reconfigure db priority 120"]
        assert list(agent.instances) == ["nfs", "db"] and agent.reload_failures == 1
        assert [c.vrrp.vrid for c in agent.cfg.instances] == [51, 52]
        assert "reload: new instance mail cannot start: mail cannot start" in caplog.text
        snap = snapshot.read(conf)
        assert snap is not None and snap.reason == "reload (partly refused)" and snap.older == (first,)
        # cleanup sees nfs on both VRIDs (51 runs, 61 is what the file says), and everything else
        assert sorted((c.name, c.vrrp.vrid) for c in snap.instances()) == \
            [("db", 52), ("mail", 54), ("nfs", 51), ("nfs", 61)]

    asyncio.run(scenario())


def test_a_config_error_on_reload_changes_nothing(setup: tuple[Path, list[str]]) -> None:
    tmp, log = setup
    conf, state = tmp / "agent.toml", tmp / "state.json"
    conf.write_text(text(state, ("nfs", 51, 150), ("db", 52, 100)))

    async def scenario() -> None:
        agent = await started(conf)
        log.clear()
        conf.write_text(text(state, ("nfs", 51, 150), ("db", 51, 100)))
        await agent.reload()
        assert log == [] and agent.reload_failures == 1 and list(agent.instances) == ["nfs", "db"]

    asyncio.run(scenario())


def test_a_sync_group_hands_over_when_one_member_fails(setup: tuple[Path, list[str]]) -> None:
    tmp, log = setup
    conf, state = tmp / "agent.toml", tmp / "state.json"
    grouped = text(state, ("nfs", 51, 150), ("db", 52, 100), ("web", 53, 100)).replace(
        'name = "nfs"', 'name = "nfs"\nsync_group = "storage"').replace(
        'name = "db"', 'name = "db"\nsync_group = "storage"')
    conf.write_text(grouped)

    async def scenario() -> None:
        agent = await started(conf)
        inst = agent.instances

        def now(name: str, st: str) -> None:
            inst[name].node.state = st  # type: ignore[attr-defined]
            agent._state_changed(inst[name])

        for name in ("nfs", "db", "web"):
            now(name, "MASTER")
        log.clear()
        now("nfs", "FAULT")
        await asyncio.sleep(0.01)
        assert log == ["handover db"], "db is nfs's group: it leaves too; web is in none"
        now("db", "BACKUP")
        now("nfs", "BACKUP")
        now("nfs", "MASTER")
        await asyncio.sleep(0.01)
        assert log == ["handover db"], "nothing is ever forced to MASTER"
        # a reload that drops the group: web's and nfs's faults move nothing any more
        conf.write_text(grouped.replace('sync_group = "storage"\n', ""))
        await agent.reload()
        assert agent.groups.members == {}
        log.clear()
        now("nfs", "FAULT")
        await asyncio.sleep(0.01)
        assert log == []

    asyncio.run(scenario())


def test_history_of_one_instance_matches_its_field() -> None:
    argv = journal_argv("/bin/journalctl", "1 hour ago", None, None, "db")
    assert argv[:6] == ["/bin/journalctl", "--no-pager", "-o", "json", "--since", "1 hour ago"]
    assert argv[6:8] == ["SYSLOG_IDENTIFIER=failover-agent", "INSTANCE=db"]  # ANDed: another field
    assert all(a.startswith("MESSAGE_ID=") for a in argv[8:]) and len(argv[8:]) == len(Event)
    assert "INSTANCE=db" not in journal_argv("/bin/journalctl", None, None, None)


def test_cleanup_covers_every_instance_and_keeps_a_serving_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """After a kill: each instance's VIPs go, except those of one whose DRBD resource serves on."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    monkeypatch.setenv("SERVICE_RESULT", "signal")
    conf = tmp_path / "agent.toml"
    conf.write_text(text(tmp_path / "state.json", ("nfs", 51, 150), ("db", 52, 100)).replace(
        "/run/fa-test/control.sock", str(tmp_path / "control.sock")))
    removed: list[tuple[str, list[str]]] = []

    async def serving(resource: str) -> tuple[bool, str]:
        return resource == "r0", f"{resource} in some state"

    async def remove(interface: str, vips: list[str]) -> list[str]:
        removed.append((interface, vips))
        return vips

    monkeypatch.setattr("agent.cli._drbd_serving", serving)
    monkeypatch.setattr("agent.cli._remove_vips", remove)
    assert cli.main(["cleanup", "-c", str(conf)]) == 0
    assert removed == [("eth0", ["192.0.2.52/24"])]
    out = capsys.readouterr().out
    assert "instance nfs: the agent was killed (signal) while DRBD r0 in some state: the VIPs stay" in out
    assert "instance db: removed 192.0.2.52/24" in out


def test_a_new_vrid_in_a_file_of_one_instance_restarts_that_instance(setup: tuple[Path, list[str]]) -> None:
    """Named after its VRID, the instance of a file without [[instance]] tables keeps its identity
    across a VRID change: one ordered leave and a restart, as before instances."""
    tmp, log = setup
    conf = tmp / "agent.toml"
    one = '[vrrp]\ninterface = "eth0"\nvrid = {vrid}\nvips = ["192.0.2.100/24"]\n' + HEAD.format(state=tmp / "s.json")
    conf.write_text(one.format(vrid=51))

    async def scenario() -> None:
        agent = await started(conf)
        log.clear()
        conf.write_text(one.format(vrid=52))
        await agent.reload()
        assert log == ["stop vrrp-51 (reload)", "start vrrp-52 52"]
        assert list(agent.instances) == ["vrrp-52"] and list(agent.counters) == ["vrrp-52"]

    asyncio.run(scenario())
