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
  that does not answer may still be Primary. The default `unknown_peer = "refuse"` says no,
  with what the admin can do. `unknown_peer = "witness"` says yes only when a witness beyond
  our service NIC answers us (so we are not the isolated one) and the peer has been silent on
  every path for max(detection, the peer's isolation bound), both counted from the last contact:
  an isolated peer has stopped serving by then, or fenced itself ([guard] release_deadline).
  The timing argument is in the README ("Split brain").
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import Config
from drbd.status import OUTDATED, Status

__all__ = ["CLOCK_ERROR", "UNKNOWN_PEER_POLICIES", "Decision", "PeerView", "isolation_bound", "may_promote",
           "takeover_wait", "witness_wait"]

#: how far apart the two nodes' clocks may run in rate: a wait measured here covers a bound
#: measured there only when stretched by (1 + e) / (1 - e)
CLOCK_ERROR = 0.01

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
    # seconds since the peer's last sign of life on any path (heartbeat, peer message, VRRP advert)
    peer_silent_for: float = 0.0
    # how long silence must last before the peer counts as gone: dead_after x heartbeat, or
    # Master_Down_Interval without heartbeats
    detection: float = 3.0
    # by when after the last contact an isolated peer has stopped serving (isolation_bound):
    # promoting earlier could overlap with its Primary
    isolation_bound: float = 0.0
    # the peer's answer to "outdate yourself" over the peer channel: outdated | primary | unreachable | failed ...
    peer_answer: str = ""


def isolation_bound(cfg: Config, advert_interval: float) -> float:
    """Seconds after the last contact by which an isolated peer running `cfg`'s timing has stopped serving.

    The cut came at most one heartbeat (one advert interval without heartbeats) after the last
    message heard from the peer. From the cut the peer notices within its witnesses' fall x
    interval + timeout, or within one message delay (allowed one heartbeat) + dead_after x
    heartbeat when our heartbeats tell it we hear nothing; then it stops serving within
    release_deadline or fences itself. `witness_grace` adds a margin; the sum is stretched for
    the clocks' rate error. 0 without witnesses (no witness rule to time).
    """
    track, peer = cfg.track, cfg.peer
    if track is None or not track.witnesses:
        return 0.0
    beat = peer.heartbeat if peer is not None and peer.heartbeat else 0.0
    notice = track.fall * track.interval + track.timeout
    if beat and peer is not None:
        notice = max(notice, beat + peer.detection)
    grace = cfg.drbd.witness_grace if cfg.drbd is not None else 0.0
    raw = (beat or advert_interval) + notice + cfg.guard.release_deadline + grace
    return raw * (1 + CLOCK_ERROR) / (1 - CLOCK_ERROR)


def takeover_wait(view: PeerView) -> float:
    """Silence after which the witness rule may promote: detection and the bound overlap, never add."""
    return max(view.detection, view.isolation_bound)


def witness_wait(status: Status | None, view: PeerView) -> float:
    """Seconds until the witness rule could allow promoting (0: decide now)."""
    if (status is None or view.unknown_peer != "witness" or view.witness_reachable is not True
            or status.connected or status.primary or status.standalone or view.peer_answer in ("outdated", "primary")):
        return 0.0
    return max(0.0, takeover_wait(view) - view.peer_silent_for)


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
        needed = takeover_wait(view)
        if view.peer_silent_for < needed:
            return Decision(False, f"{unknown}; the peer was last heard {view.peer_silent_for:.2f} s ago, less "
                                   f"than max(detection {view.detection:.2f} s, the bound by which an isolated "
                                   f"peer has stopped serving {view.isolation_bound:.2f} s) (unknown_peer = "
                                   "witness)")
        return Decision(True, f"{unknown}, but a witness answers us and the peer has been silent on every path "
                              f"for {view.peer_silent_for:.2f} s (bound {needed:.2f} s): it has stopped serving "
                              "or fenced itself (unknown_peer = witness)")
    return Decision(False, f"{unknown}: it may still be Primary, so this node refuses to promote (unknown_peer = "
                           "refuse). If the peer is really down, outdate it (drbdadm outdate on the peer) or "
                           "power it off; the next retry after the hold-down then promotes")
