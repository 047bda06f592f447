"""Self-fencing through the kernel, and whether it can fire on this machine.

The peer's takeover waits for a bound ([guard] release_deadline) that an isolated master must
meet or fence itself; a userspace `systemctl reboot` is what a wedged system cannot do, so the
agent writes the magic SysRq key itself (reboot `b`, power off `o`: no sync, no unmount, the
DRBD disk keeps what it had). Labs that must not reboot their host set `[guard] fence_record`:
the fence is then a line in that file and the agent exits at once with FENCE_RECORDED, which a
lab harness treats as the node dying.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from agent.config import Config
from agent.journal import Event, emit

__all__ = ["FENCE_RECORDED", "SYSRQ", "can_fence", "kernel_log", "self_fence"]

log = logging.getLogger("failover-agent")

SYSRQ = {"reboot": "b", "poweroff": "o"}
SYSRQ_TRIGGER = Path("/proc/sysrq-trigger")
FENCE_RECORDED = 99  # the agent's exit status after a recorded stand-in fence


def can_fence(cfg: Config, trigger: Path = SYSRQ_TRIGGER) -> str:
    """'' when the configured self-fence can fire here; else what stops it and how to fix it.

    kernel.sysrq only gates the keyboard: root writing the trigger file is always obeyed
    (Documentation/admin-guide/sysrq.rst), so the file itself is what is checked."""
    if cfg.drbd is None or cfg.drbd.demote_escalation[-1] == "none" or cfg.guard.fence_record:
        return ""
    action = cfg.drbd.demote_escalation[-1]
    if not trigger.exists():
        return f"{trigger} does not exist (a kernel without CONFIG_MAGIC_SYSRQ): the {action} self-fence cannot fire"
    if not os.access(trigger, os.W_OK):
        return f"{trigger} is not writable by the agent (needs root): the {action} self-fence cannot fire"
    return ""


def kernel_log(message: str, kmsg: Path = Path("/dev/kmsg")) -> None:
    """A line in the kernel log: a console or netconsole keeps it across the self-fence, the journal may not."""
    with contextlib.suppress(OSError):
        kmsg.write_text(f"failover-agent: {message}\n")


def self_fence(cfg: Config, action: str, why: str) -> None:
    """Reboot or power off now, through the kernel (or the lab's recorded stand-in)."""
    emit(Event.FAULT, f"self-fence ({action}): {why}", logging.CRITICAL, REASON=why, FENCE=action)
    record = cfg.guard.fence_record
    if record:
        with open(record, "a") as f:
            f.write(f"{time.time():.3f} {action} {why}\n")
        logging.shutdown()
        os._exit(FENCE_RECORDED)
    kernel_log(f"self-fence ({action}): {why}")
    try:
        SYSRQ_TRIGGER.write_text(SYSRQ[action])
    except OSError as e:  # nothing else is left to try: say so loudly, the peer may take over
        log.critical("self-fence (%s) through %s failed: %s", action, SYSRQ_TRIGGER, e)
