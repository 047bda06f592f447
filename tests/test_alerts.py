"""[[notify]] hooks: config validation, and real hook processes run by `agent.alerts.Alerts`.

The hooks here are real scripts written to tmp_path and run on a real asyncio loop: what
matters is what a process sees (its environment), what happens to a process that hangs (it
and its children are killed at the timeout), and that none of it ever makes the caller wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

import agent.alerts as alerts_mod
from agent import config
from agent.actions import Emit
from agent.alerts import Alerts
from agent.config import ConfigError
from agent.instance import Counters, Instance
from agent.journal import Event as Kind
from tests.test_instance_reentrancy import OWN, fakes  # noqa: F401  (fixture)
from vrrp.vip import LinkInfo

REPO = Path(__file__).resolve().parents[1]
BASE = """
[vrrp]
interface = "eth0"
vrid = 51
vips = ["192.0.2.100/24"]
"""
TRANSITION = Emit(Kind.TRANSITION, "VRRP 51 on eth0: BACKUP -> MASTER: master down", logging.INFO,
                  {"VRRP_STATE": "MASTER", "PREV_STATE": "BACKUP", "REASON": "master down", "VRID": 51,
                   "INTERFACE": "eth0", "VRRP_PRIORITY": 100})


def parse_with(extra: str) -> config.Config:
    return config.parse(BASE + extra, "agent.toml")


def hooks_cfg(*tables: str) -> config.Config:
    return parse_with("".join(f"[[notify]]\n{t}\n" for t in tables))


def script(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(0o755)
    return path


# -- config ------------------------------------------------------------------------------------
def test_notify_tables_parse_with_defaults() -> None:
    cfg = hooks_cfg('argv = ["/usr/local/bin/alert", "--to", "ops"]\nevents = ["serving", "fault"]',
                    'argv = ["/bin/true"]\nevents = ["fence"]\ntimeout = 2.5')
    assert [(h.argv, h.events, h.timeout) for h in cfg.notify] == [
        (("/usr/local/bin/alert", "--to", "ops"), ("serving", "fault"), 10.0), (("/bin/true",), ("fence",), 2.5)]
    assert parse_with("").notify == ()


def test_the_node_events_are_accepted_and_are_journal_kinds() -> None:
    names = ("transition", "serving", "released", "fault", "fence", "track", "link", "maintenance", "handover")
    cfg = hooks_cfg(f'argv = ["/bin/true"]\nevents = {json.dumps(list(names))}')
    assert cfg.notify[0].events == names
    assert all(n.upper() in Kind.__members__ for n in config.NOTIFY_EVENTS)


@pytest.mark.parametrize(("table", "key", "words"), [
    ('argv = ["/bin/true"]\nevents = ["serving", "boom"]', "notify[1].events", "'boom' is not an event"),
    ('argv = ["/bin/true"]\nevents = ["started"]', "notify[1].events", "one of transition, step, serving"),
    ('argv = ["/bin/true"]\nevents = ["SERVING"]', "notify[1].events", "is not an event"),
    ('argv = ["/bin/true"]\nevents = ["fault", "fault"]', "notify[1].events", "duplicate"),
    ('argv = ["/bin/true"]\nevents = []', "notify[1].events", "at least 1"),
    ('argv = ["/bin/true"]\nevents = "fault"', "notify[1].events", "must be a list"),
    ('argv = ["/bin/true"]\nevents = [1]', "notify[1].events", "must be a string"),
    ('argv = ["/bin/true"]', "notify[1].events", "is required"),
    ('argv = ["hooks/alert.sh"]\nevents = ["fault"]', "notify[1].argv", "must be an absolute path"),
    ('argv = ["alert.sh"]\nevents = ["fault"]', "notify[1].argv", "no PATH lookup"),
    ('argv = "/bin/alert --x"\nevents = ["fault"]', "notify[1].argv", "not a shell string"),
    ('argv = []\nevents = ["fault"]', "notify[1].argv", "non-empty list"),
    ('argv = ["/bin/alert", 3]\nevents = ["fault"]', "notify[1].argv", "must be a string"),
    ('events = ["fault"]', "notify[1].argv", "is required"),
    ('argv = ["/bin/true"]\nevents = ["fault"]\ntimeout = "5"', "notify[1].timeout", "must be a number"),
    ('argv = ["/bin/true"]\nevents = ["fault"]\ntimeout = 0', "notify[1].timeout", "0.1..600"),
    ('argv = ["/bin/true"]\nevents = ["fault"]\ntimeout = 601', "notify[1].timeout", "0.1..600"),
    ('argv = ["/bin/true"]\nevents = ["fault"]\nshell = true', "notify[1].shell", "unknown key"),
])
def test_bad_hooks_are_refused_naming_file_and_key(table: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        hooks_cfg('argv = ["/bin/true"]\nevents = ["serving"]', table)
    assert info.value.key == key.replace("[1]", "[2]")
    assert words in str(info.value)
    assert str(info.value).startswith("agent.toml: notify[2].")


def test_notify_must_be_an_array_of_tables() -> None:
    with pytest.raises(ConfigError) as info:
        parse_with('[notify]\nargv = ["/bin/true"]\nevents = ["fault"]\n')
    assert info.value.key == "notify" and "[[notify]]" in info.value.reason
    with pytest.raises(ConfigError) as info:
        config.parse('notify = ["/bin/true"]\n' + BASE, "agent.toml")
    assert info.value.key == "notify[1]" and info.value.reason == "must be a table"


def test_changed_hooks_are_a_live_reload() -> None:
    old = hooks_cfg('argv = ["/bin/a"]\nevents = ["fault"]')
    new = hooks_cfg('argv = ["/bin/a"]\nevents = ["fault", "serving"]', 'argv = ["/bin/b"]\nevents = ["fence"]')
    assert config.describe_changes(old, new) == ["notify: [/bin/a on fault] -> [/bin/a on fault/serving, "
                                                 "/bin/b on fence]"]
    assert not config.identity_changes(old, new)


# -- the hook environment ------------------------------------------------------------------------
def test_hook_env_has_the_event_its_fields_and_the_instance() -> None:
    env = alerts_mod.hook_env(Emit(Kind.FENCE, "asked the peer\0", logging.WARNING,
                                   {"ANSWER": "outdated", "PEER": "192.0.2.2", "EVENT": "forged", "odd-key": 1}),
                              51, "eth0", at=0.0)
    assert env["FAILOVER_EVENT"] == "fence" and env["FAILOVER_MESSAGE"] == "asked the peer "
    assert env["FAILOVER_ANSWER"] == "outdated" and env["FAILOVER_PEER"] == "192.0.2.2"
    assert env["FAILOVER_ODD_KEY"] == "1"
    assert (env["FAILOVER_VRID"], env["FAILOVER_INTERFACE"], env["FAILOVER_LEVEL"]) == ("51", "eth0", "warning")
    assert env["FAILOVER_MESSAGE_ID"] == Kind.FENCE.value
    assert datetime.fromisoformat(env["FAILOVER_TIME"]).timestamp() == 0.0


# -- real hooks on a real loop -------------------------------------------------------------------
ENV_DUMP = f"""#!{sys.executable}
import json, os, sys, time
t0 = time.time()
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
with open(f"{{sys.argv[1]}}.{{os.getpid()}}", "w") as f:
    json.dump({{"env": dict(os.environ), "start": t0, "end": time.time()}}, f)
