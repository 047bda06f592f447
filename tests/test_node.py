"""The storage node's decisions (`agent.node.Node`), event by event on a virtual clock.

Each test feeds the events an adapter would and checks the actions: the policy that the
daemon's glue used to decide (fault sources, the held-back priority 0, release budgets, the
drain schedule, answering the peer, the fence-peer answer, the DRBD acquire plan) is all here.
The two-node simulation (tests/test_split_brain_sim.py) runs the same class under partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface
from typing import TypeVar

from agent import actions as act
from agent import events as ev
from agent.config import Config, parse
from agent.journal import Event as Kind
from agent.machine import Op, Phase, RunStep, Step
from agent.node import OUTDATE_CYCLE_HOLD, Node, fence_exit_code
from drbd.status import Status
from vrrp.packet import GROUP, Advertisement, encode
from vrrp.router import State

OWN, PEER = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
VIP_ONLY = """
[vrrp]
interface = "eth0"
vrid = 51
priority = 100
advert_interval = 1.0
vips = ["192.0.2.100/24"]
"""
STORAGE = VIP_ONLY + """
[drbd]
resource = "r0"
unknown_peer = "{policy}"

[filesystem]
device = "/dev/drbd0"
mountpoint = "/srv/nfs"

[track]
witnesses = ["192.0.2.254", "192.0.2.253"]
interval = 1.0
timeout = 0.5
fall = 3
rise = 2

[peer]
address = "192.0.2.2"
timeout = 0.5
heartbeat = {heartbeat}
"""
A = TypeVar("A")
CONNECTED = Status("r0", "Secondary", "UpToDate", "Connected", "Secondary", "UpToDate")
PEER_PRIMARY = Status("r0", "Secondary", "UpToDate", "Connected", "Primary", "UpToDate")
CUT = Status("r0", "Secondary", "UpToDate", "WFConnection", "Unknown", "DUnknown")


class Drive:
    """Feeds one node and keeps the clock and every action it returned."""

    def __init__(self, text: str = VIP_ONLY) -> None:
        self.cfg: Config = parse(text)
        self.node = Node(self.cfg, OWN)
        self.now = 0.0
        self.log: list[act.Action] = []
        self.witnesses_answer = True  # routine pings are answered at once; fresh ones by the test

    def feed(self, event: ev.Event, at: float | None = None) -> list[act.Action]:
        self.now = self.now if at is None else at
        out = self.node.handle(event, self.now)
        for probe in [a for a in out if isinstance(a, act.SendProbe) and a.fresh is None]:
            ok = self.witnesses_answer
            out += self.node.handle(ev.ProbeResult(probe.target, ok, "reply" if ok else "timeout"), self.now)
        self.log += out
        return out

    def tick(self) -> list[act.Action]:
        """The node's one timer fires (a drain it asks for is answered with an empty queue)."""
        deadline = self.node.deadline()
        assert deadline is not None
        out = self.feed(ev.Timer(), max(self.now, deadline))
        if any(isinstance(a, act.DrainAdverts) for a in out):
            out += self.feed(ev.AdvertsHeard(()))
        return out

    def until(self, t: float) -> None:
        while (d := self.node.deadline()) is not None and d <= t:
            self.tick()
        self.now = t

    def answer_steps(self, ok: bool = True) -> None:
        """Let every step the machine runs succeed (or fail), at once."""
        while (run := self.node.machine.running) is not None and (run.step, run.op) != (Step.DRBD, Op.ACQUIRE):
            self.feed(ev.StepDone(run.step, run.op, ok, "done"))

    def master(self) -> None:
        """Start (once the witnesses count as reachable, if any) and take over after Master_Down."""
        self.feed(ev.Start())
        self.until(self.now + 1.01 if self.cfg.track else self.now)
        self.until(self.now + self.node.router.master_down_interval + 0.01)
        assert self.node.router.state == State.MASTER, self.node.faults


def of(kind: type[A], actions: Sequence[act.Action]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def advert(priority: int, src: IPv4Address = PEER) -> bytes:
    return encode(Advertisement(version=2, vrid=51, priority=priority, interval=1.0,
                                addresses=(IPv4Address("192.0.2.100"),)), src, GROUP, 1)


def test_startup_with_nothing_held_joins_vrrp_as_backup() -> None:
    d = Drive()
    out = d.feed(ev.Start())
    assert of(act.Joined, out) and d.node.router.state == State.BACKUP
    assert d.node.deadline() == d.node.router.master_down_interval


def test_what_an_earlier_run_left_is_released_before_joining() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    out = d.feed(ev.Start(found=(Step.DRBD, Step.MOUNT), link_up=False))  # nothing to adopt with the link down
    assert of(act.RunStep, out) == [RunStep(Step.MOUNT, Op.RELEASE, 30.0)] and not of(act.Joined, out)
    assert d.node.router.state == State.INITIALIZE
    d.feed(ev.StepDone(Step.MOUNT, Op.RELEASE, True, "unmounted"))
    out = d.feed(ev.StepDone(Step.DRBD, Op.RELEASE, True, "Secondary"))
    assert of(act.Joined, out)


def test_a_release_that_never_finishes_fails_the_start_after_its_budget() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    d.feed(ev.Start(found=(Step.DRBD,), maintenance=True))
    for _ in range(40):
        run = d.node.machine.running
        if run is not None:
            d.feed(ev.StepDone(run.step, run.op, False, "device busy"))
        d.tick()
    failed = of(act.StartFailed, d.log)
    assert failed and "drbd" in failed[0].reason and d.now >= 31.0  # 1 step x 30 s + 1
    assert not of(act.Joined, d.log)


def test_priority_zero_waits_until_everything_is_released() -> None:
    d = Drive()
    d.master()
    d.answer_steps()
    assert d.node.machine.phase == Phase.SERVING
    out = d.feed(ev.AdminRequest(1, ev.Admin.STOP, "SIGTERM received"))
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.RELEASE, 30.0)]
    assert not [a for a in out if isinstance(a, act.SendAdvert) and a.priority == 0]
    out = d.feed(ev.StepDone(Step.VIP, Op.RELEASE, True, "down"))
    assert [a for a in out if isinstance(a, (act.SendAdvert, act.Stopped))] == [act.SendAdvert(0), act.Stopped(())]
    assert d.node.deadline() is None and d.feed(ev.Timer()) == []


def test_a_stop_that_cannot_release_in_time_says_so_and_still_stops() -> None:
    d = Drive()
    d.master()
    d.answer_steps()
    d.feed(ev.AdminRequest(1, ev.Admin.STOP, "SIGTERM"))
    d.until(5.0)  # VIP only: 0.8 s budget
    stopped = of(act.Stopped, d.log)
    assert stopped == [act.Stopped(("vip",))]
    assert any(isinstance(a, act.Emit) and "still held" in a.message for a in d.log)


def test_the_doorbell_asks_for_one_drain_and_adverts_are_fed_in_arrival_order() -> None:
    d = Drive()
    d.feed(ev.Start())
    assert of(act.DrainAdverts, d.feed(ev.Doorbell(), 0.5)) == [act.DrainAdverts()]
    assert d.feed(ev.Doorbell()) == [], "one drain at a time"
    d.feed(ev.AdvertsHeard(((advert(200), 0.4), (advert(200), 0.45))))
    assert d.node.router.state == State.BACKUP and d.node.router.master == PEER
    assert d.node.snapshot().adverts_received == 2


