"""Client-side NFS load for failover tests: acknowledged writes through the VIP, verified afterwards.

``NfsWriter`` runs tests/lab/nfsio.py (libnfs through ctypes, see there for why) inside a lab
namespace, normally the client's.  The child creates one file after another under the export;
a file counts as *acknowledged* only when create, write, fsync (an NFS COMMIT) and close all
succeeded.  After any error it drops its libnfs context and connects again, which is what
carries it across a failover: the VIP moves, the new connection lands on the new server.
The parent collects the child's lines in a background thread, like tests.lab.probe.Pinger,
and answers the questions a failover test asks:

* how long was the client without acknowledged writes (``max_gap``, ``outages``),
* when did writes resume after an event (``first_ack_after``),
* is every acknowledged file still there with its content (``verify``), read back through
  NFS from whichever server serves the VIP at that time.

Timestamps are time.monotonic() values of the child, directly comparable with the parent's
(one system-wide CLOCK_MONOTONIC; ``start()`` checks it as Pinger does).

Typical use::

    with NfsWriter(lab, "client", VIP) as writer:
        writer.wait_acked(20, timeout=10)
        t0 = time.monotonic()
        ...  # fail over
        writer.wait_first_ack_after(t0, timeout=30)
    outage = writer.max_gap()
    report = writer.verify()
    assert report.passed, report.describe()
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.child import LineChild
from tests.lab.netns import CLIENT, NetnsLab, stop_process

__all__ = ["NFSIO_SCRIPT", "Ack", "Connected", "NfsWriter", "VerifyReport", "WriteError", "verify_files"]

NFSIO_SCRIPT = Path(__file__).with_name("nfsio.py")


@dataclass(frozen=True)
class Ack:
    """One acknowledged file: create+write+commit+close all succeeded between ``started`` and ``acked``."""

    seq: int
    started: float
    acked: float
    name: str


@dataclass(frozen=True)
class WriteError:
    """A failed step (connect, mount, create, write, fsync, close...); the child reconnects after it."""

    seq: int
    time: float
    stage: str
    errno: str
    message: str


@dataclass(frozen=True)
class Connected:
    """A (re)connect that succeeded at ``time`` after ``took`` seconds of connect + mount."""

    time: float
    took: float


@dataclass
class VerifyReport:
    """Result of reading back files; ``passed`` means every one was found with its content."""

    checked: int = 0
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    listed: int | None = None
    complete: bool = False
    stderr: str = ""

    @property
    def passed(self) -> bool:
        """All files present and intact, and the verifier ran to its end."""
        return self.complete and not (self.missing or self.corrupt or self.errors) and len(self.ok) == self.checked

    def describe(self, limit: int = 5) -> str:
        """Short human summary for assertion messages."""
        parts = [f"{len(self.ok)}/{self.checked} ok", f"{self.listed} entries in the directory"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {self.missing[:limit]}")
        if self.corrupt:
            parts.append(f"corrupt {len(self.corrupt)}: {list(self.corrupt.items())[:limit]}")
        if self.errors:
            parts.append(f"errors {len(self.errors)}: {list(self.errors.items())[:limit]}")
        if not self.complete:
            parts.append(f"verifier did not finish: {self.stderr.strip()[-500:]}")
        return "; ".join(parts)


def _nfsio_argv(mode: str, server: str, *, export: str, version: int, directory: str, timeout: float,
                extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    return [
        sys.executable, "-u", str(NFSIO_SCRIPT), mode, server, "--export", export, "--version", str(version),
        "--dir", directory, "--timeout", repr(timeout), *extra,
    ]  # fmt: skip


def verify_files(
    lab: NetnsLab,
    names: Iterable[str],
    server: str,
    *,
    name: str = CLIENT,
    export: str = "/export",
    version: int = 4,
    directory: str = "writer",
    timeout: float = 1.0,
    deadline: float = 60.0,
) -> VerifyReport:
    """Read every file in ``names`` back through NFS from ``name``'s namespace and check it.

    A transport error (server still starting, VIP just moved) makes the verifier reconnect
    and retry that file until ``deadline`` seconds have passed; a missing file is final.
    """
    wanted = list(names)
    argv = _nfsio_argv("verify", server, export=export, version=version, directory=directory, timeout=timeout,
                       extra=("--deadline", repr(deadline)))  # fmt: skip
    proc = lab.popen(name, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate("".join(n + "\n" for n in wanted), timeout=deadline + 30 + 0.05 * len(wanted))
    except subprocess.TimeoutExpired:
        stop_process(proc)
        out, err = proc.communicate()
    report = VerifyReport(stderr=err or "")
    for line in (out or "").splitlines():
        parts = line.split(maxsplit=3)
        if not parts:
            continue
        if parts[0] == "V" and len(parts) >= 3:
            kind, fname, detail = parts[1], parts[2], parts[3] if len(parts) > 3 else ""
            report.checked += 1
            if kind == "OK":
                report.ok.append(fname)
            elif kind == "MISSING":
                report.missing.append(fname)
            elif kind == "CORRUPT":
                report.corrupt[fname] = detail
            else:
                report.errors[fname] = detail
        elif parts[0] == "L" and len(parts) >= 2:
            report.listed = int(parts[1])
        elif parts[0] == "END":
            report.complete = True
    if report.checked != len(wanted):
        report.complete = False
    return report


class NfsWriter(LineChild):
    """Acknowledged-write loop in a lab namespace (see the module docstring).

    ``interval`` paces file starts (0 = back to back); ``op_timeout`` bounds every NFS call
    (libnfs rounds it up to whole seconds), so a vanished server shows up as an error after
    at most that long instead of a call that hangs until TCP gives up.
    """

    def __init__(
        self,
        lab: NetnsLab,
        name: str = CLIENT,
        server: str = "192.0.2.100",
        *,
        export: str = "/export",
        version: int = 4,
        directory: str = "writer",
        size: int = 4096,
        interval: float = 0.01,
        op_timeout: float = 1.0,
        retry_interval: float = 0.05,
    ) -> None:
        if version not in (3, 4):
            raise ValueError("version must be 3 or 4")
        if size < 16:
            raise ValueError("size must be >= 16 bytes (header + random part)")
        super().__init__(lab, name)
        self.server = server
        self.export = export
        self.version = version
        self.directory = directory
        self.size = size
        self.interval = interval
        self.op_timeout = op_timeout
        self.retry_interval = retry_interval
        self.stop_grace = 5.0 + op_timeout  # it finishes the file in progress first
        self.end_line: tuple[int, int] | None = None
        self._acks: list[Ack] = []
        self._errors: list[WriteError] = []
        self._connects: list[Connected] = []

    what = "NFS writer"
    maxsplit = 5

    def argv(self) -> list[str]:
        return _nfsio_argv(
            "write", self.server, export=self.export, version=self.version, directory=self.directory,
            timeout=self.op_timeout,
            extra=("--size", str(self.size), "--interval", repr(self.interval),
                   "--retry-interval", repr(self.retry_interval)),
        )  # fmt: skip

    def parse(self, parts: list[str]) -> None:
        kind = parts[0]
        if kind == "A" and len(parts) >= 5:
            self._acks.append(Ack(int(parts[1]), float(parts[2]), float(parts[3]), parts[4]))
        elif kind == "E" and len(parts) >= 5:
            message = parts[5] if len(parts) > 5 else ""
            self._errors.append(WriteError(int(parts[1]), float(parts[2]), parts[3], parts[4], message))
        elif kind == "C" and len(parts) >= 3:
            self._connects.append(Connected(float(parts[1]), float(parts[2])))
        elif kind == "END" and len(parts) >= 3:
            self.end_line = (int(parts[1]), int(parts[2]))

    # -- queries -------------------------------------------------------------------------------

    @property
    def acks(self) -> list[Ack]:
        """Snapshot of acknowledged files, in order."""
        with self._cond:
            return list(self._acks)

    @property
    def errors(self) -> list[WriteError]:
        """Snapshot of failures (each one was followed by a reconnect)."""
        with self._cond:
            return list(self._errors)

    @property
    def connects(self) -> list[Connected]:
        """Snapshot of successful (re)connects."""
        with self._cond:
            return list(self._connects)

    def wait_acked(self, count: int, timeout: float, after: float | None = None) -> bool:
        """Block until ``count`` files were acknowledged (after ``after``, if given)."""

        def got() -> int:
            return sum(1 for a in self._acks if after is None or a.acked >= after)

        with self._cond:
            self._cond.wait_for(lambda: got() >= count or self._ended, timeout)
            return got() >= count

    def first_ack_after(self, t0: float) -> float | None:
        """Seconds from ``t0`` to the first acknowledgement of a file *started* at or after t0.

        Files started before t0 are ignored even if acknowledged later: they say nothing
        about whether a new write can get through after the event.
        """
        with self._cond:
            times = [a.acked for a in self._acks if a.started >= t0]
        return min(times) - t0 if times else None

    def wait_first_ack_after(self, t0: float, timeout: float) -> float | None:
        """Block until first_ack_after(t0) has an answer or ``timeout`` s pass."""
        with self._cond:
            self._cond.wait_for(lambda: self._ended or any(a.started >= t0 for a in self._acks), timeout)
        return self.first_ack_after(t0)

    def _points(self, start: float | None, end: float | None) -> list[float]:
        times = sorted(a.acked for a in self.acks)
        times = [t for t in times if (start is None or t >= start) and (end is None or t <= end)]
        return ([start] if start is not None else []) + times + ([end] if end is not None else [])

    def max_gap(self, start: float | None = None, end: float | None = None) -> float:
        """Longest time without an acknowledged write inside [start, end] (ack times).

        Boundaries count like Pinger.max_gap: an outage still going on at ``end`` counts up to
        ``end``.  Without boundaries: the largest gap between consecutive acks (0.0 with < 2).
        """
        return max((b - a for a, b in itertools.pairwise(self._points(start, end))), default=0.0)

    def outages(
        self, min_gap: float, start: float | None = None, end: float | None = None
    ) -> list[tuple[float, float]]:
        """Every silence longer than ``min_gap`` as (last ack before, first ack after)."""
        return [(a, b) for a, b in itertools.pairwise(self._points(start, end)) if b - a > min_gap]

    def summary(self) -> dict[str, Any]:
        """Counts and latencies for reports and assertion messages."""
        acks = self.acks
        latencies = sorted(a.acked - a.started for a in acks)
        return {
            "acked": len(acks),
            "errors": len(self.errors),
            "reconnects": max(0, len(self.connects) - 1),
            "latency_median": latencies[len(latencies) // 2] if latencies else None,
            "latency_max": latencies[-1] if latencies else None,
            "max_gap": self.max_gap(),
        }

    def verify(self, *, server: str | None = None, deadline: float = 60.0) -> VerifyReport:
        """Read back every acknowledged file through NFS and check its content (see verify_files)."""
        return verify_files(
            self.lab, [a.name for a in self.acks], server or self.server, name=self.name, export=self.export,
            version=self.version, directory=self.directory, timeout=self.op_timeout, deadline=deadline,
        )  # fmt: skip
