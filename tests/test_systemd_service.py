"""failover-agent as a real systemd service, in systemd-nspawn nodes with real journald.

Two containers (a: priority 150, b: priority 100) each in its own network namespace on the
lab bridge, the repository's unit file and the agent installed as admins would; a plain
client namespace. One lab serves the whole module (booting is ~1 s, but the scenarios build on
each other: start, reload, watchdog, failover story, stop).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from agent.journal import Event
from tests.lab.agent import render_agent_conf
from tests.lab.nspawn import NspawnLab, NspawnNode, ensure_image

pytestmark = pytest.mark.lab

VIP = "192.0.2.100/24"
CONF = {"a": 150, "b": 100}


@pytest.fixture(scope="module")
def lab() -> Iterator[NspawnLab]:
    image = ensure_image()
    with NspawnLab("fsd", image=image) as lab:
        for name, prio in CONF.items():
            lab[name].install_agent(render_agent_conf(priority=prio))
            lab[name].systemctl("enable", "failover-agent")
        yield lab


def props(node: NspawnNode) -> dict[str, str]:
    return node.unit_properties("failover-agent.service", "ActiveState", "SubState", "MainPID", "NRestarts",
                                "StatusText")


def holders(lab: NspawnLab) -> list[str]:
    return [n for n in CONF if VIP in lab.net.addresses(n)]


def events(node: NspawnNode, event: Event, since: str | None = None) -> list[dict[str, object]]:
    extra = [f"MESSAGE_ID={event.value}"] + (["--since", since] if since else [])
    return node.journal_json("failover-agent.service", extra)


def wait(predicate: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ctl(node: NspawnNode, *args: str) -> str:
    return node.run(["failoverctl", *args]).stdout


def test_start_reaches_ready_with_a_status_line(lab: NspawnLab) -> None:
    a, b = lab["a"], lab["b"]
    t0 = time.monotonic()
    a.systemctl("start", "failover-agent")  # Type=notify: returns when READY=1 arrived
    took = time.monotonic() - t0
    b.systemctl("start", "failover-agent")
    assert props(a)["ActiveState"] == "active", a.run(["journalctl", "-u", "failover-agent", "--no-pager"]).stdout
    assert took < 5, took  # the 1 s figure is measured by bench/service.py
    wait(lambda: holders(lab) == ["a"], 8, "a to hold the VIP")
    wait(lambda: props(a)["StatusText"].startswith("MASTER"), 3, "STATUS= to show MASTER")
    assert props(b)["StatusText"].startswith("BACKUP")
    status = json.loads(ctl(a, "status", "--json"))
    assert status["instance"]["state"] == "MASTER" and status["instance"]["vips_held"]
    started = events(a, Event.STARTED)
    assert started and started[-1]["VRID"] == "51"


def test_reload_good_config_changes_priority_and_vips_without_transitions(lab: NspawnLab) -> None:
    a = lab["a"]
    before = len(events(a, Event.TRANSITION))
    a.write_file("/etc/failover-agent/agent.toml",
                 render_agent_conf(priority=160, vips=[VIP, "192.0.2.101/24"]))
    a.systemctl("reload", "failover-agent")
    wait(lambda: "192.0.2.101/24" in lab.net.addresses("a"), 3, "the new VIP on the master")
    reloads = events(a, Event.RELOAD)
    assert reloads and "vrrp.priority: 150 -> 160" in str(reloads[-1]["CHANGES"])
    time.sleep(1.0)
    assert len(events(a, Event.TRANSITION)) == before, "a priority change must not cause a transition"
    assert json.loads(ctl(a, "status", "--json"))["instance"]["priority"] == 160


def test_reload_broken_config_keeps_running_and_says_why(lab: NspawnLab) -> None:
    a = lab["a"]
    a.write_file("/etc/failover-agent/agent.toml", render_agent_conf(priority=160) + "bogus_key = 1\n")
    pid = props(a)["MainPID"]
    a.systemctl("reload", "failover-agent")
    wait(lambda: events(a, Event.RELOAD_FAILED), 3, "the refused reload in the journal")
    failed = events(a, Event.RELOAD_FAILED)[-1]
    assert failed["KEY"] == "vrrp.bogus_key" and failed["FILE"] == "/etc/failover-agent/agent.toml"
    assert props(a)["ActiveState"] == "active" and props(a)["MainPID"] == pid
    assert json.loads(ctl(a, "status", "--json"))["instance"]["priority"] == 160
    # back to the normal config for the next tests
    a.write_file("/etc/failover-agent/agent.toml", render_agent_conf(priority=150))
    a.systemctl("reload", "failover-agent")
    wait(lambda: "192.0.2.101/24" not in lab.net.addresses("a"), 3, "the extra VIP to go")


def test_hung_agent_is_killed_by_the_watchdog_without_two_vip_holders(lab: NspawnLab) -> None:
    a, b = lab["a"], lab["b"]
    assert holders(lab) == ["a"]
    restarts = int(props(a)["NRestarts"])
    double: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if len(holders(lab)) > 1:
                double.append(time.monotonic())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        a.run(["kill", "-STOP", props(a)["MainPID"]], unit=False)
        wait(lambda: int(props(a)["NRestarts"]) > restarts, 10, "the watchdog to kill and restart a's agent")
        wait(lambda: props(b)["StatusText"].startswith("MASTER") or props(a)["StatusText"].startswith("MASTER"),
             10, "a master again")
        wait(lambda: len(holders(lab)) == 1, 10, "exactly one VIP holder")
        time.sleep(4)  # restarted a (priority 150) preempts b: still never two holders
    finally:
        stop.set()
        watcher.join()
    assert not double, f"two VIP holders at {len(double)} samples"
    wait(lambda: holders(lab) == ["a"], 10, "a to preempt back")
    watchdog = [e for e in a.journal_json(None, ["-u", "failover-agent", "--no-pager"])
                if "watchdog" in str(e.get("MESSAGE", "")).lower()]
    assert watchdog, "systemd logs the watchdog timeout"


def test_journal_tells_the_failover_story(lab: NspawnLab) -> None:
    b = lab["b"]
    story = events(b, Event.TRANSITION)
    to_master = [e for e in story if e.get("VRRP_STATE") == "MASTER"]
    assert to_master, story
    last = to_master[-1]
    assert last["PREV_STATE"] == "BACKUP" and "192.0.2.1" in str(last["REASON"])
    serving = events(b, Event.SERVING)
    assert serving and str(serving[-1]["MESSAGE"]).startswith("became MASTER:")
    history = ctl(b, "history")
    assert "TRANSITION" in history and "BACKUP -> MASTER" in history
    assert json.loads(ctl(b, "history", "--json").splitlines()[-1])["event"] in {e.name for e in Event}


def test_systemctl_stop_on_the_master_hands_over_in_order(lab: NspawnLab) -> None:
    a, b = lab["a"], lab["b"]
    assert holders(lab) == ["a"]
    a.systemctl("stop", "failover-agent")
    assert props(a)["ActiveState"] == "inactive"
    wait(lambda: holders(lab) == ["b"], 3, "b to take the VIP")
    stopped = events(a, Event.STOPPED)[-1]
    assert "SIGTERM" in str(stopped["REASON"])
    steps = [e for e in events(a, Event.STEP) if e.get("STEP") == "vip_release"]
    assert steps, "the VIP was released by the agent itself"
    took = [e for e in events(b, Event.TRANSITION) if e.get("VRRP_STATE") == "MASTER"][-1]
    assert "priority 0" in str(took["REASON"]), "b took over on a's priority-0 advert, not a timeout"
    a.systemctl("start", "failover-agent")
    wait(lambda: holders(lab) == ["a"], 8, "a to preempt back after a restart")
