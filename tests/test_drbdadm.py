"""drbd.drbdadm: DRBD's refusals as typed errors, replayed from outputs captured on real DRBD 8.4.

The replay runner answers each drbdadm call with the exit code, stdout and stderr recorded in
tests/fixtures/drbd (same argv, same bytes); the user-mode-linux lab runs the real thing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from drbd import drbdadm
from drbd.drbdadm import Drbdadm

FIXTURES = Path(__file__).parent / "fixtures" / "drbd"


def recorded(name: str) -> tuple[int, str, str]:
    d = json.loads((FIXTURES / f"drbdadm-{name}.json").read_text())
    return int(d["returncode"]), str(d["stdout"]), str(d["stderr"])


class Replay:
    """Answers `drbdadm ACTION RES` from a script of recorded outputs, in order per action."""

    def __init__(self, script: dict[str, list[tuple[int, str, str]]]) -> None:
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        key = " ".join(argv[1:-1])
        answers = self.script.get(key)
        assert answers, f"unexpected call {argv}"
        return answers.pop(0) if len(answers) > 1 else answers[0]


ROLE_PRIMARY = (0, (FIXTURES / "drbdadm-role-connected-primary.txt").read_text(), "")
ROLE_SECONDARY = (0, "Secondary/Primary\n", "")


def adm(script: dict[str, list[tuple[int, str, str]]], resource: str = "r0") -> tuple[Drbdadm, Replay]:
    replay = Replay(script)
    return Drbdadm(resource, runner=replay, module_check=lambda: True, retry_delay=0.0, retries=2), replay


@pytest.mark.parametrize(("fixture", "error"), [
    ("primary-peer-primary", drbdadm.PeerIsPrimary),
    ("primary-diskless-peer-primary", drbdadm.PeerIsPrimary),
    ("primary-synctarget", drbdadm.PeerIsPrimary),
    ("primary-inconsistent", drbdadm.NoUpToDateData),
    ("primary-outdated", drbdadm.NoUpToDateData),
    ("primary-unknown-resource", drbdadm.NoSuchResource),
    ("primary-not-up", drbdadm.NoSuchResource),
    ("secondary-mounted", drbdadm.DeviceInUse),
])
def test_refusals_are_typed(fixture: str, error: type[drbdadm.DrbdError]) -> None:
    code, _, err = recorded(fixture)
    got = drbdadm.classify("primary", "r0", code, err)
    assert type(got) is error, got
    assert got.code == code and "r0" in str(got)


def test_promote_verifies_the_role() -> None:
    a, replay = adm({"primary": [recorded("primary-ok")], "role": [ROLE_PRIMARY]})
    asyncio.run(a.promote())
    assert replay.calls == [["drbdadm", "primary", "r0"], ["drbdadm", "role", "r0"]]
    liar, _ = adm({"primary": [recorded("primary-ok")], "role": [ROLE_SECONDARY]})
    with pytest.raises(drbdadm.DrbdError, match="returned 0 but the role is Secondary"):
        asyncio.run(liar.promote())


def test_promote_refused_while_the_peer_is_primary() -> None:
    a, _ = adm({"primary": [recorded("primary-peer-primary")]})
    with pytest.raises(drbdadm.PeerIsPrimary, match="the peer is Primary"):
        asyncio.run(a.promote())


def test_demote_retries_while_in_use_then_succeeds() -> None:
    a, replay = adm({"secondary": [recorded("secondary-mounted"), recorded("secondary-ok")],
                     "role": [ROLE_SECONDARY]})
    notes: list[str] = []
    asyncio.run(a.demote(["retry", "none"], notes))
    assert [c[1] for c in replay.calls] == ["secondary", "secondary", "role"]
    assert any("in use" in n for n in notes) and "after escalation step 'retry'" in notes[-1]


def test_demote_gives_up_with_the_configured_fence() -> None:
    a, replay = adm({"secondary": [recorded("secondary-mounted")]})
    with pytest.raises(drbdadm.DemoteFailed) as info:
        asyncio.run(a.demote(["retry", "reboot"]))
    assert info.value.fence == "reboot"
    assert len(replay.calls) == 1 + 2, "one plain try and two retries"


def test_missing_module_and_bad_escalation() -> None:
    a = Drbdadm("r0", module_check=lambda: False)
    with pytest.raises(drbdadm.ModuleNotLoaded, match="/proc/drbd is missing"):
        asyncio.run(a.promote())
    b, _ = adm({})
    with pytest.raises(ValueError, match="last demote_escalation entry"):
        asyncio.run(b.demote(["retry", "explode"]))


OUTDATED = (0, "Outdated/DUnknown\n", "")
UPTODATE = (0, "UpToDate/UpToDate\n", "")
OK = (0, "", "")


def test_outdate_on_a_disconnected_disk_is_read_back_and_done() -> None:
    d, replay = adm({"outdate": [OK], "dstate": [UPTODATE, OUTDATED]})
    asyncio.run(d.outdate())
    assert [c[1] for c in replay.calls] == ["dstate", "outdate", "dstate"]


@pytest.mark.parametrize("state", ["Outdated/DUnknown", "Inconsistent/UpToDate", "Diskless/UpToDate"])
def test_outdate_leaves_a_disk_that_is_already_unpromotable_alone(state: str) -> None:
    d, replay = adm({"dstate": [(0, state + "\n", "")]})
    asyncio.run(d.outdate())
    assert [c[1] for c in replay.calls] == ["dstate"]


def test_outdate_while_still_connected_disconnects_outdates_and_reconnects() -> None:
    """8.4 ignores `outdate` (exit 0) on a Connected disk: a peer told "outdated" would be wrong."""
    d, replay = adm({"outdate": [OK], "dstate": [UPTODATE, UPTODATE, OUTDATED], "cstate": [(0, "Connected\n", "")],
                     "disconnect": [OK], "connect": [OK]})
    notes: list[str] = []
    asyncio.run(d.outdate(notes))
    assert [c[1] for c in replay.calls] == ["dstate", "outdate", "dstate", "cstate", "disconnect", "outdate",
                                            "dstate", "connect"]
    assert "was Connected: disconnected, outdated (Outdated), reconnected" in notes[0]


def test_outdate_that_does_not_take_is_an_error_and_the_link_is_restored() -> None:
    d, replay = adm({"outdate": [OK], "dstate": [UPTODATE], "cstate": [(0, "Connected\n", "")],
                     "disconnect": [OK], "connect": [OK]})
    with pytest.raises(drbdadm.DrbdError, match="returned 0 but the disk is UpToDate"):
        asyncio.run(d.outdate())
    assert replay.calls[-1][1] == "connect"


def test_outdate_standalone_that_does_not_take_is_an_error_without_reconnecting() -> None:
    d, replay = adm({"outdate": [OK], "dstate": [UPTODATE], "cstate": [(0, "StandAlone\n", "")]})
    with pytest.raises(drbdadm.DrbdError, match="StandAlone"):
        asyncio.run(d.outdate())
    assert "connect" not in [c[1] for c in replay.calls]


def test_outdate_without_disconnecting_refuses_a_connected_disk() -> None:
    d, replay = adm({"outdate": [OK], "dstate": [UPTODATE], "cstate": [(0, "Connected\n", "")]})
    with pytest.raises(drbdadm.DrbdError, match="not disconnecting it again so soon"):
        asyncio.run(d.outdate(disconnect=False))
    assert "disconnect" not in [c[1] for c in replay.calls]
