"""A stand-in for `drbdsetup events2`, for the follower's unit tests (drbd/follower.py).

Faithful to what drbd-utils 9.22 prints against the 8.4 module (tests/fixtures/drbd): the same
argv (`drbdsetup events2 [--now] [--timestamps] RESOURCE`), the same lines. What it prints is
taken from real captures: `$FAKE_DRBD_DIR/state` holds the initial dump (an `events2-*.txt`
fixture, ending with `exists -`), and lines appended to `$FAKE_DRBD_DIR/feed` after the process
started are printed as they arrive (a `events2-stream-*.txt` fixture's change lines; their
timestamps are dropped unless `--timestamps` was given, as drbdsetup does). Two control lines in
the feed are not DRBD's: `EXIT N` ends the process with exit code N, `STDERR TEXT` writes TEXT to
stderr. Every start appends `PID ARGV...` to `$FAKE_DRBD_DIR/calls`.

The real program is used by the UML lab test (tests/test_uml_storage.py); this one only lets the
unit tests control timing and failures.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\S+ ")


def main(argv: list[str]) -> int:
    base = Path(os.environ["FAKE_DRBD_DIR"])
    with (base / "calls").open("a") as calls:
        calls.write(f"{os.getpid()} {' '.join(argv)}\n")
    if not argv or argv[0] != "events2":
        print(f"drbdsetup: unknown command '{argv[0] if argv else ''}'", file=sys.stderr)
        return 20
    opts = [a for a in argv[1:] if a.startswith("--")]
    args = [a for a in argv[1:] if not a.startswith("--")]
    if len(args) != 1 or set(opts) - {"--now", "--timestamps"}:
        print("USAGE: events2 [--now] [--timestamps] {resource}", file=sys.stderr)
        return 20
    stamps = "--timestamps" in opts

    def out(line: str) -> None:
        if not stamps:
            line = STAMP.sub("", line)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    feed = base / "feed"
    offset = feed.stat().st_size if feed.exists() else 0
    for line in (base / "state").read_text().splitlines():
        out(line)
    if "--now" in opts:
        return 0
    pending = ""
    while True:
        try:
            with feed.open() as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            data = ""
        offset += len(data.encode())
        pending += data
        *lines, pending = pending.split("\n")
        for line in lines:
            if line.startswith("EXIT "):
                return int(line.split()[1])
            if line.startswith("STDERR "):
                sys.stderr.write(line[7:] + "\n")
                sys.stderr.flush()
            elif line.strip():
                out(line)
        time.sleep(0.002)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
