"""`failoverctl status` explains in words and human units, with no Python reprs."""

from __future__ import annotations

from typing import Any

import pytest

from agent.cli import format_status
from agent.control import ControlError


def sample() -> dict[str, Any]:
    instance = {
        "state": "FAULT", "vrid": 51, "interface": "eth0", "address": "192.0.2.1", "version": 2, "priority": 150,
        "advert_interval": 1.0, "master_down_interval": 3.41, "preempt": True, "maintenance": False,
        "yielding": False, "master": None, "link_up": True, "vips": ["192.0.2.100/24"], "vips_held": False,
        "phase": "FAULT", "held": [], "chain": ["drbd", "mount", "vip"],
        "faults": {"hold": "drbd failed: not promoting: the peer is Primary for r0"},
        "peer": {"address": "192.0.2.2", "port": 7801, "rejected": {"replay": 2}},
        "track": {"isolated": False, "reachable": 1, "min_reachable": 1, "priority_delta": 0, "fault": None,
                  "targets": {"192.0.2.254": {"kind": "witness", "up": True, "ok_run": 4, "fail_run": 0,
                                              "weight": 0, "last": "echo reply in 0.3 ms"}}},
        "last_transition": {"at": 1_700_000_000.0, "from": "MASTER", "to": "FAULT", "reason": "drbd failed"},
        "steps": {"drbd_acquire": 1520.5, "mount_release": 12.25}, "fault": "drbd failed: not promoting",
        "hold_left": 4.5, "peer_heard_ago": 0.8,
        "counters": {"transitions": 3, "became_master": 1, "faults": 1, "adverts_sent": 10, "adverts_received": 20,
                     "drops": {"auth": 1}, "doorbell_wakeups": 2, "garp_sent": 0},
    }
    return {"agent": {"version": "0.1.0", "pid": 42, "config": "/etc/failover-agent/agent.toml", "uptime": 12.0,
                      "reloads": 0, "reload_failures": 0},
            "instance": instance, "steps": instance["steps"],
            "storage": {"chain": ["drbd", "mount", "vip"], "phase": "FAULT", "held": [],
                        "drbd": {"resource": "r0", "role": "Secondary", "disk": "UpToDate", "connection": "Connected",
                                 "peer_role": "Primary", "peer_disk": "UpToDate", "sync_percent": ""}}}


def test_status_names_the_drbd_view_the_steps_the_fault_the_witnesses_and_the_peer() -> None:
    text = format_status(sample())
    for words in ("DRBD      r0: Secondary, disk UpToDate, Connected; peer Primary, disk UpToDate",
                  "  drbd      not held  last acquire 1.52 s", "  mount     not held  last release 12.2 ms",
                  "fault     drbd failed: not promoting; hold-down 4.5 s left (failoverctl reset once fixed)",
                  "witness 192.0.2.254", "up", "echo reply in 0.3 ms",
                  "peer      192.0.2.2:7801, last heard 0.8 s ago; rejected messages: replay 2",
                  "FAULT because hold: drbd failed"):
        assert words in text, (words, text)
    assert "{" not in text and "[" not in text.replace("[maintenance", ""), text


def test_vip_only_status_says_so() -> None:
    s = sample()
    s["storage"] = None
    s["instance"]["track"] = s["instance"]["peer"] = None
    text = format_status(s)
    assert "storage   none configured (VIP-only mode)" in text and "\npeer " not in text


def test_the_nfs_chain_keeps_the_step_column_scripts_read() -> None:
    """The built-in steps keep their 10-character column (nfs_state is the longest); only a
    longer service:NAME widens it."""
    s = sample()
    s["storage"]["chain"] = ["drbd", "mount", "nfs_state", "nfs", "vip"]
    text = format_status(s)
    assert "  drbd      not held  last acquire 1.52 s" in text and "  nfs_state not held" in text, text


def test_a_backup_waiting_for_a_silent_master_s_agent_says_so() -> None:
    s = sample()
    why = "the master is silent, but DRBD r0 shows the peer Primary and connected: waiting for its agent"
    s["instance"]["waiting_for"] = why
    assert f"NOT TAKING OVER: {why}" in format_status(s)
    s["instance"]["waiting_for"] = None
    assert "NOT TAKING OVER" not in format_status(s)


def test_several_instances_each_get_their_block() -> None:
    one = sample()
    block = {k: one[k] for k in ("instance", "steps", "storage")}
    other = {"instance": {**one["instance"], "vrid": 52, "state": "MASTER", "faults": {}, "fault": None},
             "steps": {}, "storage": None}
    s = {"agent": one["agent"], "instances": {"nfs": block, "db": other}}
    text = format_status(s)
    assert text.index("instance  nfs") < text.index("VRID 51") < text.index("instance  db") < text.index("VRID 52")
    assert text.count("failover-agent 0.1.0") == 1 and "reloads   0 (0 refused)" in text
    only = format_status(s, "db")
    assert "VRID 52" in only and "VRID 51" not in only and "instance  db" in only
    with pytest.raises(ControlError, match=r"no instance web in this agent \(instances: nfs, db\)"):
        format_status(s, "web")
