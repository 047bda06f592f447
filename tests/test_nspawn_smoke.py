"""Smoke test of the systemd-nspawn lab (tests/lab/nspawn.py): nodes with real systemd and journald.

It needs root, network access the first time (mmdebstrap and pip build the node image, a few
minutes; cached afterwards in /var/tmp/failover-agent-images) and installs mmdebstrap and
systemd-container if they are missing.  It never skips: if the image cannot be built or a node
cannot boot, it fails with the reason, because the service-level tests built on these nodes
would otherwise silently prove nothing.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.lab.netns import NETNS_DIR, ProcRef, node_ip, pids_in_namespace, wait_until
from tests.lab.nspawn import SRC_DIR, VENV_DIR, NspawnLab, ensure_image, mounts_mentioning

pytestmark = pytest.mark.lab

PREFIX = "nspawn-smoke"
VRRP_GROUP = "224.0.0.18"

# systemd-notify is a child of the script, hence NotifyAccess=all; systemd 252's
# systemd-notify waits until the manager processed the message, so there is no race.
NOTIFY_SCRIPT = """#!/bin/sh
sleep 0.3
systemd-notify --ready --status="ready from $$"
exec sleep 600
"""

# Joins 224.0.0.18 on a raw proto-112 socket, says READY=1 (so systemd-run returns only once it
# listens), then records the first datagram: the IP header is included, so TTL is visible.
RAW_RX = """
import json, os, socket, struct, sys
from systemd import daemon
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])))
s.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL off
s.settimeout(20)
daemon.notify("READY=1")
data, addr = s.recvfrom(4096)
ihl = (data[0] & 0x0F) * 4
with open("/run/rawrx.json.tmp", "w") as f:
    json.dump({"src": addr[0], "ttl": data[8], "proto": data[9], "payload": data[ihl:].decode()}, f)
os.rename("/run/rawrx.json.tmp", "/run/rawrx.json")
"""

RAW_TX = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[2]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
for _ in range(5):
    s.sendto(b"nspawn-smoke", (sys.argv[1], 0))
    time.sleep(0.1)
"""


def pid_namespace_members(ns_ino: tuple[int, int]) -> list[int]:
    """PIDs on the host whose PID namespace is the given one (a container's, after it stopped)."""
    return pids_in_namespace("pid", ns_ino)


