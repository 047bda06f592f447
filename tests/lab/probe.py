"""Client-side measurement of reachability: how long a failover leaves the VIP unanswered.

``Pinger`` runs tests/lab/pinger.py inside a lab namespace and collects its per-packet
lines in a background thread.  All timestamps are ``time.monotonic()`` values that are
directly comparable with the parent's own ``time.monotonic()``: CLOCK_MONOTONIC is a single
system-wide clock that network namespaces do not touch (only a time namespace could offset
it); ``start()`` verifies this instead of assuming it, by checking that the child's READY
timestamp falls between the parent's clock readings around the spawn and that both share
one time namespace.

Typical benchmark use::

    with Pinger(lab, "client", "192.0.2.100", interval=0.01) as pinger:
        pinger.wait_replies(10, timeout=2)
        t0 = time.monotonic()
        master.kill()
        delay = pinger.wait_first_reply_after(t0, timeout=10)   # s from t0 to service back
        worst = pinger.max_gap(start=t0)                        # longest silence
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.child import LineChild
from tests.lab.netns import DEFAULT_DEV, NetnsLab

__all__ = ["PINGER_SCRIPT", "Pinger", "Reply", "SendError"]

PINGER_SCRIPT = Path(__file__).with_name("pinger.py")


@dataclass(frozen=True)
class Reply:
    """One echo reply; times are time.monotonic() seconds."""

    seq: int
    sent: float
    received: float
    src: str
    mac: str

    @property
    def rtt(self) -> float:
        """Round-trip time in seconds."""
        return self.received - self.sent


@dataclass(frozen=True)
class SendError:
    """A send the kernel refused (no route, neighbour failed...), which is also an outage sign."""

    seq: int
    time: float
    error: str


class Pinger(LineChild):
    """Echo requests every ``interval`` s from ``name``'s namespace to ``target``.

    The queries are safe to call while the pinger runs (they work on a snapshot), so a
    benchmark can poll for recovery and keep measuring afterwards.
    """

    def __init__(
        self,
        lab: NetnsLab,
        name: str,
        target: str,
        *,
        interval: float = 0.01,
        duration: float | None = None,
        dev: str = DEFAULT_DEV,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        super().__init__(lab, name)
        self.target = target
        self.interval = interval
        self.duration = duration
        self.dev = dev
        self.sent = 0
        self._replies: list[Reply] = []
        self._errors: list[SendError] = []

    what = "pinger"
    stop_grace = 2.0

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-u", str(PINGER_SCRIPT), self.target,
            "--interval", repr(self.interval), "--dev", self.dev,
        ]  # fmt: skip
        if self.duration is not None:
            argv += ["--duration", repr(self.duration)]
        return argv

    def start(self, timeout: float = 5.0) -> Pinger:
        return super().start(timeout)

    def parse(self, parts: list[str]) -> None:
        kind = parts[0]
        if kind == "R" and len(parts) >= 6:
            self._replies.append(Reply(int(parts[1]), float(parts[2]), float(parts[3]), parts[4], parts[5]))
        elif kind == "S" and len(parts) >= 3:
            self.sent += 1
        elif kind == "E" and len(parts) >= 4:
            self.sent += 1
            self._errors.append(SendError(int(parts[1]), float(parts[2]), parts[3]))

    # -- queries -------------------------------------------------------------------------------

    @property
    def replies(self) -> list[Reply]:
        """Snapshot of all replies so far, in arrival order."""
        with self._cond:
            return list(self._replies)

    @property
    def errors(self) -> list[SendError]:
        """Snapshot of refused sends."""
        with self._cond:
            return list(self._errors)

    def lost(self) -> int:
        """Requests without a reply so far (the last few may still be in flight)."""
        with self._cond:
            return self.sent - len(self._replies)

    def first_reply_after(self, t0: float, *, mac: str | None = None) -> float | None:
        """Seconds from ``t0`` to the first reply to a request *sent* at or after ``t0``.

        Requests sent before t0 are ignored even if answered after it: they measure the path
        before the event, not its recovery.  ``mac`` only counts replies from that source MAC
        (e.g. the new master), because requests sent in the few ms an event takes to complete
        may still be answered by the old one.
        """
        reply = self.first_reply_obj_after(t0, mac=mac)
        return None if reply is None else reply.received - t0

    def first_reply_obj_after(self, t0: float, *, mac: str | None = None) -> Reply | None:
        """The reply behind first_reply_after (to see which MAC answered, for instance)."""
        with self._cond:
            candidates = [r for r in self._replies if self._counts(r, t0, mac)]
        return min(candidates, key=lambda r: r.received, default=None)

    def wait_first_reply_after(self, t0: float, timeout: float, *, mac: str | None = None) -> float | None:
        """Block until first_reply_after(t0, mac=mac) has an answer or ``timeout`` s pass."""
        with self._cond:
            self._cond.wait_for(lambda: self._ended or any(self._counts(r, t0, mac) for r in self._replies), timeout)
        return self.first_reply_after(t0, mac=mac)

    @staticmethod
    def _counts(reply: Reply, t0: float, mac: str | None) -> bool:
        return reply.sent >= t0 and (mac is None or reply.mac == mac.lower())

    def wait_replies(self, count: int, timeout: float, after: float | None = None) -> bool:
        """Block until ``count`` replies (received after ``after``, if given) have arrived."""

        def enough() -> bool:
            got = sum(1 for r in self._replies if after is None or r.received >= after)
            return got >= count or self._ended

        with self._cond:
            self._cond.wait_for(enough, timeout)
            return sum(1 for r in self._replies if after is None or r.received >= after) >= count

    def max_gap(self, start: float | None = None, end: float | None = None) -> float:
        """Longest time without a reply inside [start, end] (receive times).

        ``start``/``end`` count as boundaries, so an outage that begins at the event (start=t0)
        is measured from t0, and one still going on at ``end`` counts up to ``end``.  Without
        boundaries it is the largest gap between consecutive replies (0.0 with < 2 replies).
        """
        times = sorted(r.received for r in self.replies)
        times = [t for t in times if (start is None or t >= start) and (end is None or t <= end)]
        points = ([start] if start is not None else []) + times + ([end] if end is not None else [])
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    def outages(
        self, min_gap: float, start: float | None = None, end: float | None = None
    ) -> list[tuple[float, float]]:
        """Every silence longer than ``min_gap``, as (last reply before, first reply after)."""
        times = sorted(r.received for r in self.replies)
        times = [t for t in times if (start is None or t >= start) and (end is None or t <= end)]
        points = ([start] if start is not None else []) + times + ([end] if end is not None else [])
        return [(a, b) for a, b in itertools.pairwise(points) if b - a > min_gap]

    def macs_after(self, t0: float) -> list[str]:
        """Distinct source MACs of replies received after ``t0``, in order of first appearance."""
        seen: dict[str, None] = {}
        for reply in self.replies:
            if reply.received >= t0:
                seen.setdefault(reply.mac)
        return list(seen)

    def summary(self) -> dict[str, Any]:
        """Counts and RTT figures, for benchmark reports and assertion messages."""
        replies = self.replies
        rtts = sorted(r.rtt for r in replies)
        return {
            "sent": self.sent,
            "received": len(replies),
            "errors": len(self.errors),
            "rtt_median": rtts[len(rtts) // 2] if rtts else None,
            "rtt_max": rtts[-1] if rtts else None,
            "max_gap": self.max_gap(),
        }