def test_a_master_drains_on_its_doorbell_and_on_its_timer_only_as_a_backstop() -> None:
    d = Drive(VIP_ONLY.replace("advert_interval = 1.0", "version = 3\nadvert_interval = 0.1"))
    d.master()
    assert d.node._wake == 1  # every advert of the VRID rings a master's doorbell
    t0, before = d.now, len(of(act.DrainAdverts, d.log))
    d.until(t0 + 9.5)
    drains = len(of(act.DrainAdverts, d.log)) - before
    sends = [a for a in d.log if isinstance(a, act.SendAdvert)]
    assert len(sends) >= 90 and drains <= 1
    assert of(act.DrainAdverts, d.feed(ev.Doorbell())) == [act.DrainAdverts()]
    d.feed(ev.AdvertsHeard(()))
    d.until(d.now + 10.5)
    assert len(of(act.DrainAdverts, d.log)) - before == 3  # the doorbell's, and the backstop's after 10 s


def test_fault_sources_combine_and_only_the_last_clear_recovers() -> None:
    d = Drive()
    d.feed(ev.Start())
    d.feed(ev.LinkChanged(False, "carrier lost"), 0.1)
    assert d.node.router.state == State.FAULT
    d.node.faults["track"] = "isolated"  # a second source, as a failed witness would add it
    d.feed(ev.LinkChanged(True, "carrier back"), 0.2)
    assert d.node.router.state == State.FAULT and list(d.node.faults) == ["track"]


def test_a_second_master_is_reclaimed_with_gratuitous_arp_at_most_once_a_second() -> None:
    d = Drive()
    d.master()
    d.answer_steps()
    out = d.feed(ev.AdvertsHeard(((advert(50), d.now),)))
    assert of(act.Garp, out) and act.SendAdvert(100) in out
    out = d.feed(ev.AdvertsHeard(((advert(50), d.now + 0.2),)), d.now + 0.2)
    assert not of(act.Garp, out)


def test_the_peer_is_told_primary_while_we_hold_anything() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    d.master()
    out = d.feed(ev.PeerRequest(7, "outdate", "192.0.2.2", CONNECTED))
    assert of(act.AnswerPeer, out)[0].body["result"] == "primary"
    assert not of(act.RunOutdate, out)


def test_outdate_for_the_peer_refuses_the_newer_data_and_cycles_at_most_every_30_s() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    d.feed(ev.Start())
    newer = Status("r0", "Secondary", "UpToDate", "WFConnection", "Unknown", "Outdated")
    out = d.feed(ev.PeerRequest(1, "outdate", "192.0.2.2", newer))
    assert "newer data" in of(act.AnswerPeer, out)[0].body["detail"]
    assert of(act.RunOutdate, d.feed(ev.PeerRequest(2, "outdate", "p", CONNECTED))) == [act.RunOutdate(2, True)]
    assert not of(act.RunOutdate, d.feed(ev.PeerRequest(3, "outdate", "p", CONNECTED))), "one at a time"
    out = d.feed(ev.OutdateDone(2, True, ("disconnected", "connected")), 1.0)
    assert [a.id for a in of(act.AnswerPeer, out)] == [2]
    assert of(act.RunOutdate, out) == [act.RunOutdate(3, False)], "cycled 0 s ago: not again"
    d.feed(ev.OutdateDone(3, True), 2.0)
    later = d.feed(ev.PeerRequest(4, "outdate", "p", CONNECTED), 1.0 + OUTDATE_CYCLE_HOLD + 0.1)
    assert of(act.RunOutdate, later) == [act.RunOutdate(4, True)]


def fence(d: Drive, state_reply: dict[str, object] | None, pings: Sequence[bool]) -> act.AdminAnswer:
    out = d.feed(ev.AdminRequest(9, ev.Admin.FENCE_PEER))
    ask = of(act.AskPeer, out)[0]
    assert isinstance(ask, act.AskPeer) and ask.kind == "state"
    out = d.feed(ev.PeerAnswer(ask.id, state_reply))
    probes = [a for a in out if isinstance(a, act.SendProbe) and a.fresh is not None]
    for probe, ok in zip(probes, pings, strict=True):
        out += d.feed(ev.ProbeResult(probe.target, ok, "reply" if ok else "timeout", probe.fresh))
    answers = [a for a in d.log if isinstance(a, act.AdminAnswer)]
    assert answers
    return answers[-1]


def test_fence_peer_declares_a_silent_peer_dead_only_on_a_fresh_witness_answer() -> None:
    d = Drive(STORAGE.format(policy="witness", heartbeat=0))
    d.feed(ev.Start())
    d.until(1.01)  # rise 2: the tracker says connected
    assert not d.node.tracker.isolated  # type: ignore[union-attr]
    assert fence_exit_code(fence(d, None, [True, False]).body) == 5
    body = fence(d, None, [False, False]).body
    assert fence_exit_code(body) == 6, "no witness answers now: we may be isolated (6: DRBD keeps I/O frozen)"
    assert body["isolated"] is False and body["horizon"] > 0, "the tracker has not decided: the handler asks again"


def test_fence_peer_asks_a_living_peer_to_outdate() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    d.feed(ev.Start())
    out = d.feed(ev.AdminRequest(9, ev.Admin.FENCE_PEER))
    ask = of(act.AskPeer, out)[0]
    assert isinstance(ask, act.AskPeer)
    out = d.feed(ev.PeerAnswer(ask.id, {"vrrp": "BACKUP"}))
    outdate = of(act.AskPeer, out)[0]
    assert isinstance(outdate, act.AskPeer) and outdate.kind == "outdate" and outdate.timeout >= 20
    out = d.feed(ev.PeerAnswer(outdate.id, {"result": "outdated"}))
    answer = of(act.AdminAnswer, out)[0]
    assert isinstance(answer, act.AdminAnswer) and fence_exit_code(answer.body) == 4


def acquire(d: Drive) -> None:
    d.master()
    assert of(act.ReadDrbd, d.log), "the DRBD acquire starts by reading DRBD's view"


def test_acquire_waits_for_a_releasing_peer_then_promotes() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    acquire(d)
    t0 = d.now
    d.feed(ev.DrbdRead(PEER_PRIMARY))
    assert d.node.deadline() == t0 + 0.1
    assert of(act.ReadDrbd, d.tick())
    out = d.feed(ev.DrbdRead(CONNECTED))
    assert of(act.Promote, out)
    d.feed(ev.Promoted(True, ""))
    assert d.node.machine.held == [Step.DRBD]
    assert "waited" in d.node.durations.__repr__() or d.node.machine.running == RunStep(Step.MOUNT, Op.ACQUIRE, 30.0)


def test_acquire_with_the_link_cut_asks_the_peer_and_refuses_when_it_is_silent() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    acquire(d)
    out = d.feed(ev.DrbdRead(CUT))
    ask = of(act.AskPeer, out)[0]
    assert isinstance(ask, act.AskPeer) and ask.kind == "state"
    out = d.feed(ev.PeerAnswer(ask.id, None))
    assert not of(act.Promote, out)
    assert d.node.machine.phase == Phase.FAULT and d.node.router.state == State.FAULT
    assert any(isinstance(a, act.Emit) and "unknown_peer = refuse" in a.message for a in out)


