"""NFS writer and verifier that run *inside* a user-mode-linux client node (tests/lab/uml_agents.py).

The UML client has a real kernel NFS client, so this is plain file I/O on a (hard) NFS mount;
stdlib only, started with the guest's /usr/bin/python3 from the project tree mounted in the
guest.  A single process with no forks: under UML every fork is expensive host work.

    python3 uml_nfsload.py write DIR [--size N] [--interval S] [--max-seconds S]
    python3 uml_nfsload.py verify DIR        (file names on stdin)
    python3 uml_nfsload.py probe HOST PORT [--interval S] [--timeout S] [--max-seconds S]

Writer output, one line each; times are CLOCK_BOOTTIME seconds of the guest, the clock of
its /proc/uptime, so the host can place its own events on the same axis by reading that:
    READY <t>
    A <seq> <t_start> <t_ack> <name>      create + write + fsync + close all succeeded
    E <seq> <t> <errno name> <message...>  any failure (the file is abandoned, seq moves on)
    END <acknowledged> <errors>

Each file is ``<DIR>/w<seq:08d>-<sha256 of the content>``: the verifier needs only the name.
Verifier output: ``V <OK|MISSING|CORRUPT|ERROR> <name> <detail>`` per file, then ``END <ok> <checked>``.

The prober opens a new TCP connection to HOST:PORT every interval (and closes it): what a client
mounting now would get, free of the writer's connection and its TCP retransmission backoff.
It prints ``READY <t>``, then only changes: ``UP <t>`` and ``DOWN <t> <reason>``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import re
import signal
import socket
import sys
import time
from types import FrameType

NAME_RE = re.compile(r"w(\d{8})-([0-9a-f]{64})")


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write(directory: str, size: int, interval: float, max_seconds: float) -> int:
    stop = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    os.makedirs(directory, exist_ok=True)
    acked = errors = 0
    seq = 0
    deadline = now() + max_seconds  # bounded, whatever the host does
    say(f"READY {now():.6f}")
    while not stop and now() < deadline:
        seq += 1
        content = f"seq {seq}\n".encode() + os.urandom(size)
        name = f"w{seq:08d}-{hashlib.sha256(content).hexdigest()}"
        t0 = now()
        try:
            fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            errors += 1
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            say(f"E {seq} {now():.6f} {code} {e.strerror or e}")
            time.sleep(0.2)
            continue
        acked += 1
        say(f"A {seq} {t0:.6f} {now():.6f} {name}")
        if interval > 0:
            time.sleep(interval)
    say(f"END {acked} {errors}")
    return 0


def verify(directory: str) -> int:
    ok = checked = 0
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        checked += 1
        m = NAME_RE.fullmatch(name)
        if m is None:
            say(f"V ERROR {name} not a writer file name")
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            say(f"V MISSING {name} -")
            continue
        except OSError as e:
            say(f"V ERROR {name} {e}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != m[2] or not data.startswith(f"seq {int(m[1])}\n".encode()):
            say(f"V CORRUPT {name} {len(data)} bytes, sha256 {digest}")
            continue
        ok += 1
        say(f"V OK {name} {len(data)}")
    say(f"END {ok} {checked}")
    return 0 if ok == checked else 1


def probe(host: str, port: int, interval: float, timeout: float, max_seconds: float) -> int:
    stop = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    deadline = now() + max_seconds
    state = None
    say(f"READY {now():.6f}")
    while not stop and now() < deadline:
        t0 = now()
        try:
            with socket.create_connection((host, port), timeout=timeout):
                up, why = True, ""
        except OSError as e:
            up, why = False, errno.errorcode.get(e.errno or 0, "timeout") if e.errno else "timeout"
        if up != state:
            say(f"UP {t0:.6f}" if up else f"DOWN {t0:.6f} {why}")
            state = up
        time.sleep(max(0.0, interval - (now() - t0)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    w = sub.add_parser("write")
    w.add_argument("directory")
    w.add_argument("--size", type=int, default=16384)
    w.add_argument("--interval", type=float, default=0.05)
    w.add_argument("--max-seconds", type=float, default=900.0)
    v = sub.add_parser("verify")
    v.add_argument("directory")
    pr = sub.add_parser("probe")
    pr.add_argument("host")
    pr.add_argument("port", type=int)
    pr.add_argument("--interval", type=float, default=0.1)
    pr.add_argument("--timeout", type=float, default=0.2)
    pr.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    if args.mode == "write":
        return write(args.directory, args.size, args.interval, args.max_seconds)
    if args.mode == "probe":
        return probe(args.host, args.port, args.interval, args.timeout, args.max_seconds)
    return verify(args.directory)


if __name__ == "__main__":
    sys.exit(main())
