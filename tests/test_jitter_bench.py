"""bench.jitter: the flood covers the drop reasons it claims, and its CI-sized run works end to end.

The unit part checks every bogus packet against vrrp.packet.Validator with the master's and the
backup's settings; the lab part runs `python -m bench.jitter --quick` (a few seconds per
condition, agent and keepalived side by side) and asserts outcomes only: the flood reached its
rate, changed no state, the backup stayed silent, and the JSON and PNG were written. The tight
numbers (jitter p99, idle CPU) are the full bench's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bench.jitter import AUTH, MASTER_PRIORITY, VRID, bogus_packets, percentile
from vrrp.packet import Advertisement, Drop, Validator

MASTER, BACKUP, FLOODER = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), IPv4Address("192.0.2.10")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("version", "interval"), [(2, 1.0), (3, 0.1)])
def test_each_bogus_packet_is_dropped_for_the_reason_it_names(version: int, interval: float) -> None:
    packets = bogus_packets(version, interval, MASTER, FLOODER)
    expected = {"checksum", "vrid", "version", "version_unknown", "type", "ttl", "length_short", "length_count",
                "own"} | ({"interval", "auth"} if version == 2 else set())
    assert set(packets) == expected
    auth = AUTH if version == 2 else ""
    master = Validator(version, VRID, interval, auth, own=frozenset({MASTER}))
    backup = Validator(version, VRID, interval, auth, own=frozenset({BACKUP}))
    for name, datagram in packets.items():
        verdict = master.check(datagram)
        assert isinstance(verdict, Drop), name
        assert verdict.reason.value == name.split("_")[0], (name, verdict)
        seen = backup.check(datagram)
        if name == "own":  # the master's own advert, replayed to the master alone: the backup would take it
            assert isinstance(seen, Advertisement) and seen.priority == MASTER_PRIORITY and seen.src == MASTER
            assert seen.dst == MASTER
        else:
            assert isinstance(seen, Drop), name
            assert datagram[16:20] == bytes([224, 0, 0, 18])


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


@pytest.mark.lab
def test_quick_jitter_bench_runs_and_the_flood_changes_nothing(tmp_path: Path) -> None:
    out, png = tmp_path / "jitter.json", tmp_path / "jitter.png"
    proc = subprocess.run([sys.executable, "-m", "bench.jitter", "--quick", "--json", str(out), "--png", str(png)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["mode"] for r in result["runs"]] == ["v2", "v3"]
    for run in result["runs"]:
        windows = {(w["impl"], w["condition"]): w for w in run["windows"]}
        assert set(windows) == {(i, c) for i in ("agent", "keepalived") for c in ("idle", "busy", "flood")}
        for (impl, cond), w in windows.items():
            if impl == "agent":  # (keepalived's master may fall silent under the flood: reported, not ours)
                assert w["adverts"] >= 2, (cond, w["adverts"])
                assert not w["disturbed"], (cond, w["state_changes"], w["backup_adverts"], w["states_after"])
        flood = windows[("agent", "flood")]
        assert flood["flood"]["wire_rate"] >= 0.8 * run["rate"], flood["flood"]
        # every drop reason the flood carries was counted by the master
        reasons = {k.split("_")[0] for k in flood["flood"]["kinds"]}
        assert reasons <= set(flood["drops"]), (reasons, flood["drops"])
        assert run["idle"]["agent"]["master_rss_mb"] > 0
