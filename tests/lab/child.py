"""A measuring child process in a lab namespace that reports one line per event.

The pinger and the NFS writer both run inside a client namespace, print timestamped lines
(CLOCK_MONOTONIC, comparable with ours), and are collected by a reader thread here. This base
class holds what they share: spawning with a stdin pipe (if the test dies, the child sees EOF
and exits), the READY handshake that also proves the clocks are comparable, stopping by PID,
and the child's stderr for failure messages. Subclasses give the argv and parse the lines.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from types import TracebackType
from typing import IO, Self

from tests.lab.netns import LabError, NetnsLab, stop_process


def check_clock(ready_at: float, child_time_ns: str, before: float, after: float) -> None:
    """The child's monotonic READY time must fall between our readings around the spawn."""
    own = os.readlink("/proc/self/ns/time")
    if child_time_ns not in (own, "time:[none]") or not before <= ready_at <= after:
        raise LabError(
            "child's CLOCK_MONOTONIC is not comparable with ours: "
            f"{before:.6f} <= {ready_at:.6f} <= {after:.6f}, time ns {child_time_ns} vs {own}"
        )


class LineChild:
    what = "child"  # for messages
    maxsplit = -1  # how lines are split into fields
    stop_grace = 2.0

    def __init__(self, lab: NetnsLab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.proc: subprocess.Popen[str] | None = None
        self.ready_at: float | None = None
        self._child_time_ns = ""
        self._ended = False
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._stderr: IO[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def parse(self, parts: list[str]) -> None:
        """Handle one line (called with the condition held); READY is handled here already."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Spawn the child and wait for READY; LabError if it cannot run or the clocks differ."""
        if self.proc is not None:
            raise LabError(f"{self.what} already started")
        argv = self.argv()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - must outlive start(); closed in stop()
        before = time.monotonic()
        proc: subprocess.Popen[str] = self.lab.popen(
            self.name, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1,
        )  # fmt: skip
        self.proc = proc
        self._reader = threading.Thread(target=self._read, name=f"{self.what}-{self.name}", daemon=True)
        self._reader.start()
        with self._cond:
            self._cond.wait_for(lambda: self.ready_at is not None or self._ended, timeout)
        after = time.monotonic()
        if self.ready_at is None:
            self.stop()
            raise LabError(f"{self.what} in {self.lab.ns(self.name)} did not start: {self.stderr_text()}")
        try:
            check_clock(self.ready_at, self._child_time_ns, before, after)
        except LabError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the child (it prints END), reap it and wait for the reader to drain."""
        proc = self.proc
        if proc is None:
            return
        grace = self.stop_grace if timeout is None else timeout
        stop_process(proc, grace=grace)
        if self._reader is not None:
            self._reader.join(grace)
        if proc.stdin is not None:
            proc.stdin.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        """What the child wrote to stderr (a traceback if it crashed)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _read(self) -> None:
        """Parse the child's lines; runs in a daemon thread until the child's stdout closes."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            parts = line.strip().split(maxsplit=self.maxsplit)
            if not parts:
                continue
            with self._cond:
                if parts[0] == "READY" and len(parts) >= 3:
                    self._child_time_ns = parts[2]
                    self.ready_at = float(parts[1])
                else:
                    self.parse(parts)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()
