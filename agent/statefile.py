"""What the admin set that must outlive the agent (maintenance mode): one small JSON file.

Kept under /var/lib so it survives reboots; written atomically (a temporary file renamed over
the old one), so a crash mid-write leaves the old state, never half a file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("failover-agent")


def load_maintenance(path: str) -> tuple[bool, str]:
    """(maintenance on?, why the file could not be read). Unreadable counts as on: the safe side."""
    try:
        return json.loads(Path(path).read_text()).get("maintenance") is True, ""
    except FileNotFoundError:
        return False, ""
    except (OSError, ValueError, AttributeError) as e:
        return True, f"{path} cannot be read ({e}): staying in maintenance until `failoverctl maintenance off`"


def save_maintenance(path: str, on: bool) -> str:
    """'' once written, else why not."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps({"maintenance": on}) + "\n")
        os.replace(tmp, target)
    except OSError as e:
        return f"maintenance {'on' if on else 'off'} will not survive a restart: cannot write {path}: {e}"
    return ""


def maintenance_kept(path: str) -> bool:
    """For the agent's start: maintenance as the admin left it; a read error is logged (and counts as on)."""
    on, error = load_maintenance(path)
    if error:
        log.error("%s", error)
    return on


def save_state(path: str, maintenance: bool) -> None:
    """For the agent: save, logging why not if it fails (the daemon keeps running)."""
    if error := save_maintenance(path, maintenance):
        log.error("%s", error)
