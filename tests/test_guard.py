"""The split-brain guard over every combination of its inputs (agent.guard), table-driven.

Every Status the guard can see is built from DRBD's own words; the expected answer is written
out as a small rule table independent of the implementation's order of checks, and each
refusal must say why in words an admin can act on.
"""

from __future__ import annotations

import itertools

import pytest

from agent.guard import PeerView, may_promote, witness_wait
from drbd.status import Status

ROLES = ("Primary", "Secondary", "Unknown")
DISKS = ("UpToDate", "Outdated", "Inconsistent", "Diskless", "DUnknown")
CONNECTIONS = ("Connected", "Connecting", "StandAlone")
MAY = (None, True, False)
VIEWS = [PeerView(unknown_peer=p, witness_reachable=w, peer_silent_for=s, detection=3.0)
         for p, w, s in itertools.product(("refuse", "witness"), (None, True, False), (0.5, 3.5))]


def expected(st: Status, view: PeerView) -> bool:
    """The rules as a truth table (README 'How the guard decides')."""
    if st.role == "Primary":
        return True
    if st.peer_role == "Primary" or st.disk != "UpToDate" or st.may_promote is False:
        return False
    if st.connection == "Connected":
        return True
    if st.connection == "StandAlone":
        return False
    if st.peer_disk == "Outdated":
        return True
    return view.unknown_peer == "witness" and view.witness_reachable is True and view.peer_silent_for >= 3.0


CASES = [
    (Status("r0", role=r, disk=d, connection=c, peer_role=pr, peer_disk=pd, may_promote=m), v)
    for r, d, c, pr, pd, m in itertools.product(("Primary", "Secondary"), DISKS, CONNECTIONS, ROLES, DISKS, MAY)
    for v in VIEWS
]


def test_every_combination_matches_the_rule_table() -> None:
    wrong = []
    for st, view in CASES:
        d = may_promote(st, "r0", view)
        if d.allow != expected(st, view):
            wrong.append((st.summary(), st.may_promote, view, d))
        assert d.reason
    assert not wrong, f"{len(wrong)} of {len(CASES)} wrong, e.g. {wrong[:3]}"
    assert len(CASES) > 10_000


@pytest.mark.parametrize(("st", "view", "needle"), [
    (None, PeerView(), "not up on this node (drbdadm up r0)"),
    (Status("r0", "Secondary", "UpToDate", "Connected", "Primary", "UpToDate"), PeerView(), "the peer is Primary"),
    (Status("r0", "Secondary", "Outdated", "Connecting"), PeerView(), "Outdated, not UpToDate"),
    (Status("r0", "Secondary", "UpToDate", "Connecting"), PeerView(), "unknown_peer = refuse). If the peer is "
     "really down, outdate it"),
    (Status("r0", "Secondary", "UpToDate", "StandAlone"), PeerView(unknown_peer="witness", witness_reachable=True,
                                                                   peer_silent_for=9),
     "StandAlone: DRBD is not trying to reach the peer"),
    (Status("r0", "Secondary", "UpToDate", "Connecting"), PeerView(unknown_peer="witness", witness_reachable=False,
                                                                   peer_silent_for=9), "we may be the isolated node"),
    (Status("r0", "Secondary", "UpToDate", "Connecting"), PeerView(unknown_peer="witness", witness_reachable=True,
                                                                   peer_silent_for=1), "than max(detection 3.00 s"),
])  # fmt: skip
def test_refusals_say_why_and_what_to_do(st: Status | None, view: PeerView, needle: str) -> None:
    d = may_promote(st, "r0", view)
    assert not d.allow and needle in d.reason, d.reason


def test_the_witness_policy_allows_a_dead_peer_only_with_a_witness_and_silence() -> None:
    st = Status("r0", "Secondary", "UpToDate", "Connecting")
    d = may_promote(st, "r0", PeerView(unknown_peer="witness", witness_reachable=True, peer_silent_for=3.2,
                                       detection=3.0))
    assert d.allow and "stopped serving or fenced itself (unknown_peer = witness)" in d.reason


def test_the_witness_policy_waits_for_detection_and_the_bound_overlapping_not_added() -> None:
    st = Status("r0", "Secondary", "UpToDate", "Connecting")
    view = PeerView(unknown_peer="witness", witness_reachable=True, peer_silent_for=1.0, detection=0.3,
                    isolation_bound=1.84)
    assert not may_promote(st, "r0", view).allow
    assert witness_wait(st, view) == pytest.approx(1.84 - 1.0)
    later = PeerView(unknown_peer="witness", witness_reachable=True, peer_silent_for=1.85, detection=0.3,
                     isolation_bound=1.84)
    assert may_promote(st, "r0", later).allow and witness_wait(st, later) == 0
    # detection longer than the bound (no heartbeats: Master_Down_Interval): the longer one counts
    slow = PeerView(unknown_peer="witness", witness_reachable=True, peer_silent_for=2.0, detection=3.6,
                    isolation_bound=1.84)
    assert witness_wait(st, slow) == pytest.approx(1.6) and not may_promote(st, "r0", slow).allow
    # nothing to wait for when the rule cannot allow anyway, or DRBD already decides
    assert witness_wait(st, PeerView(unknown_peer="refuse", peer_silent_for=0)) == 0
    assert witness_wait(st, PeerView(unknown_peer="witness", witness_reachable=False)) == 0
    assert witness_wait(Status("r0", "Secondary", "UpToDate", "Connected"), view) == 0