def test_acquire_with_the_link_cut_promotes_once_the_peer_outdated_itself() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    acquire(d)
    ask = of(act.AskPeer, d.feed(ev.DrbdRead(CUT)))[0]
    assert isinstance(ask, act.AskPeer)
    outdate = of(act.AskPeer, d.feed(ev.PeerAnswer(ask.id, {"vrrp": "BACKUP"})))[0]
    assert isinstance(outdate, act.AskPeer)
    assert of(act.Promote, d.feed(ev.PeerAnswer(outdate.id, {"result": "outdated"})))


def test_witness_policy_without_heartbeats_waits_the_peer_s_isolation_bound_from_its_last_advert() -> None:
    d = Drive(STORAGE.format(policy="witness", heartbeat=0))
    d.feed(ev.Start())
    d.until(1.01)
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    heard = d.now
    d.until(heard + d.node.router.master_down_interval + 0.01)
    assert d.node.router.state == State.MASTER
    ask = of(act.AskPeer, d.feed(ev.DrbdRead(CUT)))[-1]
    assert isinstance(ask, act.AskPeer)
    d.feed(ev.PeerAnswer(ask.id, None))
    # the cut came within one advert interval of the last advert; the peer notices in fall x
    # interval + timeout and stops serving within release_deadline; 1 % clock-rate error both ways
    bound = (1.0 + 3 * 1.0 + 0.5 + 1.0) * 1.01 / 0.99
    assert bound > d.node.router.master_down_interval  # the two overlap: the longer one counts
    promote_at = heard + bound
    reads = len(of(act.ReadDrbd, d.log))
    d.until(promote_at - 0.01)
    assert len(of(act.ReadDrbd, d.log)) == reads, "no second look before the peer had time to release"
    d.until(promote_at)
    assert len(of(act.ReadDrbd, d.log)) == reads + 1
    assert of(act.Promote, d.feed(ev.DrbdRead(CUT)))


def test_handover_answers_once_released() -> None:
    d = Drive()
    out = d.feed(ev.AdminRequest(1, ev.Admin.HANDOVER))
    assert "nothing to hand over" in of(act.AdminAnswer, out)[0].body["message"]
    d.master()
    d.answer_steps()
    out = d.feed(ev.AdminRequest(2, ev.Admin.HANDOVER))
    assert not of(act.AdminAnswer, out) and d.node.router.state == State.BACKUP
    out = d.feed(ev.StepDone(Step.VIP, Op.RELEASE, True, "down"))
    assert act.SendAdvert(0) in out
    assert "released" in of(act.AdminAnswer, out)[0].body["message"]


def test_a_reload_that_changes_the_vips_while_holding_them_changes_them_live() -> None:
    d = Drive()
    d.master()
    d.answer_steps()
    out = d.feed(ev.Reconfigure(parse(VIP_ONLY.replace('"192.0.2.100/24"', '"192.0.2.101/24"'))))
    assert of(act.ChangeVips, out) == [act.ChangeVips((IPv4Interface("192.0.2.100/24"),),
                                                      (IPv4Interface("192.0.2.101/24"),))]
    assert d.node.machine.phase == Phase.SERVING


def test_maintenance_is_saved_and_a_start_in_maintenance_never_takes_over() -> None:
    d = Drive()
    assert act.SaveState(True) in d.feed(ev.AdminRequest(1, ev.Admin.MAINTENANCE_ON))
    again = Drive()
    again.feed(ev.Start(maintenance=True))
    again.until(30.0)
    assert again.node.router.state == State.BACKUP and again.node.snapshot().maintenance
    assert act.SaveState(False) in again.feed(ev.AdminRequest(2, ev.Admin.MAINTENANCE_OFF))
    again.until(35.0)
    assert again.node.router.state == State.MASTER


def test_reset_ends_a_fault_hold_down_at_once() -> None:
    d = Drive()
    d.master()
    run = d.node.machine.running
    assert run is not None
    d.feed(ev.StepDone(run.step, run.op, False, "address in use"))
    assert d.node.machine.phase == Phase.FAULT and d.node.router.state == State.FAULT
    out = d.feed(ev.AdminRequest(3, ev.Admin.RESET), d.now + 0.5)
    assert "hold-down" in of(act.AdminAnswer, out)[0].body["message"]
    assert d.node.machine.phase == Phase.IDLE and d.node.router.state == State.BACKUP
    assert "no fault" in of(act.AdminAnswer, d.feed(ev.AdminRequest(4, ev.Admin.RESET)))[0].body["message"]


def test_a_reload_of_nfs_settings_is_applied_live_but_never_while_nfs_starts_or_stops() -> None:
    text = VIP_ONLY + ('[filesystem]\ndevice = "/dev/loop0"\nmountpoint = "/srv/nfs"\n[nfs]\nbackend = "ganesha"\n'
                       'exports = [{ path = "/srv/nfs/a", clients = "*", options = "rw,fsid=1" }]\n')
    d = Drive(text)
    d.master()
    while (run := d.node.machine.running) is not None and run.step != Step.NFS:
        d.feed(ev.StepDone(run.step, run.op, True, "done"))
    more = parse(text.replace('options = "rw,fsid=1" }]', 'options = "rw,fsid=1" }, '
                              '{ path = "/srv/nfs/b", clients = "*", options = "rw,fsid=2" }]'))
    assert not of(act.ApplyNfs, d.feed(ev.Reconfigure(more))), "nfs is starting: wait"
    out = d.feed(ev.StepDone(Step.NFS, Op.ACQUIRE, True, "serving"))
    assert of(act.ApplyNfs, out) and d.node.machine.phase == Phase.ACQUIRING
    out = d.feed(ev.NfsApplied(True, "re-read its exports (2 now)"))
    assert any(isinstance(a, act.Emit) and "[nfs] applied" in a.message for a in out)
    d.answer_steps()
    assert d.node.machine.phase == Phase.SERVING and d.node.counters.transitions == 2  # INITIALIZE->BACKUP->MASTER


# -- a restarted agent adopts the chain its predecessor left held (an upgrade's restart) ------
PRIMARY = Status("r0", "Primary", "UpToDate", "Connected", "Secondary", "UpToDate")
STORAGE_CHAIN = (Step.DRBD, Step.MOUNT, Step.VIP)


def emitted(d: Drive, kind: Kind) -> list[act.Emit]:
    return [a for a in d.log if isinstance(a, act.Emit) and a.kind == kind]


def answer_checks(d: Drive, fail: Step | None = None) -> None:
    """Answer the adoption's step checks in order (each is asked once the previous one answered)."""
    answered = 0
    while answered < len(checks := [a for a in d.log if isinstance(a, act.RunStep) and a.op == Op.CHECK]):
        step = checks[answered].step
        answered += 1
        d.feed(ev.StepDone(step, Op.CHECK, step != fail, "ok" if step != fail else "gone"))


def settle_drain(d: Drive, datagrams: tuple[tuple[bytes, float], ...] = ()) -> list[act.Action]:
    assert of(act.DrainAdverts, d.log), "the adoption drains what was queued before deciding"
    return d.feed(ev.AdvertsHeard(datagrams))


