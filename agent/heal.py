"""After a split: the fence-peer verdict DRBD gets, the frozen Primary's way out, who discards at the heal.

Sans I/O: plain values in, a decision out; `agent.instance` reads DRBD and the evidence file,
carries the decisions out, and `failoverctl fence-peer` turns the verdict into its exit code.

What DRBD 8.4.11 does (seen on the UML lab, tests/test_uml_partition.py and README's split-brain
section): with `fencing resource-and-stonith` a Primary that loses its peer suspends its I/O
(kernel `susp( 0 -> 1 )`, /proc/drbd `s-----`) and defers its new current UUID until the
fence-peer handler answers. Exit 3, 4, 5 (5 only while our disk is UpToDate) and 7 record the
peer's disk as Inconsistent/Outdated, make the new current UUID and resume I/O; 6 ("peer is
active") outdates our own disk, which DRBD refuses on a disconnected Primary ("State change
failed: Need access to UpToDate data"): I/O stays frozen and nothing changes; on a Secondary
being promoted it outdates our disk and the promotion fails. Any other code is logged as
"fence-peer helper broken" and leaves I/O frozen too, so it adds nothing but noise: the handler
answers only 4, 5 or 6. A frozen filesystem cannot be unmounted (the unmount writes), so a
frozen Primary whose peer was not fenced can leave the Primary role only by a reboot or power
cycle; as long as it stays frozen its current UUID does not move, and when it comes back DRBD
itself makes it the sync target (its current UUID is the survivor's bitmap UUID: no split brain).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from drbd.status import Status

__all__ = ["DRBD_FENCE_CODES", "Evidence", "FenceVerdict", "FrozenAction", "Gi", "HealAction", "HealDecision",
           "fence_verdict", "frozen_primary", "heal"]

#: drbd.conf(5), handlers, fence-peer: every exit code DRBD defines (anything else: "helper broken")
DRBD_FENCE_CODES = {3: "peer inconsistent", 4: "peer outdated", 5: "peer unreachable, assumed dead",
                    6: "peer is primary: outdate myself", 7: "peer stonithed"}
OUTDATED, DEAD, ACTIVE = 4, 5, 6
RETRY_AFTER = 0.3  # seconds between asks while the witnesses' verdict is still open


@dataclass(frozen=True)
class FenceVerdict:
    """What `failoverctl fence-peer` tells DRBD, or that it should ask the agent again."""

    code: int  # 4 | 5 | 6: the exit code if final, the one to give if asking again is impossible
    final: bool
    message: str
    retry_after: float = 0.0


def fence_verdict(answer: Mapping[str, Any], waited: float) -> FenceVerdict:
    """The node's answer to a fence-peer request -> DRBD's exit code.

    `waited`: seconds the handler has been asking already. Only "the peer's disk is Outdated"
    (4) and "the peer is unreachable and a witness answers us right now" (5) let DRBD go on
    writing without the peer; everything else is 6, which keeps a disconnected Primary's I/O
    frozen. A lost ping must not freeze a healthy Primary for good: while the peer is silent,
    no fresh ping answered and the tracker does not count us isolated yet, the verdict is open
    and the handler asks again, until the tracker decides (at most `horizon`, the witnesses'
    fall x interval + timeout).
    """
    result = str(answer.get("answer", ""))
    if result == "outdated":
        return FenceVerdict(OUTDATED, True, "the peer's disk is Outdated")
    if result == "primary":
        return FenceVerdict(ACTIVE, True, "the peer is Primary or taking over: our data is not the one to keep")
    if result != "unreachable":
        return FenceVerdict(ACTIVE, True, f"the peer could not outdate its disk ({result or 'no answer'})")
    detail = str(answer.get("witness_detail") or "no detail")
    if answer.get("witness_reachable"):
        return FenceVerdict(DEAD, True, f"the peer does not answer and a witness answers us ({detail}): peer taken "
                            "as dead")
    horizon = _number(answer.get("horizon"))
    if answer.get("isolated") or horizon is None or waited >= horizon:
        why = "the tracker counts us isolated" if answer.get("isolated") else (
            "no witnesses to ask" if horizon is None else f"no witness answered within {horizon:g} s")
        said = detail if detail.startswith(why) else f"{why} ({detail})"
        return FenceVerdict(ACTIVE, True, f"the peer does not answer and {said}: we may be the isolated node; not "
                            "fencing it")
    return FenceVerdict(ACTIVE, False, f"the peer does not answer, no witness answered yet ({detail}); asking again "
                        f"until the tracker decides (at most {horizon:g} s)", min(RETRY_AFTER, horizon - waited))


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class Gi:
    """DRBD's generation identifiers (`drbdsetup get-gi`): which data history a disk holds.

    The lowest bit of the current UUID says "was Primary"; the history is the same without it.
    """

    current: str
    bitmap: str
    history: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Gi | None:
        """`49531FEA760282DF:0000000000000000:1FA33DF341E83A47:0000000000000004:1:1:1:0:0:0:0`."""
        for line in text.splitlines():
            words = line.strip().split(":")
            if len(words) >= 4 and all(_hex(w) for w in words[:4]):
                return cls(words[0].upper(), words[1].upper(), tuple(w.upper() for w in words[2:4]))
        return None

    @property
    def data(self) -> int:
        return int(self.current, 16) & ~1

    def same_data(self, other: Gi) -> bool:
        """No new data generation since `other` (a write after a lost peer always starts one)."""
        return self.data == other.data

    def __str__(self) -> str:
        return f"{self.current}:{self.bitmap}"


def _hex(word: str) -> bool:
    return len(word) == 16 and all(c in "0123456789abcdefABCDEF" for c in word)


@dataclass(frozen=True)
class Evidence:
    """What a node records, on its own root disk, when it gives up a frozen Primary role.

    Written before the self-fence, read after the reboot: it is the proof the heal relies on,
    checked against DRBD's own generation identifiers.
    """

    resource: str
    frozen_at: float  # wall clock: when the fence-peer verdict kept our I/O frozen
    reason: str  # the verdict's message
    gi: Gi | None  # at that moment; None if DRBD could not say
    drbd: str  # DRBD's state then, in its words
    action: str  # what followed: reboot | poweroff | none

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "gi": None if self.gi is None else asdict(self.gi)}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Evidence:
        """Raises ValueError on anything that is not a record we wrote."""
        try:
            doc = json.loads(text)
            gi = doc["gi"]
            return cls(resource=str(doc["resource"]), frozen_at=float(doc["frozen_at"]), reason=str(doc["reason"]),
                       gi=None if gi is None else Gi(str(gi["current"]), str(gi["bitmap"]), tuple(gi["history"])),
                       drbd=str(doc["drbd"]), action=str(doc["action"]))
        except (KeyError, TypeError, AttributeError, RecursionError, json.JSONDecodeError) as e:
            raise ValueError(f"not a heal evidence record: {e}") from None


@dataclass(frozen=True)
class FrozenAction:
    """What the node does after DRBD was told 6: VIP off, the evidence written, then the self-fence."""

    remove_vips: bool = False
    record: bool = False
    self_fence: str = ""  # reboot | poweroff | "" (none)
    message: str = ""


def frozen_primary(status: Status | None, verdict: FenceVerdict, last_resort: str) -> FrozenAction:
    """After a final verdict: does this node hold a frozen Primary it must give up?

    A disconnected, suspended Primary whose peer was not fenced can neither write (frozen) nor
    unmount (the unmount writes): it stops answering clients at once (VIP off; no disk I/O
    needed), records the evidence, and leaves through `last_resort` (demote_escalation's last
    entry). With "none" it stays frozen, which keeps the data safe but needs the admin.
    """
    if verdict.code != ACTIVE or not verdict.final or status is None or not status.primary:
        return FrozenAction()
    if status.connected:
        return FrozenAction(message="the replication link is back: DRBD ignores the answer and resumes I/O itself")
    if not status.suspended:
        return FrozenAction(message=(
            "DRBD did not freeze I/O (fencing resource-only?): this Primary may go on writing without its peer, and "
            "the heal cannot prove what it wrote; set `fencing resource-and-stonith` in drbd.conf"))
    if last_resort in ("reboot", "poweroff"):
        return FrozenAction(True, True, last_resort, (
            f"DRBD keeps our I/O frozen ({verdict.message}): no write can complete, and the unmount cannot either; "
            f"VIP off, evidence recorded, then {last_resort} (drbd.demote_escalation's last resort)"))
    return FrozenAction(True, True, "", (
        f"DRBD keeps our I/O frozen ({verdict.message}) and drbd.demote_escalation ends in 'none': this node stays "
        "Primary with frozen I/O (it writes nothing) until someone reboots it; reboot it, and it rejoins as "
        "sync target"))


class HealAction(StrEnum):
    NONE = "none"  # nothing to do (connected, DRBD is trying, or not ours to touch)
    CLEAR = "clear"  # healed: the evidence record is no longer needed
    CONNECT = "connect"  # `drbdadm connect` (never discards anything by itself)
    DISCARD = "discard"  # `drbdadm disconnect` + `drbdadm connect --discard-my-data`: our changes go
    ADMIN = "admin"  # stay StandAlone: cannot prove which side may discard; the admin decides


@dataclass(frozen=True)
class HealDecision:
    action: HealAction
    reason: str = ""
    commands: tuple[str, ...] = ()  # for ADMIN: what to run, where


def heal(status: Status | None, gi: Gi | None, evidence: Evidence | None, serving: bool,
         maintenance: bool) -> HealDecision:
    """Whether and how this node reconnects a StandAlone resource.

    DRBD goes StandAlone after a split brain it does not resolve (after-sb policies
    `disconnect`). The side that served (the survivor) reconnects plainly: a plain connect
    discards nothing, DRBD decides with the peer's flags. The other side discards its changes
    only when its own record says it gave up a frozen Primary and DRBD's current UUID is still
    the one recorded then: no write was completed after it lost the peer, so nothing it
    discards was ever acknowledged. Anything else stays StandAlone and says what to run.
    """
    if status is None:
        return HealDecision(HealAction.NONE)
    if status.connected:
        if evidence is not None and status.disk == "UpToDate" and status.peer_disk == "UpToDate":
            return HealDecision(HealAction.CLEAR, f"healed: connected and UpToDate ({status.summary()}); the record "
                                f"of {evidence.resource}'s frozen Primary is no longer needed")
        return HealDecision(HealAction.NONE)
    if not status.standalone or maintenance:
        return HealDecision(HealAction.NONE)
    res = status.name
    if serving:
        return HealDecision(HealAction.CONNECT, f"{res} is StandAlone while this node serves: connecting (a plain "
                            "connect discards nothing; the peer discards its changes if it can prove them "
                            "unacknowledged)")
    victim = (f"drbdadm disconnect {res}; drbdadm connect --discard-my-data {res}   # on the node whose changes "
              "since the split are to be dropped (not the one that served clients)")
    survivor = f"drbdadm connect {res}   # on the other node, if it is StandAlone too"
    if status.primary:
        return HealDecision(HealAction.ADMIN, f"{res} is StandAlone and Primary here without serving (a frozen "
                            "Primary?): reboot this node, it rejoins as sync target",
                            ("reboot   # this node", survivor))
    if evidence is None:
        return HealDecision(HealAction.ADMIN, f"{res} is StandAlone (split brain?) and this node has no record of "
                            "having stopped writing when it lost the peer: it may hold acknowledged writes the peer "
                            "lacks, so neither side's changes are discarded automatically", (victim, survivor))
    if gi is None or evidence.gi is None:
        return HealDecision(HealAction.ADMIN, f"{res} is StandAlone; this node gave up a frozen Primary at "
                            f"{evidence.frozen_at:.3f} but DRBD's generation identifiers cannot be compared "
                            f"(then {evidence.gi}, now {gi}): not discarding automatically", (victim, survivor))
    if not gi.same_data(evidence.gi):
        return HealDecision(HealAction.ADMIN, f"{res} is StandAlone; this node gave up a frozen Primary at "
                            f"{evidence.frozen_at:.3f}, but its data changed since (current UUID {evidence.gi.current} "
                            f"-> {gi.current}: I/O was resumed, e.g. by resume-io): writes may have been "
                            "acknowledged; not discarding automatically", (victim, survivor))
    return HealDecision(HealAction.DISCARD, f"{res} is StandAlone; this node gave up a frozen Primary at "
                        f"{evidence.frozen_at:.3f} ({evidence.reason}) and its current UUID {gi.current} is the one "
                        "recorded then: nothing was written after it lost the peer, so its side is discarded and it "
                        "resyncs from the peer")
