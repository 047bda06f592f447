"""`systemctl restart failover-agent` on the master does not fail over (real systemd, nspawn nodes).

Two containers with the repository's unit (a: priority 150, b: 100, VRRP at its default one
second), a client pinging the VIP every 10 ms. A restart of a's agent is an upgrade's restart:
the stopping agent sees systemd's restart job and keeps the VIP (no release, no priority 0),
the new one adopts it, and b never leaves BACKUP. A `systemctl stop` is still an ordered leave
with priority 0, and a restart too slow for b's Master_Down_Interval ends in a release, not in
two masters. The 0.5 s outage target is measured by `python -m bench.service` (restart row).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from agent.journal import Event
from tests.lab.agent import render_agent_conf
from tests.lab.nspawn import NspawnLab, NspawnNode, ensure_image
from tests.lab.probe import Pinger
from tests.test_systemd_service import wait

pytestmark = pytest.mark.lab

VIP = "192.0.2.100/24"
CONF = {"a": 150, "b": 100}
HANDOFF = "/var/lib/failover-agent/state.handoff.json"
DROPIN = "/etc/systemd/system/failover-agent.service.d/slow.conf"


@pytest.fixture(scope="module")
def lab() -> Iterator[NspawnLab]:
    image = ensure_image()
    with NspawnLab("frs", image=image) as lab:
        for name, prio in CONF.items():
            lab[name].install_agent(render_agent_conf(priority=prio))
        lab["a"].systemctl("start", "failover-agent")
        wait(lambda: holders(lab) == ["a"], 8, "a to hold the VIP")
        lab["b"].systemctl("start", "failover-agent")
        wait(lambda: status(lab["b"]).startswith("BACKUP"), 5, "b to be BACKUP")
        yield lab


def status(node: NspawnNode) -> str:
    return node.unit_properties("failover-agent.service", "StatusText")["StatusText"]


def holders(lab: NspawnLab) -> list[str]:
    return [n for n in CONF if VIP in lab.net.addresses(n)]


def events(node: NspawnNode, event: Event, since: float = 0.0) -> list[dict[str, object]]:
    """Journal entries of one kind, logged at or after `since` (host wall clock; one kernel clock)."""
    found = node.journal_json("failover-agent.service", [f"MESSAGE_ID={event.value}"])
    return [e for e in found if int(str(e["__REALTIME_TIMESTAMP"])) / 1e6 >= since]


class HolderWatch:
    """Samples who holds the VIP every 50 ms: any sample other than `expected` is recorded."""

    def __init__(self, lab: NspawnLab, expected: list[str]) -> None:
        self.lab, self.expected, self.odd = lab, expected, list[tuple[float, list[str]]]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = holders(self.lab)
            if now != self.expected:
                self.odd.append((time.monotonic(), now))
            time.sleep(0.05)

    def __enter__(self) -> HolderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_restart_on_the_master_adopts_the_vip_and_the_backup_never_takes_over(lab: NspawnLab) -> None:
    a, b = lab["a"], lab["b"]
    since = time.time()
    with Pinger(lab.net, "client", VIP.split("/")[0], interval=0.01) as pinger, HolderWatch(lab, ["a"]) as watch:
        assert pinger.wait_replies(20, timeout=5)
        t0 = time.monotonic()
        a.systemctl("restart", "failover-agent")
        wait(lambda: events(a, Event.ADOPTED, since), 10, "a's new agent to adopt the VIP")
        took = time.monotonic() - t0
        time.sleep(4.5)  # past b's Master_Down_Interval (3.61 s) counted from the restart
        gap = pinger.max_gap(start=t0, end=time.monotonic())
    assert not watch.odd, f"the VIP left a or was held twice: {watch.odd[:5]}"
    assert not events(b, Event.TRANSITION, since), "b saw a transition"
    assert status(b).startswith("BACKUP") and status(a).startswith("MASTER")
    stopped = events(a, Event.STOPPED, since)
    assert stopped and stopped[-1]["KEPT"] == "vip" and "systemd restart job" in str(stopped[-1]["MESSAGE"])
    adopted = events(a, Event.ADOPTED, since)[-1]
    assert adopted["HELD"] == "vip" and "handed over by the previous agent" in str(adopted["MESSAGE"])
    assert not [e for e in events(a, Event.STEP, since) if str(e.get("STEP")).startswith("vip_")], "no release"
    assert a.run(["test", "-e", HANDOFF], check=False, unit=False).returncode != 0, "the new agent took the record"
    assert took < 5, took
    assert gap < 3.0, f"client outage {gap:.3f} s (the tight figure: bench.service)"


def test_a_restart_slower_than_the_backup_s_master_down_ends_in_a_release(lab: NspawnLab) -> None:
    a, b = lab["a"], lab["b"]
    a.write_file(DROPIN, "[Service]\nExecStartPre=/bin/sleep 5\n")
    a.systemctl("daemon-reload")
    try:
        since = time.time()
        a.systemctl("restart", "failover-agent", timeout=60)
        wait(lambda: holders(lab) == ["a"] and status(a).startswith("MASTER"), 15, "a to take over again")
    finally:
        a.run(["rm", "-f", DROPIN], unit=False)
        a.systemctl("daemon-reload")
    assert [e for e in events(b, Event.TRANSITION, since) if e.get("VRRP_STATE") == "MASTER"], "b took over"
    assert not events(a, Event.ADOPTED, since)
    released = [e for e in events(a, Event.CLEANUP, since) if "not adopting" in str(e.get("MESSAGE"))]
    assert released and "the backup may have taken over" in str(released[-1]["REASON"]), released
    wait(lambda: status(b).startswith("BACKUP"), 5, "b to be BACKUP again")


def test_systemctl_stop_still_releases_with_priority_zero(lab: NspawnLab) -> None:
    a, b = lab["a"], lab["b"]
    assert holders(lab) == ["a"]
    since = time.time()
    a.systemctl("stop", "failover-agent")
    wait(lambda: holders(lab) == ["b"], 3, "b to take the VIP")
    stopped = events(a, Event.STOPPED, since)[-1]
    assert "KEPT" not in stopped and "SIGTERM" in str(stopped["REASON"])
    assert [e for e in events(a, Event.STEP, since) if e.get("STEP") == "vip_release"]
    took = [e for e in events(b, Event.TRANSITION, since) if e.get("VRRP_STATE") == "MASTER"][-1]
    assert "priority 0" in str(took["REASON"])
    assert a.run(["test", "-e", HANDOFF], check=False, unit=False).returncode != 0
    a.systemctl("start", "failover-agent")
    wait(lambda: holders(lab) == ["a"], 8, "a to preempt back")
