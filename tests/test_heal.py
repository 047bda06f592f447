"""agent.heal (the fence-peer verdict, the frozen Primary's exit, the heal) and its adapter agent.healer.

The DRBD behaviour these decisions rest on was seen on the UML lab with DRBD 8.4.11
(tests/test_uml_partition.py, scenario 3): `fencing resource-and-stonith` suspends a Primary's
I/O when it loses its peer, exit 6 leaves it suspended ("State change failed: Need access to
UpToDate data"), and the current UUID of a node that stayed frozen does not move.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent import heal
from agent.cli import main as failoverctl
from agent.config import parse
from agent.heal import Evidence, FenceVerdict, Gi, HealAction
from agent.healer import Healer
from agent.node import fence_exit_code
from drbd.status import Status

GI_TEXT = "49531FEA760282DF:0000000000000000:1FA33DF341E83A47:0000000000000004:1:1:1:0:0:0:0\n"
GI0 = Gi("49531FEA760282DF", "0000000000000000", ("1FA33DF341E83A47", "0000000000000004"))
FROZEN = Status("r0", role="Primary", disk="UpToDate", connection="WFConnection", suspended=True)
FREE = Status("r0", role="Primary", disk="UpToDate", connection="WFConnection", suspended=False)
SECONDARY_SA = Status("r0", role="Secondary", disk="UpToDate", connection="StandAlone")
PRIMARY_SA = Status("r0", role="Primary", disk="UpToDate", connection="StandAlone")
CONNECTED = Status("r0", role="Secondary", disk="UpToDate", connection="Connected", peer_role="Primary",
                   peer_disk="UpToDate")
SYNCING = Status("r0", role="Secondary", disk="Inconsistent", connection="SyncTarget", peer_disk="UpToDate")


def unreachable(**extra: Any) -> dict[str, Any]:
    return {"answer": "unreachable", "witness_reachable": False, "witness_detail": "192.0.2.10: timeout",
            "horizon": 3.5, "isolated": False, **extra}


# -- the verdict ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "code"), [
    ({"answer": "outdated"}, 4),
    (unreachable(witness_reachable=True), 5),
    ({"answer": "primary"}, 6),
    ({"answer": "failed: this node's DRBD records the peer as Outdated"}, 6),
    ({}, 6),
    (unreachable(isolated=True), 6),
    (unreachable(horizon=0.0), 6),  # no witnesses configured: nothing will ever vouch for us
])
def test_final_verdicts_use_only_codes_drbd_defines(answer: dict[str, Any], code: int) -> None:
    v = heal.fence_verdict(answer, 0.0)
    assert (v.code, v.final) == (code, True)
    assert v.code in heal.DRBD_FENCE_CODES and v.code not in (3, 7)


def test_a_silent_peer_with_an_undecided_tracker_is_asked_again_until_the_horizon() -> None:
    v = heal.fence_verdict(unreachable(), 1.0)
    assert not v.final and v.code == 6 and 0 < v.retry_after <= heal.RETRY_AFTER
    late = heal.fence_verdict(unreachable(), 3.5)
    assert late.final and late.code == 6 and "3.5 s" in late.message


@pytest.mark.parametrize("answer", [{"answer": "unreachable"}, {"answer": "failed"}, {"answer": "x"}, {}])
def test_node_fence_exit_code_never_says_helper_broken(answer: dict[str, Any]) -> None:
    assert fence_exit_code(answer) in (4, 5, 6)


# -- generation identifiers and the evidence ---------------------------------------------------------
def test_gi_parses_drbdsetup_get_gi_and_ignores_the_primary_bit() -> None:
    gi = Gi.parse("some header\n" + GI_TEXT)
    assert gi == GI0
    assert gi.same_data(Gi("49531FEA760282DE", "0000000000000000"))  # the same data, no longer Primary
    assert not gi.same_data(Gi("8D0A2C46B1E0F4A3", "49531FEA760282DE"))
    assert Gi.parse("") is None and Gi.parse("1:2:3:4") is None and Gi.parse("zz" * 8 + ":0:0:0") is None


def test_evidence_round_trips_and_refuses_garbage() -> None:
    e = Evidence("r0", 1700000000.5, "the tracker counts us isolated", GI0, FROZEN.summary(), "poweroff")
    assert Evidence.from_json(e.to_json()) == e
    assert Evidence.from_json(Evidence("r0", 1.0, "x", None, "", "none").to_json()).gi is None
    for bad in ("", "[]", "{}", '{"resource": "r0"}', "[" * 5000):
        with pytest.raises(ValueError):
            Evidence.from_json(bad)


# -- the frozen Primary's exit ----------------------------------------------------------------------------
FINAL6 = FenceVerdict(6, True, "the tracker counts us isolated")


def test_a_frozen_primary_not_fenced_takes_the_vip_off_records_and_fences_itself() -> None:
    a = heal.frozen_primary(FROZEN, FINAL6, "poweroff")
    assert (a.remove_vips, a.record, a.self_fence) == (True, True, "poweroff")


def test_without_a_last_resort_it_stays_frozen_and_says_who_must_reboot_it() -> None:
    a = heal.frozen_primary(FROZEN, FINAL6, "none")
    assert (a.remove_vips, a.record, a.self_fence) == (True, True, "")
    assert "reboot it" in a.message


@pytest.mark.parametrize(("status", "verdict"), [
    (FROZEN, FenceVerdict(4, True, "")),  # fenced: DRBD resumes
    (FROZEN, FenceVerdict(5, True, "")),
    (FROZEN, FenceVerdict(6, False, "")),  # still asking
    (SECONDARY_SA, FINAL6),  # a Secondary's promotion failed: DRBD outdated our disk, nothing held
    (None, FINAL6),
    (CONNECTED, FINAL6),
])
def test_nothing_to_give_up(status: Status | None, verdict: FenceVerdict) -> None:
    assert not heal.frozen_primary(status, verdict, "reboot").self_fence


def test_a_primary_that_is_not_frozen_is_told_to_use_resource_and_stonith() -> None:
    a = heal.frozen_primary(FREE, FINAL6, "reboot")
    assert not a.self_fence and "resource-and-stonith" in a.message


# -- the heal ---------------------------------------------------------------------------------------------
EVIDENCE = Evidence("r0", 1700000000.5, "the tracker counts us isolated", GI0, FROZEN.summary(), "poweroff")


def test_the_survivor_reconnects_plainly() -> None:
    d = heal.heal(PRIMARY_SA, None, None, serving=True, maintenance=False)
    assert d.action == HealAction.CONNECT


def test_the_frozen_side_discards_only_with_its_record_and_an_unmoved_uuid() -> None:
    same = Gi("49531FEA760282DE", "0000000000000000")
    d = heal.heal(SECONDARY_SA, same, EVIDENCE, serving=False, maintenance=False)
    assert d.action == HealAction.DISCARD and "49531FEA760282DE" in d.reason


@pytest.mark.parametrize(("gi", "evidence", "why"), [
    (GI0, None, "no record"),
    (Gi("8D0A2C46B1E0F4A3", "49531FEA760282DE"), EVIDENCE, "changed since"),
    (None, EVIDENCE, "cannot be compared"),
])
def test_anything_unproven_stays_standalone_and_names_the_commands(gi: Gi | None, evidence: Evidence | None,
                                                                   why: str) -> None:
    d = heal.heal(SECONDARY_SA, gi, evidence, serving=False, maintenance=False)
    assert d.action == HealAction.ADMIN and why in d.reason
    assert any("--discard-my-data r0" in c for c in d.commands) and any("drbdadm connect r0" in c for c in d.commands)


def test_a_primary_standalone_without_serving_must_be_rebooted() -> None:
    d = heal.heal(PRIMARY_SA, GI0, EVIDENCE, serving=False, maintenance=False)
    assert d.action == HealAction.ADMIN and "reboot" in d.reason


@pytest.mark.parametrize("status", [None, Status("r0", connection="WFConnection"), SYNCING, CONNECTED])
def test_nothing_while_drbd_is_trying_or_connected_without_a_record(status: Status | None) -> None:
    assert heal.heal(status, GI0, None, serving=False, maintenance=False).action == HealAction.NONE


def test_maintenance_keeps_the_agent_out() -> None:
    assert heal.heal(PRIMARY_SA, None, None, serving=True, maintenance=True).action == HealAction.NONE


def test_the_record_is_cleared_once_both_sides_are_uptodate() -> None:
    assert heal.heal(CONNECTED, GI0, EVIDENCE, serving=False, maintenance=False).action == HealAction.CLEAR
    assert heal.heal(SYNCING, GI0, EVIDENCE, serving=False, maintenance=False).action == HealAction.NONE


# -- the adapter ----------------------------------------------------------------------------------------
CONF = """
[vrrp]
interface = "eth0"
vrid = 51
vips = ["192.0.2.100/24"]
[agent]
state_file = "{state}"
[drbd]
resource = "r0"
demote_escalation = ["retry", "poweroff"]
[filesystem]
device = "/dev/drbd0"
mountpoint = "/srv/nfs"
"""


class World:
    """A Healer with fake DRBD, VIPs, commands and self-fence."""

    def __init__(self, tmp: Path, status: Status | None, serving: bool = False) -> None:
        self.status = status
        self.commands: list[list[str]] = []
        self.fenced: list[str] = []
        self.vips_removed = 0
        cfg = parse(CONF.format(state=tmp / "state.json"))
        self.healer = Healer(cfg, self._status, self._remove, lambda: (serving, False), self._run,
                              lambda action, why: self.fenced.append(action))

    async def _status(self) -> Status | None:
        return self.status

    async def _remove(self) -> None:
        self.vips_removed += 1

    async def _run(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        self.commands.append(list(argv))
        return (0, GI_TEXT, "") if argv[1] == "get-gi" else (0, "", "")


def test_healer_freezes_records_then_fences(tmp_path: Path) -> None:
    w = World(tmp_path, FROZEN)
    body = asyncio.run(w.healer.fence_peer(unreachable(isolated=True), 2.0))
    assert (body["exit"], body["final"]) == (6, True)
    assert w.vips_removed == 1 and w.fenced == ["poweroff"]
    record = Evidence.from_json((tmp_path / "heal-r0.json").read_text())
    assert record.gi == GI0 and record.action == "poweroff"


def test_healer_asking_again_does_nothing_yet(tmp_path: Path) -> None:
    w = World(tmp_path, FROZEN)
    body = asyncio.run(w.healer.fence_peer(unreachable(), 0.5))
    assert body["final"] is False and not w.fenced and not w.vips_removed


def test_healer_discards_after_the_reboot_and_clears_when_healed(tmp_path: Path) -> None:
    w = World(tmp_path, SECONDARY_SA)
    (tmp_path / "heal-r0.json").write_text(EVIDENCE.to_json())
    assert asyncio.run(w.healer.check()).action == HealAction.DISCARD
    assert ["drbdadm", "connect", "--discard-my-data", "r0"] in w.commands
    w.status = CONNECTED
    assert asyncio.run(w.healer.check()).action == HealAction.CLEAR
    assert not (tmp_path / "heal-r0.json").exists()


def test_healer_without_proof_leaves_a_note_for_status(tmp_path: Path) -> None:
    w = World(tmp_path, SECONDARY_SA)
    assert asyncio.run(w.healer.check()).action == HealAction.ADMIN
    assert "--discard-my-data" in w.healer.note
    assert not any("connect" in c for c in w.commands)


def test_healer_survivor_connects_once_per_hold(tmp_path: Path) -> None:
    w = World(tmp_path, PRIMARY_SA, serving=True)
    asyncio.run(w.healer.check())
    asyncio.run(w.healer.check())
    assert w.commands.count(["drbdadm", "connect", "r0"]) == 1


# -- the handler ----------------------------------------------------------------------------------------
def test_failoverctl_fence_peer_asks_again_then_exits_6(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[float] = []

    def request(path: str, command: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        asked.append(args["waited"])
        final = len(asked) >= 3
        return {"ok": True, "answer": "unreachable", "exit": 6, "final": final, "message": "isolated",
                "retry_after": 0.01}

    monkeypatch.setattr("agent.control.request", request)
    assert failoverctl(["fence-peer", "--socket", "/nonexistent"]) == 6
    assert len(asked) == 3 and asked == sorted(asked)
    assert "exit 6" in capsys.readouterr().err


def test_failoverctl_fence_peer_without_an_agent_exits_6(tmp_path: Path) -> None:
    assert failoverctl(["fence-peer", "--socket", str(tmp_path / "none.sock")]) == 6


def test_failoverctl_fence_peer_maps_an_old_agents_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.control.request", lambda *a, **k: {"ok": True, "answer": "outdated"})
    assert failoverctl(["fence-peer", "--socket", "/nonexistent"]) == 4
    monkeypatch.setattr("agent.control.request", lambda *a, **k: json.loads('{"ok": true, "answer": "weird"}'))
    assert failoverctl(["fence-peer", "--socket", "/nonexistent"]) == 6
