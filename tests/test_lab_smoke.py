"""Smoke tests of the network-namespace lab (tests/lab) itself, including keepalived.

They need root, iproute2, util-linux (nsenter), iputils-ping and keepalived. They never skip:
a machine that cannot build the lab must fail loudly, or the integration tests built on the
lab would silently prove nothing.

Each test uses its own fixed prefix derived from its name, so that namespaces of a crashed
earlier run are purged by the next one.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.keepalived import Keepalived, check_keepalived_conf, render_keepalived_conf
from tests.lab.netns import (
    CLIENT_IP,
    NETNS_DIR,
    LabError,
    NetnsLab,
    ProcRef,
    ci_bound,
    pids_in_netns,
    wait_until,
)
from tests.lab.probe import Pinger

pytestmark = pytest.mark.lab

VIP = "192.0.2.100"
# keepalived's Master_Down_Interval (v2, 1 s) at priority 150 and 100: the waits for a takeover
# are ci_bound of these (room for a loaded machine; the tight figures are bench/takeover.py's)
MDI_A = 3 + (256 - 150) / 256
MDI_B = 3 + (256 - 100) / 256


def lab_namespaces(prefix: str) -> list[str]:
    """Namespaces of a lab with this prefix, as `ip netns list` shows them."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


def host_links() -> set[str]:
    """Interface names of the host namespace, to prove the lab does not touch it."""
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fixed per-test prefix (so a crashed run is purged next time); none may remain after."""
    name = "lsm-" + request.node.name.removeprefix("test_")[:20]
    yield name
    assert lab_namespaces(name) == [], f"namespaces left behind by {request.node.name}"


def keepalived_conf(priority: int = 100, **overrides: Any) -> str:
    """The smoke scenario's instance: vrid 51, VIP 192.0.2.100/24, v2, advert_int 1."""
    params: dict[str, Any] = {
        "name": "VI_51",
        "interface": "eth0",
        "vrid": 51,
        "priority": priority,
        "advert_int": 1,
        "vips": [f"{VIP}/24"],
    }
    params.update(overrides)
    return render_keepalived_conf(**params)


def test_build_addresses_and_ping(prefix: str) -> None:
    before = host_links()
    with NetnsLab(prefix, nodes=("a", "b")) as lab:
        assert sorted(lab_namespaces(prefix)) == sorted(
            [f"{prefix}-br", f"{prefix}-a", f"{prefix}-b", f"{prefix}-client"]
        )
        assert lab.ns("a") == f"{prefix}-a"
        assert lab.netns_path("client") == f"/run/netns/{prefix}-client"
        assert lab.addresses("a") == {"192.0.2.1/24"}
        assert lab.addresses("b") == {"192.0.2.2/24"}
        assert lab.addresses("client") == {f"{CLIENT_IP}/24"}
        assert lab.mac("a") == "02:00:00:00:00:0a"
        assert lab.mac("b") == "02:00:00:00:00:0b"
        assert lab.mac("client") == "02:00:00:00:00:10"
        assert lab.run("a", ["ip", "-o", "link", "show", "lo"]).stdout.count("UP") >= 1
        bridge = lab.run("br", ["ip", "-d", "-j", "link", "show", "br0"]).stdout
        info = json.loads(bridge)[0]["linkinfo"]["info_data"]
        assert (info["stp_state"], info["forward_delay"], info["mcast_snooping"]) == (0, 0, 0)

        assert lab.ping("client", "192.0.2.1"), "client cannot reach node a"
        assert lab.ping("client", "192.0.2.2"), "client cannot reach node b"
        assert lab.ping("a", "192.0.2.2"), "node a cannot reach node b"
        assert lab.neigh_mac("client", "192.0.2.1") == "02:00:00:00:00:0a"
        assert lab.neigh_mac("client", "192.0.2.2") == "02:00:00:00:00:0b"
        assert lab.neigh_mac("client", "192.0.2.77") is None
        assert host_links() == before, "the lab must not create interfaces in the host namespace"
    assert lab_namespaces(prefix) == []


