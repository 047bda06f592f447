"""Structured events: one journald entry per transition or step, the same sentence on stderr.

Admins read the failover story with `journalctl -u failover-agent` or `failoverctl history`;
both rely on a fixed MESSAGE_ID per kind of event (documented in README.md, never reused for
another meaning) and on upper-case fields such as VRRP_STATE, REASON, STEP and DURATION_MS.
Under systemd (JOURNAL_STREAM set) entries go straight to journald with their fields;
elsewhere the same MESSAGE goes to stderr, so a foreground run tells the same story.
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
import sys
from typing import Any

log = logging.getLogger("failover-agent")

IDENTIFIER = "failover-agent"


class Event(enum.StrEnum):
    """Kinds of events; the value is the MESSAGE_ID (a 128-bit id, fixed forever)."""

    STARTED = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a01"
    STOPPED = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a02"
    TRANSITION = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a03"
    STEP = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a04"
    SERVING = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a05"
    RELEASED = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a06"
    LINK = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a07"
    RELOAD = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a08"
    RELOAD_FAILED = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a09"
    HANDOVER = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a0a"
    MAINTENANCE = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a0b"
    FAULT = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a0c"
    CLEANUP = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a0d"
    TRACK = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a0e"
    FENCE = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a0f"
    ADOPTED = "3c9f4f6b2a7e4e0f9d1b5a8c7e2f4a10"


#: what each event means, for README and `failoverctl history`
DESCRIPTIONS = {
    Event.STARTED: "the agent started (config, interface, priority)",
    Event.STOPPED: "the agent stopped (signal, time taken)",
    Event.TRANSITION: "a VRRP state change: VRRP_STATE, PREV_STATE, REASON, PEER",
    Event.STEP: "one acquire or release step: STEP, RESULT, DURATION_MS",
    Event.SERVING: "this node now serves: the takeover summary",
    Event.RELEASED: "this node released everything it held",
    Event.LINK: "the VRRP interface went down or came back",
    Event.RELOAD: "SIGHUP applied: CHANGES",
    Event.RELOAD_FAILED: "SIGHUP refused, running config kept: FILE, KEY, REASON",
    Event.HANDOVER: "planned handover requested",
    Event.MAINTENANCE: "maintenance mode switched on or off",
    Event.FAULT: "a failure put the instance in FAULT",
    Event.CLEANUP: "leftovers of an earlier run were removed",
    Event.FENCE: ("the peer was asked to outdate its disk, or we outdated ours at its request: ANSWER, PEER; "
                  "a frozen Primary given up, or the heal of a StandAlone resource (agent.heal)"),
    Event.TRACK: "a witness or track check changed verdict: TARGET, KIND, UP and the decision",
    Event.ADOPTED: "a restarted agent adopted the chain its predecessor left held (no failover): HELD, EVIDENCE",
}


def emit(event: Event, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; `fields` become upper-case journal fields (None values are left out)."""
    clean = {k.upper(): str(v) for k, v in fields.items() if v is not None}
    log.log(level, message, extra={"journal_fields": {"MESSAGE_ID": event.value, **clean}})


class JournalHandler(logging.Handler):
    """Sends records to journald with the event's fields (no-op when journald is absent)."""

    def __init__(self) -> None:
        super().__init__()
        # imported by name: the repo's systemd/ folder of unit files would shadow it for type checkers
        self._send = importlib.import_module("systemd.journal").send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(getattr(record, "journal_fields", {}))
            priority = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                        logging.CRITICAL: 2}.get(record.levelno, 6)
            # our own PRIORITY (syslog level) and identifier win over any event field of that name
            fields.update(PRIORITY=str(priority), SYSLOG_IDENTIFIER=IDENTIFIER)
            self._send(record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def under_journal() -> bool:
    """systemd sets JOURNAL_STREAM when our stderr is connected to journald."""
    return bool(os.environ.get("JOURNAL_STREAM")) and os.path.exists("/run/systemd/journal/socket")


def setup_logging(verbose: bool, target: str = "auto") -> None:
    handler: logging.Handler
    if target == "journal" or (target == "auto" and under_journal()):
        try:
            handler = JournalHandler()
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