def test_nspawn_nodes_run_systemd_journald_and_raw_vrrp_sockets() -> None:
    started = time.monotonic()
    image = ensure_image()  # raises ImageError with the build log's tail: a failure, never a skip
    image_ready = time.monotonic() - started

    with NspawnLab(PREFIX, image=image) as lab:
        booted = time.monotonic() - started
        a, b = lab["a"], lab["b"]
        for node in (a, b):
            assert lab.states[node.name] == "running", f"{node.machine}: degraded, failed units {node.failed_units()}"

        # --- each container sees its namespace's eth0 (and only that) with the lab address.
        for index, node in enumerate((a, b)):
            addrs = json.loads(node.run(["ip", "-j", "-4", "addr", "show", "dev", "eth0"], unit=False).stdout)
            local = {f"{x['local']}/{x['prefixlen']}" for x in addrs[0]["addr_info"]}
            assert local == {f"{node_ip(index)}/24"}
            links = set(node.run(["ls", "/sys/class/net"], unit=False).stdout.split())
            assert links == {"lo", "eth0"}
            assert node.read_file("/proc/sys/kernel/hostname").strip() == node.name
        a.run(["ping", "-n", "-c", "1", "-W", "2", node_ip(1)])
        assert lab.net.ping("client", node_ip(0))

        # --- CAP_NET_ADMIN inside a service: an address added in the container shows in the lab.
        a.run(["ip", "addr", "add", "192.0.2.200/32", "dev", "eth0"])
        assert lab.net.has_address("a", "192.0.2.200")
        a.run(["ip", "addr", "del", "192.0.2.200/32", "dev", "eth0"])
        # /proc/sys/net is writable (made so by the image; nspawn alone leaves it read-only).
        a.run(["sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_notify=1"])
        assert lab.net.run("a", ["sysctl", "-n", "net.ipv4.conf.eth0.arp_notify"]).stdout.strip() == "1"

        # --- the project: the wrappers run the bind-mounted working tree with the image's venv.
        assert a.run([f"{VENV_DIR}/bin/python", "-c", "import agent; print(agent.__file__)"]).stdout.startswith(
            f"{SRC_DIR}/agent/"
        )
        a.run(["failoverctl", "--help"])
        a.run(["failover-agent", "--help"])

        # --- Type=notify: systemd-run returns only once READY=1 arrived.
        a.write_file("/usr/local/bin/notify-smoke", NOTIFY_SCRIPT, 0o755)
        t0 = time.monotonic()
        a.run(["systemd-run", "--unit=notify-smoke", "-p", "Type=notify", "-p", "NotifyAccess=all",
               "/usr/local/bin/notify-smoke"], unit=False)  # fmt: skip
        assert time.monotonic() - t0 >= 0.3
        props = a.unit_properties("notify-smoke.service", "ActiveState", "SubState", "StatusText", "MainPID")
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert props["StatusText"] == f"ready from {props['MainPID']}", props
        a.systemctl("stop", "notify-smoke.service")

        # --- journald: structured fields from systemd-python in the venv, attributed to the unit.
        message_id = uuid.uuid4().hex
        a.run([f"{VENV_DIR}/bin/python", "-c",
               f"from systemd import journal; journal.send('hi', MESSAGE_ID='{message_id}', FOO='bar')"])  # fmt: skip
        entries = a.wait_journal([f"MESSAGE_ID={message_id}"])
        assert len(entries) == 1
        assert (entries[0]["MESSAGE"], entries[0]["FOO"]) == ("hi", "bar")
        assert entries[0]["_SYSTEMD_UNIT"].startswith("run-"), entries[0]

        # --- raw proto-112 sockets: a multicast advert from a's service reaches b's with TTL 255.
        b.run(["systemd-run", "--unit=rawrx", "-p", "Type=notify", "-p", "RuntimeMaxSec=30",
               f"{VENV_DIR}/bin/python", "-c", RAW_RX, VRRP_GROUP, node_ip(1)], unit=False)  # fmt: skip
        a.run(["python3", "-c", RAW_TX, VRRP_GROUP, node_ip(0)])
        assert wait_until(lambda: b.run(["test", "-e", "/run/rawrx.json"], check=False, unit=False).returncode == 0,
                          10, interval=0.1)  # fmt: skip
        received = json.loads(b.read_file("/run/rawrx.json"))
        assert received == {"src": node_ip(0), "ttl": 255, "proto": 112, "payload": "nspawn-smoke"}

        # What must be gone afterwards.
        procs = [ProcRef.of(pid) for node in (a, b) for pid in (node.nspawn_pid, node.leader_pid) if pid]
        pid_namespaces = []
        for node in (a, b):
            st = os.stat(f"/proc/{node.leader_pid}/ns/pid")
            pid_namespaces.append((st.st_dev, st.st_ino))
        cgroups = [cg for node in (a, b) for cg in node.cgroups]
        assert all(cg.is_dir() for cg in cgroups)
        workdir = lab.net.workdir
        namespaces = lab.net.namespaces
        boot_seconds = {node.name: round(node.boot_seconds or 0, 2) for node in (a, b)}
        checks_done = time.monotonic() - started

    assert not any(ref is not None and ref.alive() for ref in procs), procs
    for ns_ino in pid_namespaces:
        assert pid_namespace_members(ns_ino) == []
    assert [cg for cg in cgroups if cg.exists()] == []
    assert mounts_mentioning(str(workdir)) == []
    assert [ns for ns in namespaces if (NETNS_DIR / ns).exists()] == []
    assert not Path(workdir).exists()

    total = time.monotonic() - started
    print(
        f"\nnspawn smoke: image ready {image_ready:.1f} s ({image.tarball.name}, built in "
        f"{image.manifest.get('build_seconds')} s), both nodes booted at {booted:.1f} s (per node {boot_seconds}), "
        f"checks done {checks_done:.1f} s, torn down {total:.1f} s"
    )
