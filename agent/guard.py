"""May this node take the data? The split-brain guard's rules, sans I/O.

DRBD 8.4 without fencing lets a node promote while its peer is unreachable but still Primary
(captured in tests/fixtures/drbd: exit 0, split brain ahead), so the agent cannot leave the
decision to DRBD. The rules, in order:

* never while the peer is Primary, never a disk that is not UpToDate, never against DRBD's
  own may_promote (DRBD 9), never `primary --force`;
* never while the resource is StandAlone: DRBD is not even trying to reach the peer, which is
  what it does after detecting split brain (or after an admin's `disconnect`); data is never
  chosen by the agent;
* connected, or the peer's disk known Outdated: yes;
* replication link down and the peer's state unknown: first the peer is asked over the peer
  channel to outdate itself (agent.peer); if it did, yes; if it says it is Primary, no. A peer
  that does not answer may still be Primary. The default
  `unknown_peer = "refuse"` says no, with what the admin can do. `unknown_peer = "witness"`
  says yes only when a witness beyond our service NIC answers us (so we are not the isolated
  one) and the peer's adverts have been absent for Master_Down_Interval plus the time an
  isolated peer needs to notice it (its tracking) and release (`witness_grace`): availability
  bought with the risk that a peer alive behind a broken service network that fails to
  release in time still writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import DrbdConfig, TrackConfig
from drbd.status import OUTDATED, Status

__all__ = ["UNKNOWN_PEER_POLICIES", "Decision", "PeerView", "may_promote", "witness_wait"]

UNKNOWN_PEER_POLICIES = ("refuse", "witness")


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str


@dataclass(frozen=True)
class PeerView:
    """What the rest of the agent knows about the peer when DRBD does not."""

    unknown_peer: str = "refuse"
    witness_reachable: bool | None = None  # None: no witnesses configured
    peer_silent_for: float = 0.0  # seconds since the peer's last VRRP advert (or since we started)
    master_down_interval: float = 3.0
    # how long an isolated peer needs to notice (track fall x interval + timeout) and release
    # (witness_grace): promoting earlier could overlap with its Primary
    isolation_time: float = 0.0
    # the peer's answer to "outdate yourself" over the peer channel: outdated | primary | unreachable | failed ...
    peer_answer: str = ""


def isolation_time(track: TrackConfig | None, drbd: DrbdConfig | None) -> float:
    """How long an isolated peer needs to notice (its tracking: fall x interval + timeout) and
    release (witness_grace); the peer is assumed to run the same [track] as this node."""
    return (track.fall * track.interval + track.timeout if track is not None else 0.0) \
        + (drbd.witness_grace if drbd is not None else 0.0)


def witness_wait(status: Status | None, view: PeerView) -> float:
    """Seconds until the witness rule could allow promoting (0: decide now)."""
    if (status is None or view.unknown_peer != "witness" or view.witness_reachable is not True
            or status.connected or status.primary or status.standalone or view.peer_answer in ("outdated", "primary")):
        return 0.0
    return max(0.0, view.master_down_interval + view.isolation_time - view.peer_silent_for)


def may_promote(status: Status | None, resource: str, view: PeerView = PeerView()) -> Decision:
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
    if status.standalone:
        # before "peer known Outdated": after a split brain that mark may be older than the peer's
        # own writes (it promoted after declaring us dead in turn); whose data survives is the admin's
        return Decision(False, f"{resource} is StandAlone: DRBD is not trying to reach the peer (after a split "
                               f"brain, or `drbdadm disconnect`). The agent never picks whose data survives: see "
                               f"'Split brain' in the README, then `drbdadm connect {resource}`")
    if status.peer_disk == OUTDATED:
        return Decision(True, f"{resource} disconnected, but the peer's disk is known Outdated")
    unknown = f"the replication link of {resource} is down ({status.connection}) and the peer's state is unknown"
    if view.peer_answer == "outdated":
        return Decision(True, f"{resource} disconnected; the peer outdated its disk at our request (peer channel)")
    if view.peer_answer == "primary":
        return Decision(False, f"{unknown} to DRBD, but the peer says over the peer channel that it is Primary")
    if view.unknown_peer == "witness":
        if view.witness_reachable is not True:
            return Decision(False, f"{unknown}, and no witness answers us: we may be the isolated node, so no "
                                   "promotion (unknown_peer = witness)")
        needed = view.master_down_interval + view.isolation_time
        if view.peer_silent_for < needed:
            return Decision(False, f"{unknown}; the peer advertised {view.peer_silent_for:.2f} s ago, less than "
                                   f"Master_Down_Interval + the time an isolated peer needs to step down "
                                   f"({needed:.2f} s) (unknown_peer = witness)")
        return Decision(True, f"{unknown}, but a witness answers us and the peer has been silent for "
                              f"{view.peer_silent_for:.2f} s: taken as dead (unknown_peer = witness)")
    return Decision(False, f"{unknown}: it may still be Primary, so this node refuses to promote (unknown_peer = "
                           "refuse). If the peer is really down, outdate it (drbdadm outdate on the peer) or "
                           "power it off; the next retry after the hold-down then promotes")
