"""A node's status as plain JSON values: what `failoverctl status --json`, the text status, the
metrics and systemd's STATUS= line all read.

`agent.node.Node.snapshot()` gives the decisions' side (a `NodeStatus`); the adapter adds what
only it knows (its sockets' counters, the peer channel's rejections) as a `Wire`. Times on the
node's monotonic clock become wall-clock times and ages here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import Config
from agent.node import NodeStatus

__all__ = ["Wire", "as_json"]


@dataclass(frozen=True)
class Wire:
    interface: str
    address: str
    adverts_sent: int
    doorbell_wakeups: int
    garp_sent: int
    peer_rejected: Mapping[str, int] | None  # None: no peer channel


def as_json(s: NodeStatus, cfg: Config, wire: Wire, clock: float, wall: float) -> dict[str, Any]:
    """`clock`: the node's clock now; `wall`: time.time() now."""
    v, m, last = cfg.vrrp, cfg.monitor, s.last_transition
    peer = cfg.peer
    return {
        "state": s.state, "vrid": v.vrid, "interface": wire.interface, "address": wire.address,
        "version": v.version, "priority": s.priority, "advert_interval": v.advert_interval,
        "master_down_interval": s.master_down_interval, "preempt": v.preempt, "maintenance": s.maintenance,
        "yielding": s.yielding, "master": s.master, "link_up": s.link_up, "vips": [str(x) for x in v.vips],
        "vips_held": "vip" in s.held, "phase": s.phase, "held": list(s.held), "chain": list(s.chain),
        "faults": dict(s.faults),
        "peer": None if wire.peer_rejected is None or peer is None else {
            "address": str(peer.address), "port": peer.port, "rejected": dict(wire.peer_rejected),
            "heartbeat": peer.heartbeat, "gone": s.peer_gone,
            "paths": {str(a): None if str(a) not in s.peer_paths else round(clock - s.peer_paths[str(a)], 2)
                      for a in peer.paths}},
        "release_left": None if s.release_by is None else round(max(0.0, s.release_by - clock), 2),
        "waiting_for": s.waiting_for or None,
        "track": s.track,
        "monitor": {"interval": m.interval, "max_restarts": m.max_restarts, "hold_down": m.hold_down},
        "last_transition": None if last is None else {
            "at": wall - (clock - last.at), "from": last.old, "to": last.new, "reason": last.reason},
        "steps": dict(s.durations), "fault": s.fault_reason or None,
        "hold_left": None if s.hold_left is None else round(s.hold_left, 1),
        "peer_heard_ago": None if s.peer_heard_at is None else round(clock - s.peer_heard_at, 2),
        "counters": {
            "transitions": s.transitions, "became_master": s.became_master, "faults": s.faults_total,
            "adverts_sent": wire.adverts_sent, "adverts_received": s.adverts_received, "drops": dict(s.drops),
            "doorbell_wakeups": wire.doorbell_wakeups, "garp_sent": wire.garp_sent,
        },
    }