def test_a_fresh_hand_off_is_adopted_at_once_without_a_transition_the_peer_could_see() -> None:
    d = Drive()
    out = d.feed(ev.Start(found=(Step.VIP,), handoff_age=0.4))
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.CHECK, 30.0)] and not of(act.Joined, out)
    assert of(act.SetWakeThreshold, out) == [act.SetWakeThreshold(1)], "any advert rings while we verify"
    answer_checks(d)
    out = settle_drain(d)
    assert of(act.Joined, out) and d.node.router.state == State.MASTER
    assert d.node.machine.phase == Phase.SERVING and d.node.machine.held == [Step.VIP]
    assert act.SendAdvert(100) in out and of(act.Garp, out)
    assert not [a for a in d.log if isinstance(a, act.RunStep) and a.op != Op.CHECK], "nothing released or acquired"
    adopted = emitted(d, Kind.ADOPTED)
    assert adopted and "handed over by the previous agent 0.40 s" in adopted[0].message
    assert not emitted(d, Kind.SERVING)


def test_without_a_hand_off_the_node_listens_one_advert_interval_first() -> None:
    d = Drive()
    d.feed(ev.Start(found=(Step.VIP,)))
    answer_checks(d)
    assert not of(act.DrainAdverts, d.log) and d.node.deadline() == 1.25
    d.tick()
    assert d.node.router.state == State.MASTER and emitted(d, Kind.ADOPTED)
    assert "missing (killed?): listened 1.25 s" in emitted(d, Kind.ADOPTED)[0].message


def test_another_master_heard_while_verifying_means_release_as_before() -> None:
    d = Drive()
    d.feed(ev.Start(found=(Step.VIP,)))
    answer_checks(d)
    assert of(act.DrainAdverts, d.feed(ev.Doorbell(), 0.5))
    out = d.feed(ev.AdvertsHeard(((advert(100), 0.5),)))
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.RELEASE, 30.0)]
    assert any("another master" in e.message for e in emitted(d, Kind.CLEANUP))
    out = d.feed(ev.StepDone(Step.VIP, Op.RELEASE, True, "down"))
    assert of(act.Joined, out) and d.node.router.state == State.BACKUP and not emitted(d, Kind.ADOPTED)


def test_a_failed_check_or_maintenance_or_part_of_the_chain_is_released() -> None:
    d = Drive()
    d.feed(ev.Start(found=(Step.VIP,), handoff_age=0.1))
    answer_checks(d, fail=Step.VIP)
    assert of(act.RunStep, d.log)[-1] == RunStep(Step.VIP, Op.RELEASE, 30.0)
    assert any("vip check failed: gone" in e.message for e in emitted(d, Kind.CLEANUP))
    d = Drive()
    out = d.feed(ev.Start(found=(Step.VIP,), maintenance=True, handoff_age=0.1))
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.RELEASE, 30.0)]
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    out = d.feed(ev.Start(found=(Step.MOUNT, Step.VIP), handoff_age=0.1))
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.RELEASE, 30.0)]


def storage_start(d: Drive) -> act.AskPeer:
    out = d.feed(ev.Start(found=STORAGE_CHAIN, handoff_age=0.3))
    assert of(act.ReadDrbd, out) and of(act.RunStep, out) == [RunStep(Step.MOUNT, Op.CHECK, 30.0)]
    return of(act.AskPeer, out)[0]


def test_a_storage_chain_is_adopted_only_with_drbd_primary_and_the_peer_a_backup_holding_nothing() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    ask = storage_start(d)
    d.feed(ev.DrbdRead(PRIMARY))
    answer_checks(d)
    assert not of(act.DrainAdverts, d.log), "the peer's answer is awaited"
    d.feed(ev.PeerAnswer(ask.id, {"vrrp": "BACKUP", "phase": "IDLE", "held": []}))
    settle_drain(d)
    assert d.node.router.state == State.MASTER and d.node.machine.held == list(STORAGE_CHAIN)
    assert not d.node.faults, "the witnesses the earlier run served with are presumed up"
    message = emitted(d, Kind.ADOPTED)[0].message
    assert "DRBD r0: Primary/Secondary UpToDate" in message and "the peer says BACKUP" in message
    assert not of(act.Promote, d.log)


def test_a_storage_chain_is_released_when_drbd_or_the_peer_disagree() -> None:
    for drbd, reply, why in [
        (Status("r0", "Secondary", "UpToDate", "Connected", "Secondary", "UpToDate"), None, "DRBD is not Primary"),
        (Status("r0", "Primary", "Outdated", "WFConnection", "Unknown", "DUnknown"), None, "DRBD is not Primary"),
        # isolated (killed while cut off?): the peer may have promoted; only an ordinary takeover decides
        (Status("r0", "Primary", "UpToDate", "WFConnection", "Unknown", "DUnknown"), None, "connected to a Secondary"),
        (PRIMARY, {"vrrp": "MASTER", "phase": "ACQUIRING", "held": []}, "the peer is MASTER"),
        (PRIMARY, {"vrrp": "BACKUP", "phase": "IDLE", "held": ["vip"]}, "holding vip"),
    ]:
        d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
        ask = storage_start(d)
        d.feed(ev.DrbdRead(drbd))
        answer_checks(d)
        d.feed(ev.PeerAnswer(ask.id, reply))
        assert of(act.RunStep, d.log)[-1] == RunStep(Step.VIP, Op.RELEASE, 30.0), why
        assert any(why in e.message for e in emitted(d, Kind.CLEANUP)), (why, emitted(d, Kind.CLEANUP))
        assert d.node.router.state == State.INITIALIZE and not emitted(d, Kind.ADOPTED)


def test_a_silent_peer_channel_leaves_the_decision_to_drbd_and_the_adverts() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    ask = storage_start(d)
    d.feed(ev.DrbdRead(PRIMARY))
    answer_checks(d)
    d.feed(ev.PeerAnswer(ask.id, None))
    settle_drain(d)
    assert d.node.router.state == State.MASTER
    assert "the peer channel had no answer" in emitted(d, Kind.ADOPTED)[0].message


def test_after_a_kill_the_chain_up_to_the_vip_is_adopted_and_the_vip_acquired_again() -> None:
    """systemd killed the agent (or its watchdog did): ExecStopPost removed the VIPs, DRBD and the
    mount stayed. No hand-off: the node listens first, then keeps what it found and adds the VIP."""
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    out = d.feed(ev.Start(found=(Step.DRBD, Step.MOUNT)))
    assert of(act.ReadDrbd, out) and of(act.RunStep, out) == [RunStep(Step.MOUNT, Op.CHECK, 30.0)]
    ask = of(act.AskPeer, out)[0]
    d.feed(ev.DrbdRead(PRIMARY))
    answer_checks(d)
    d.feed(ev.PeerAnswer(ask.id, {"vrrp": "BACKUP", "phase": "IDLE", "held": []}))
    assert d.node.router.state == State.INITIALIZE and d.node.deadline() == 1.25, "listens for another master"
    out = d.tick()
    assert d.node.router.state == State.MASTER and of(act.RunStep, out) == [RunStep(Step.VIP, Op.ACQUIRE, 30.0)]
    assert d.node.machine.phase == Phase.ACQUIRING and d.node.machine.held == [Step.DRBD, Step.MOUNT]
    adopted = emitted(d, Kind.ADOPTED)
    assert adopted and adopted[0].fields["HELD"] == "drbd,mount" and adopted[0].fields["ACQUIRING"] == "vip"
    assert "acquiring vip on as master" in adopted[0].message
    d.feed(ev.StepDone(Step.VIP, Op.ACQUIRE, True, "up"))
    assert d.node.machine.phase == Phase.SERVING
    done = [a for a in d.log if isinstance(a, act.RunStep) and a.op != Op.CHECK]
    assert done == [RunStep(Step.VIP, Op.ACQUIRE, 30.0)], "nothing released, DRBD not promoted again"
    assert not of(act.Promote, d.log)


