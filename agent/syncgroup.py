"""Sync groups: instances of one agent that are master together (keepalived's vrrp_sync_group).

In keepalived, the instances of a sync group fail over together: one that goes to FAULT, or
changes state, takes the others of its group with it. Here the group only ever moves *away*
from this node: a member that goes to FAULT, or leaves MASTER (a handover, a preempting peer,
a priority-0 advert it obeyed), makes every other member of its group that is MASTER here hand
over (ordered release, priority 0, then yield as after `failoverctl handover`). The peer's
members take over on those adverts, so the group ends up on one node. When the member comes
back (its FAULT cleared, it preempts), the peer sees its own member leave MASTER and hands the
rest over in the same way.

Nothing is ever forced to MASTER: a member forced master while the peer's is still master is two
masters until the election settles, and that settling moves the group again (the flapping
keepalived's groups are known for). And a member that was asked to hand over is not asked again
while it is still releasing.

Sans-I/O: `SyncGroups` is fed each member's state changes and returns the hand-overs to make;
agent.daemon carries them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vrrp.router import State

__all__ = ["HandOver", "SyncGroups"]


@dataclass(frozen=True)
class HandOver:
    """Ask `member` to hand over, because of `cause` (a sentence for the journal)."""

    member: str
    cause: str


class SyncGroups:
    """Which instances are grouped, what state each is in, and who was asked to leave."""

    def __init__(self, groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.group_of: dict[str, str] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        self.state: dict[str, State] = {}
        self.leaving: set[str] = set()  # asked to hand over, still MASTER
        self.configure(groups or {})

    def configure(self, groups: Mapping[str, Sequence[str]]) -> None:
        """The groups of a (re)loaded config; the states of members that remain are kept."""
        self.members = {g: tuple(ms) for g, ms in groups.items()}
        self.group_of = {m: g for g, ms in self.members.items() for m in ms}

    def changed(self, member: str, state: State | None, react: bool = True) -> list[HandOver]:
        """`member` is now in `state` (None: it stopped). `react` False: only note it (the agent
        is stopping, or a reload restarts the member: that leave is not a failure of the group)."""
        before = self.state.get(member)
        if state is None:
            self.state.pop(member, None)
        else:
            self.state[member] = state
        if state != State.MASTER:
            self.leaving.discard(member)
        group = self.group_of.get(member)
        if not react or group is None or state == before:
            return []
        if state == State.FAULT:
            cause = f"{member} of sync group {group} is FAULT"
        elif before == State.MASTER:
            cause = f"{member} of sync group {group} {'stopped' if state is None else 'left MASTER'}"
        else:
            return []
        out = []
        for other in self.members[group]:
            if other != member and self.state.get(other) == State.MASTER and other not in self.leaving:
                self.leaving.add(other)
                out.append(HandOver(other, cause))
        return out
