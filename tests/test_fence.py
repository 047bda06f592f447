"""Whether the configured self-fence can fire (agent.fence.can_fence), against a file standing in
for /proc/sysrq-trigger; the real trigger is never touched here."""

from __future__ import annotations

from pathlib import Path

from agent import fence
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


def test_a_writable_trigger_can_fire(tmp_path: Path) -> None:
    trigger = tmp_path / "sysrq-trigger"
    trigger.write_text("")
    assert can_fence(parse(BASE.format(last="reboot")), trigger) == ""


def test_a_missing_trigger_is_named(tmp_path: Path) -> None:
    problem = can_fence(parse(BASE.format(last="poweroff")), tmp_path / "missing")
    assert "does not exist" in problem and "poweroff self-fence cannot fire" in problem


def test_nothing_to_check_without_a_self_fence_or_with_the_lab_stand_in(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert can_fence(parse(BASE.format(last="none")), missing) == ""
    lab = BASE.format(last="poweroff") + '[guard]\nfence_record = "/tmp/fence.log"\n'
    assert can_fence(parse(lab), missing) == ""


def test_the_kernel_log_line_survives_what_the_journal_may_not_and_never_raises(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    fence.kernel_log("self-fence (reboot): isolated", kmsg)
    assert kmsg.read_text() == "failover-agent: self-fence (reboot): isolated\n"
    fence.kernel_log("no such device", tmp_path / "missing" / "kmsg")  # an OSError is swallowed