def test_after_a_kill_another_master_or_a_gap_in_the_chain_still_means_release() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    out = d.feed(ev.Start(found=(Step.DRBD, Step.MOUNT)))
    d.feed(ev.DrbdRead(PRIMARY))
    answer_checks(d)
    d.feed(ev.PeerAnswer(of(act.AskPeer, out)[0].id, {"vrrp": "MASTER", "phase": "ACQUIRING", "held": []}))
    assert of(act.RunStep, d.log)[-1] == RunStep(Step.MOUNT, Op.RELEASE, 30.0)
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    out = d.feed(ev.Start(found=(Step.DRBD, Step.VIP)))  # the mount is missing: not the chain's first steps
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.RELEASE, 30.0)] and not of(act.ReadDrbd, out)


def backup_following(d: Drive, drbd: Status = PEER_PRIMARY) -> float:
    """A backup that follows the peer's adverts, its DRBD connected to the peer's Primary: the
    time of the last advert heard."""
    d.feed(ev.Start())
    d.until(1.01)  # the witnesses' first verdict
    d.feed(ev.DrbdChanged(drbd))
    d.feed(ev.AdvertsHeard(((advert(200), 1.5),)), 1.5)
    assert d.node.router.state == State.BACKUP and d.node.router.master == PEER
    return 1.5


def test_a_silent_master_whose_drbd_is_primary_and_connected_is_waited_for_not_taken_over() -> None:
    """Its agent was killed (or hangs, or restarts); its node lives: DRBD still connects to its Primary.
    Taking over could not promote, and a MASTER here would make the restarted agent release instead
    of adopting: the backup waits. A lost connection (the node died) ends the wait at once."""
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    last = backup_following(d)
    mdi = d.node.router.master_down_interval
    d.until(last + mdi + 5.0)
    assert d.node.router.state == State.BACKUP and d.node.deadline() != last + mdi
    waiting = [e for e in emitted(d, Kind.FENCE) if "waits for its agent" in e.message]
    assert len(waiting) == 1 and "shows the peer Primary and connected" in waiting[0].message
    assert "waiting for its agent" in d.node.snapshot().waiting_for
    d.feed(ev.DrbdChanged(CUT), last + mdi + 5.5)  # DRBD's ping: the node is gone
    assert (d.node.deadline() or 1e9) <= d.now, "due at once: the queue is read, then the takeover"
    d.tick()
    assert d.node.router.state == State.MASTER and not d.node.snapshot().waiting_for
    # a master that demotes behind its silent agent ends the wait too
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    backup_following(d)
    d.until(8.0)
    assert d.node.router.state == State.BACKUP
    d.feed(ev.DrbdChanged(CONNECTED), 8.1)
    d.tick()
    assert d.node.router.state == State.MASTER and d.now == 8.1


def test_the_wait_for_a_live_master_node_never_holds_back_a_leave_or_a_preemption() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    last = backup_following(d)
    d.feed(ev.AdvertsHeard(((advert(0), last + 1),)), last + 1)  # it leaves (releasing: still Primary)
    d.until(last + 1 + d.node.router.skew_time + 0.01)
    assert d.node.router.state == State.MASTER, "a leave is taken over after Skew_Time as always"
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))  # priority 100, preempt on by default
    d.feed(ev.Start())
    d.until(1.01)
    d.feed(ev.DrbdChanged(PEER_PRIMARY))
    for t in (1.5, 2.5, 3.5, 4.5):
        d.feed(ev.AdvertsHeard(((advert(50), t),)), t)
    d.until(5.5)
    assert d.node.router.state == State.MASTER, "a lower-priority master is preempted as always"


def test_a_peer_gone_on_every_heartbeat_path_but_alive_in_drbd_is_waited_for() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    d.feed(ev.DrbdChanged(PEER_PRIMARY))
    beating_until(d, 1.0)
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    d.until(3.0)  # heartbeats and adverts stop: the agent is gone, the node is not
    assert d.node.snapshot().peer_gone and d.node.router.state == State.BACKUP
    d.until(8.0)
    assert d.node.router.state == State.BACKUP
    drains = len(of(act.DrainAdverts, d.log))
    assert 4 <= drains <= 9, f"{drains} drains: the held-back backup reads the queue about once a second"
    beat(d, 8.0)  # its agent is back (restarted): heard again, still no takeover
    d.until(8.05)
    assert d.node.router.state == State.BACKUP
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    d.feed(ev.DrbdChanged(PEER_PRIMARY))
    beating_until(d, 1.0)
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    d.until(1.5)
    assert d.node.snapshot().peer_gone and d.node.router.state == State.BACKUP
    d.feed(ev.DrbdChanged(CUT), 1.6)
    d.tick()
    master = [e for e in emitted(d, Kind.TRANSITION) if e.fields.get("VRRP_STATE") == "MASTER"]
    assert d.node.router.state == State.MASTER and master, "taken over at once, not at Master_Down"
    assert "the peer is gone" in str(master[0].fields["REASON"]), master[0]


def test_a_restart_keeps_a_serving_chain_without_priority_zero_and_a_stop_still_releases() -> None:
    d = Drive()
    d.master()
    d.answer_steps()
    out = d.feed(ev.AdminRequest(1, ev.Admin.RESTART, "SIGTERM received, systemd restart job"))
    assert [a for a in out if isinstance(a, (act.SendAdvert, act.Stopped, act.RunStep))] == [
        act.SendAdvert(100), act.Stopped(("vip",), kept=True)]
    assert d.node.deadline() is None and d.node.stopped
    # a backup has nothing to keep: a restart is an ordinary stop
    d = Drive()
    d.feed(ev.Start())
    out = d.feed(ev.AdminRequest(1, ev.Admin.RESTART, "SIGTERM"))
    assert of(act.Stopped, out) == [act.Stopped(())]
    # a master still acquiring leaves in order
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    d.master()
    out = d.feed(ev.AdminRequest(1, ev.Admin.RESTART, "SIGTERM"))
    assert not of(act.Stopped, out) and d.node._stop is not None


def test_a_hand_off_older_than_three_advert_intervals_is_released_at_once() -> None:
    d = Drive()
    out = d.feed(ev.Start(found=(Step.VIP,), handoff_age=3.5))
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.RELEASE, 30.0)]
    assert any("the backup may have taken over" in e.message for e in emitted(d, Kind.CLEANUP))


def test_a_stop_while_verifying_releases_what_was_found() -> None:
    d = Drive()
    d.feed(ev.Start(found=(Step.VIP,)))
    out = d.feed(ev.AdminRequest(1, ev.Admin.STOP, "SIGTERM"))
    assert of(act.RunStep, out)[-1] == RunStep(Step.VIP, Op.RELEASE, 30.0) and not of(act.Stopped, out)
    out = d.feed(ev.StepDone(Step.VIP, Op.RELEASE, True, "down"))
    assert of(act.Stopped, out) == [act.Stopped(())] and not emitted(d, Kind.ADOPTED)


