"""Whether the configured self-fence can fire (agent.fence.can_fence), against files shaped like
/proc/sys/kernel/sysrq and /proc/sysrq-trigger; the real trigger is never touched here."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse
from agent.fence import can_fence

BASE = """
[vrrp]
interface = "eth0"
vrid = 51
priority = 100
vips = ["192.0.2.100/24"]

[drbd]
resource = "r0"
demote_escalation = ["retry", "{last}"]
"""


@pytest.fixture
def trigger(tmp_path: Path) -> Path:
    path = tmp_path / "sysrq-trigger"
    path.write_text("")
    return path


@pytest.mark.parametrize(("value", "fires"), [("1", True), ("176", True), ("128", True), ("0", False),
                                              ("16", False), ("garbage", False)])
def test_sysrq_must_allow_reboot(tmp_path: Path, trigger: Path, value: str, fires: bool) -> None:
    enable = tmp_path / "sysrq"
    enable.write_text(value + "\n")
    problem = can_fence(parse(BASE.format(last="reboot")), enable, trigger)
    assert (problem == "") == fires, problem
    if not fires:
        assert "cannot fire" in problem or "may not fire" in problem


def test_nothing_to_check_without_a_self_fence_or_with_the_lab_stand_in(tmp_path: Path, trigger: Path) -> None:
    enable = tmp_path / "sysrq"
    enable.write_text("0\n")
    assert can_fence(parse(BASE.format(last="none")), enable, trigger) == ""
    lab = BASE.format(last="poweroff") + '[guard]\nfence_record = "/tmp/fence.log"\n'
    assert can_fence(parse(lab), enable, trigger) == ""


def test_an_unwritable_trigger_is_named(tmp_path: Path) -> None:
    enable = tmp_path / "sysrq"
    enable.write_text("1\n")
    problem = can_fence(parse(BASE.format(last="reboot")), enable, tmp_path / "missing" / "trigger")
    assert "is not writable" in problem
