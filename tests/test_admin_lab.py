"""What the admin sets survives the agent: maintenance mode across a restart (netns lab)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.lab.agent import AgentProc
from tests.lab.netns import NetnsLab

pytestmark = pytest.mark.lab


def test_maintenance_survives_a_restart_and_off_survives_too(lab: NetnsLab, tmp_path: Path) -> None:
    pa = AgentProc(lab, "a", tmp_path, priority=150, version=3, advert_interval=0.1)
    lab.add_cleanup(pa.close)
    pa.start()
    assert pa.wait_state("MASTER", 5)
    assert "maintenance on" in pa.ctl("maintenance", "on").stdout
    assert pa.wait_state("BACKUP", 5)
    state_file = Path(str(pa.control_socket)).with_suffix(".state.json")
    assert json.loads(state_file.read_text()) == {"maintenance": True}

    code, _ = pa.terminate()
    assert code == 0
    pa.start()
    time.sleep(1.0)  # alone on the segment: without maintenance it would be MASTER after 0.36 s
    status = pa.status()["instance"]
    assert status["maintenance"] is True and status["state"] == "BACKUP", status
    assert "as the admin left it before this start" in pa.log()

    pa.ctl("maintenance", "off")
    assert pa.wait_state("MASTER", 5)
    pa.terminate()
    pa.start()
    assert pa.wait_state("MASTER", 5)
    assert pa.status()["instance"]["maintenance"] is False


def test_an_unreadable_state_file_keeps_the_node_in_maintenance(lab: NetnsLab, tmp_path: Path) -> None:
    pa = AgentProc(lab, "a", tmp_path, priority=150, version=3, advert_interval=0.1)
    lab.add_cleanup(pa.close)
    Path(str(pa.control_socket)).with_suffix(".state.json").write_text("{not json")
    pa.start()
    time.sleep(1.0)
    assert pa.status()["instance"]["maintenance"] is True
    assert "cannot be read" in pa.log() and pa.alive