# -- heartbeats on every path, the overlapping waits, the bounded release ------------------------
HB = STORAGE.replace('address = "192.0.2.2"', 'addresses = ["192.0.2.2", "198.51.100.2"]').replace(
    "interval = 1.0\ntimeout = 0.5\nfall = 3\n", "").replace('resource = "r0"', 'resource = "r0"\n'
                                                             'demote_escalation = ["retry", "reboot"]')
PATHS = ("192.0.2.2", "198.51.100.2")


def beat(d: Drive, at: float, paths: Sequence[str] = PATHS, hears_us: bool = True) -> None:
    for path in paths:
        d.feed(ev.PeerHeard(path, "MASTER", True, hears_us, 1.836), at)


def beating_until(d: Drive, t: float, paths: Sequence[str] = PATHS) -> None:
    """The peer's heartbeats every 0.1 s on `paths` until `t`, the node's timers in between."""
    while d.now + 0.1 <= t + 1e-9:
        d.until(d.now + 0.1)
        beat(d, d.now, paths)


def test_heartbeats_go_every_interval_and_the_fast_track_defaults_apply() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    assert d.cfg.track is not None and (d.cfg.track.interval, d.cfg.track.timeout) == (0.2, 0.1)
    d.feed(ev.Start())
    d.until(1.0)
    sent = of(act.SendHeartbeat, d.log)
    assert 10 <= len(sent) <= 11 and sent[0].hears_peer  # nothing heard yet: we do not call it gone
    assert sent[-1].bound == 1.836  # (0.1 + 3 x 0.2 + 0.1 + 1.0) x 1.01 / 0.99


def test_silent_on_one_path_is_a_link_cut_not_a_dead_peer() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    beating_until(d, 1.0)
    assert d.node.router.state == State.BACKUP
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    beating_until(d, 2.0, paths=PATHS[1:])  # the service path is cut; replication still carries heartbeats
    assert d.node.router.state == State.BACKUP and not d.node.snapshot().peer_gone
    beating_until(d, 5.0, paths=PATHS[1:])  # VRRP alone: Master_Down_Interval after the last advert
    assert d.node.router.state == State.MASTER and not d.node.snapshot().peer_gone
    assert "silent for" in (d.node.last.reason if d.node.last else "")
    assert any(isinstance(a, act.Emit) and "192.0.2.2: no heartbeat" in a.message for a in d.log)


def test_a_master_whose_heartbeat_says_it_left_is_followed_at_skew_time_like_priority_0() -> None:
    """Service link cut: the master's priority 0 advert is lost there; its heartbeat on the
    replication path says FAULT, and the backup takes over after Skew_Time, not Master_Down."""
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    beating_until(d, 1.0)
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    beating_until(d, 1.5, paths=PATHS[1:])
    assert d.node.router.state == State.BACKUP
    left, skew = d.now, d.node.router.skew_time
    while d.now < left + skew - 0.1:  # it keeps beating, as FAULT, on the path it still has
        d.feed(ev.PeerHeard(PATHS[1], "FAULT", False, True, 1.836), d.now)
        d.until(d.now + 0.1)
    d.until(left + skew - 0.01)
    assert d.node.router.state == State.BACKUP
    d.until(left + skew + 0.01)
    assert d.node.router.state == State.MASTER and not d.node.snapshot().peer_gone
    assert "heartbeat on 198.51.100.2 says FAULT" in (d.node.last.reason if d.node.last else "")


def test_an_advert_queued_before_the_leave_but_drained_after_it_does_not_undo_it() -> None:
    """Adverts wait in the socket until the doorbell or a timer drains them: the master's last
    advert before the cut is often read after its heartbeat said FAULT. Seen on the UML lab:
    the backup then waited Master_Down_Interval from that stale advert."""
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    beating_until(d, 1.0)
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    beating_until(d, 1.4, paths=PATHS[1:])
    queued, left, skew = d.now - 0.05, d.now, d.node.router.skew_time
    d.feed(ev.PeerHeard(PATHS[1], "FAULT", False, True, 1.836), left)
    d.feed(ev.AdvertsHeard(((advert(200), queued),)), left + 0.01)
    while d.now < left + skew - 0.1:
        d.feed(ev.PeerHeard(PATHS[1], "FAULT", False, True, 1.836), d.now)
        d.until(d.now + 0.1)
    d.until(left + skew + 0.01)
    assert d.node.router.state == State.MASTER, d.node.last


def test_a_peer_heartbeat_from_initialize_or_another_router_s_master_is_not_a_leave() -> None:
    """A restarting agent says INITIALIZE before it adopts; a peer that is not the master we
    follow (a third router is) leaves nothing we wait for: RFC timing holds in both."""
    for says, other in (("INITIALIZE", False), ("FAULT", True)):
        d = Drive(HB.format(policy="witness", heartbeat=0.1))
        d.feed(ev.Start())
        beating_until(d, 1.0)
        d.feed(ev.AdvertsHeard(((advert(200, src=IPv4Address("192.0.2.9") if other else PEER), d.now),)))
        heard = d.now
        while d.now < heard + 1.5:  # the peer keeps beating, in its new state, on every path
            d.until(d.now + 0.1)
            for path in PATHS:
                d.feed(ev.PeerHeard(path, says, False, True, 1.836), d.now)
        assert d.node.router.state == State.BACKUP and not d.node.snapshot().peer_gone, (says, other)


def test_silent_on_every_path_takes_over_at_once_without_master_down() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    beating_until(d, 1.0)
    last = d.now
    d.until(last + 0.29)
    assert d.node.router.state == State.BACKUP
    d.until(last + 0.31)
    assert d.node.router.state == State.MASTER and d.node.snapshot().peer_gone
    assert "the peer is gone" in (d.node.last.reason if d.node.last else "")
    # the acquire: DRBD lost the peer too; the peer is gone, so it is not asked (that would cost
    # peer.timeout); the witness rule waits for the bound from the last contact, not after detection
    d.answer_steps()
    out = d.feed(ev.DrbdRead(CUT))
    assert not of(act.AskPeer, out)
    bound = (0.1 + 3 * 0.2 + 0.1 + 1.0) * 1.01 / 0.99
    d.until(last + bound - 0.01)
    assert not of(act.Promote, d.log)
    d.until(last + bound + 0.001)
    assert of(act.Promote, d.feed(ev.DrbdRead(CUT)))


def test_without_a_heartbeat_ever_heard_rfc_timing_holds() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    d.until(1.0)
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))  # a peer whose heartbeats never reach us
    heard = d.now
    d.until(heard + 1.0)
    assert d.node.router.state == State.BACKUP  # no "gone" from heartbeats we never had


def serving(d: Drive) -> None:
    d.feed(ev.Start())
    d.until(1.0)
    d.until(d.now + d.node.router.master_down_interval + 0.01)
    assert d.node.router.state == State.MASTER
    d.feed(ev.DrbdRead(CONNECTED))
    d.feed(ev.Promoted(True, ""))
    d.answer_steps()
    assert d.node.machine.serving


