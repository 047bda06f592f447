"""Fixtures shared by the lab tests: a fresh namespace lab, an ext4 on a loop device."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import fs
from tests.lab.netns import NetnsLab

_ids = itertools.count()


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """Bridge + nodes a, b + a client; the prefix is unique per test so runs never collide."""
    with NetnsLab(f"ft{os.getpid() % 10000}x{next(_ids)}", nodes=("a", "b")) as lab:
        yield lab


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    """A 16 MB ext4 on a loop device; unmounted (anything under tmp_path) and detached afterwards."""
    image = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert dev.startswith("/dev/loop"), dev
    try:
        yield dev
    finally:
        for m in reversed(fs.mounts()):
            if m.mountpoint.startswith(str(tmp_path)):
                subprocess.run(["umount", "-l", m.mountpoint], capture_output=True)
        subprocess.run(["losetup", "-d", dev], check=True)