def test_set_link_cuts_and_restores(prefix: str) -> None:
    with NetnsLab(prefix) as lab:
        assert lab.ping("client", "192.0.2.1")

        lab.set_link("a", False)
        state = lab.link_state("a")
        # A pulled cable: still admin UP, no carrier; the kernel says DOWN, not LOWERLAYERDOWN.
        assert state.admin_up and not state.carrier, state
        assert "NO-CARRIER" in state.flags and state.operstate == "DOWN", state
        assert lab.addresses("a") == {"192.0.2.1/24"}, "a cut cable must not remove addresses"
        assert not lab.ping("client", "192.0.2.1", timeout=0.5), "client still reaches a with its cable cut"
        assert lab.ping("client", "192.0.2.2"), "cutting a's cable must not affect b"

        lab.set_link("a", True)
        state = lab.link_state("a")
        assert state.carrier and state.operstate == "UP", state
        assert lab.ping("client", "192.0.2.1", count=3), "connectivity to a not restored"

        lab.set_iface("b", False)
        state = lab.link_state("b")
        assert not state.admin_up and state.operstate == "DOWN", state
        assert not lab.ping("client", "192.0.2.2", timeout=0.5)
        lab.set_iface("b", True)
        assert wait_until(lambda: lab.link_state("b").carrier, 2.0)
        assert lab.ping("client", "192.0.2.2", count=3), "connectivity to b not restored"
    assert lab_namespaces(prefix) == []