def test_a_master_the_peer_cannot_hear_releases_and_fences_itself_if_it_cannot_in_time() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    serving(d)
    beat(d, d.now, hears_us=False)  # asymmetric: the peer hears nothing from us on any path
    assert d.node.router.state == State.FAULT and "hears nothing from us" in d.node.faults["peer"]
    assert d.node.snapshot().release_by == d.now + 1.0
    run = d.node.machine.running
    assert run is not None and (run.step, run.op) == (Step.VIP, Op.RELEASE)
    d.until(d.now + 0.99)
    assert not of(act.SelfFence, d.log)
    d.until(d.now + 0.02)  # the VIP release hangs past release_deadline
    fence = of(act.SelfFence, d.log)
    assert fence and fence[0].action == "reboot" and "still holding vip" in fence[0].reason


def test_a_release_in_time_is_not_fenced() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    serving(d)
    beat(d, d.now, hears_us=False)
    for step in (Step.VIP,):
        d.feed(ev.StepDone(step, Op.RELEASE, True, "done"), d.now + 0.2)
    d.until(d.now + 3.0)
    assert d.node.snapshot().release_by is None and not of(act.SelfFence, d.log)
    assert any(isinstance(a, act.Emit) and "stopped serving" in a.message for a in d.log)


def test_an_isolated_primary_that_drbd_shows_disconnected_after_the_deadline_fences_at_once() -> None:
    """Connected, DRBD itself keeps the peer from promoting: the demote may come late. Disconnected
    (our I/O frozen), the peer promotes once its bound passes: still Primary then means the fence."""
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    serving(d)
    held = Status("r0", "Primary", "UpToDate", "Connected", "Secondary", "UpToDate")
    d.feed(ev.DrbdChanged(held))
    beat(d, d.now, hears_us=False)
    d.feed(ev.StepDone(Step.VIP, Op.RELEASE, True, "done"), d.now + 0.2)  # the rest of the release hangs
    d.until(d.now + 3.0)
    assert Step.DRBD in d.node.machine.held and not of(act.SelfFence, d.log)
    frozen = Status("r0", "Primary", "UpToDate", "NetworkFailure", "Unknown", "DUnknown")
    d.feed(ev.DrbdChanged(frozen), d.now + 0.01)
    d.until(d.now + 0.05)
    fence = of(act.SelfFence, d.log)
    assert fence and "still holding" in fence[0].reason and "drbd" in fence[0].reason


def test_an_isolated_master_counts_from_when_both_witnesses_and_peer_are_lost() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    serving(d)
    beat(d, d.now)
    d.witnesses_answer = False
    d.until(d.now + 0.3)  # the peer went silent 0.3 s ago on every path; witnesses failing
    # while our own witnesses fail we may be the one cut off: that is no proof the peer is gone
    assert not d.node.snapshot().peer_gone
    d.until(d.now + 1.0)
    assert d.node.router.state == State.FAULT  # the witnesses' verdict: isolated, release
    assert d.node.snapshot().release_by is not None or of(act.SelfFence, d.log)
    d.until(d.now + 2.0)
    assert of(act.SelfFence, d.log)  # the test never answers the VIP release: it overran


def test_drbd_still_connected_to_a_peer_gone_on_every_path_is_waited_for_not_dropped() -> None:
    """Silent on every path is the agent's silence: a killed agent on a live node looks the same
    as a crash. DRBD's live connection says the node lives; only DRBD's own ping ends it."""
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    beating_until(d, 1.0)
    d.until(d.now + 0.31)
    assert d.node.router.state == State.MASTER
    d.answer_steps()
    for _ in range(20):  # 2 s of a connected Primary peer: read again, never disconnect, never promote
        out = d.feed(ev.DrbdRead(PEER_PRIMARY))
        assert not of(act.ReadDrbd, out) and not of(act.Promote, out)
        n = len(d.log)
        d.until(d.now + 0.1001)
        assert of(act.ReadDrbd, d.log[n:]) == [act.ReadDrbd()]
    assert not of(act.Promote, d.log)
    out = d.feed(ev.DrbdRead(CUT))  # DRBD's ping timed out: the guard decides (the bound has passed)
    assert of(act.ReadDrbd, out) and not of(act.Promote, out)  # the peer was asked (unreachable): read again
    assert of(act.Promote, d.feed(ev.DrbdRead(CUT)))


def test_a_peer_alive_on_one_path_keeps_its_drbd_connection() -> None:
    d = Drive(HB.format(policy="refuse", heartbeat=0.1))
    d.master()
    d.answer_steps()
    beat(d, d.now, paths=PATHS[1:])
    out = d.feed(ev.DrbdRead(PEER_PRIMARY))
    assert not of(act.ReadDrbd, out)
    n = len(d.log)
    d.until(d.now + 0.1001)
    assert of(act.ReadDrbd, d.log[n:]) == [act.ReadDrbd()]


SHARED = VIP_ONLY + """
[filesystem]
device = "/dev/loop7"
mountpoint = "/srv/nfs"

[track]
witnesses = ["192.0.2.254"]

[peer]
address = "192.0.2.2"
"""


def test_a_shared_disk_is_mounted_only_after_the_silent_peer_s_bound() -> None:
    d = Drive(SHARED)
    d.feed(ev.Start())
    for t in range(1, 11):
        d.feed(ev.PeerHeard("192.0.2.2", "MASTER", True, True, 0.0), t * 0.1)
    last = d.now
    d.until(last + 0.31)  # gone: VRRP takes over at once, the mount waits
    assert d.node.router.state == State.MASTER
    assert not of(act.RunStep, d.log)
    bound = (0.1 + 3 * 0.2 + 0.1 + 1.0) * 1.01 / 0.99
    d.until(last + bound - 0.01)
    assert not of(act.RunStep, d.log)
    d.until(last + bound + 0.01)
    assert of(act.RunStep, d.log) == [RunStep(Step.MOUNT, Op.ACQUIRE, 30.0)]


def test_a_shared_disk_the_peer_released_is_mounted_at_once() -> None:
    d = Drive(SHARED)
    d.feed(ev.Start())
    for t in range(1, 11):
        d.feed(ev.PeerHeard("192.0.2.2", "BACKUP", False, True, 0.0), t * 0.1)
    d.until(d.now + 0.31)
    assert d.node.router.state == State.MASTER
    assert of(act.RunStep, d.log) == [RunStep(Step.MOUNT, Op.ACQUIRE, 30.0)]


def test_a_shared_disk_still_held_by_a_live_peer_waits_for_its_release() -> None:
    d = Drive(SHARED)
    d.feed(ev.Start())
    while d.now < d.node.router.master_down_interval + 2.0:  # its adverts do not reach us; its heartbeats do
        d.feed(ev.PeerHeard("192.0.2.2", "MASTER", True, True, 0.0), d.now + 0.05)
        d.until(d.now + 0.05)
    assert d.node.router.state == State.MASTER and not of(act.RunStep, d.log)
    d.feed(ev.PeerHeard("192.0.2.2", "FAULT", False, True, 0.0), d.now + 0.05)
    d.until(d.now + 0.11)
    assert of(act.RunStep, d.log) == [RunStep(Step.MOUNT, Op.ACQUIRE, 30.0)]


