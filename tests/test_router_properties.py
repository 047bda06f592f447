"""Hypothesis properties of `vrrp.router` on the simulated LAN of tests/vrrp_sim.py.

Each example builds a LAN of 2-5 routers (VRRPv2 at 1 s, or VRRPv3 with per-router intervals
of 0.1-2 s), starts them at staggered times, and may run a chaos phase of random loss,
partitions, crashes, graceful stops and restarts. The properties:

- convergence: once everything is healed and lossless, after 2 x the largest
  Master_Down_Interval there is exactly one MASTER, it is the best live router, and nothing
  has moved in the last quarter of that quiet period;
- split brain is short: in a connected, lossless LAN no two routers are MASTER together for
  longer than one advertisement interval plus the delivery delay;
- takeover time: after the master crashes, a backup is master within the
  Master_Down_Interval of the best backup (from the crash instant); after a graceful stop,
  within the best backup's Skew_Time plus the delivery delay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from itertools import combinations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vrrp_sim import Lan, Sent
from vrrp.router import Params, State

DELAY = 0.001
EPS = 1e-6
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Step:
    """One chaos event, `after` seconds after the previous one."""

    after: float
    op: str  # "crash" | "stop" | "start" | "partition" | "heal" | "loss"
    node: int = 0
    groups: tuple[int, ...] = ()
    loss: float = 0.0


@dataclass(frozen=True)
class Scenario:
    params: tuple[Params, ...]
    seed: int
    starts: tuple[float, ...]
    loss: float = 0.0
    chaos: tuple[Step, ...] = ()
    revive: tuple[bool, ...] = ()


def max_interval(params: Sequence[Params]) -> float:
    return max(p.advert_interval for p in params)


def mdi_bound(params: Sequence[Params]) -> float:
    """The largest Master_Down_Interval any router can have (v3: any learned interval)."""
    top = max_interval(params)
    if params[0].version == 2:
        return max(3 * p.advert_interval + (256 - p.priority) / 256 for p in params)
    return max(3 * top + (256 - p.priority) * top / 256 for p in params)


def skew_time(p: Params, master_interval: float) -> float:
    """RFC 3768 / RFC 5798 section 6.1, from the text rather than from the router."""
    return (256 - p.priority) * (master_interval if p.version == 3 else 1.0) / 256


def master_down_interval(p: Params, master_interval: float) -> float:
    interval = master_interval if p.version == 3 else p.advert_interval
    return 3 * interval + skew_time(p, master_interval)


def rank(p: Params) -> tuple[int, int]:
    return (p.priority, int(p.address))


# -- strategies --------------------------------------------------------------------------------
seconds = st.integers(0, 4000).map(lambda ms: ms / 1000)
ALWAYS = st.just(True)


@st.composite
def lans(draw: st.DrawFn, *, ties: bool = False, preempt: st.SearchStrategy[bool] = ALWAYS,
         ) -> tuple[Params, ...]:
    n = draw(st.integers(2, 5))
    if ties:
        priorities = draw(st.lists(st.sampled_from([1, 100, 200, 254]), min_size=n, max_size=n))
        if draw(st.booleans()):
            priorities[draw(st.integers(0, n - 1))] = 255  # one address owner
    else:
        priorities = draw(st.lists(st.integers(1, 254), min_size=n, max_size=n, unique=True))
    hosts = draw(st.lists(st.integers(1, 254), min_size=n, max_size=n, unique=True))
    version = draw(st.sampled_from([2, 3]))
    if version == 2:
        intervals = [1.0] * n
    else:
        intervals = draw(st.lists(st.integers(10, 200).map(lambda cs: cs / 100), min_size=n, max_size=n))
    return tuple(
        Params(vrid=51, priority=prio, address=IPv4Address(f"10.0.0.{host}"), version=version,
               advert_interval=interval, preempt=draw(preempt))
        for prio, host, interval in zip(priorities, hosts, intervals, strict=True)
    )


def chaos_steps(n: int, *, loss: bool = True, crashes: bool = True) -> st.SearchStrategy[list[Step]]:
    node = st.integers(0, n - 1)
    kinds: list[st.SearchStrategy[Step]] = [
        st.builds(Step, seconds, st.just("partition"),
                  groups=st.lists(st.integers(0, 2), min_size=n, max_size=n).map(tuple)),
        st.builds(Step, seconds, st.just("heal")),
    ]
    if crashes:
        kinds += [st.builds(Step, seconds, st.sampled_from(["crash", "stop", "start"]), node=node)]
    if loss:
        kinds += [st.builds(Step, seconds, st.just("loss"), loss=st.sampled_from([0.0, 0.1, 0.3, 0.7, 1.0]))]
    return st.lists(st.one_of(kinds), max_size=12)


@st.composite
def scenarios(draw: st.DrawFn, *, ties: bool = False, preempt: st.SearchStrategy[bool] = ALWAYS,
              ) -> Scenario:
    params = draw(lans(ties=ties, preempt=preempt))
    n = len(params)
    return Scenario(
        params=params,
        seed=draw(st.integers(0, 2**32 - 1)),
        starts=tuple(draw(st.lists(seconds, min_size=n, max_size=n))),
        loss=draw(st.sampled_from([0.0, 0.05, 0.3])),
        chaos=tuple(draw(chaos_steps(n))),
        revive=tuple(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
    )


# -- driving the LAN ---------------------------------------------------------------------------
def boot(sc: Scenario) -> Lan:
    lan = Lan(sc.params, delay=DELAY, loss=sc.loss, seed=sc.seed)
    for t, i in sorted((t, i) for i, t in enumerate(sc.starts)):
        lan.run_until(t)
        lan.start(i)
    return lan


def apply(lan: Lan, step: Step) -> None:
    lan.run_for(step.after)
    up = lan.state(step.node) is not None
    if step.op == "crash" and up:
        lan.crash(step.node)
    elif step.op == "stop" and up:
        lan.stop(step.node)
    elif step.op == "start" and not up:
        lan.start(step.node)
    elif step.op == "partition":
        lan.partition(step.groups)
    elif step.op == "heal":
        lan.heal()
    elif step.op == "loss":
        lan.loss = step.loss


def heal_everything(lan: Lan, revive: Sequence[bool]) -> float:
    """End of chaos: one segment, no loss, some of the dead restarted (at least one router up)."""
    lan.heal()
    lan.loss = 0.0
    for i, again in enumerate(revive):
        if again and lan.state(i) is None:
            lan.start(i)
    if not lan.live():
        lan.start(0)
    return lan.now


def longest_split_brain(lan: Lan, lo: float, hi: float) -> float:
    """Longest time two routers were MASTER together inside [lo, hi]."""
    spans = [s for s in lan.spans if s.start < hi and (s.end is None or s.end > lo)]
    return max((a.overlap(b, lo, hi) for a, b in combinations(spans, 2)), default=0.0)


def assert_converged(lan: Lan, t_heal: float, *, ties: bool) -> None:
    bound = mdi_bound([n.params for n in lan.nodes])
    lan.run_until(t_heal + 2 * bound)
    live = lan.live()
    masters = lan.masters()
    assert len(masters) == 1, f"masters {masters} at {lan.now:.3f} (healed at {t_heal:.3f})"
    (m,) = masters
    params = [lan.nodes[i].params for i in live]
    if ties:
        assert lan.nodes[m].params.priority == max(p.priority for p in params)
    else:
        assert lan.nodes[m].params == max(params, key=rank)
    assert all(lan.state(i) == State.BACKUP for i in live if i != m)
    late = lan.transitions_since(t_heal + 1.5 * bound)
    assert not late, f"still moving after {1.5 * bound:.3f} s of quiet: {late}"
    worst = longest_split_brain(lan, t_heal, lan.now)
    allowed = max_interval(params) + DELAY + EPS
    assert worst <= allowed, f"two masters for {worst:.4f} s after the heal (allowed {allowed:.4f})"


# -- convergence after chaos -------------------------------------------------------------------
@SETTINGS
@given(scenarios())
def test_chaos_then_quiet_elects_the_best_router(sc: Scenario) -> None:
    lan = boot(sc)
    for step in sc.chaos:
        apply(lan, step)
    assert_converged(lan, heal_everything(lan, sc.revive), ties=False)


@SETTINGS
@given(scenarios(ties=True))
def test_chaos_with_ties_and_an_owner_elects_one_highest_priority_master(sc: Scenario) -> None:
    lan = boot(sc)
    for step in sc.chaos:
        apply(lan, step)
    assert_converged(lan, heal_everything(lan, sc.revive), ties=True)


@settings(SETTINGS, max_examples=200)
@given(scenarios(ties=True, preempt=st.booleans()))
def test_chaos_without_preempt_still_elects_exactly_one_master(sc: Scenario) -> None:
    lan = boot(sc)
    for step in sc.chaos:
        apply(lan, step)
    t_heal = heal_everything(lan, sc.revive)
    lan.run_until(t_heal + 2 * mdi_bound(sc.params))
    assert len(lan.masters()) == 1
    assert not lan.transitions_since(t_heal + 1.5 * mdi_bound(sc.params))


# -- split brain ends within one interval after every heal -------------------------------------
@SETTINGS
@given(lans(), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.lists(st.integers(0, 2), min_size=5, max_size=5), seconds, seconds,
                          st.lists(st.sampled_from(["crash", "stop", "start", "none"]), min_size=5, max_size=5)),
                min_size=1, max_size=6))
def test_split_brain_ends_within_one_interval_after_heal(
    params: tuple[Params, ...], seed: int, cycles: list[tuple[list[int], float, float, list[str]]]
) -> None:
    n = len(params)
    lan = Lan(params, delay=DELAY, seed=seed)
    for i in range(n):
        lan.start(i)
    allowed = max_interval(params) + DELAY + EPS
    for groups, apart, together, ops in cycles:
        lan.partition(groups[:n])
        lan.run_for(apart * 3)  # long enough for each side to elect its own master
        lan.heal()
        t_heal = lan.now
        for i, op in enumerate(ops[:n]):  # crashes and restarts while connected
            up = lan.state(i) is not None
            if op == "crash" and up and len(lan.live()) > 1:
                lan.crash(i)
            elif op == "stop" and up and len(lan.live()) > 1:
                lan.stop(i)
            elif op == "start" and not up:
                lan.start(i)
        lan.run_for(together * 3)
        worst = longest_split_brain(lan, t_heal, lan.now)
        assert worst <= allowed, f"two masters for {worst:.4f} s in a connected LAN (allowed {allowed:.4f})"


# -- takeover times ----------------------------------------------------------------------------
def settled(params: tuple[Params, ...], seed: int, starts: Sequence[float]) -> tuple[Lan, int]:
    """A lossless LAN run until its election is over; returns it and its master."""
    lan = Lan(params, delay=DELAY, seed=seed)
    for t, i in sorted((t, i) for i, t in enumerate(starts)):
        lan.run_until(t)
        lan.start(i)
    lan.run_until(lan.now + 2 * mdi_bound(params) + max_interval(params))
    (m,) = lan.masters()
    assert lan.nodes[m].params == max(params, key=rank)
    return lan, m


takeover_cases = st.tuples(lans(), st.integers(0, 2**32 - 1), st.lists(seconds, min_size=5, max_size=5),
                           st.floats(0.0, 1.0, exclude_max=True))


@SETTINGS
@given(takeover_cases)
def test_master_crash_takeover_within_best_backup_master_down_interval(
    case: tuple[tuple[Params, ...], int, list[float], float],
) -> None:
    params, seed, starts, phase = case
    lan, m = settled(params, seed, starts[:len(params)])
    lan.run_for(phase * params[m].advert_interval)  # crash anywhere in the advert cycle
    backups = [i for i in lan.live() if i != m]
    best = max(backups, key=lambda i: rank(params[i]))
    mdi = master_down_interval(params[best], params[m].advert_interval)  # v3: the learned interval
    assert lan.router(best).master_down_interval == pytest.approx(mdi)
    t_crash = lan.now
    lan.crash(m)
    lan.run_for(2 * mdi_bound(params))
    first = lan.takeovers(t_crash)[0]
    assert first.time <= t_crash + mdi + EPS, f"takeover {first.time - t_crash:.4f} s after the crash"
    # and not early: the last advert reached the backups at most one interval before the crash
    assert first.time >= t_crash + mdi - params[m].advert_interval - EPS
    assert first.node == best
    assert Sent(first.time, best, params[best].priority) in lan.sent  # advertises at once
    assert lan.masters() == [best]


@SETTINGS
@given(takeover_cases)
def test_graceful_stop_takeover_within_best_backup_skew_time(
    case: tuple[tuple[Params, ...], int, list[float], float],
) -> None:
    params, seed, starts, phase = case
    lan, m = settled(params, seed, starts[:len(params)])
    lan.run_for(phase * params[m].advert_interval)
    backups = [i for i in lan.live() if i != m]
    best = max(backups, key=lambda i: rank(params[i]))
    skew = skew_time(params[best], params[m].advert_interval)
    assert lan.router(best).skew_time == pytest.approx(skew)
    t_stop = lan.now
    lan.stop(m)
    lan.run_for(2 * mdi_bound(params))
    first = lan.takeovers(t_stop)[0]
    assert first.time <= t_stop + skew + DELAY + EPS, f"takeover {first.time - t_stop:.4f} s after the stop"
    assert first.time >= t_stop + DELAY  # it had to hear the priority-0 advert first
    assert first.node == best
    assert Sent(first.time, best, params[best].priority) in lan.sent
    assert lan.masters() == [best]
