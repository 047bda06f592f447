"""agent.fs on real ext4 filesystems on loop devices: mount, verify, busy unmount with holders."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import fs
from drbd import mounts

pytestmark = pytest.mark.lab


def spec(tmp_path: Path, dev: str, **kw: object) -> fs.MountSpec:
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    return fs.MountSpec(device=dev, mountpoint=str(mnt), options=("noatime",), **kw)  # type: ignore[arg-type]


def test_parse_mountinfo_unescapes_paths() -> None:
    line = r"36 35 98:0 / /mnt/with\040space rw,noatime master:1 - ext4 /dev/loop7 rw,errors=continue"
    (entry,) = fs.parse_mountinfo(line + "\ngarbage line\n")
    assert entry == fs.MountEntry("98:0", "/mnt/with space", "ext4", "/dev/loop7")


def test_mount_verify_and_unmount(tmp_path: Path, loopdev: str) -> None:
    s = spec(tmp_path, loopdev)
    asyncio.run(fs.mount(s))
    assert fs.mounted(s)
    options = next(m for m in Path("/proc/self/mounts").read_text().splitlines() if s.mountpoint in m)
    assert "noatime" in options
    asyncio.run(fs.mount(s))  # idempotent
    asyncio.run(fs.unmount(s))
    assert not fs.mounted(s)
    asyncio.run(fs.unmount(s))  # idempotent


def test_busy_unmount_terminates_then_kills_holders(tmp_path: Path, loopdev: str) -> None:
    s = spec(tmp_path, loopdev, kill_grace=0.5)
    asyncio.run(fs.mount(s))
    polite = subprocess.Popen(["sleep", "300"], cwd=s.mountpoint)
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"f = open({s.mountpoint + '/held'!r}, 'w'); print('ok', flush=True); time.sleep(300)")
    stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline().strip() == "ok"
        holders = {h.pid: h.why for h in mounts.find_holders(s.mountpoint)}
        assert holders.get(polite.pid) == "cwd" and holders.get(stubborn.pid) == "open file"
        notes: list[str] = []
        t0 = time.monotonic()
        asyncio.run(fs.unmount(s, report=notes))
        assert not fs.mounted(s)
        assert polite.wait(5) == -signal.SIGTERM
        assert stubborn.wait(5) == -signal.SIGKILL
        assert time.monotonic() - t0 >= 0.5, "SIGKILL only after the grace period"
        assert any("SIGTERM" in n for n in notes) and any("SIGKILL" in n for n in notes), notes
    finally:
        for p in (polite, stubborn):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_busy_unmount_without_kill_holders_is_a_clear_error(tmp_path: Path, loopdev: str) -> None:
    s = spec(tmp_path, loopdev, kill_holders=False)
    asyncio.run(fs.mount(s))
    holder = subprocess.Popen(["sleep", "300"], cwd=s.mountpoint)
    try:
        with pytest.raises(fs.FsError, match=rf"sleep\[{holder.pid}\] \(cwd\).*kill_holders is off"):
            asyncio.run(fs.unmount(s))
        assert fs.mounted(s) and holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    asyncio.run(fs.unmount(s))


@pytest.mark.parametrize(("change", "words"), [
    ({"device": "/dev/does-not-exist"}, "does not exist or is not a block device"),
    ({"mountpoint": "/nonexistent/mountpoint"}, "does not exist or is not a directory"),
    ({"fstype": "xfs"}, "failed (exit"),
])
def test_bad_input_is_a_clear_error(tmp_path: Path, loopdev: str, change: dict[str, str], words: str) -> None:
    base = spec(tmp_path, loopdev)
    bad = fs.MountSpec(**{**base.__dict__, **change})
    with pytest.raises(fs.FsError, match=words.replace("(", r"\(")):
        asyncio.run(fs.mount(bad))
    assert not fs.anything_mounted_on(base.mountpoint)


def test_refuses_to_mount_over_something_else(tmp_path: Path, loopdev: str) -> None:
    s = spec(tmp_path, loopdev)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", s.mountpoint], check=True)
    try:
        with pytest.raises(fs.FsError, match="something else is mounted"):
            asyncio.run(fs.mount(s))
    finally:
        subprocess.run(["umount", s.mountpoint], check=True)
