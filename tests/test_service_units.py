"""Unit tests of the service plumbing: keepalived import, control socket, metrics, journal events."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from agent import config as configmod
from agent import control, journal, keepalived_import, metrics
from tests.lab.keepalived import render_keepalived_conf

SAMPLE = """
! a typical DRBD/NFS pair
global_defs {
   router_id NFS1
   script_user root
   enable_script_security
}
vrrp_script chk_nfs {
    script "/usr/local/bin/check_nfs.sh"
    interval 2
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 1
    nopreempt
    authentication {
        auth_type PASS
        auth_pass s3cr3t
    }
    unicast_peer {
        192.0.2.2
    }
    virtual_ipaddress {
        192.0.2.100/24 dev eth0 label eth0:nfs
        192.0.2.101
    }
    track_script {
        chk_nfs
    }
    garp_master_delay 1
    garp_master_repeat 5
    garp_master_refresh 60
    notify_master "/etc/keepalived/drbd-master.sh"   # promote, mount, start nfs
    notify_backup "/etc/keepalived/drbd-backup.sh"
    use_vmac
}
vrrp_instance VI_2 {
    interface eth1
    virtual_router_id 52
    priority 100
    advert_int 1
    virtual_ipaddress {
        198.51.100.10/24
    }
}
"""


def test_import_maps_every_documented_field() -> None:
    res = keepalived_import.convert(SAMPLE, source="keepalived.conf")
    cfg = configmod.parse(res.toml, "out.toml").vrrp
    assert (cfg.interface, cfg.vrid, cfg.priority, cfg.advert_interval) == ("eth0", 51, 150, 1.0)
    assert cfg.preempt is False and cfg.auth_pass == "s3cr3t"
    assert [str(v) for v in cfg.vips] == ["192.0.2.100/24", "192.0.2.101/32"]
    assert [str(p) for p in cfg.unicast_peers] == ["192.0.2.2"]
    assert cfg.garp_refresh == 60 and cfg.garp_count == 10 and cfg.garp_interval == pytest.approx(0.111)
    text = res.toml
    # the notify scripts are not on this host: what they do to storage is unknown, so not silent
    assert "# NEEDS REVIEW: notify_master /etc/keepalived/drbd-master.sh: cannot read" in text
    assert "# NEEDS REVIEW: notify_backup" in text
    for unmapped in ("state MASTER", "track_script", "use_vmac", "label", "vrrp_script chk_nfs"):
        assert unmapped in text, unmapped
    assert "VI_2" in text and "--instance" in text


def test_import_picks_the_named_instance_and_v3() -> None:
    second = SAMPLE.replace("advert_int 1\n    virtual_ipaddress {\n        198",
                            "advert_int 0.5\n    version 3\n    virtual_ipaddress {\n        198")
    res = keepalived_import.convert(second, instance="VI_2")
    cfg = configmod.parse(res.toml).vrrp
    assert (cfg.interface, cfg.vrid, cfg.version, cfg.advert_interval) == ("eth1", 52, 3, 0.5)


@pytest.mark.parametrize(("text", "words"), [
    ("global_defs {\n}\n", "no vrrp_instance"),
    ("vrrp_instance X {\n interface eth0\n", "unterminated"),
    ("}\n", "unmatched"),
    ("vrrp_instance X {\n interface eth0\n virtual_router_id 900\n priority 100\n virtual_ipaddress {\n"
     " 192.0.2.1\n }\n}\n", "vrrp.vrid"),
    ("vrrp_instance X {\n interface eth0\n virtual_router_id 5\n priority high\n}\n", "not a number"),
])
def test_import_errors(text: str, words: str) -> None:
    with pytest.raises(keepalived_import.ImportError_, match=words):
        keepalived_import.convert(text)


@pytest.mark.parametrize(("option", "value"), [
    *((o, v) for o in ("virtual_router_id", "priority", "version", "garp_master_repeat")
      for v in ("inf", "-inf", "nan", "1e400")),
    *(("advert_int", v) for v in ("inf", "-inf", "nan")),  # a finite huge one is ignored as keepalived does
])
def test_import_refuses_numbers_that_are_not_finite(value: str, option: str) -> None:
    """Found by bench.fuzz: int(float('inf')) raised OverflowError (and 'nan' ValueError) out of convert()."""
    text = (f"vrrp_instance X {{\n interface eth0\n virtual_router_id 5\n {option} {value}\n"
            " virtual_ipaddress {\n 192.0.2.1\n }\n}\n")
    with pytest.raises(keepalived_import.ImportError_, match="not a number"):
        keepalived_import.convert(text)
    with pytest.raises(keepalived_import.ImportError_, match="not a number"):
        keepalived_import.convert(f"global_defs {{\n vrrp_version {value}\n}}\n" + text.replace(value, "1"))


@pytest.mark.parametrize("value", ["1e308", "4294967296", "-1", "2.5"])
def test_import_refuses_a_garp_repeat_keepalived_would_not_read(value: str) -> None:
    """Found by bench.fuzz: 1e308 became an int too large to divide the delay by (OverflowError)."""
    text = ("vrrp_instance X {\n interface eth0\n virtual_router_id 5\n garp_master_delay 1\n"
            f" garp_master_repeat {value}\n virtual_ipaddress {{\n 192.0.2.1\n }}\n}}\n")
    with pytest.raises(keepalived_import.ImportError_, match="whole number"):
        keepalived_import.convert(text)
    assert configmod.parse(keepalived_import.convert(text.replace(value, "4294967295")).toml).vrrp.garp_count == 100


@pytest.mark.parametrize("version", [2, 3])
def test_import_round_trips_the_lab_configs(version: int) -> None:
    """What our keepalived interop lab runs converts to the agent config we run against it."""
    text = render_keepalived_conf(name="ka_a", interface="eth0", vrid=51, priority=150,
                                  advert_int=1.0 if version == 2 else 0.2, version=version,
                                  vips=["192.0.2.100/24"], auth_pass="s3cr3t" if version == 2 else "",
                                  nopreempt=True)
    cfg = configmod.parse(keepalived_import.convert(text).toml).vrrp
    assert (cfg.vrid, cfg.priority, cfg.version, cfg.preempt) == (51, 150, version, False)
    assert cfg.advert_interval == (1.0 if version == 2 else 0.2)
    assert cfg.auth_pass == ("s3cr3t" if version == 2 else "")


def test_failoverctl_import_command(tmp_path: Path) -> None:
    from agent import cli

    src, out = tmp_path / "keepalived.conf", tmp_path / "agent.toml"
    src.write_text(SAMPLE)
    assert cli.main(["import-keepalived", str(src), "-o", str(out)]) == 3  # needs review: unreadable notify scripts
    assert [c.vrrp.vrid for c in configmod.load_process(out).instances][:1] == [51]  # every vrrp_instance
    assert cli.main(["import-keepalived", str(src), "--instance", "VI_1", "-o", str(out)]) == 3
    assert configmod.load(out).vrrp.vrid == 51
    assert cli.main(["import-keepalived", str(tmp_path / "missing.conf")]) == 2


# -- control socket ------------------------------------------------------------------------

async def _with_server(path: Path, handler: control.Handler, client_calls: list[Any]) -> list[Any]:
    server = control.ControlServer(str(path), handler)
    await server.start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, call) for call in client_calls]
    finally:
        await server.close()


def _raw(path: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        result: dict[str, Any] = json.loads(s.makefile().readline())
        return result


def test_control_socket_answers_and_survives_garbage(tmp_path: Path) -> None:
    path = tmp_path / "ctl" / "control.sock"

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        if req["command"] == "boom":
            raise RuntimeError("kaput")
        if req["command"] == "refuse":
            raise control.ControlError("not now")
        return {"echo": req["command"]}

    results = asyncio.run(_with_server(path, handler, [
        lambda: control.request(str(path), "status"),
        lambda: _raw(path, b"not json\n"),
        lambda: _raw(path, b'["a list"]\n'),
        lambda: _raw(path, b"\xff\xfe\n"),
        lambda: _raw(path, b'{"command": "boom"}\n'),
        lambda: _raw(path, b'{"command": "refuse"}\n'),
        lambda: control.request(str(path), "again"),
    ]))
    assert results[0] == {"ok": True, "echo": "status"}
    assert all(r["ok"] is False and "bad request" in r["error"] for r in results[1:4])
    assert results[4] == {"ok": False, "error": "internal error: kaput"}
    assert results[5] == {"ok": False, "error": "not now"}
    assert results[6]["echo"] == "again"
    assert not path.exists(), "the socket is removed on close"


def test_parse_request_refuses_with_control_error_only() -> None:
    assert control.parse_request(b'{"command": "maintenance", "on": true}\n') == {"command": "maintenance", "on": True}
    # "[" * 5000: found by bench.fuzz, json's RecursionError reached the event loop and the client got no answer
    for line in (b"[" * 5000, b"", b"\xff\xfe\n", b'{"command": 1}\n', b'"status"\n', b"[1" + b"0" * 5000 + b"]"):
        with pytest.raises(control.ControlError):
            control.parse_request(line)


def test_control_client_errors(tmp_path: Path) -> None:
    with pytest.raises(control.ControlError, match="is failover-agent running"):
        control.request(str(tmp_path / "none.sock"), "status")


def test_a_second_server_refuses_a_live_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def scenario() -> str:
        first = control.ControlServer(str(path), lambda _r: asyncio.sleep(0, {}))
        await first.start()
        try:
            second = control.ControlServer(str(path), lambda _r: asyncio.sleep(0, {}))
            with pytest.raises(control.ControlError) as info:
                await second.start()
            return str(info.value)
        finally:
            await first.close()

    assert "already listening" in asyncio.run(scenario())


# -- metrics ------------------------------------------------------------------------------

NFS: dict[str, Any] = {
    "instance": {"state": "MASTER", "vrid": 51, "interface": "eth0", "priority": 150, "maintenance": False,
                 "vips_held": True,
                 "counters": {"transitions": 2, "became_master": 1, "faults": 0, "adverts_sent": 10,
                              "adverts_received": 3, "drops": {"ttl": 2, "vrid": 5}}},
    "steps": {"vip_add": 0.6},
}
DB: dict[str, Any] = {
    "instance": {**NFS["instance"], "state": "BACKUP", "vrid": 52, "vips_held": False},
    "steps": {},
}
STATUS: dict[str, Any] = {"instances": {"nfs": NFS, "db": DB}}

LINE = re.compile(r'^failover_agent_[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')


def test_metrics_render_is_valid_exposition_text() -> None:
    text = metrics.render(STATUS)
    for line in text.splitlines():
        assert line.startswith("# ") or LINE.match(line), line
    assert 'failover_agent_state{instance="nfs",vrid="51",interface="eth0",state="MASTER"} 1' in text
    assert 'failover_agent_state{instance="db",vrid="52",interface="eth0",state="BACKUP"} 1' in text
    assert 'failover_agent_vips_held{instance="db",vrid="52",interface="eth0"} 0' in text
    assert 'failover_agent_drops_total{instance="nfs",vrid="51",interface="eth0",reason="vrid"} 5' in text
    assert 'failover_agent_step_duration_ms{instance="nfs",vrid="51",interface="eth0",step="vip_add"} 0.6' in text
    assert text.count("# TYPE failover_agent_state gauge") == 1  # one family, a series per instance


def test_metrics_http_endpoint() -> None:
    async def scenario() -> bytes:
        server = metrics.MetricsServer("127.0.0.1:0", lambda: STATUS)
        await server.start()
        assert isinstance(server._server, asyncio.Server)
        port = server._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await reader.read()
        writer.close()
        await server.close()
        return data

    data = asyncio.run(scenario())
    assert data.startswith(b"HTTP/1.0 200 OK") and b"failover_agent_priority" in data


# -- journal ------------------------------------------------------------------------------

def test_emit_attaches_message_id_and_upper_case_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="failover-agent"):
        journal.emit(journal.Event.TRANSITION, "VRRP 51 on eth0: BACKUP -> MASTER: test", vrrp_state="MASTER",
                     reason="test", peer=None)
    record = caplog.records[-1]
    fields = record.journal_fields  # type: ignore[attr-defined]
    assert fields == {"MESSAGE_ID": journal.Event.TRANSITION.value, "VRRP_STATE": "MASTER", "REASON": "test"}
    assert record.getMessage() == "VRRP 51 on eth0: BACKUP -> MASTER: test"


def test_journal_handler_sends_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, str]]] = []
    handler = journal.JournalHandler()
    monkeypatch.setattr(handler, "_send", lambda msg, **kw: sent.append((msg, kw)))
    logger = logging.getLogger("test-journal-handler")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("plain", extra={"journal_fields": {"MESSAGE_ID": "x" * 32, "STEP": "vip_add"}})
    assert sent == [("plain", {"PRIORITY": "4", "SYSLOG_IDENTIFIER": "failover-agent", "MESSAGE_ID": "x" * 32,
                               "STEP": "vip_add"})]


def test_message_ids_are_unique_128_bit_ids() -> None:
    ids = [e.value for e in journal.Event]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert set(journal.DESCRIPTIONS) == set(journal.Event)


def test_readme_documents_every_message_id() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for event in journal.Event:
        assert f"| `{event.value}` | {event.name} |" in readme, event.name
