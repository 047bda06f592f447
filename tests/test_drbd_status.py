"""drbd.status against outputs captured from real DRBD 8.4.11 + drbd-utils 9.22 (tests/fixtures/drbd)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drbd.status import Events2, Status, auto_promote_on, parse_events2, parse_proc_drbd, parse_status_json

FIXTURES = Path(__file__).parent / "fixtures" / "drbd"

# file -> (role, peer_role, disk, peer_disk, connection, connected)
PROC = {
    "proc_drbd-connected-primary-secondary.txt": ("Primary", "Secondary", "UpToDate", "UpToDate", "Connected", True),
    "proc_drbd-connected-secondary-primary.txt": ("Secondary", "Primary", "UpToDate", "UpToDate", "Connected", True),
    "proc_drbd-connected-secondary-secondary-inconsistent.txt":
        ("Secondary", "Secondary", "Inconsistent", "Inconsistent", "Connected", True),
    "proc_drbd-connected-primary-peer-diskless.txt":
        ("Primary", "Secondary", "UpToDate", "Diskless", "Connected", True),
    "proc_drbd-diskless-secondary.txt": ("Secondary", "Primary", "Diskless", "UpToDate", "Connected", True),
    "proc_drbd-standalone-outdated.txt": ("Secondary", "Unknown", "Outdated", "DUnknown", "StandAlone", False),
    "proc_drbd-standalone-split-brain-primary-a.txt":
        ("Primary", "Unknown", "UpToDate", "DUnknown", "StandAlone", False),
    "proc_drbd-syncsource-primary.txt": ("Primary", "Secondary", "UpToDate", "Inconsistent", "SyncSource", True),
    "proc_drbd-synctarget-secondary.txt": ("Secondary", "Primary", "Inconsistent", "UpToDate", "SyncTarget", True),
    "proc_drbd-wfconnection-primary-peer-crashed.txt":
        ("Primary", "Unknown", "UpToDate", "DUnknown", "WFConnection", False),
    "proc_drbd-wfconnection-secondary-link-cut.txt":
        ("Secondary", "Unknown", "UpToDate", "DUnknown", "WFConnection", False),
}


def fixture(name: str) -> str:
    path = FIXTURES / name
    assert path.exists(), f"fixture {path} missing (captured in the user-mode-linux lab)"
    return path.read_text()


@pytest.mark.parametrize("name", sorted(PROC))
def test_proc_drbd(name: str) -> None:
    status = parse_proc_drbd(fixture(name), minor=0, name="r0")
    assert status is not None
    role, peer_role, disk, peer_disk, cs, connected = PROC[name]
    got = (status.role, status.peer_role, status.disk, status.peer_disk, status.connection)
    assert got == (role, peer_role, disk, peer_disk, cs)
    assert status.connected is connected


def test_proc_drbd_sync_progress_and_unconfigured() -> None:
    status = parse_proc_drbd(fixture("proc_drbd-synctarget-secondary.txt"))
    assert status is not None and status.sync_percent == 3.2
    assert parse_proc_drbd(fixture("proc_drbd-unconfigured.txt")) is None
    assert parse_proc_drbd(fixture("proc_drbd-down.txt")) is None
    assert parse_proc_drbd(fixture("proc_drbd-connected-primary-secondary.txt"), minor=1) is None


EVENTS = {
    "events2-connected-primary.txt": ("Primary", "Secondary", "UpToDate", "UpToDate", True),
    "events2-connected-secondary.txt": ("Secondary", "Primary", "UpToDate", "UpToDate", True),
    "events2-standalone-split-brain.txt": ("Primary", "Unknown", "UpToDate", "DUnknown", False),
    "events2-standalone-outdated.txt": ("Secondary", "Unknown", "Outdated", "DUnknown", False),
    "events2-wfconnection-primary.txt": ("Primary", "Unknown", "UpToDate", "DUnknown", False),
    "events2-syncsource.txt": ("Primary", "Secondary", "UpToDate", "Inconsistent", True),
    "events2-synctarget.txt": ("Secondary", "Primary", "Inconsistent", "UpToDate", True),
}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_events2_snapshot(name: str) -> None:
    status = parse_events2(fixture(name))["r0"]
    role, peer_role, disk, peer_disk, connected = EVENTS[name]
    assert (status.role, status.peer_role, status.disk, status.peer_disk) == (role, peer_role, disk, peer_disk)
    assert status.connected is connected


def test_events2_stream_follows_a_peer_crash_and_rejoin() -> None:
    ev = Events2()
    seen = []
    for line in fixture("events2-stream-peer-crash-and-rejoin.txt").splitlines():
        if ev.feed(line) == "r0":
            s = ev.resources["r0"]
            seen.append((s.connection, s.peer_role, s.peer_disk, s.replication))
    assert ev.initial_done
    assert ("NetworkFailure", "Unknown", "DUnknown", "Off") in seen
    assert any(c == "Connecting" for c, *_ in seen)
    final = ev.resources["r0"]
    assert final.connected and final.peer_role == "Secondary" and final.peer_disk == "UpToDate"


@given(st.text(max_size=300))
def test_garbage_never_raises(text: str) -> None:
    parse_proc_drbd(text)
    parse_events2(text)


def test_status_json_drbd9_layout() -> None:
    """Written after DRBD 9's documented `status --json` layout (no DRBD 9 kernel here to capture)."""
    res = parse_status_json((FIXTURES / "status-json-drbd9-layout.json").read_text())
    r0, r1 = res["r0"], res["r1"]
    assert (r0.role, r0.disk, r0.peer_role, r0.peer_disk, r0.connection) == \
        ("Secondary", "Outdated", "Primary", "UpToDate", "Connected")
    assert r0.connected and r0.peer_primary and not r0.uptodate and r0.minor == 0
    assert (r1.role, r1.connection, r1.peer_disk) == ("Primary", "Connecting", "DUnknown") and not r1.connected
    for garbage in ("", "{}", "[1, null, {\"name\": 3}]", "not json", "[{\"name\": \"x\", \"devices\": 5}]"):
        assert all(isinstance(s, Status) for s in parse_status_json(garbage).values())


