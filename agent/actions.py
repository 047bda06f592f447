"""What a storage node (`agent.node.Node`) asks the world to do: small frozen values.

The adapters carry them out and decide nothing; where an action needs an answer, the answer
comes back as the `agent.events` value named in its docstring. Values the node hands out are
plain data, so a simulation can carry them out in virtual time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.journal import Event as Kind
from agent.machine import RunStep
from vrrp.packet import Interface

__all__ = [
    "Action",
    "AdminAnswer",
    "AnswerPeer",
    "ApplyNfs",
    "AskPeer",
    "ChangeVips",
    "DrainAdverts",
    "Emit",
    "Garp",
    "Joined",
    "Promote",
    "ReadDrbd",
    "RunCheck",
    "RunOutdate",
    "RunStep",
    "SaveState",
    "SelfFence",
    "SendAdvert",
    "SendHeartbeat",
    "SendProbe",
    "SetWakeThreshold",
    "StartFailed",
    "StatusChanged",
    "Stopped",
    "Tickle",
]

# log levels (the numbers of the logging module), so the core needs no logger
DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50


@dataclass(frozen=True)
class SendAdvert:
    """One VRRP advert from our address (interval: None for our own)."""

    priority: int
    interval: float | None = None


@dataclass(frozen=True)
class Garp:
    """A round of gratuitous ARP for the VIPs now (another master showed up and we win)."""


@dataclass(frozen=True)
class DrainAdverts:
    """Hand over every queued advert: answered by `AdvertsHeard`."""


@dataclass(frozen=True)
class SetWakeThreshold:
    """Ring the doorbell for adverts of this priority or above (priority 0 always rings)."""

    threshold: int


@dataclass(frozen=True)
class ReadDrbd:
    """Read DRBD's state of the resource: answered by `DrbdRead`."""


@dataclass(frozen=True)
class Promote:
    """`drbdadm primary`: answered by `Promoted`."""


@dataclass(frozen=True)
class SendProbe:
    """One ICMP echo to a witness: answered by `ProbeResult` (with `fresh` echoed)."""

    target: str
    timeout: float
    fresh: int | None = None


@dataclass(frozen=True)
class RunCheck:
    """Run an admin's check program: answered by `CheckResult`."""

    name: str
    argv: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class AskPeer:
    """A request over the peer channel: answered by `PeerAnswer` with the same id."""

    id: int
    kind: str  # "state" | "outdate"
    timeout: float


@dataclass(frozen=True)
class SendHeartbeat:
    """One heartbeat to the peer on every path; what the peer learns from it (agent.events.PeerHeard)."""

    vrrp: str
    holding: bool  # anything of the chain held or being acquired
    hears_peer: bool
    bound: float
    restarting: float = 0.0  # the last heartbeat of an agent stopping for a restart: do not count us gone for this long


@dataclass(frozen=True)
class SelfFence:
    """Reboot or power off through the kernel now: this node could not stop serving in time."""

    action: str  # "reboot" | "poweroff" (agent.config.FENCE_ACTIONS)
    reason: str


@dataclass(frozen=True)
class AnswerPeer:
    """Our reply to the peer's `PeerRequest`; `connections`: add our clients' TCP connections to it."""

    id: int
    body: Mapping[str, Any]
    connections: bool = False


@dataclass(frozen=True)
class RunOutdate:
    """Outdate our own disk for the peer (`disconnect`: a still-Connected disk may be cycled): `OutdateDone`."""

    id: int
    disconnect: bool


@dataclass(frozen=True)
class ApplyNfs:
    """A reload changed `[nfs]` (same backend and layout): the server takes it live: `NfsApplied`."""


@dataclass(frozen=True)
class Tickle:
    """Send the old master's client connections an out-of-window ACK from the VIP (agent.tickle)."""

    connections: tuple[tuple[str, int, str, int], ...]


@dataclass(frozen=True)
class ChangeVips:
    """Reload while holding the VIPs: remove and add these now (and announce the added ones: GARP or unsolicited NA)."""

    gone: tuple[Interface, ...]
    added: tuple[Interface, ...]


@dataclass(frozen=True)
class Emit:
    """A journal event (`kind` None: a plain log line, `message` %-formatted with `args` only if logged);
    fields become upper-case journal fields."""

    kind: Kind | None
    message: str
    level: int = INFO
    fields: Mapping[str, object] = field(default_factory=dict)
    args: tuple[object, ...] = ()


@dataclass(frozen=True)
class SaveState:
    """Write what must survive a restart or a reboot (the state file)."""

    maintenance: bool


@dataclass(frozen=True)
class StatusChanged:
    """What `Node.snapshot()` shows has changed (systemd's STATUS= line)."""


@dataclass(frozen=True)
class AdminAnswer:
    id: int
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Joined:
    """Startup is complete: what an earlier run left is released and the node takes part in VRRP."""


@dataclass(frozen=True)
class StartFailed:
    reason: str


@dataclass(frozen=True)
class Stopped:
    """The ordered leave is over (`held`: what could not be released); close the sockets.

    `kept`: a stop for a restart left the serving chain held on purpose, for the next agent to
    adopt (agent.handoff records it); `held` is then what was kept."""

    held: tuple[str, ...] = ()
    kept: bool = False


Action = (SendAdvert | Garp | DrainAdverts | SetWakeThreshold | RunStep | ReadDrbd | Promote | SendProbe | RunCheck
          | AskPeer | SendHeartbeat | SelfFence | AnswerPeer | RunOutdate | ApplyNfs | Tickle | ChangeVips | Emit
          | SaveState | StatusChanged | AdminAnswer | Joined | StartFailed | Stopped)
