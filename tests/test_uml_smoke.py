"""Smoke tests of the user-mode-linux lab (tests/lab/uml.py): real DRBD 8.4 and kernel nfsd.

They need root and build (once, cached under /var/tmp/failover-agent-images) a Debian root
image; the first run therefore takes minutes.  They never skip: a machine that cannot build
the lab must fail loudly, or the storage tests built on it would silently prove nothing.

The failover scenario is the storage half of what the agent will automate: DRBD Primary
with an ext4 exported by the kernel nfsd behind a service address, the Primary crashes
(SIGKILL of its whole UML process tree), the peer promotes, mounts, exports and takes the
address, and the client's existing NFS mounts recover with the data intact; finally the
crashed node reboots and rejoins as Secondary.  Timings are printed (run with -s).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab.netns import NETNS_DIR, wait_until
from tests.lab.uml import (
    CLIENT,
    REPLICATION,
    SERVICE,
    WORK_ROOT,
    DrbdResource,
    NfsServer,
    UmlLab,
    UmlNode,
    connected_uptodate,
    drbd_bootstrap,
    drbd_up,
    nfs_mount,
    timed,
    wait_drbd,
)

pytestmark = pytest.mark.lab

VIP = "192.0.2.100"


def take_address(node: UmlNode, ip: str = VIP) -> None:
    """Move the service address by hand (the agent's job later): add it, then gratuitous ARP.

    arping lingers a second after its only packet, so it runs in the background.
    """
    node.run(["ip", "addr", "add", f"{ip}/24", "dev", node.dev(SERVICE)])
    node.spawn(["arping", "-q", "-U", "-c", "1", "-I", node.dev(SERVICE), ip])


def become_server(node: UmlNode, res: DrbdResource, nfs: NfsServer) -> dict[str, float]:
    """Promote, mount, export, take the address: the takeover sequence, timed per step."""
    steps: dict[str, float] = {}
    with timed(steps, "promote"):
        node.run(["drbdadm", "primary", res.name])
    with timed(steps, "mount"):
        node.run(["mkdir", "-p", nfs.export])
        node.run(["mount", "-t", "ext4", res.device, nfs.export])
    with timed(steps, "nfsd"):
        nfs.start(node)
    with timed(steps, "address"):
        take_address(node)
    return steps


def sha256(node: UmlNode, path: str, timeout: float = 30) -> str:
    return node.run(["sha256sum", path], timeout=timeout).stdout.split()[0]


def test_run_protocol_and_cleanup() -> None:
    """Commands pass argv verbatim (no shell), report status/stdout/stderr, honour timeouts,
    and closing the lab leaves no process, namespace or file behind."""
    lab = UmlLab("umlproto", nodes=("a",), client=False, replication=False, disk_mb=0)
    try:
        boot = lab.boot()
        node = lab["a"]
        tricky = ["it's", "$HOME", "a b", "*", "", "ü"]
        result = node.run(["printf", "%s|", *tricky])
        assert result.stdout == "|".join(tricky) + "|"
        failed = node.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (failed.returncode, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
        assert node.run(["cat"], input="from stdin\n").stdout == "from stdin\n"
        assert node.run(["nosuchcommand"], check=False).returncode == 127
        started = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            node.run(["sleep", "30"], timeout=1)
        assert time.monotonic() - started < 10
        assert node.run(["hostname"]).stdout.strip() == "a"
        assert node.run(["ip", "-br", "addr", "show", "eth0"]).stdout.split()[2] == "192.0.2.1/24"
        # The working tree is importable in the guest venv, as the agent will need.
        probe = node.run(["/opt/failover-agent/venv/bin/python3", "-c",
                          "import agent, scapy, pyroute2, psutil, systemd.daemon; print(agent.__file__)"],
                         timeout=60)  # fmt: skip
        assert probe.stdout.strip() == "/opt/failover-agent/src/agent/__init__.py"
        daemon = node.spawn(["sh", "-c", "echo started; exec sleep 300"])
        assert daemon.alive()
        daemon.signal()
        assert wait_until(lambda: not daemon.alive(), 5), "spawned process survived SIGTERM"
        assert "started" in daemon.log()
        print(f"\nboot {boot['a']:.2f}s (guest uptime at ready {node.guest_uptime_at_ready}s)")
        host_pid = node.host_pid
        started = time.monotonic()
        node.shutdown()
        assert not node.running
        print(f"orderly shutdown {time.monotonic() - started:.2f}s")
        assert "reboot: Power down" in node.console_tail(), "shutdown() killed the node instead of powering it off"
    finally:
        lab.close()
    assert not (NETNS_DIR / "umlproto-uml").exists()
    assert not (WORK_ROOT / "umlproto").exists()
    assert host_pid is not None and not Path(f"/proc/{host_pid}").exists()


def test_drbd_nfs_failover_after_crash() -> None:
    """a Primary + nfsd, client writes; a crashes; b takes over; client reads the same bytes."""
    timings: dict[str, float] = {}
    total_start = time.monotonic()
    res = DrbdResource()
    nfs = NfsServer()
    with UmlLab("umlsmoke", nodes=("a", "b"), client=True) as lab:
        a, b, client = lab["a"], lab["b"], lab[CLIENT]
        _ = lab.image  # a first run builds it here (minutes); not part of the scenario's time
        scenario_start = time.monotonic()
        with timed(timings, "boot_3_nodes"):
            boots = lab.boot()
        timings.update({f"boot_{name}": round(sec, 3) for name, sec in boots.items()})
        # The networks are separate, and a cable cut on one leaves the other alone.
        assert a.ping(b.ip(REPLICATION)) and a.ping(b.ip(SERVICE)) and client.ping(a.ip(SERVICE))
        assert not client.ping(a.ip(REPLICATION), wait=0.5), "the client must not reach the replication network"
        b.cut(REPLICATION)
        assert not a.ping(b.ip(REPLICATION), wait=0.5) and a.ping(b.ip(SERVICE))
        b.restore(REPLICATION)
        assert a.ping(b.ip(REPLICATION))

        drbd = drbd_bootstrap(lab, res, primary="a", mkfs=True)
        timings.update({f"drbd_{k}": round(v, 3) for k, v in vars(drbd).items()})
        a.run(["mkdir", "-p", nfs.export])
        a.run(["mount", "-t", "ext4", res.device, nfs.export])
        with timed(timings, "nfsd_start_a"):
            nfs.start(a)
        take_address(a)
        with timed(timings, "client_mount_v42"):
            nfs_mount(client, VIP, nfs.export, "/mnt/v4", "4.2")
        with timed(timings, "client_mount_v3"):
            nfs_mount(client, VIP, nfs.export, "/mnt/v3", "3")
        with timed(timings, "client_write_1MiB"):
            client.run(["dd", "if=/dev/urandom", "of=/mnt/v4/data", "bs=64k", "count=16", "conv=fsync"])
        written = sha256(client, "/mnt/v4/data")
        assert sha256(client, "/mnt/v3/data") == written

        crash_at = time.monotonic()
        a.crash()
        wait_drbd(b, lambda s: s.cs == "WFConnection" and s.peer_disk == "DUnknown", 20, "peer loss")
        timings["b_detects_peer_loss"] = round(time.monotonic() - crash_at, 3)
        steps = become_server(b, res, nfs)
        timings.update({f"takeover_{k}": v for k, v in steps.items()})
        timings["crash_to_service"] = round(time.monotonic() - crash_at, 3)

        # Forget cached pages so the reads below really come from b's disk.
        client.write_sysfs("/proc/sys/vm/drop_caches", "3")
        read_v3 = sha256(client, "/mnt/v3/data", timeout=120)
        timings["crash_to_v3_read"] = round(time.monotonic() - crash_at, 3)
        read_v4 = sha256(client, "/mnt/v4/data", timeout=120)
        timings["crash_to_v42_read"] = round(time.monotonic() - crash_at, 3)
        assert read_v3 == written, "NFSv3 client read different bytes after failover"
        assert read_v4 == written, "NFSv4.2 client read different bytes after failover"
        # And the new server accepts writes.
        client.run(["dd", "if=/dev/zero", "of=/mnt/v4/after", "bs=4k", "count=1", "conv=fsync"], timeout=60)

        with timed(timings, "a_reboot"):
            a.boot()
        with timed(timings, "a_rejoin_uptodate"):
            drbd_up(a, res, lab)
            state = wait_drbd(a, connected_uptodate, 60, "Connected UpToDate/UpToDate")
        assert (state.role, state.peer_role) == ("Secondary", "Primary"), state.raw
        assert (s := wait_drbd(b, connected_uptodate, 10)).role == "Primary", s.raw
        timings["scenario_total"] = round(time.monotonic() - scenario_start, 3)
    timings["with_image_and_teardown"] = round(time.monotonic() - total_start, 3)
    print("\nUML DRBD/NFS smoke timings (s):\n" + json.dumps(timings, indent=1))
    if os.environ.get("UML_SMOKE_TIMINGS"):
        Path(os.environ["UML_SMOKE_TIMINGS"]).write_text(json.dumps(timings, indent=1) + "\n")


def test_lab_refuses_bad_names() -> None:
    """Validation happens before anything is created, so bad input leaves nothing behind."""
    with pytest.raises(ValueError):
        UmlLab("Bad Prefix")
    with pytest.raises(ValueError):
        UmlLab("umlbad", nodes=("client",))
    assert not (NETNS_DIR / "umlbad-uml").exists()
