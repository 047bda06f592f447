"""Reachability tracking, sans I/O: is this node still connected, and how healthy is it?

A master that lost the service network keeps the data Primary and so blocks its peer, which
is worse than having no master. Probes (ICMP echo to witnesses beyond the service NIC, and
admin checks like keepalived's track_script) report results here; this module turns them
into three facts with rise/fall hysteresis, so one lost ping never moves the data:

* `isolated`: fewer than `min_reachable` witnesses count as reachable; the node must not
  serve (a master releases in order and stays in FAULT, a backup never takes over);
* `failing`: checks of weight 0 that count as failed; same consequence as isolation;
* `priority_delta`: the sum of the (negative) weights of failed weighted checks, so a
  healthier peer preempts.

A target nobody has heard from yet counts as down: at startup a node proves it is connected
(`rise` answers) before it may take over, rather than the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import TrackConfig

__all__ = ["Target", "TrackChange", "Tracker"]


@dataclass
class Target:
    """One witness or check with its own rise/fall counters."""

    name: str
    kind: str  # "witness" | "check"
    rise: int
    fall: int
    weight: int = 0
    up: bool | None = None  # None: no verdict yet (counts as down)
    ok_run: int = 0
    fail_run: int = 0
    last_detail: str = ""

    def feed(self, ok: bool, detail: str) -> bool:
        """Count one result; True if the verdict changed."""
        self.last_detail = detail
        if ok:
            self.ok_run, self.fail_run = self.ok_run + 1, 0
            new = True if self.ok_run >= self.rise else self.up
        else:
            self.fail_run, self.ok_run = self.fail_run + 1, 0
            new = False if self.fail_run >= self.fall or self.up is None else self.up
        changed = new != self.up
        self.up = new
        return changed

    @property
    def counts_up(self) -> bool:
        return self.up is True


@dataclass(frozen=True)
class TrackChange:
    """A verdict changed; `message` says which target, its counts and what the node does now."""

    target: str
    kind: str
    up: bool
    message: str


@dataclass
class Tracker:
    cfg: TrackConfig
    targets: dict[str, Target] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.configure(self.cfg)

    def configure(self, cfg: TrackConfig) -> None:
        """(Re)build the targets; a target that stays keeps its counters and verdict."""
        old, self.cfg = self.targets, cfg
        self.targets = {}
        for w in cfg.witnesses:
            t = Target(str(w), "witness", cfg.rise, cfg.fall)
            self.targets[t.name] = self._keep(old.get(t.name), t)
        for c in cfg.checks:
            t = Target(c.name, "check", c.rise, c.fall, c.weight)
            self.targets[t.name] = self._keep(old.get(t.name), t)

    @staticmethod
    def _keep(prev: Target | None, new: Target) -> Target:
        if prev is not None and prev.kind == new.kind:
            new.up, new.ok_run, new.fail_run, new.last_detail = prev.up, prev.ok_run, prev.fail_run, prev.last_detail
        return new

    # -- facts ---------------------------------------------------------------------------
    @property
    def reachable(self) -> int:
        return sum(1 for t in self.targets.values() if t.kind == "witness" and t.counts_up)

    @property
    def isolated(self) -> bool:
        return bool(self.cfg.witnesses) and self.reachable < self.cfg.min_reachable

    @property
    def failing(self) -> list[str]:
        return [t.name for t in self.targets.values() if t.kind == "check" and t.weight == 0 and not t.counts_up]

    @property
    def priority_delta(self) -> int:
        return sum(t.weight for t in self.targets.values() if t.kind == "check" and t.weight < 0 and t.up is False)

    @property
    def fault_reason(self) -> str:
        """'' when the node may serve, else why not."""
        parts = []
        if self.isolated:
            parts.append(f"isolated: {self.reachable} of {len(self.cfg.witnesses)} witness(es) reachable, "
                         f"{self.cfg.min_reachable} needed")
        parts += [f"check {name!r} failing" for name in self.failing]
        return "; ".join(parts)

    def presume_up(self) -> None:
        """Targets without a verdict count as up (not down) until their own results say otherwise.

        For a restarted agent that adopts the chain its predecessor served: that one only served
        with them up, and counting them down until `rise` answers would fault a healthy master."""
        for t in self.targets.values():
            if t.up is None:
                t.up = True

    def effective_priority(self, base: int) -> int:
        """The advertised priority: lowered by failed weighted checks, clamped to 1..254 then."""
        delta = self.priority_delta
        return base if delta == 0 else max(1, min(254, base + delta))

    # -- input ---------------------------------------------------------------------------
    def result(self, name: str, ok: bool, detail: str) -> list[TrackChange]:
        t = self.targets.get(name)
        if t is None:  # a probe of a target removed by a reload
            return []
        before = self.fault_reason
        if not t.feed(ok, detail):
            return []
        after = self.fault_reason
        counts = f"{t.ok_run} ok / {t.fail_run} failed in a row (rise {t.rise}, fall {t.fall})"
        what = f"{t.kind} {name} {'reachable' if t.kind == 'witness' and t.up else 'passing' if t.up else 'DOWN'}"
        if after and not before:
            decision = f"node must not serve: {after}"
        elif before and not after:
            decision = "node may serve again"
        elif t.kind == "check" and t.weight < 0:
            decision = f"priority delta now {self.priority_delta}"
        else:
            decision = f"still {'faulty: ' + after if after else 'fine'}"
        return [TrackChange(name, t.kind, bool(t.up), f"{what} ({counts}; {detail}): {decision}")]

    def summary(self) -> dict[str, object]:
        return {
            "isolated": self.isolated,
            "reachable": self.reachable,
            "min_reachable": self.cfg.min_reachable,
            "priority_delta": self.priority_delta,
            "fault": self.fault_reason or None,
            "targets": {n: {"kind": t.kind, "up": t.up, "ok_run": t.ok_run, "fail_run": t.fail_run,
                            "weight": t.weight, "last": t.last_detail} for n, t in self.targets.items()},
        }
