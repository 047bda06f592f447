"""Table-style unit tests of `vrrp.router` against RFC 3768 / RFC 5798 section 6.

Times are virtual seconds. `drive` plays a script of received adverts into one router and
ticks it at every deadline in between, the way the daemon does; `Lan` (tests/vrrp_sim.py)
checks the same behaviour between real `Router`s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from tests.vrrp_sim import Lan
from vrrp.router import Action, Heard, OtherMaster, Params, Router, SendAdvert, State, Transition

A = IPv4Address("192.0.2.1")
B = IPv4Address("192.0.2.2")
C = IPv4Address("192.0.2.3")
EPS = 1e-9


def params(priority: int = 100, address: IPv4Address = B, version: int = 2, interval: float = 1.0,
           preempt: bool = True, preempt_delay: float = 0.0) -> Params:
    return Params(vrid=51, priority=priority, address=address, version=version,
                  advert_interval=interval, preempt=preempt, preempt_delay=preempt_delay)


def mdi(priority: int, interval: float, version: int) -> float:
    """Master_Down_Interval, written out from the RFC text."""
    skew = (256 - priority) * interval / 256 if version == 3 else (256 - priority) / 256
    return 3 * interval + skew


def every(src: IPv4Address, priority: int, interval: float, start: float, stop: float,
          ) -> list[tuple[float, Heard]]:
    """Adverts from `src` every `interval` in [start, stop)."""
    out: list[tuple[float, Heard]] = []
    k = 0
    while (t := start + k * interval) < stop:
        out.append((t, Heard(src, priority, interval)))
        k += 1
    return out


def drive(router: Router, script: Iterable[tuple[float, Heard]], until: float,
          ) -> list[tuple[float, Action]]:
    """Feed `script` (time-ordered receives) and tick at each deadline up to `until`."""
    log: list[tuple[float, Action]] = []

    def tick_until(t: float) -> None:
        while (d := router.deadline) is not None and d <= t:
            log.extend((d, a) for a in router.tick(d))

    for t, heard in sorted(script, key=lambda x: x[0]):
        if t > until:
            break
        tick_until(t)
        log.extend((t, a) for a in router.receive(heard, t))
    tick_until(until)
    return log


def transitions(log: list[tuple[float, Action]]) -> list[tuple[float, State]]:
    return [(t, a.new) for t, a in log if isinstance(a, Transition)]


def shape(actions: list[Action]) -> list[SendAdvert | OtherMaster | tuple[State, State]]:
    """Actions with transitions reduced to (old, new): reasons are prose for the journal."""
    return [(a.old, a.new) if isinstance(a, Transition) else a for a in actions]


def takeover_time(log: list[tuple[float, Action]]) -> float:
    """The time of the one transition in `log`, which must be to MASTER."""
    moves = transitions(log)
    assert [new for _, new in moves] == [State.MASTER], moves
    return moves[0][0]


def adverts(log: list[tuple[float, Action]]) -> list[tuple[float, int]]:
    return [(t, a.priority) for t, a in log if isinstance(a, SendAdvert)]


def started(p: Params, now: float = 0.0) -> Router:
    r = Router(p)
    r.start(now)
    return r


def master(p: Params, now: float = 0.0) -> Router:
    """A router that has become MASTER at `now` (startup, then Master_Down expiry)."""
    r = Router(p)
    r.start(now - r.master_down_interval)
    assert r.deadline is not None
    r.tick(r.deadline)
    assert r.state == State.MASTER
    return r


# -- startup -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "priority", "interval", "expected"),
    [
        (2, 100, 1.0, 3 + 156 / 256),
        (2, 1, 1.0, 3 + 255 / 256),
        (2, 254, 1.0, 3 + 2 / 256),
        (2, 200, 3.0, 9 + 56 / 256),  # v2 skew does not scale with the interval
        (3, 100, 1.0, 3 + 156 / 256),
        (3, 200, 0.5, 1.5 + 56 * 0.5 / 256),
        (3, 1, 0.01, 0.03 + 255 * 0.01 / 256),
        (3, 254, 40.95, 3 * 40.95 + 2 * 40.95 / 256),
    ],
)
def test_startup_backup_then_master_after_master_down_interval(
    version: int, priority: int, interval: float, expected: float
) -> None:
    assert mdi(priority, interval, version) == pytest.approx(expected)
    r = Router(params(priority, version=version, interval=interval))
    assert (r.state, r.deadline) == (State.INITIALIZE, None)
    out = r.start(10.0)
    assert shape(out) == [(State.INITIALIZE, State.BACKUP)]
    assert r.master_down_interval == pytest.approx(expected)
    assert r.deadline == pytest.approx(10.0 + expected)
    assert r.tick(10.0 + expected - 1e-6) == []  # not yet
    assert r.state == State.BACKUP
    out = r.tick(10.0 + expected)
    assert out[0] == SendAdvert(priority)
    assert isinstance(out[1], Transition) and (out[1].old, out[1].new) == (State.BACKUP, State.MASTER)
    assert len(out) == 2
    assert r.deadline == pytest.approx(10.0 + expected + interval)


@pytest.mark.parametrize("version", [2, 3])
def test_owner_255_is_master_at_once(version: int) -> None:
    r = Router(params(255, version=version, interval=0.5))
    out = r.start(3.0)
    assert out[0] == SendAdvert(255)
    assert isinstance(out[1], Transition) and out[1].new == State.MASTER and len(out) == 2
    assert r.deadline == pytest.approx(3.5)


def test_start_is_ignored_when_running() -> None:
    r = started(params())
    assert r.start(1.0) == []
    assert r.state == State.BACKUP


# -- master ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("version", "interval"), [(2, 1.0), (2, 3.0), (3, 0.25), (3, 1.5)])
def test_master_advertises_every_interval(version: int, interval: float) -> None:
    r = Router(params(255, version=version, interval=interval))
    r.start(0.0)
    log = drive(r, [], until=20 * interval + EPS)
    sent = adverts(log)
    assert len(sent) == 20
    assert all(p == 255 for _, p in sent)
    times = [t for t, _ in sent]
    assert times == pytest.approx([interval * k for k in range(1, 21)])
    assert transitions(log) == []


@pytest.mark.parametrize(
    ("own", "heard", "own_addr", "heard_addr", "yields"),
    [
        (100, 101, B, A, True),   # higher priority wins
        (100, 255, B, A, True),
        (100, 99, B, C, False),   # lower priority is discarded, whatever the address
        (100, 100, A, B, True),   # equal priority: the higher address wins
        (100, 100, B, A, False),  # ... and the lower address does not
    ],
)
def test_master_receiving_advert(own: int, heard: int, own_addr: IPv4Address, heard_addr: IPv4Address,
                                 yields: bool) -> None:
    r = master(params(own, own_addr), now=5.0)
    out = r.receive(Heard(heard_addr, heard, 1.0), 5.5)
    if yields:
        # one last advert at our priority: the winner learns of us at once (and re-claims clients)
        assert len(out) == 2 and out[0] == SendAdvert(own, 1.0) and isinstance(out[1], Transition)
        assert (out[1].old, out[1].new) == (State.MASTER, State.BACKUP)
        assert r.deadline == pytest.approx(5.5 + mdi(own, 1.0, 2))
        assert r.master == heard_addr
    else:
        assert out == [OtherMaster(heard_addr, heard)]  # the adapter reclaims the clients (GARP)
        assert r.state == State.MASTER
        assert r.deadline == pytest.approx(6.0)  # Adver_Timer untouched


def test_master_yields_to_higher_priority_even_without_preempt() -> None:
    """Preempt_Mode only governs a backup; a master always yields to a higher priority."""
    r = master(params(100, preempt=False))
    out = r.receive(Heard(A, 200, 1.0), 1.0)
    assert [a.new for a in out if isinstance(a, Transition)] == [State.BACKUP]


@pytest.mark.parametrize("version", [2, 3])
def test_master_receiving_priority_0_readvertises_at_once(version: int) -> None:
    r = master(params(100, version=version, interval=2.0), now=0.0)
    out = r.receive(Heard(A, 0, 2.0), 1.25)
    assert out == [SendAdvert(100), OtherMaster(A, 0)]  # and the adapter reclaims clients A may have had
    assert r.state == State.MASTER
    assert r.deadline == pytest.approx(3.25)  # Adver_Timer reset to Advertisement_Interval


# -- backup ----------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [2, 3])
def test_backup_resets_master_down_on_adverts(version: int) -> None:
    r = started(params(100, version=version))
    log = drive(r, every(A, 150, 1.0, 0.5, 100.0), until=100.0)
    assert log == []  # 100 s of adverts: stays BACKUP, says nothing
    assert r.state == State.BACKUP and r.master == A
    assert r.deadline == pytest.approx(99.5 + mdi(100, 1.0, version))
    log = drive(r, [], until=200.0)
    assert takeover_time(log) == pytest.approx(99.5 + mdi(100, 1.0, version))


@pytest.mark.parametrize(
    ("own", "heard", "preempt", "takes_over"),
    [
        (200, 100, True, True),     # a higher-priority backup preempts
        (200, 100, False, False),   # ... unless preempt is off
        (100, 200, True, False),    # a lower one never does
        (100, 200, False, False),
        (100, 100, True, False),    # equal priority does not preempt a backup's master
        (254, 1, True, True),
    ],
)
def test_preemption(own: int, heard: int, preempt: bool, takes_over: bool) -> None:
    r = started(params(own, preempt=preempt))
    log = drive(r, every(A, heard, 1.0, 0.25, 60.0), until=60.0)
    if takes_over:
        # the lower adverts are discarded: Master_Down runs out as if nobody spoke
        assert takeover_time(log) == pytest.approx(mdi(own, 1.0, 2))
    else:
        assert transitions(log) == []
        assert r.state == State.BACKUP and r.master == A


@pytest.mark.parametrize("delay", [5.0, 10.0, 30.0])
def test_preempt_delay_waits_before_taking_over(delay: float) -> None:
    first = 0.5
    r = started(params(200, preempt_delay=delay))
    log = drive(r, every(A, 100, 1.0, first, 120.0), until=120.0)
    t = takeover_time(log)
    assert t >= first + delay, "took over before preempt_delay"
    assert t <= first + delay + mdi(200, 1.0, 2) + EPS


def test_preempt_delay_not_used_when_zero() -> None:
    r = started(params(200, preempt_delay=0.0))
    log = drive(r, every(A, 100, 1.0, 0.5, 60.0), until=60.0)
    assert takeover_time(log) == pytest.approx(mdi(200, 1.0, 2))


def test_preempt_delay_restarts_after_a_higher_master() -> None:
    """A higher master in between cancels the pending preemption."""
    r = started(params(200, preempt_delay=5.0))
    script = every(A, 100, 1.0, 0.5, 4.0) + every(C, 250, 1.0, 4.0, 20.0) + every(A, 100, 1.0, 20.0, 80.0)
    log = drive(r, script, until=80.0)
    assert takeover_time(log) >= 20.0 + 5.0


@pytest.mark.parametrize(
    ("version", "priority", "learned", "skew"),
    [
        (2, 100, 1.0, 156 / 256),
        (2, 254, 1.0, 2 / 256),
        (3, 100, 1.0, 156 / 256),
        (3, 100, 2.0, 156 * 2.0 / 256),   # v3 skew scales with the master's interval
        (3, 50, 0.1, 206 * 0.1 / 256),
    ],
)
def test_backup_receiving_priority_0_takes_over_after_skew(version: int, priority: int, learned: float,
                                                           skew: float) -> None:
    r = started(params(priority, version=version))
    script = [*every(A, 255, learned, 0.0, 5.0), (5.0, Heard(A, 0, learned))]
    log = drive(r, script, until=5.0)
    assert log == []
    assert r.skew_time == pytest.approx(skew)
    assert r.deadline == pytest.approx(5.0 + skew)
    out = r.tick(5.0 + skew)
    assert out[0] == SendAdvert(priority) and isinstance(out[1], Transition)
    assert out[1].new == State.MASTER


@pytest.mark.parametrize("preempt", [True, False])
def test_priority_0_sets_skew_whoever_sends_it(preempt: bool) -> None:
    r = started(params(100, preempt=preempt))
    r.receive(Heard(A, 50, 1.0), 1.0)
    assert r.receive(Heard(A, 0, 1.0), 2.0) == []
    assert r.deadline == pytest.approx(2.0 + 156 / 256)


def test_equal_priority_backups_resolve_by_address() -> None:
    """Two equal-priority routers that both become master: the lower address yields."""
    low, high = master(params(100, A)), master(params(100, B))
    assert shape(low.receive(Heard(B, 100, 1.0), 0.001)) == [SendAdvert(100, 1.0), (State.MASTER, State.BACKUP)]
    assert high.receive(Heard(A, 100, 1.0), 0.001) == [OtherMaster(A, 100)]
    assert (low.state, high.state) == (State.BACKUP, State.MASTER)


# -- v3 interval learning --------------------------------------------------------------------
@pytest.mark.parametrize(("own", "learned"), [(1.0, 0.5), (1.0, 2.5), (0.1, 40.95)])
def test_v3_backup_learns_master_interval(own: float, learned: float) -> None:
    r = started(params(100, version=3, interval=own))
    assert r.deadline == pytest.approx(mdi(100, own, 3))
    t = 0.02  # before its own Master_Down runs out
    r.receive(Heard(A, 200, learned), t)
    assert r.master_adver_interval == learned
    assert r.master_down_interval == pytest.approx(mdi(100, learned, 3))
    assert r.deadline == pytest.approx(t + mdi(100, learned, 3))
    # and it goes on advertising at its own interval once master
    log = drive(r, [], until=t + mdi(100, learned, 3) + own + EPS)
    assert [t for t, _ in adverts(log)] == pytest.approx(
        [t + mdi(100, learned, 3), t + mdi(100, learned, 3) + own])


def test_v2_backup_keeps_its_own_interval() -> None:
    r = started(params(100, version=2))
    r.receive(Heard(A, 200, 3.0), 1.0)
    assert r.master_adver_interval == 1.0
    assert r.deadline == pytest.approx(1.0 + mdi(100, 1.0, 2))


def test_v3_master_yielding_learns_the_new_master_interval() -> None:
    r = master(params(100, version=3, interval=1.0))
    r.receive(Heard(A, 200, 0.3), 2.0)
    assert r.state == State.BACKUP
    assert r.deadline == pytest.approx(2.0 + mdi(100, 0.3, 3))


def test_restart_forgets_the_learned_interval() -> None:
    r = started(params(100, version=3, interval=1.0))
    r.receive(Heard(A, 200, 0.3), 1.0)
    r.shutdown(2.0)
    r.start(3.0)
    assert r.master_adver_interval == 1.0
    assert r.deadline == pytest.approx(3.0 + mdi(100, 1.0, 3))


# -- shutdown, fault, recover ----------------------------------------------------------------
def test_shutdown() -> None:
    m = master(params(100))
    assert shape(m.shutdown(1.0)) == [SendAdvert(0), (State.MASTER, State.INITIALIZE)]
    assert m.deadline is None
    b = started(params(100))
    assert shape(b.shutdown(1.0)) == [(State.BACKUP, State.INITIALIZE)]
    assert b.shutdown(2.0) == []
    assert b.receive(Heard(A, 0, 1.0), 2.0) == [] and b.tick(100.0) == []


@pytest.mark.parametrize(
    ("make", "farewell", "expected"),
    [
        ("master", False, []),
        ("master", True, [SendAdvert(0)]),
        ("backup", False, []),
        ("backup", True, []),  # only a master has anything to say
    ],
)
def test_fault(make: str, farewell: bool, expected: list[Action]) -> None:
    r = master(params(100)) if make == "master" else started(params(100))
    old = r.state
    out = r.fault("link down", 1.0, farewell=farewell)
    assert out == [*expected, Transition(old, State.FAULT, "link down")]
    assert r.state == State.FAULT and r.deadline is None
    # FAULT ignores everything but recover
    assert r.fault("again", 2.0) == []
    assert r.receive(Heard(A, 0, 1.0), 2.0) == []
    assert r.receive(Heard(A, 255, 1.0), 2.0) == []
    assert r.tick(1000.0) == []
    assert r.start(3.0) != []  # start is how FAULT recovers


@pytest.mark.parametrize(("priority", "after"), [(100, State.BACKUP), (255, State.MASTER)])
def test_recover(priority: int, after: State) -> None:
    r = started(params(priority))
    r.fault("link down", 1.0)
    out = r.recover(7.0)
    assert [a.new for a in out if isinstance(a, Transition)] == [after]
    assert r.state == after
    if after == State.BACKUP:
        assert r.deadline == pytest.approx(7.0 + mdi(priority, 1.0, 2))
    else:
        assert out[0] == SendAdvert(255)
    assert r.recover(8.0) == []  # not in FAULT any more


def test_recover_outside_fault_does_nothing() -> None:
    r = started(params(100))
    assert r.recover(1.0) == []
    assert r.state == State.BACKUP


# -- reconfigure -----------------------------------------------------------------------------
@pytest.mark.parametrize("new", [50, 101, 200, 254])
def test_reconfigure_priority_on_master_sends_at_once(new: int) -> None:
    r = master(params(100), now=0.0)
    out = r.reconfigure(replace(r.params, priority=new), 0.4)
    assert out == [SendAdvert(new)]
    assert r.state == State.MASTER
    assert r.deadline == pytest.approx(1.4)
    assert r.with_priority(new, 0.5) == []  # unchanged: nothing to say


def test_reconfigure_interval_on_master_advertises_on_next_tick() -> None:
    r = master(params(100, version=3, interval=1.0))
    assert r.reconfigure(replace(r.params, advert_interval=0.2), 0.5) == []
    assert r.deadline == pytest.approx(0.5)
    assert r.tick(0.5) == [SendAdvert(100)]
    assert r.deadline == pytest.approx(0.7)


def test_reconfigure_on_backup_makes_no_transition_and_never_delays_master_down() -> None:
    r = started(params(100))
    before = r.deadline
    assert r.reconfigure(replace(r.params, priority=50), 1.0) == []
    assert r.state == State.BACKUP and r.deadline == before
    assert r.reconfigure(replace(r.params, priority=254), 1.0) == []
    assert r.deadline is not None and before is not None and r.deadline <= before


def test_reconfigure_rejects_vrid_and_version_changes() -> None:
    r = started(params(100))
    with pytest.raises(ValueError):
        r.reconfigure(replace(r.params, vrid=52), 1.0)
    with pytest.raises(ValueError):
        r.reconfigure(replace(r.params, version=3), 1.0)


# -- the same behaviour between real routers on the simulated LAN -----------------------------
def test_lan_election_stop_and_crash() -> None:
    a, b = params(150, A), params(100, B)
    lan = Lan([a, b], delay=0.001)
    lan.start(0)
    lan.start(1)
    lan.run_until(30.0)
    assert lan.masters() == [0]
    (first,) = lan.takeovers(0.0)
    assert first.node == 0 and first.time == pytest.approx(mdi(150, 1.0, 2))
    # graceful stop: B takes over after delay + Skew_Time(B)
    lan.stop(0)
    t0 = lan.now
    lan.run_for(10.0)
    assert lan.masters() == [1]
    assert lan.takeovers(t0)[0].time == pytest.approx(t0 + 0.001 + 156 / 256)
    # A comes back and preempts B after its Master_Down_Interval (B's adverts are discarded)
    lan.start(0)
    t1 = lan.now
    lan.run_for(10.0)
    assert lan.masters() == [0]
    assert lan.takeovers(t1)[0].time == pytest.approx(t1 + mdi(150, 1.0, 2))
    # crash: no farewell; B takes over Master_Down_Interval after the last advert it heard
    lan.crash(0)
    t2 = lan.now
    last = max(s.time for s in lan.sent if s.node == 0) + 0.001
    lan.run_for(10.0)
    assert lan.masters() == [1]
    assert lan.takeovers(t2)[0].time == pytest.approx(last + mdi(100, 1.0, 2))


def test_lan_equal_priority_higher_address_wins() -> None:
    lan = Lan([params(100, A), params(100, B), params(100, C)], delay=0.001)
    for i in range(3):
        lan.start(i)
    lan.run_until(20.0)
    assert lan.masters() == [2]


def test_lan_partition_and_heal() -> None:
    lan = Lan([params(200, A), params(100, B)], delay=0.001)
    lan.start(0)
    lan.start(1)
    lan.run_until(10.0)
    lan.partition([0, 1])
    lan.run_until(20.0)
    assert lan.masters() == [0, 1]
    lan.heal()
    lan.run_until(21.0 + 0.001)
    assert lan.masters() == [0]


# -- admin requests: maintenance and handover ------------------------------------------------

def state_of(r: Router) -> State:
    """A fresh read (keeps the type checker from narrowing across calls that change state)."""
    return r.state


def test_maintenance_on_master_hands_over_and_never_takes_over() -> None:
    r = Router(params(priority=150, address=A))
    r.start(0.0)
    drive(r, [], until=5.0)
    assert state_of(r) == State.MASTER
    actions = r.set_maintenance(True, 5.0)
    assert actions[0] == SendAdvert(0)
    assert isinstance(actions[1], Transition) and actions[1].new == State.BACKUP
    assert "maintenance" in actions[1].reason
    # nobody else advertises for a long time: still BACKUP, no timer armed
    log = drive(r, [], until=60.0)
    assert state_of(r) == State.BACKUP and r.deadline is None and not log
    # maintenance off with no master around: Master_Down already passed, take over at once
    assert r.set_maintenance(False, 60.0) == []
    assert r.deadline is not None and r.deadline <= 60.0
    drive(r, [], until=60.0)
    assert state_of(r) == State.MASTER


def test_maintenance_off_with_a_live_master_keeps_backup_unless_preempting() -> None:
    r = Router(params(priority=100, address=B))
    r.start(0.0)
    r.set_maintenance(True, 0.0)
    drive(r, every(A, 150, 1.0, 0.5, 20.0), until=10.0)
    r.set_maintenance(False, 10.0)
    drive(r, every(A, 150, 1.0, 10.5, 20.0), until=20.0)
    assert state_of(r) == State.BACKUP


def test_owner_in_maintenance_does_not_start_as_master() -> None:
    r = Router(params(priority=255, address=A))
    r.set_maintenance(True, 0.0)
    r.start(0.0)
    assert state_of(r) == State.BACKUP


def test_handover_yields_to_a_lower_peer_and_comes_back_if_nobody_takes_over() -> None:
    r = Router(params(priority=150, address=A))
    r.start(0.0)
    drive(r, [], until=5.0)
    actions = r.handover(5.0)
    assert actions[0] == SendAdvert(0) and state_of(r) == State.BACKUP and r.yielding
    # the lower peer takes over and advertises: no preemption although we are higher
    drive(r, every(B, 100, 1.0, 5.7, 30.0), until=30.0)
    assert state_of(r) == State.BACKUP
    # the peer dies: we take over (a handover never leaves the service without a master)
    drive(r, [], until=40.0)
    assert state_of(r) == State.MASTER and not r.yielding


def test_handover_when_not_master_does_nothing() -> None:
    r = Router(params())
    r.start(0.0)
    assert r.handover(1.0) == [] and not r.yielding


def backup_of(master: IPv4Address = A, at: float = 0.5) -> Router:
    r = Router(params(priority=100))
    r.start(0.0)
    r.receive(Heard(master, 200, 1.0), at)
    return r


def test_a_vouched_master_s_silence_waits_and_the_takeover_comes_the_moment_the_vouch_ends() -> None:
    r = backup_of()
    due = 0.5 + mdi(100, 1.0, 2)
    assert r.vouch("its DRBD is Primary and connected", 1.0) == [] and r.held_back
    assert r.deadline == due, "the caller still looks for adverts at Master_Down"
    assert r.tick(due + 10) == [] and r.state == State.BACKUP
    assert r.peer_gone(due + 11, "silent on every path") == [] and r.state == State.BACKUP
    assert r.vouch("", due + 12) == [] and r.deadline == due + 11, "due since peer_gone: the next tick takes over"
    out = r.tick(due + 12)
    assert out == [SendAdvert(100), Transition(State.BACKUP, State.MASTER, "silent on every path")]
    # ended before it was due: Master_Down keeps its own time
    r = backup_of()
    r.vouch("alive", 1.0)
    assert r.vouch("", 2.0) == [] and r.deadline == due
    assert next(a for a in r.tick(due) if isinstance(a, Transition)).new == State.MASTER


def test_a_vouch_never_holds_back_a_leave_or_a_preemption() -> None:
    r = backup_of()
    r.vouch("alive", 1.0)
    r.receive(Heard(A, 0, 1.0), 1.5)
    assert not r.held_back and r.deadline == 1.5 + r.skew_time
    assert r.tick(1.5 + r.skew_time)[-1].new == State.MASTER  # type: ignore[union-attr]
    r = backup_of()
    r.vouch("alive", 1.0)
    r.peer_left(A, 1.5, "its heartbeat says FAULT")
    assert r.tick(1.5 + r.skew_time)[-1].new == State.MASTER  # type: ignore[union-attr]
    r = Router(params(priority=100))
    r.start(0.0)
    r.vouch("alive", 0.1)
    for t in every(A, 50, 1.0, 0.5, 5.0):
        r.receive(t[1], t[0])
    r.tick(5.0)
    assert r.state == State.MASTER, "a lower-priority master is preempted whatever vouches for it"


def test_an_advert_after_a_held_peer_gone_restores_ordinary_timing() -> None:
    r = backup_of()
    r.vouch("alive", 1.0)
    r.peer_gone(2.0, "silent on every path")
    r.receive(Heard(A, 200, 1.0), 3.0)  # its restarted agent adverts again
    r.vouch("", 3.1)
    assert r.state == State.BACKUP and r.deadline == 3.0 + mdi(100, 1.0, 2) and not r.gone_how