"""


def dumps(prefix: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(prefix.parent.glob(prefix.name + ".*"))]


def test_a_hook_runs_with_the_event_in_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = script(tmp_path / "dump.py", ENV_DUMP)
    out = tmp_path / "out"
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # the agent's, not the hook's
    monkeypatch.setenv("FAILOVER_STALE", "from the agent's own environment")
    cfg = hooks_cfg(f'argv = ["{hook}", "{out}"]\nevents = ["transition", "serving"]',
                    f'argv = ["{hook}", "{out}-fault"]\nevents = ["fault"]')

    async def scenario() -> Alerts:
        alerts = Alerts(cfg)
        alerts.send(TRANSITION)
        alerts.send(Emit(Kind.STEP, "vip acquire done", fields={"STEP": "vip_acquire"}))  # not subscribed
        alerts.send(Emit(None, "dropped VRRP packet: %s", args=("ttl",)))  # a plain log line
        assert await alerts.wait(10)
        return alerts

    alerts = asyncio.run(scenario())
    (run,) = dumps(out)
    env = run["env"]
    assert env["FAILOVER_EVENT"] == "transition"
    assert env["FAILOVER_MESSAGE"] == TRANSITION.message
    assert (env["FAILOVER_VRRP_STATE"], env["FAILOVER_PREV_STATE"], env["FAILOVER_REASON"]) == (
        "MASTER", "BACKUP", "master down")
    assert (env["FAILOVER_VRID"], env["FAILOVER_INTERFACE"], env["FAILOVER_VRRP_PRIORITY"]) == ("51", "eth0", "100")
    assert "NOTIFY_SOCKET" not in env and "FAILOVER_STALE" not in env
    assert env["PATH"] == os.environ["PATH"]
    assert dumps(tmp_path / "out-fault") == []
    assert alerts.stats() == {"hooks": 2, "running": 0, "queued": 0, "started": 1, "failed": 0, "dropped": 0}


SLOW = """#!/bin/sh
# a child in the background and one in the foreground: both must die at the timeout
sleep 30 &
echo $! > "$1"
exec sleep 30
"""


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_slow_hook_is_killed_at_its_timeout_and_delays_nothing(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    slow = script(tmp_path / "slow.sh", SLOW)
    fast = script(tmp_path / "dump.py", ENV_DUMP)
    pidfile, out = tmp_path / "bg.pid", tmp_path / "out"
    cfg = hooks_cfg(f'argv = ["{slow}", "{pidfile}"]\nevents = ["transition"]\ntimeout = 0.5',
                    f'argv = ["{fast}", "{out}"]\nevents = ["transition"]')

    async def scenario() -> tuple[float, float, float, float]:
        loop = asyncio.get_running_loop()
        alerts = Alerts(cfg)
        t0 = time.perf_counter()
        alerts.send(TRANSITION)
        call = time.perf_counter() - t0
        # the loop keeps its own pace meanwhile: the worst lateness of a 10 ms ticker
        late, start = 0.0, loop.time()
        while alerts.running:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            late = max(late, loop.time() - due)
            assert loop.time() - start < 5, "the slow hook outlived its timeout"
        return call, late, loop.time() - start, 0.0

    with caplog.at_level(logging.WARNING, "failover-agent"):
        call, late, took, _ = asyncio.run(scenario())
    assert call < 0.005, f"send() took {call * 1000:.1f} ms: it must only schedule"
    assert late < 0.1, f"the loop was held up {late * 1000:.0f} ms"
    assert 0.5 <= took < 2.0
    assert len(dumps(out)) == 1  # the fast hook ran alongside
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"notify: hook {slow} on transition failed: still running after its timeout of 0.5 s: killed" \
        == record.getMessage()
    deadline = time.monotonic() + 2
    while not _dead(int(pidfile.read_text())) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _dead(int(pidfile.read_text())), "the hook's background child survived the timeout"


def test_failing_hooks_log_a_warning_with_program_and_reason(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    failing = script(tmp_path / "fail.sh", "#!/bin/sh\necho 'smtp: connection refused' >&2\nexit 3\n")
    not_exec = tmp_path / "not-exec.sh"
    not_exec.write_text("#!/bin/sh\n")
    cfg = hooks_cfg(f'argv = ["{failing}"]\nevents = ["fault"]',
                    f'argv = ["{tmp_path}/missing"]\nevents = ["fault"]',
                    f'argv = ["{not_exec}"]\nevents = ["fault"]')

    async def scenario() -> Alerts:
        alerts = Alerts(cfg)
        alerts.send(Emit(Kind.FAULT, "fault: mount failed", logging.ERROR, {"REASON": "mount failed"}))
        assert await alerts.wait(10)
        return alerts

    with caplog.at_level(logging.WARNING, "failover-agent"):
        alerts = asyncio.run(scenario())
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(warnings) == 3 and alerts.failed == 3
    assert any(w.startswith(f"notify: hook {failing} on fault failed: exit 3 after ")
               and w.endswith("ms: smtp: connection refused") for w in warnings), warnings
    assert f"notify: hook {tmp_path}/missing on fault failed: cannot run it: No such file or directory" in warnings
    assert f"notify: hook {not_exec} on fault failed: cannot run it: Permission denied" in warnings


def test_at_most_four_hooks_run_at_once_the_rest_wait_their_turn(tmp_path: Path) -> None:
    hook = script(tmp_path / "dump.py", ENV_DUMP)
    out = tmp_path / "out"
    cfg = hooks_cfg(f'argv = ["{hook}", "{out}", "0.3"]\nevents = ["track"]')

    async def scenario() -> int:
        alerts = Alerts(cfg)
        most = 0
        for i in range(10):
            alerts.send(Emit(Kind.TRACK, f"witness {i} down", logging.WARNING, {"TARGET": f"192.0.2.{i}"}))
        while alerts.running or alerts.queued:
            most = max(most, alerts.running)
            await asyncio.sleep(0.01)
        return most

    assert asyncio.run(scenario()) == alerts_mod.MAX_RUNNING == 4
    runs = dumps(out)
    assert sorted(r["env"]["FAILOVER_TARGET"] for r in runs) == sorted(f"192.0.2.{i}" for i in range(10))
    # seen from the hooks themselves: never more than four alive at the same moment, and four did overlap
    edges = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    alive = peak = 0
    for _, step in edges:
        alive += step
        peak = max(peak, alive)
    assert peak == 4


def test_past_the_queue_runs_are_dropped_counted_and_told(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hook = script(tmp_path / "dump.py", ENV_DUMP)
    out = tmp_path / "out"
    cfg = hooks_cfg(f'argv = ["{hook}", "{out}", "0.2"]\nevents = ["link"]')

    async def scenario() -> Alerts:
        alerts = Alerts(cfg, max_running=1, max_queued=2)
        for i in range(6):
            alerts.send(Emit(Kind.LINK, f"flap {i}", fields={"LINK": "down"}))
        assert (alerts.running, alerts.queued, alerts.dropped) == (1, 2, 3)
        assert await alerts.wait(10)
        return alerts

    with caplog.at_level(logging.WARNING, "failover-agent"):
        alerts = asyncio.run(scenario())
    assert len(dumps(out)) == 3 and alerts.stats()["dropped"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one when dropping starts, one summary: not one per drop
    assert warnings[0].startswith("notify: 1 hooks running and 2 queued: dropping hook runs")
    assert warnings[1] == "notify: 3 hook run(s) dropped while the queue was full (3 in all)"


def test_close_kills_what_outlives_the_grace(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    slow = script(tmp_path / "slow.sh", SLOW)
    pidfile = tmp_path / "bg.pid"
    cfg = hooks_cfg(f'argv = ["{slow}", "{pidfile}"]\nevents = ["released"]\ntimeout = 60')

    async def scenario() -> float:
        alerts = Alerts(cfg, max_running=1)
        alerts.send(Emit(Kind.RELEASED, "released: vip"))
        alerts.send(Emit(Kind.RELEASED, "released: vip"))  # queued
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await alerts.close(grace=0.3)
        assert alerts.running == alerts.queued == 0
        return time.monotonic() - t0

    with caplog.at_level(logging.WARNING, "failover-agent"):
        took = asyncio.run(scenario())
    assert 0.3 <= took < 1.5
    assert _dead(int(pidfile.read_text()))
    assert "notify: stopping: 1 queued hook run(s) dropped" in caplog.text
    assert "notify: stopping: 1 hook(s) still running after 0.3 s were killed" in caplog.text


def test_reload_changes_the_hooks_live(tmp_path: Path) -> None:
    hook = script(tmp_path / "dump.py", ENV_DUMP)

    async def scenario() -> None:
        alerts = Alerts(hooks_cfg(f'argv = ["{hook}", "{tmp_path}/old"]\nevents = ["fault"]'))
        alerts.send(Emit(Kind.FAULT, "one"))
        alerts.configure(hooks_cfg(f'argv = ["{hook}", "{tmp_path}/new"]\nevents = ["fence"]'))
        alerts.send(Emit(Kind.FAULT, "two"))  # nobody listens to fault now
        alerts.send(Emit(Kind.FENCE, "three"))
        assert await alerts.wait(10)

    asyncio.run(scenario())
    assert [r["env"]["FAILOVER_MESSAGE"] for r in dumps(tmp_path / "old")] == ["one"]
    assert [r["env"]["FAILOVER_MESSAGE"] for r in dumps(tmp_path / "new")] == ["three"]


@pytest.mark.usefixtures("fakes")
def test_the_instance_hands_the_nodes_events_to_its_hooks(tmp_path: Path) -> None:
    """Through the real adapter: the node's transition reaches a hook; a reconfigure switches hooks."""
    hook = script(tmp_path / "dump.py", ENV_DUMP)
    text = BASE.replace("vrid = 51", "vrid = 51\nversion = 3\nadvert_interval = 0.1") + \
        f'[agent]\nstate_file = "{tmp_path}/state.json"\n'
    first = config.parse(text + f'[[notify]]\nargv = ["{hook}", "{tmp_path}/a"]\nevents = ["transition"]\n')
    second = config.parse(text + f'[[notify]]\nargv = ["{hook}", "{tmp_path}/b"]\nevents = ["released"]\n')

    async def scenario() -> dict[str, Any]:
        alerts = Alerts()
        inst = Instance(first, None, LinkInfo("eth0", 2, b"\x02\x00\x00\x00\x00\x01", OWN, True), Counters(),
                        alerts=alerts)
        await inst.start()
        await asyncio.sleep(0.8)  # no other master: MASTER after Master_Down_Interval, serving the VIP
        await inst.reconfigure(second)
        await inst.stop("test over")  # released, then priority 0
        status = inst.status()
        assert await alerts.wait(10)
        return status

    status = asyncio.run(scenario())
    states = sorted(r["env"]["FAILOVER_VRRP_STATE"] for r in dumps(tmp_path / "a"))
    assert "MASTER" in states, states
    assert all(r["env"]["FAILOVER_VRID"] == "51" for r in dumps(tmp_path / "a"))
    assert all(r["env"]["FAILOVER_INSTANCE"] == "vrrp-51" for r in dumps(tmp_path / "a"))
    assert [r["env"]["FAILOVER_EVENT"] for r in dumps(tmp_path / "b")] == ["released"]
    assert status["notify"]["hooks"] == 1


