"""May this node take the data? The split-brain guard's rules, sans I/O.

DRBD 8.4 without fencing lets a node promote while its peer is unreachable but still Primary
(captured in tests/fixtures/drbd: exit 0, split brain ahead), so the agent cannot leave the
decision to DRBD. These are the rules that need no peer channel and no witness; with the
replication link down and the peer's state unknown the answer is no (`unknown_peer =
"refuse"`), with the reason and what the admin can do.
"""

from __future__ import annotations

from dataclasses import dataclass

from drbd.status import OUTDATED, Status


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str


def may_promote(status: Status | None, resource: str) -> Decision:
    if status is None:
        return Decision(False, f"DRBD resource {resource} is not up on this node (drbdadm up {resource})")
    if status.primary:
        return Decision(True, f"{resource} is already Primary here")
    if status.peer_primary:
        return Decision(False, f"the peer is Primary for {resource}: two Primaries must never happen")
    if not status.uptodate:
        return Decision(False, f"the local disk of {resource} is {status.disk}, not UpToDate: promoting it would "
                               "serve stale or partial data")
    if status.may_promote is False:
        return Decision(False, f"DRBD reports may_promote: no for {resource} (no quorum or no UpToDate replica)")
    if status.connected:
        return Decision(True, f"{resource} connected, peer {status.peer_role}, local disk UpToDate")
    if status.peer_disk == OUTDATED:
        return Decision(True, f"{resource} disconnected, but the peer's disk is known Outdated")
    return Decision(False, f"the replication link of {resource} is down ({status.connection}) and the peer's state is "
                           "unknown: it may still be Primary, so this node refuses to promote (unknown_peer = "
                           "refuse). If the peer is really down, outdate it (drbdadm outdate on the peer) or "
                           "power it off; the next retry after the hold-down then promotes")
