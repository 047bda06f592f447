"""`[[service]]` steps in the config, the chain order, the machine, reload, status and check-config.

The systemd side is driven through a stand-in `systemctl` program written into tmp_path (a real
process with a state file), so the unit adapter's commands, verification and parsing run for
real; tests/test_service_unit_lab.py runs a real systemd.
"""

from __future__ import annotations

import asyncio
import os
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from agent import checkconfig, services
from agent.cli import format_status
from agent.config import ConfigError, ServiceConfig, describe_changes, identity_changes, parse
from agent.machine import ORDER, Machine, Op, Phase, RunStep, Service, Settings, Step
from agent.node import machine_settings
from drbd.runner import run
from tests.test_config import BASE

STORAGE = BASE + """
[drbd]
resource = "r0"
[filesystem]
device = "/dev/drbd0"
mountpoint = "/srv/data"
[nfs]
exports = [{ path = "/srv/data/export", clients = "192.0.2.0/24", options = "rw,fsid=1" }]
"""
DB = """
[[service]]
name = "db"
start = ["/usr/local/sbin/db-ctl", "start"]
stop = ["/usr/local/sbin/db-ctl", "stop"]
check = ["/usr/local/sbin/db-ctl", "status"]
timeout = 60
"""
DNS = """
[[service]]
name = "dns"
unit = "unbound.service"
"""


# -- config ----------------------------------------------------------------------------------------
def test_services_come_after_nfs_and_before_the_vip_in_file_order() -> None:
    cfg = parse(STORAGE + DB + DNS, "agent.toml")
    assert cfg.steps == (*ORDER[:-1], Service("db"), Service("dns"), Step.VIP)
    assert [str(s) for s in cfg.steps][-3:] == ["service:db", "service:dns", "vip"]
    db, dns = cfg.services
    assert db == ServiceConfig("db", start=("/usr/local/sbin/db-ctl", "start"), stop=("/usr/local/sbin/db-ctl", "stop"),
                               check=("/usr/local/sbin/db-ctl", "status"), timeout=60.0)
    assert dns.unit == "unbound.service" and dns.timeout == cfg.monitor.step_timeout == 30.0
    assert machine_settings(cfg).timeouts[Service("db")] == 60.0
    assert machine_settings(cfg).timeouts[Step.NFS] == 30.0


def test_a_vip_only_pair_with_a_unit_and_the_default_timeout_from_monitor() -> None:
    cfg = parse(BASE + "[monitor]\nstep_timeout = 12\n" + DNS, "agent.toml")
    assert cfg.steps == (Service("dns"), Step.VIP) and cfg.services[0].timeout == 12.0


def test_without_services_the_chain_is_what_it_always_was() -> None:
    assert parse(STORAGE, "agent.toml").steps == ORDER
    assert parse(BASE, "agent.toml").steps == (Step.VIP,)