# -- the example hook ----------------------------------------------------------------------------
EXAMPLE = REPO / "examples" / "notify-mail.py"
EVENT_ENV = {"FAILOVER_EVENT": "serving", "FAILOVER_MESSAGE": "became MASTER: master down; VIP 192.0.2.100/24 up",
             "FAILOVER_VRRP_STATE": "MASTER", "FAILOVER_VRID": "51"}


def test_example_hook_mails_through_sendmail(tmp_path: Path) -> None:
    mailbox = tmp_path / "mail"
    sendmail = script(tmp_path / "sendmail", f'#!/bin/sh\necho "$@" > "{mailbox}.args"\ncat > "{mailbox}"\n')
    done = subprocess.run([sys.executable, str(EXAMPLE), "--mail", "ops@example.org", "--sendmail", str(sendmail)],
                          env={**os.environ, **EVENT_ENV}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    mail = mailbox.read_text()
    assert (tmp_path / "mail.args").read_text().split() == ["-t", "-oi"]
    assert "To: ops@example.org" in mail
    assert "Subject: [failover-agent] " in mail and ": serving (MASTER): became MASTER" in mail
    assert "vrid: 51" in mail


def test_example_hook_without_sendmail_fails_clearly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE), "--mail", "ops@example.org", "--sendmail",
                           str(tmp_path / "none")], env={**os.environ, **EVENT_ENV}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1 and "not found" in done.stderr


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook/secret-token", got
    server.shutdown()
    server.server_close()


def test_example_hook_posts_to_a_webhook_read_from_a_file(tmp_path: Path,
                                                          webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = webhook
    url_file = tmp_path / "webhook.url"
    url_file.write_text(url + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("http_proxy", "HTTP_PROXY")}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--webhook-file", str(url_file)],
                          env={**env, **EVENT_ENV}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    (body,) = got
    assert body["event"] == "serving" and body["fields"]["vrrp_state"] == "MASTER"
    assert "serving (MASTER): became MASTER" in body["text"]
