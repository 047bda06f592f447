"""The failover machine: table tests of the chain, and hypothesis over random VRRP flaps and step outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.machine import (
    ORDER,
    Action,
    Machine,
    Op,
    Phase,
    PhaseChange,
    RunStep,
    Settings,
    Step,
    VrrpFault,
    VrrpRecover,
)

STORAGE = Settings(steps=ORDER, monitor_interval=2.0, max_restarts=2, hold_down=5.0)


@dataclass
class Driver:
    """Runs a machine, answering its steps from a script, and records what it did."""

    m: Machine
    now: float = 0.0
    log: list[Action] = field(default_factory=list)
    outcomes: dict[tuple[str, Op], list[bool]] = field(default_factory=dict)

    def feed(self, actions: list[Action]) -> None:
        self.log += actions

    def answer(self, ok: bool | None = None, detail: str = "") -> RunStep:
        run = self.m.running
        assert run is not None, "no step is running"
        if ok is None:
            ok = self.outcomes.get((run.step, run.op), [True]).pop(0) if self.outcomes.get((run.step, run.op)) \
                else True
        self.feed(self.m.step_done(run.step, run.op, ok, detail or ("ok" if ok else "boom"), self.now))
        return run

    def settle(self, limit: int = 100) -> list[RunStep]:
        done = []
        for _ in range(limit):
            if self.m.running is None:
                break
            done.append(self.answer())
        return done

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while (d := self.m.deadline) is not None and d <= end:
            self.now = max(self.now, d)
            self.feed(self.m.tick(self.now))
            self.settle()
        self.now = end


def runs(steps: list[RunStep]) -> list[str]:
    return [f"{r.op}:{r.step}" for r in steps]


def test_acquire_in_order_then_release_in_reverse() -> None:
    d = Driver(Machine(STORAGE))
    d.feed(d.m.vrrp_master(0, "peer gone"))
    assert runs(d.settle()) == [f"acquire:{s}" for s in ORDER]
    assert d.m.phase == Phase.SERVING and d.m.held == list(ORDER)
    d.feed(d.m.vrrp_lost(1, "higher priority peer"))
    assert runs(d.settle()) == [f"release:{s}" for s in reversed(ORDER)]
    assert d.m.phase == Phase.IDLE and d.m.held == []


def test_failed_acquire_rolls_back_then_faults_with_backoff() -> None:
    d = Driver(Machine(STORAGE))
    d.outcomes[("nfs", Op.ACQUIRE)] = [False, False]
    d.feed(d.m.vrrp_master(0, "x"))
    assert runs(d.settle()) == ["acquire:drbd", "acquire:mount", "acquire:nfs_state", "acquire:nfs",
                                "release:nfs_state", "release:mount", "release:drbd"]
    assert d.m.phase == Phase.FAULT and d.m.held == []
    fault = [a for a in d.log if isinstance(a, VrrpFault)]
    assert len(fault) == 1 and "nfs failed" in fault[0].reason
    # VRRP steps aside; after the hold-down it may try again
    d.feed(d.m.vrrp_lost(0, "fault"))
    d.advance(4.9)
    assert d.m.phase == Phase.FAULT
    d.advance(0.2)
    assert any(isinstance(a, VrrpRecover) for a in d.log) and d.m.phase == Phase.IDLE
    d.feed(d.m.vrrp_master(5.1, "again"))
    d.settle()
    assert d.m.phase == Phase.FAULT
    assert d.m.hold_until == pytest.approx(5.1 + 10.0), "hold-down doubles after a second failure"


def test_vrrp_flap_during_acquire_finishes_the_step_then_releases() -> None:
    d = Driver(Machine(STORAGE))
    d.feed(d.m.vrrp_master(0, "x"))
    d.answer()  # drbd promoted
    assert d.m.running == RunStep(Step.MOUNT, Op.ACQUIRE, 30.0)
    d.feed(d.m.vrrp_lost(0.1, "preempted"))
    assert d.m.running is not None and d.m.running.step == "mount", "a running step is never abandoned"
    assert runs(d.settle()) == ["acquire:mount", "release:mount", "release:drbd"]
    assert d.m.phase == Phase.IDLE


def test_monitor_failure_restarts_the_step_and_what_depends_on_it() -> None:
    d = Driver(Machine(STORAGE))
    d.feed(d.m.vrrp_master(0, "x"))
    d.settle()
    d.outcomes[("nfs", Op.CHECK)] = [False]
    d.advance(2.0)
    checks_and_after = [a for a in d.log if isinstance(a, RunStep)][len(ORDER):]
    assert runs(checks_and_after) == ["check:drbd", "check:mount", "check:nfs_state", "check:nfs",
                                      "release:vip", "release:nfs", "acquire:nfs", "acquire:vip"]
    assert d.m.phase == Phase.SERVING and d.m.restarts == {"nfs": 1}


def test_monitor_failure_of_the_first_step_restarts_the_whole_chain_once() -> None:
    d = Driver(Machine(STORAGE))
    d.feed(d.m.vrrp_master(0, "x"))
    d.settle()
    d.outcomes[("drbd", Op.CHECK)] = [False]
    d.advance(2.0)
    after = runs([a for a in d.log if isinstance(a, RunStep)][len(ORDER):])
    assert after == ["check:drbd", *[f"release:{s}" for s in reversed(ORDER)], *[f"acquire:{s}" for s in ORDER]]
    assert d.m.phase == Phase.SERVING


def test_monitor_failures_beyond_max_restarts_fail_over() -> None:
    d = Driver(Machine(STORAGE))
    d.feed(d.m.vrrp_master(0, "x"))
    d.settle()
    d.outcomes[("mount", Op.CHECK)] = [False, False, False]
    d.advance(2.0)
    d.advance(2.0)
    assert d.m.phase == Phase.SERVING and d.m.restarts == {"mount": 2}
    d.advance(2.0)
    assert d.m.phase == Phase.FAULT and d.m.held == []
    assert "mount failed 3 times while serving" in [a for a in d.log if isinstance(a, VrrpFault)][-1].reason


def test_failed_release_is_retried_never_left_half_done() -> None:
    d = Driver(Machine(STORAGE))
    d.feed(d.m.vrrp_master(0, "x"))
    d.settle()
    d.outcomes[("mount", Op.RELEASE)] = [False, False]
    d.feed(d.m.vrrp_lost(1, "x"))
    d.settle()
    assert d.m.held == ["drbd", "mount"] and d.m.phase == Phase.RELEASING
    d.advance(1.0)
    d.advance(1.0)
    assert d.m.held == [] and d.m.phase == Phase.IDLE


def test_startup_reconciliation_releases_leftovers_first() -> None:
    d = Driver(Machine(STORAGE))
    d.feed(d.m.reconcile([Step.DRBD, Step.MOUNT, Step.NFS], 0))
    assert runs(d.settle()) == ["release:nfs", "release:mount", "release:drbd"]
    assert d.m.phase == Phase.IDLE


def test_vip_only_mode() -> None:
    d = Driver(Machine(Settings(steps=(Step.VIP,))))
    d.feed(d.m.vrrp_master(0, "x"))
    assert runs(d.settle()) == ["acquire:vip"] and d.m.serving


def test_steps_must_keep_the_chain_order() -> None:
    with pytest.raises(ValueError):
        Machine(Settings(steps=(Step.VIP, Step.DRBD)))


# -- properties ------------------------------------------------------------------------------

EVENT = st.one_of(
    st.tuples(st.just("master")), st.tuples(st.just("lost")),
    st.tuples(st.just("answer"), st.booleans()), st.tuples(st.just("wait"), st.floats(0.1, 20)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(EVENT, max_size=80), st.sampled_from([ORDER, (Step.MOUNT, Step.NFS, Step.VIP), (Step.VIP,)]))
def test_chain_invariants_under_random_flaps_and_outcomes(events: list[tuple[object, ...]],
                                                          steps: tuple[Step, ...]) -> None:
    m = Machine(Settings(steps=steps, monitor_interval=2.0, max_restarts=1, hold_down=1.0))
    now = 0.0
    mirror: list[str] = []  # what we believe is held, rebuilt only from the answers we give
    outstanding: RunStep | None = None

    def check(actions: list[Action]) -> None:
        nonlocal outstanding
        for a in actions:
            if isinstance(a, RunStep):
                assert outstanding is None, "a second step started while one was running"
                outstanding = a
                if a.op == Op.ACQUIRE:
                    assert m.phase == Phase.ACQUIRING
                    assert a.step == steps[len(mirror)], "acquire goes strictly in chain order"
                elif a.op == Op.RELEASE:
                    assert m.phase == Phase.RELEASING
                    assert mirror and a.step == mirror[-1], "release is the exact reverse of what was acquired"
            if isinstance(a, VrrpFault):
                assert mirror == [], "VRRP is told to step aside only after the rollback"
            if isinstance(a, PhaseChange) and a.new == Phase.SERVING:
                assert mirror == list(steps)
        assert list(steps[:len(mirror)]) == mirror, "held steps are always a prefix of the chain"
        if "vip" in mirror:
            assert mirror == list(steps), "the VIP is held only when every earlier step succeeded"
        assert m.held == mirror

    for ev in events:
        if ev[0] == "master":
            check(m.vrrp_master(now, "claim"))
        elif ev[0] == "lost":
            check(m.vrrp_lost(now, "gone"))
        elif ev[0] == "answer" and outstanding is not None:
            run, ok = outstanding, bool(ev[1])
            outstanding = None
            if ok and run.op == Op.ACQUIRE:
                mirror.append(run.step)
            elif ok and run.op == Op.RELEASE:
                mirror.pop()
            check(m.step_done(run.step, run.op, ok, "scripted", now))
        elif ev[0] == "wait":
            end = now + float(ev[1])  # type: ignore[arg-type]
            while (d := m.deadline) is not None and d <= end and outstanding is None:
                now = max(now, d)
                check(m.tick(now))
            now = end
    # liveness: with every step succeeding from here on, the machine settles where VRRP points
    final_master = m.want
    for _ in range(200):
        if outstanding is not None:
            run, outstanding = outstanding, None
            if run.op == Op.ACQUIRE:
                mirror.append(run.step)
            elif run.op == Op.RELEASE:
                mirror.pop()
            check(m.step_done(run.step, run.op, True, "ok", now))
        elif m.deadline is not None:
            now = max(now, m.deadline)
            check(m.tick(now))
            if m.phase == Phase.IDLE and final_master and m.running is None and not mirror:
                check(m.vrrp_master(now, "claim again after the hold-down"))
        else:
            break
        if (final_master and m.phase == Phase.SERVING) or (not final_master and m.phase == Phase.IDLE
                                                            and not mirror):
            break
    if final_master:
        assert m.phase == Phase.SERVING and mirror == list(steps), (m.phase, mirror)
    else:
        assert mirror == [] and m.phase in (Phase.IDLE, Phase.FAULT)


def test_event_watched_steps_are_not_polled_and_their_loss_restarts_them() -> None:
    d = Driver(Machine(Settings(steps=(Step.MOUNT, Step.VIP), event_watched=frozenset({Step.VIP}))))
    d.feed(d.m.vrrp_master(0, "x"))
    d.settle()
    d.advance(2.0)
    assert runs([a for a in d.log if isinstance(a, RunStep)])[2:] == ["check:mount"]
    only_vip = Driver(Machine(Settings(steps=(Step.VIP,), event_watched=frozenset({Step.VIP}))))
    only_vip.feed(only_vip.m.vrrp_master(0, "x"))
    only_vip.settle()
    assert only_vip.m.deadline is None, "nothing to poll: no periodic wakeups"
    only_vip.feed(only_vip.m.lost(Step.VIP, "deleted by hand", 1.0))
    assert runs(only_vip.settle()) == ["release:vip", "acquire:vip"]
    assert only_vip.m.serving and only_vip.m.restarts == {"vip": 1}


def test_adopt_serves_the_whole_chain_as_found_and_monitors_it() -> None:
    m = Machine(STORAGE)
    out = m.adopt(ORDER, 10.0, "adopted")
    assert out == [PhaseChange(Phase.IDLE, Phase.SERVING, "adopted")]
    assert m.held == list(ORDER) and m.want and m.deadline == 12.0
    assert m.vrrp_master(10.0, "startup") == [], "VRRP's MASTER that follows changes nothing"
    assert m.tick(12.0) == [RunStep(Step.DRBD, Op.CHECK, 30.0)]
    assert m.vrrp_lost(12.1, "preempted") == [], "a running check finishes first"
    assert m.step_done(Step.DRBD, Op.CHECK, True, "ok", 12.2)[-1] == RunStep(Step.VIP, Op.RELEASE, 30.0)


def test_adopt_of_the_first_steps_acquires_the_rest_as_master() -> None:
    """After a kill, ExecStopPost removed the VIPs; the rest of the chain was found and verified."""
    m = Machine(STORAGE)
    out = m.adopt(ORDER[:-1], 5.0, "adopted up to nfs")
    assert out == [PhaseChange(Phase.IDLE, Phase.ACQUIRING, "adopted up to nfs"), RunStep(Step.VIP, Op.ACQUIRE, 30.0)]
    assert m.vrrp_master(5.0, "startup") == [], "VRRP's MASTER that follows changes nothing"
    assert m.step_done(Step.VIP, Op.ACQUIRE, True, "up", 5.1) == [PhaseChange(Phase.ACQUIRING, Phase.SERVING,
                                                                               "every step acquired")]
    assert m.held == list(ORDER) and m.failures == 0


def test_adopt_takes_only_the_chain_s_first_steps_on_a_fresh_machine() -> None:
    for steps in [(Step.MOUNT, Step.VIP), (), (Step.DRBD, Step.NFS)]:
        with pytest.raises(ValueError, match="first steps"):
            Machine(STORAGE).adopt(steps, 0.0, "not a prefix")
    m = Machine(STORAGE)
    m.vrrp_master(0.0, "x")
    with pytest.raises(ValueError, match="not started"):
        m.adopt(ORDER, 0.0, "busy")