def test_a_restarting_peer_s_last_heartbeat_holds_off_the_gone_verdict() -> None:
    for restarting in (3.0, 0.0):
        d = Drive(HB.format(policy="witness", heartbeat=0.1))
        d.feed(ev.Start())
        beating_until(d, 1.0)
        d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
        t = d.now
        for path in PATHS:  # the master's agent stops for a restart: its last heartbeat says so
            d.feed(ev.PeerHeard(path, "MASTER", True, True, 1.836, restarting), t)
        d.until(t + 2.5)  # far past heartbeat x dead_after (0.3 s)
        if not restarting:
            assert d.node.snapshot().peer_gone and d.node.router.state == State.MASTER, "without it: a takeover"
            continue
        assert not d.node.snapshot().peer_gone and d.node.router.state == State.BACKUP
        beating_until(d, t + 2.7)  # the restarted agent beats again, and advertises
        d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
        beating_until(d, t + 5.0)
        assert d.node.router.state == State.BACKUP and d.node.counters.became_master == 0


def test_a_master_stopping_for_a_restart_says_so_in_its_last_heartbeat() -> None:
    d = Drive(VIP_ONLY + '[peer]\naddress = "192.0.2.2"\nheartbeat = 0.1\n')
    d.master()
    d.answer_steps()
    out = d.feed(ev.AdminRequest(1, ev.Admin.RESTART, "SIGTERM"))
    beats = of(act.SendHeartbeat, out)
    assert beats and beats[-1].restarting == 3.0 and beats[-1].holding and beats[-1].vrrp == "MASTER"
    assert of(act.Stopped, out) == [act.Stopped(("vip",), kept=True)]


def test_a_peer_that_demotes_ends_the_peer_wait_at_once_not_at_the_next_poll() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    acquire(d)
    t0 = d.now
    d.feed(ev.DrbdRead(PEER_PRIMARY))
    assert d.node._acquire is not None and d.node._acquire.stage == "peer-wait"
    out = d.feed(ev.DrbdChanged(PEER_PRIMARY), at=t0 + 0.02)  # still Primary: keep waiting
    assert not of(act.ReadDrbd, out)
    out = d.feed(ev.DrbdChanged(CONNECTED), at=t0 + 0.03)  # the follower saw it demote
    assert of(act.ReadDrbd, out), "read again now, 70 ms before the poll would have"
    out = d.feed(ev.DrbdRead(CONNECTED))
    assert of(act.Promote, out)


def test_drbd_taken_away_while_serving_is_lost_at_once_and_restarted() -> None:
    d = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    acquire(d)
    d.feed(ev.DrbdRead(CONNECTED))
    d.feed(ev.Promoted(True, ""))
    d.answer_steps()
    assert d.node.machine.phase == Phase.SERVING
    primary = Status("r0", "Primary", "UpToDate", "Connected", "Secondary", "UpToDate")
    out = d.feed(ev.DrbdChanged(primary))
    assert not of(act.RunStep, out)
    logged = [a for a in out if isinstance(a, act.Emit) and a.kind is None and a.message == "DRBD %s"]
    assert logged and logged[0].args == (primary.summary(),)
    out = d.feed(ev.DrbdChanged(CONNECTED))  # demoted behind our back
    assert of(act.RunStep, out) == [RunStep(Step.VIP, Op.RELEASE, 30.0)]
    assert any(isinstance(a, act.Emit) and "DRBD is no longer Primary" in a.message for a in out)
    assert d.node.machine.restarts == {Step.DRBD: 1}
    # a state change while nothing is held only logs
    d2 = Drive(STORAGE.format(policy="refuse", heartbeat=0))
    d2.feed(ev.Start())
    out = d2.feed(ev.DrbdChanged(None))
    assert not of(act.RunStep, out) and d2.node.machine.phase == Phase.IDLE


def test_after_a_stall_silence_counts_from_when_the_node_runs_again() -> None:
    """SIGSTOP of the backup for 2 s: the heartbeats that queued meanwhile are read after the timer;
    the peer is not declared gone on silence the node could not have observed."""
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    d.feed(ev.Start())
    beating_until(d, 1.0)
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    d.feed(ev.Timer(), d.now + 2.0)  # the first thing the thawed process does
    assert d.node.router.state == State.BACKUP and not d.node.snapshot().peer_gone
    beat(d, d.now + 0.001)  # the queued heartbeats
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))
    beating_until(d, d.now + 1.0)
    assert d.node.router.state == State.BACKUP and not d.node.snapshot().peer_gone


def test_a_deaf_report_sent_while_we_were_stalled_does_not_make_a_master_release() -> None:
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    serving(d)
    beat(d, d.now)
    d.feed(ev.Timer(), d.now + 0.8)  # thawed after 0.8 s
    beat(d, d.now + 0.001, hears_us=False)  # queued during the freeze
    assert d.node.router.state == State.MASTER and "peer" not in d.node.faults
    for _ in range(6):  # the peer still hears nothing from us well after it could have: real
        beat(d, d.now + 0.1, hears_us=False)
    assert d.node.router.state == State.FAULT and "peer" in d.node.faults


def test_a_deaf_report_at_the_heal_of_a_cut_does_not_make_the_master_release() -> None:
    """Both ways silent, then the heal: the peer's first heartbeats were sent before ours reached it."""
    d = Drive(HB.format(policy="witness", heartbeat=0.1))
    serving(d)
    beating_until(d, d.now + 0.5)
    d.until(d.now + 2.0)  # the cut: silent on every path
    assert d.node.snapshot().peer_gone and d.node.router.state == State.MASTER
    beat(d, d.now + 0.01, hears_us=False)  # the heal
    for _ in range(13):  # ours wait for the neighbour to be resolved again (up to 1 s)
        beat(d, d.now + 0.1, hears_us=False)
    assert d.node.router.state == State.MASTER and "peer" not in d.node.faults
    for _ in range(6):  # still deaf to us well after ours could have reached it: an asymmetric cut
        beat(d, d.now + 0.1, hears_us=False)
    assert d.node.router.state == State.FAULT and "peer" in d.node.faults


def test_a_held_back_mount_is_abandoned_when_vrrp_moves_on() -> None:
    d = Drive(SHARED)
    d.feed(ev.Start())
    for t in range(1, 11):
        d.feed(ev.PeerHeard("192.0.2.2", "MASTER", True, True, 0.0), t * 0.1)
    d.until(d.now + 0.31)
    assert d.node.router.state == State.MASTER and d.node.machine.running is not None
    # the peer is back and wins: its advert makes us backup while the mount is still held back
    d.feed(ev.PeerHeard("192.0.2.2", "MASTER", True, True, 0.0), d.now + 0.05)
    d.feed(ev.AdvertsHeard(((advert(200), d.now + 0.01),)), d.now + 0.02)
    d.until(d.now + 0.2)
    assert d.node.router.state == State.BACKUP
    assert d.node.machine.running is None and d.node.machine.phase == Phase.IDLE
    assert not of(act.RunStep, d.log)
    assert not any(isinstance(a, act.SendHeartbeat) and a.holding for a in d.log[-3:])


def test_adverts_queued_before_a_heartbeat_takeover_do_not_undo_it() -> None:
    d = Drive(HB.format(policy="refuse", heartbeat=0.1))
    d.feed(ev.Start())
    beating_until(d, 1.0)
    queued_at = d.now
    d.until(d.now + 0.31)
    assert d.node.router.state == State.MASTER
    d.feed(ev.AdvertsHeard(((advert(200), queued_at),)))  # drained only now, from before the cut
    assert d.node.router.state == State.MASTER
    d.feed(ev.AdvertsHeard(((advert(200), d.now),)))  # a fresh one: the RFC decides
    assert d.node.router.state == State.BACKUP
