"""Fixtures shared by the lab tests: a fresh namespace lab, an ext4 on a loop device; the lab lock."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import fs
from tests.lab.lock import hold_lab_lock
from tests.lab.netns import NetnsLab

_ids = itertools.count()
LAB_FIXTURES = {"lab", "loopdev"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for a lab fixture is a lab test even if its module forgot the marker, so
    it still takes the lab lock and `-m "not lab"` still leaves it out."""
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("lab") is None:
            item.add_marker(pytest.mark.lab)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The first lab test takes the machine's lab lock (tests/lab/lock.py) for the rest of the
    session: before any fixture, so a module-scoped lab (UML, nspawn) is built under it too.
    The one line about waiting goes past pytest's capture, else nobody would see why it hangs."""
    if item.get_closest_marker("lab") is None:
        return
    capture = item.config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        if capture is None:
            print(line, file=sys.stderr, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(f"\n{line}", file=sys.stderr, flush=True)

    hold_lab_lock(f"pytest {item.nodeid}", say)


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