def test_close_removes_namespaces_and_processes(prefix: str) -> None:
    # A crashed earlier run: a namespace with our prefix, with a process still inside.
    subprocess.run(["ip", "netns", "add", f"{prefix}-a"], check=True)
    stale = subprocess.Popen(["nsenter", f"--net={NETNS_DIR / f'{prefix}-a'}", "sleep", "300"])
    try:
        # nsenter joins the namespace a moment after it starts; the leftover is real only then
        assert wait_until(lambda: stale.pid in pids_in_netns(NETNS_DIR / f"{prefix}-a"), 5)
        lab = NetnsLab(prefix)
        assert stale.wait(5) is not None, "the stale process in a leftover namespace was not stopped"
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()

    with lab:
        tracked = lab.popen("a", ["sleep", "300"])
        # SIGTERM-resistant: close() must escalate to SIGKILL after its 2 s grace.
        stubborn = lab.popen("b", ["python3", "-c", "import signal, time; signal.signal(15, signal.SIG_IGN); "
                                   "print('ok', flush=True); time.sleep(300)"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ok"
        # An untracked grandchild that escaped: only the namespace sweep can find it.
        out = lab.run("client", ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout
        escaped = ProcRef.of(int(out.strip()))
        assert escaped is not None and escaped.alive()
        assert escaped.pid in pids_in_netns(lab.netns_path("client"))
        started = time.monotonic()
    lab.close()  # idempotent
    assert time.monotonic() - started < 10
    assert tracked.returncode is not None and stubborn.returncode is not None
    assert stubborn.returncode == -9, "SIG_IGN'd SIGTERM must end in SIGKILL"
    assert wait_until(lambda: not escaped.alive(), 3.0), "untracked process in the namespace survived close()"
    assert lab_namespaces(prefix) == []
    assert not lab.workdir.exists(), "close() must remove the lab's scratch directory"
    with pytest.raises(LabError):
        lab.run("a", ["true"])


def test_failed_build_cleans_up(prefix: str) -> None:
    class Failing(NetnsLab):
        calls = 0

        def _ip(self, *args: str, ns: str | None = None, timeout: float = 10) -> str:
            Failing.calls += 1
            if Failing.calls == 12:  # somewhere in the middle of the members' setup
                raise LabError("injected failure")
            return super()._ip(*args, ns=ns, timeout=timeout)

    with pytest.raises(LabError, match="injected failure"):
        Failing(prefix)
    assert lab_namespaces(prefix) == []

    with pytest.raises(ValueError):
        NetnsLab(prefix, nodes=("a", "with-dash"))
    with pytest.raises(ValueError):
        NetnsLab(prefix, nodes=("a", "b", "c", "d", "e", "f", "g"))


def test_pinger_measures_outage(prefix: str) -> None:
    with NetnsLab(prefix) as lab, Pinger(lab, "client", "192.0.2.2", interval=0.01) as pinger:
        assert pinger.ready_at is not None
        assert pinger.wait_replies(20, timeout=3), f"no echo replies: {pinger.summary()} {pinger.stderr_text()}"
        assert {r.mac for r in pinger.replies} == {"02:00:00:00:00:0b"}
        assert all(r.src == "192.0.2.2" for r in pinger.replies)

        t0 = time.monotonic()
        lab.set_link("b", False)
        time.sleep(0.3)
        lab.set_link("b", True)
        delay = pinger.wait_first_reply_after(t0, timeout=3)
        assert delay is not None, f"no reply after the link came back: {pinger.summary()}"
        assert 0.3 <= delay < 1.0, delay
        gap = pinger.max_gap(start=t0)
        assert 0.3 <= gap < 1.0, gap
        assert len(pinger.outages(0.2, start=t0 - 0.1)) == 1
        assert pinger.max_gap(start=t0 - 0.1, end=t0) < 0.05, "outage before the event"
        assert pinger.running
    assert not pinger.running
    assert lab_namespaces(prefix) == []


def test_keepalived_conf_renders_valid_configs(prefix: str) -> None:
    with NetnsLab(prefix, nodes=("a",), client=False) as lab:
        full_v2 = keepalived_conf(
            150,
            auth_pass="secret",
            preempt_delay=2,
            unicast_src="192.0.2.1",
            unicast_peers=["192.0.2.2"],
            garp_master_delay=1,
            garp_master_repeat=5,
        )
        assert "auth_type PASS" in full_v2 and "unicast_peer {" in full_v2
        check_keepalived_conf(lab, "a", full_v2)
        check_keepalived_conf(lab, "a", keepalived_conf(100, nopreempt=True))
        check_keepalived_conf(lab, "a", keepalived_conf(255, state="MASTER"))
        v3 = keepalived_conf(150, version=3, advert_int=0.1)
        assert "vrrp_version 3" in v3 and "advert_int 0.1" in v3
        check_keepalived_conf(lab, "a", v3)
        # keepalived -t itself catches what the renderer cannot know: a missing interface.
        with pytest.raises(LabError, match="nosuch0"):
            check_keepalived_conf(lab, "a", keepalived_conf(150, interface="nosuch0"))

    bad_params: list[dict[str, Any]] = [
        {"advert_int": 0.5},  # v2 is whole seconds
        {"version": 3, "advert_int": 0.1, "auth_pass": "x"},
        {"auth_pass": "toolongpassword"},
        {"nopreempt": True, "preempt_delay": 1},
        {"state": "MASTER", "nopreempt": True},
        {"vrid": 0},
        {"priority": 256},
        {"vips": []},
    ]
    for bad in bad_params:
        with pytest.raises(ValueError):
            keepalived_conf(**bad)


def test_keepalived_election_and_failover(prefix: str) -> None:
    with NetnsLab(prefix) as lab:
        ka = Keepalived(lab, "a", keepalived_conf(150)).start()
        kb = Keepalived(lab, "b", keepalived_conf(100)).start()
        assert ka.vrrp_pid is not None and ka.vrrp_pid != ka.pid

        assert wait_until(lambda: lab.has_address("a", VIP), ci_bound(MDI_A)), f"a never took the VIP:\n{ka.log()}"
        assert not lab.has_address("b", VIP), f"both hold the VIP:\n{kb.log()}"
        assert lab.ping("client", VIP), "client cannot ping the VIP on a"
        assert lab.neigh_mac("client", VIP) == lab.mac("a")
        assert ka.state() == "MASTER" and kb.state() == "BACKUP"

        vrrp_child = ProcRef.of(ka.vrrp_pid)
        assert vrrp_child is not None
        t0 = time.monotonic()
        ka.kill()
        lab.set_link("a", False)
        assert not ka.running and not vrrp_child.alive(), "keepalived's VRRP child survived kill()"
        assert lab.has_address("a", VIP), "a crashed keepalived leaves its VIP behind"
        assert wait_until(lambda: lab.has_address("b", VIP), ci_bound(MDI_B)), f"b never took over:\n{kb.log()}"
        takeover = time.monotonic() - t0
        # Master_Down_Interval = 3 * 1 + (256 - 100) / 256 = 3.61 s: a priority-0 advert (a
        # graceful exit) would have made b take over after the skew time (0.61 s) instead.
        assert takeover > 2.5, f"takeover after {takeover:.2f} s: kill() was not a crash"
        assert wait_until(lambda: lab.ping("client", VIP, timeout=0.5), 3.0), "VIP unreachable on b"
        assert lab.neigh_mac("client", VIP) == lab.mac("b")
        assert kb.state() == "MASTER"
    assert not kb.running
    assert lab_namespaces(prefix) == []


def test_keepalived_stop_is_graceful(prefix: str) -> None:
    with NetnsLab(prefix) as lab:
        ka = Keepalived(lab, "a", keepalived_conf(150)).start()
        kb = Keepalived(lab, "b", keepalived_conf(100)).start()
        assert wait_until(lambda: lab.has_address("a", VIP), ci_bound(MDI_A)), f"a never took the VIP:\n{ka.log()}"
        assert kb.wait_state("BACKUP", 2.0)
        t0 = time.monotonic()
        assert ka.stop() == 0
        assert not lab.has_address("a", VIP), "SIGTERM must remove keepalived's VIP"
        assert wait_until(lambda: lab.has_address("b", VIP), 3.0), f"b never took over:\n{kb.log()}"
        # Priority 0 from the leaving master: b waits only Skew_Time = 156/256 s.
        assert time.monotonic() - t0 < 2.0
        assert "sent 0 priority" in ka.log()
    assert lab_namespaces(prefix) == []