@pytest.mark.parametrize(("text", "key", "why"), [
    ('name = "db"\nunit = "db.service"\nstart = ["/bin/true"]', "service[1].start", "not both"),
    ('name = "db"\nstart = ["/bin/true"]\ncheck = ["/bin/true"]', "service[1].stop", "is required"),
    ('name = "db"', "service[1]", "needs a systemd `unit`, or `start`, `stop` and `check`"),
    ('unit = "db.service"', "service[1].name", "is required"),
    ('name = "my db"\nunit = "db.service"', "service[1].name", "is not a service name"),
    ('name = "db"\nunit = "mariadb"', "service[1].unit", "is not a unit systemctl can start"),
    ('name = "db"\nunit = "getty@.service"', "service[1].unit", "a template needs its instance"),
    ('name = "db"\nstart = "/etc/init.d/db start"\nstop = ["/bin/true"]\ncheck = ["/bin/true"]', "service[1].start",
     "not a shell string"),
    ('name = "db"\nstart = ["db-ctl"]\nstop = ["/bin/true"]\ncheck = ["/bin/true"]', "service[1].start",
     "must be an absolute path"),
    ('name = "db"\nunit = "db.service"\ntimeout = 0.5', "service[1].timeout", "must be in 1..3600"),
    ('name = "db"\nunit = "db.service"\nrestart = true', "service[1].restart", "unknown key"),
])  # fmt: skip
def test_invalid_services_name_the_key(text: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(BASE + "\n[[service]]\n" + text + "\n", "agent.toml")
    assert e.value.key == key and why in e.value.reason, str(e.value)


def test_twins_and_the_nfs_server_are_refused_and_the_line_is_found() -> None:
    text = BASE + DNS + DNS.replace('unit = "unbound.service"', 'unit = "bind9.service"')
    with pytest.raises(ConfigError) as e:
        parse(text, "agent.toml")
    assert (e.value.key, e.value.reason) == ("service[2].name", "'dns' is already the name of service[1]")
    assert checkconfig.key_line(text, e.value.key) == text.splitlines().index('name = "dns"', 8) + 1
    with pytest.raises(ConfigError, match=r"service\[2\].unit: unbound.service is already started by service\[1\]"):
        parse(BASE + DNS + DNS.replace('"dns"', '"dns2"'), "agent.toml")
    with pytest.raises(ConfigError, match=r"nfs-server.service is the NFS server the \[nfs\] section starts"):
        parse(STORAGE + DNS.replace("unbound.service", "nfs-server.service"), "agent.toml")
    with pytest.raises(ConfigError, match=r"service: must be \[\[service\]\] tables"):
        parse('service = "db"\n' + BASE, "agent.toml")


def test_reload_a_timeout_applies_live_anything_else_is_a_new_chain() -> None:
    old = parse(STORAGE + DB + DNS, "agent.toml")
    slower = parse(STORAGE + DB.replace("timeout = 60", "timeout = 90") + DNS, "agent.toml")
    assert describe_changes(old, slower) == ["service.db.timeout: 60.0 -> 90.0"]
    assert identity_changes(old, slower) == []
    moved = parse(STORAGE + DNS + DB.replace('"status"', '"ping"'), "agent.toml")
    assert identity_changes(old, moved) == ["service.db.check", "[[service]] order"]
    assert identity_changes(old, parse(STORAGE + DB, "agent.toml")) == ["[[service]] dns removed"]
    assert describe_changes(parse(STORAGE, "agent.toml"), old) == ["[[service]] db added", "[[service]] dns added"]


# -- the machine: services are steps like the built-in ones ----------------------------------------------
def test_the_machine_keeps_services_between_nfs_and_the_vip() -> None:
    Machine(Settings(steps=(Step.DRBD, Step.MOUNT, Service("a"), Service("b"), Step.VIP)))
    for wrong in [(Service("a"), Step.MOUNT, Step.VIP), (Step.VIP, Service("a")), (Service("a"), Service("a"))]:
        with pytest.raises(ValueError, match="services before the VIP"):
            Machine(Settings(steps=wrong))


def test_a_failed_service_acquire_rolls_back_in_exact_reverse_and_release_is_the_reverse() -> None:
    steps = (Step.DRBD, Step.MOUNT, Service("a"), Service("b"), Step.VIP)
    m = Machine(Settings(steps=steps))
    done: list[str] = []
    actions = m.vrrp_master(0.0, "test")
    while (run := m.running) is not None:
        ok = not (run.step == Service("b") and run.op == Op.ACQUIRE)
        done.append(f"{run.op} {run.step}")
        actions = m.step_done(run.step, run.op, ok, "ok" if ok else "boom", 0.0)
    assert done == ["acquire drbd", "acquire mount", "acquire service:a", "acquire service:b", "release service:a",
                    "release mount", "release drbd"]
    assert m.phase == Phase.FAULT and "service:b failed: boom" in m.fault_reason and actions
    m.reset(100.0)
    m.vrrp_master(100.0, "again")
    while (run := m.running) is not None:
        m.step_done(run.step, run.op, True, "ok", 100.0)
    assert m.held == list(steps)
    m.vrrp_lost(101.0, "preempted")
    released = []
    while (run := m.running) is not None:
        released.append(run.step)
        m.step_done(run.step, run.op, True, "ok", 101.0)
    assert released == list(reversed(steps))


def test_service_steps_pickle_and_compare_as_their_names() -> None:
    import copy
    import pickle

    s = Service("db")
    assert s.name == "db" and s == "service:db" and s != Step.VIP and f"{s}_acquire" == "service:db_acquire"
    assert pickle.loads(pickle.dumps(s)) == s and copy.deepcopy(s).name == "db"
    assert RunStep(s, Op.CHECK, 1.0) == RunStep(Service("db"), Op.CHECK, 1.0)


# -- status ---------------------------------------------------------------------------------------------
def test_status_shows_each_service_held_or_not_with_its_last_duration() -> None:
    chain = ["service:dns-resolver", "vip"]
    instance = {"state": "MASTER", "vrid": 51, "interface": "eth0", "address": "192.0.2.1", "version": 3,
                "priority": 150, "advert_interval": 1.0, "master_down_interval": 3.41, "preempt": True,
                "maintenance": False, "yielding": False, "master": "192.0.2.1", "link_up": True,
                "vips": ["192.0.2.100/24"], "vips_held": True, "phase": "SERVING", "held": chain, "chain": chain,
                "faults": {}, "peer": None, "track": None, "last_transition": None,
                "steps": {"service:dns-resolver_acquire": 812.5, "service:dns-resolver_release": 40.0,
                          "vip_acquire": 1.5},
                "fault": None, "hold_left": None, "peer_heard_ago": None,
                "counters": {"transitions": 1, "became_master": 1, "faults": 0, "adverts_sent": 1,
                             "adverts_received": 0, "drops": {}, "doorbell_wakeups": 0, "garp_sent": 5}}
    text = format_status({"agent": {"version": "0", "pid": 1, "config": "/x", "uptime": 1.0, "reloads": 0,
                                    "reload_failures": 0},
                          "instance": instance, "steps": instance["steps"],
                          "storage": {"chain": chain, "phase": "SERVING", "held": chain}})
    assert "  service:dns-resolver  held      last acquire 812.5 ms; release 40.0 ms" in text, text
    assert "  vip                   held      last acquire 1.5 ms" in text, text


# -- the unit adapter and check-config against a stand-in systemctl --------------------------------------------
SYSTEMCTL = r'''#!{python}
import os, sys
state_dir = {state!r}
verb, unit = sys.argv[1], sys.argv[-1]
path = os.path.join(state_dir, unit)
known = unit != "missing.service"
state = open(path).read() if os.path.exists(path) else "inactive"
if verb == "show":
    print("LoadState=" + ("loaded" if known else "not-found"))
    print("UnitFileState=" + ("enabled" if unit.startswith("enabled") else "disabled" if known else ""))
elif verb == "start":
    if not known:
        print(f"Failed to start {{unit}}: Unit {{unit}} not found.", file=sys.stderr)
        sys.exit(5)
    if unit.startswith("crashing"):
        open(path, "w").write("failed")
        print(f"Job for {{unit}} failed because the control process exited with error code.", file=sys.stderr)
        sys.exit(1)
    open(path, "w").write("active")
elif verb == "stop":
    open(path, "w").write("inactive")
elif verb == "is-active":
    print(state)
    sys.exit(0 if state == "active" else 3)
'''


@pytest.fixture
def systemctl(tmp_path: Path) -> str:
    (tmp_path / "state").mkdir()
    path = tmp_path / "systemctl"
    path.write_text(SYSTEMCTL.format(python=sys.executable, state=str(tmp_path / "state")))
    path.chmod(0o755)
    return str(path)


def test_a_unit_is_started_verified_active_checked_and_stopped(systemctl: str) -> None:
    unit = services.Unit(ServiceConfig("dns", unit="unbound.service", timeout=5.0), run, systemctl)

    async def scenario() -> None:
        assert not await unit.running()
        assert await unit.acquire() == "service dns (unit unbound.service) running: unbound.service active"
        assert await unit.check() == "unbound.service active"
        assert await unit.release() == "service dns (unit unbound.service) stopped: unbound.service inactive"
        with pytest.raises(services.ServiceError, match=r"is not running: unbound.service inactive"):
            await unit.check()

    asyncio.run(scenario())


def test_a_unit_that_fails_to_start_says_what_systemctl_said(systemctl: str) -> None:
    unit = services.Unit(ServiceConfig("db", unit="crashing.service", timeout=2.0), run, systemctl)
    with pytest.raises(services.ServiceError, match=r"start exited 1: Job for crashing\.service failed"):
        asyncio.run(unit.acquire())


def test_check_config_looks_up_units_and_service_programs(systemctl: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(systemctl).parent}:{os.environ['PATH']}")
    assert asyncio.run(checkconfig.check_unit("unbound.service", run)).line() == \
        "service unit unbound.service: ok (loaded, disabled)"
    assert "systemd does not know it (LoadState=not-found)" in asyncio.run(
        checkconfig.check_unit("missing.service", run)).problem
    assert "systemctl disable enabled-dns.service" in asyncio.run(
        checkconfig.check_unit("enabled-dns.service", run)).problem
    ctl = tmp_path / "db-ctl"
    ctl.write_text("#!/bin/sh\n")
    ctl.chmod(0o644)
    text = (BASE + DNS + DB.replace('"db"', '"db2"').replace("/usr/local/sbin/db-ctl", str(ctl))
            .replace('check = ["' + str(ctl), 'check = ["/bin/true'))
    cfg = parse(text, "agent.toml")

    async def primary(_: str) -> IPv4Address:
        return IPv4Address("192.0.2.1")

    lines = [f.line() for f in asyncio.run(checkconfig.host_findings(cfg, primary, run))]
    assert lines[1:] == ["service unit unbound.service: ok (loaded, disabled)",
                         f"service db2 program {ctl}: FAILED: is not executable (mode 644; chmod +x it)",
                         "service db2 program /bin/true: ok"]


def test_the_mariadb_example_parses_with_its_program_variant_too() -> None:
    """The commented-out start/stop/check block, uncommented in place of the unit, is valid as well."""
    text = (Path(__file__).resolve().parents[1] / "examples" / "drbd-mariadb.toml").read_text()
    unit = text[text.index("[[service]]"):text.index("# The same with programs")]
    commented = text[text.index("# [[service]]"):text.index("\n\n", text.index("# [[service]]"))]
    programs = "\n".join(line.removeprefix("# ") for line in commented.splitlines())
    cfg = parse(text.replace(unit, "").replace(commented, programs), "drbd-mariadb.toml (programs)")
    (svc,) = cfg.services
    assert svc.unit == "" and svc.start[0] == "/usr/bin/systemd-run" and svc.check[-1] == "ping"
    assert [str(s) for s in cfg.steps] == ["drbd", "mount", "service:mariadb", "vip"]


# -- the node: services ride the same chain ---------------------------------------------------------
def test_a_node_takes_over_with_its_service_before_the_vip_and_restarts_it_when_it_dies() -> None:
    from agent import actions as act
    from agent import events as ev
    from tests.test_node import Drive, of

    d = Drive(BASE + "[monitor]\ninterval = 1.0\n" + DNS.replace('unit = "unbound.service"',
                                                                  'unit = "unbound.service"\ntimeout = 7'))
    d.master()
    dns = Service("dns")
    assert of(act.RunStep, d.log)[-1] == RunStep(dns, Op.ACQUIRE, 7.0)
    d.feed(ev.StepDone(dns, Op.ACQUIRE, True, "unbound.service active", 812.5))
    d.answer_steps()
    assert d.node.machine.phase == Phase.SERVING and d.node.snapshot().held == ("service:dns", "vip")
    assert d.node.snapshot().durations["service:dns_acquire"] == 812.5
    step_lines = [e for e in of(act.Emit, d.log) if e.fields.get("STEP") == "service:dns_acquire"]
    assert step_lines and step_lines[0].message.startswith("service:dns acquire done in 812.5 ms")

    d.until(d.now + 1.0)  # the monitor looks at the service; it has died
    assert d.node.machine.running == RunStep(dns, Op.CHECK, 7.0)
    d.feed(ev.StepDone(dns, Op.CHECK, False, "unbound.service failed"))
    released = [str(d.node.machine.running.step if d.node.machine.running else None)]
    d.answer_steps()
    assert released == ["vip"]  # the VIP goes first: no client reaches a node without its resolver
    assert [f"{r.op} {r.step}" for r in of(act.RunStep, d.log)[-5:]] == [
        "check service:dns", "release vip", "release service:dns", "acquire service:dns", "acquire vip"]
    assert d.node.machine.phase == Phase.SERVING
