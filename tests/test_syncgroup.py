"""agent.syncgroup: a member's FAULT or leave hands the group's other masters over; nothing forces MASTER."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.syncgroup import HandOver, SyncGroups
from vrrp.router import State

M, B, F = State.MASTER, State.BACKUP, State.FAULT


def masters(groups: SyncGroups, *names: str) -> None:
    for name in names:
        assert groups.changed(name, M) == []


def test_a_fault_hands_the_group_s_masters_over_once() -> None:
    g = SyncGroups({"storage": ["nfs", "db", "web"]})
    masters(g, "nfs", "db", "web", "other")
    out = g.changed("db", F)
    assert out == [HandOver("nfs", "db of sync group storage is FAULT"),
                   HandOver("web", "db of sync group storage is FAULT")]
    # nfs leaves MASTER as asked: web is already on its way, nobody is asked twice
    assert g.changed("nfs", B) == []
    assert g.changed("web", B) == []
    # db's fault clears: nothing is forced anywhere
    assert g.changed("db", B) == []
    assert g.changed("db", M) == []


def test_leaving_master_or_stopping_moves_the_group() -> None:
    g = SyncGroups({"pair": ["a", "b"]})
    masters(g, "a", "b")
    assert g.changed("a", B) == [HandOver("b", "a of sync group pair left MASTER")]
    g.changed("b", B)
    masters(g, "a", "b")
    assert g.changed("b", None) == [HandOver("a", "b of sync group pair stopped")]


def test_backup_to_fault_also_counts_and_ungrouped_members_never_move() -> None:
    g = SyncGroups({"pair": ["a", "b"]})
    masters(g, "b", "loner")
    g.changed("a", B)
    assert g.changed("a", F) == [HandOver("b", "a of sync group pair is FAULT")]
    assert g.changed("loner", F) == [] and g.changed("loner", B) == []


def test_no_reaction_while_the_agent_stops_or_reloads() -> None:
    g = SyncGroups({"pair": ["a", "b"]})
    masters(g, "a", "b")
    assert g.changed("a", B, react=False) == []
    assert g.state == {"a": B, "b": M}


def test_reconfigure_keeps_states() -> None:
    g = SyncGroups({"pair": ["a", "b"]})
    masters(g, "a", "b")
    g.configure({"pair": ["a", "b", "c"]})
    masters(g, "c")
    assert [h.member for h in g.changed("a", F)] == ["b", "c"]
    g.configure({})
    assert g.changed("b", F) == []


NAMES = ("a", "b", "c", "d")
STATES = (State.INITIALIZE, B, M, F, None)


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(STATES), st.booleans()), max_size=60))
def test_only_masters_of_the_same_group_are_asked_and_never_twice_while_master(
        changes: list[tuple[str, State | None, bool]]) -> None:
    g = SyncGroups({"one": ["a", "b", "c"]})
    asked: set[str] = set()
    for name, state, react in changes:
        for h in g.changed(name, state, react):
            assert h.member != name and h.member in ("a", "b", "c") and name in ("a", "b", "c")
            assert g.state.get(h.member) == State.MASTER, "only a master is asked to hand over"
            assert h.member not in asked, "asked again while still releasing"
            asked.add(h.member)
        if state != State.MASTER:
            asked.discard(name)
