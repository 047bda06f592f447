"""What the world tells a storage node (`agent.node.Node`): small frozen values, one per kind.

The adapters (sockets, netlink, subprocesses, the peer channel, the control socket) turn what
they see into these and call `Node.handle(event, now)`; nothing else reaches the node, so a
simulation that produces the same events runs the very decisions the daemon runs. Each
request the node made (`agent.actions`) is answered by the event named beside it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import Config
from agent.machine import ChainStep, Op
from drbd.status import Status
from vrrp.packet import Interface

__all__ = [
    "Admin", "AdminRequest", "AdvertsHeard", "CheckResult", "Doorbell", "DrbdChanged", "DrbdRead", "Event",
    "LinkChanged", "NfsApplied", "OutdateDone", "PeerAnswer", "PeerHeard", "PeerRequest", "ProbeResult", "Promoted",
    "Reconfigure",
    "Start", "StepDone", "Timer", "VipDeleted",
]


@dataclass(frozen=True)
class Start:
    """The adapters are up and have looked at the system: what an earlier run left held."""

    found: tuple[ChainStep, ...] = ()
    link_up: bool = True
    maintenance: bool = False  # the admin's maintenance mode, kept across restarts (state file)
    # seconds since the previous run's last advert, when it stopped for a restart and left its
    # chain held for us (agent.handoff); None: no such hand-off (a first start, or after a kill)
    handoff_age: float | None = None


@dataclass(frozen=True)
class Timer:
    """`Node.deadline()` has passed."""


@dataclass(frozen=True)
class Doorbell:
    """An advert that needs a decision at once arrived (the doorbell socket's filter let it through)."""


@dataclass(frozen=True)
class AdvertsHeard:
    """Answer to `DrainAdverts`: every queued datagram with its kernel receive time, oldest first."""

    datagrams: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class LinkChanged:
    up: bool
    detail: str


@dataclass(frozen=True)
class VipDeleted:
    """Someone removed an address from our interface (RTM_DELADDR)."""

    address: Interface


@dataclass(frozen=True)
class StepDone:
    """Answer to `RunStep`; `ms` is how long the adapter took."""

    step: ChainStep
    op: Op
    ok: bool
    detail: str
    ms: float = 0.0


@dataclass(frozen=True)
class DrbdRead:
    """Answer to `ReadDrbd`: DRBD's view (None: the resource is not up), or why it could not be read."""

    status: Status | None
    error: str = ""


@dataclass(frozen=True)
class DrbdChanged:
    """DRBD's state of our resource changed (drbd.follower, from `drbdsetup events2`); None: not up.

    Unasked, within milliseconds of the kernel's change: a lost replication link, the peer's
    promotion or demotion, our own role taken away."""

    status: Status | None


@dataclass(frozen=True)
class Promoted:
    """Answer to `Promote`: `drbdadm primary` done, or DRBD's refusal."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class ProbeResult:
    """Answer to `SendProbe` (an ICMP echo to a witness)."""

    target: str
    ok: bool
    detail: str
    fresh: int | None = None  # the fence-peer request that asked for this ping, if any


@dataclass(frozen=True)
class CheckResult:
    """Answer to `RunCheck` (an admin's check program)."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class PeerRequest:
    """The peer asks us something over the peer channel; the adapter read our DRBD state first."""

    id: int
    kind: str  # "state" | "outdate"
    sender: str
    drbd: Status | None = None


@dataclass(frozen=True)
class PeerHeard:
    """An authenticated heartbeat of the peer arrived on `path` (the peer's address it came from)."""

    path: str
    vrrp: str = ""  # the peer's VRRP state
    holding: bool = True  # the peer holds (or is acquiring) part of the chain; unknown counts as yes
    hears_us: bool = True  # False: the peer has heard nothing from us on any path for its detection time
    bound: float = 0.0  # the peer's own isolation bound (agent.guard.isolation_bound), 0: not given
    restarting: float = 0.0  # the peer's agent stops for a restart and keeps serving: not gone for this long


@dataclass(frozen=True)
class PeerAnswer:
    """Answer to `AskPeer`: the peer's reply body, or None when none came in time."""

    id: int
    body: Mapping[str, Any] | None
    connections: tuple[tuple[str, int, str, int], ...] = ()  # from a "state" reply, validated by the adapter


@dataclass(frozen=True)
class OutdateDone:
    """Answer to `RunOutdate`."""

    id: int
    ok: bool
    notes: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class NfsApplied:
    """Answer to `ApplyNfs`."""

    ok: bool
    detail: str


class Admin(enum.StrEnum):
    HANDOVER = "handover"
    MAINTENANCE_ON = "maintenance-on"
    MAINTENANCE_OFF = "maintenance-off"
    FENCE_PEER = "fence-peer"
    RESET = "reset"
    STOP = "stop"
    RESTART = "restart"  # stop for a restart: a serving node keeps its chain for the next agent


@dataclass(frozen=True)
class AdminRequest:
    """From the control socket, a signal or DRBD's fence-peer handler; answered by `AdminAnswer`."""

    id: int
    command: Admin
    reason: str = ""


@dataclass(frozen=True)
class Reconfigure:
    """SIGHUP with a config whose identity keys are unchanged (the daemon restarts the node otherwise)."""

    cfg: Config


Event = (Start | Timer | Doorbell | AdvertsHeard | LinkChanged | VipDeleted | StepDone | DrbdRead | DrbdChanged
         | Promoted | ProbeResult | CheckResult | PeerRequest | PeerHeard | PeerAnswer | OutdateDone | NfsApplied
         | AdminRequest | Reconfigure)