def test_auto_promote_is_seen_in_drbdsetup_show() -> None:
    assert auto_promote_on("resource r0 {\n    options {\n        auto-promote    yes;\n    }\n}\n")
    assert not auto_promote_on("resource r0 {\n    options {\n        auto-promote    no;\n    }\n}\n")
    assert not auto_promote_on((FIXTURES / "drbdadm-version.txt").read_text())


_SYNCING = " 0: cs:SyncTarget ro:Secondary/Primary ds:Inconsistent/UpToDate C r-----\n"


def test_numbers_that_cannot_be_read_are_absent_not_raised() -> None:
    """Found by bench.fuzz: int() and float() raised on minors and percentages DRBD never prints."""
    for sync in ("1.2.3", "256", "1" * 400):
        st = parse_proc_drbd(_SYNCING + f"\t[>....] sync'ed: {sync}% (1/2)K\n")
        assert st is not None and st.sync_percent is None
    assert parse_proc_drbd(" " + "0" * 5000 + _SYNCING[2:]) is None
    assert parse_proc_drbd(_SYNCING.replace("0:", "\u0660:")) is None  # an Arabic-Indic zero is no minor
    ev = Events2()
    for minor in ("\u00b2", "1" * 5000, "1048576"):
        ev.feed(f"exists device name:r0 volume:0 minor:{minor} disk:UpToDate")
        assert (ev.resources["r0"].minor, ev.resources["r0"].disk) == (None, "UpToDate")
    ev.feed("exists device name:r0 volume:0 minor:3 disk:UpToDate")
    for done in ("nan", "inf", "1e400", "-5", "42.5"):
        ev.feed(f"change peer-device name:r0 peer-node-id:0 volume:0 replication:SyncSource done:{done}")
    assert (ev.resources["r0"].minor, ev.resources["r0"].sync_percent) == (3, 42.5)


def test_status_json_that_crashed_the_parser() -> None:
    """Found by bench.fuzz: nesting beyond the stack, and a percentage beyond a float's range."""
    assert parse_status_json("[" * 5000) == {}
    res = parse_status_json('[{"name": "r0", "devices": [{"minor": -1}], "connections": [{"peer_devices": '
                            '[{"percent-in-sync": -1' + "0" * 400 + "}]}]}]")
    assert (res["r0"].minor, res["r0"].sync_percent) == (None, None)
