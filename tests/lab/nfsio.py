"""User-space NFS client for the lab: a small ctypes binding to libnfs and the child processes of
tests.lab.nfsclient (a writer and a verifier) that run *inside* a lab namespace.

The lab host has no kernel NFS client, so everything NFS goes through libnfs (Debian bookworm:
libnfs 4.0, ``libnfs.so.13``).  Why ctypes and not the PyPI ``libnfs`` package: that SWIG
binding (1.0.post4) builds against libnfs 4.0 but exposes neither ``nfs_set_timeout`` nor
``nfs_set_autoreconnect`` nor ``nfs_set_version`` nor ``nfs_umount``, and its wrapper classes
drop return codes.  Without a timeout a synchronous call to a server that vanished (a crashed
node, a VIP that moved) blocks until TCP gives up, so a failover test could neither bound nor
even observe the outage.  The handful of functions needed here are bound below with explicit
prototypes, and every return value is checked.  (Measured: with a SIGSTOPped server the
SWIG binding's nfs_stat64 was still blocked after 20 s; here the same call fails after 1 s.)
libnfs 4.0 quirk worked around below: an NFSv4 WRITE of more than ~3.9 KiB fails on the
client ("Failed to encode COMPOUND4args"), so NFSv4 writes go out in 2 KiB pieces.

Started by tests.lab.nfsclient as ``nsenter --net=... python3 -u nfsio.py {write|verify} ...``;
it is a standalone script (stdlib only, no project imports) so it runs with any sys.path.

Writer output, one line each, times are time.monotonic() seconds (CLOCK_MONOTONIC is one
system-wide clock, so they compare directly with the parent's):
    READY <t> <time-namespace id>
    C <t_connected> <seconds the connect+mount took>
    A <seq> <t_start> <t_ack> <name>                     create+write+commit+close all succeeded
    E <seq> <t> <stage> <errno name> <message...>        any failure; the context is dropped
    END <acknowledged> <errors>

Verifier input: one file name per stdin line.  Output:
    READY <t> <time-namespace id>
    V <OK|MISSING|CORRUPT|ERROR> <name> <detail...>
    L <entries in the directory, or -1 if it could not be listed>
    END <ok> <checked>

Each file is ``<dir>/w<seq:08d>-<sha256 of the content>``; the content starts with
``seq <n>\\n`` followed by random bytes, so the verifier needs nothing but the name.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import functools
import hashlib
import math
import os
import re
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

__all__ = ["NFS_V3", "NFS_V4", "LibNfs", "NfsContext", "NfsError", "content_for", "file_name", "parse_name"]

NFS_V3 = 3
NFS_V4 = 4
LIBNFS_SONAME = "libnfs.so.13"  # libnfs 4.0; libnfs >= 5 swapped pread/pwrite arguments
T = TypeVar("T")
# libnfs 4.0 encodes an NFSv4 WRITE into a fixed ~4 KiB buffer: one WRITE carrying more than
# ~3.9 KiB fails on the client with "ZDR error: Failed to encode COMPOUND4args" (measured:
# 3932 bytes pass, 3940 fail).  NFSv3 has no such limit.  NFSv4 writes are split below this.
V4_WRITE_CHUNK = 2048
NAME_RE = re.compile(r"w(\d{8})-([0-9a-f]{64})")


class NfsError(OSError):
    """A libnfs call failed; carries the failing step and libnfs's own error text."""

    def __init__(self, stage: str, code: int, message: str) -> None:
        super().__init__(code, message)
        self.stage = stage

    @property
    def errno_name(self) -> str:
        """Symbolic errno (EIO, ETIMEDOUT...) as libnfs reported it (negated return value)."""
        return errno.errorcode.get(self.errno or 0, f"E{self.errno}")


class NfsStat64(ctypes.Structure):
    """struct nfs_stat_64 of libnfs 4.0."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blksize", "blocks",
            "atime", "mtime", "ctime", "atime_nsec", "mtime_nsec", "ctime_nsec", "used",
        )
    ]  # fmt: skip


class NfsDirent(ctypes.Structure):
    """The leading fields of struct nfsdirent (only ``next`` and ``name`` are read)."""

    _fields_ = [("next", ctypes.c_void_p), ("name", ctypes.c_char_p), ("inode", ctypes.c_uint64)]


class LibNfs:
    """Prototypes of the libnfs 4.0 synchronous API functions the lab uses.

    Declaring argtypes/restype matters: without them ctypes would pass 64-bit pointers and
    uint64_t offsets as C ints and truncate them.
    """

    def __init__(self, soname: str = LIBNFS_SONAME) -> None:
        try:
            lib = ctypes.CDLL(soname, use_errno=True)
        except OSError as exc:
            raise OSError(f"cannot load {soname} (Debian package libnfs13 / libnfs-dev): {exc}") from exc
        vp, cp, i, u64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint64
        pvp = ctypes.POINTER(ctypes.c_void_p)
        self._declare(lib, "nfs_init_context", vp, [])
        self._declare(lib, "nfs_destroy_context", None, [vp])
        self._declare(lib, "nfs_get_error", cp, [vp])
        self._declare(lib, "nfs_set_version", i, [vp, i])
        self._declare(lib, "nfs_set_timeout", None, [vp, i])
        self._declare(lib, "nfs_set_autoreconnect", None, [vp, i])
        self._declare(lib, "nfs_mount", i, [vp, cp, cp])
        self._declare(lib, "nfs_umount", i, [vp])
        self._declare(lib, "nfs_mkdir", i, [vp, cp])
        self._declare(lib, "nfs_create", i, [vp, cp, i, i, pvp])
        self._declare(lib, "nfs_open", i, [vp, cp, i, pvp])
        self._declare(lib, "nfs_pwrite", i, [vp, vp, u64, u64, vp])
        self._declare(lib, "nfs_pread", i, [vp, vp, u64, u64, vp])
        self._declare(lib, "nfs_fsync", i, [vp, vp])
        self._declare(lib, "nfs_close", i, [vp, vp])
        self._declare(lib, "nfs_stat64", i, [vp, cp, ctypes.POINTER(NfsStat64)])
        self._declare(lib, "nfs_opendir", i, [vp, cp, pvp])
        self._declare(lib, "nfs_readdir", ctypes.POINTER(NfsDirent), [vp, vp])
        self._declare(lib, "nfs_closedir", None, [vp, vp])
        self.lib = lib

    @staticmethod
    def _declare(lib: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> None:
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lib, name)


class NfsContext:
    """One libnfs context = one TCP connection to one server, mounted on one export.

    There is deliberately no reconnect inside: libnfs's auto-reconnect is switched off so that
    a broken connection surfaces as an error of the call in flight.  The caller then drops the
    whole context (file handles included) and builds a new one, which guarantees that no
    handle, open state or unstable write of the old server is ever reused on the new one.
    """

    def __init__(self, lib: LibNfs, server: str, export: str, version: int, timeout: float) -> None:
        self.lib = lib
        self.write_chunk = V4_WRITE_CHUNK if version == NFS_V4 else 1 << 20
        ctx = lib.nfs_init_context()
        if not ctx:
            raise NfsError("init", errno.ENOMEM, "nfs_init_context returned NULL")
        self.ctx: int | None = ctx
        try:
            self._check("version", lib.nfs_set_version(ctx, version))
            # libnfs takes whole seconds only ("units of 1000"): round up, at least 1 s.
            lib.nfs_set_timeout(ctx, max(1, math.ceil(timeout)) * 1000)
            lib.nfs_set_autoreconnect(ctx, 0)
            self._check("mount", lib.nfs_mount(ctx, server.encode(), export.encode()))
        except BaseException:
            self.close()
            raise

    def error_text(self) -> str:
        """libnfs's last error message for this context."""
        if not self.ctx:
            return ""
        raw: bytes | None = self.lib.nfs_get_error(self.ctx)
        return raw.decode(errors="replace") if raw else ""

    def _check(self, stage: str, rc: int) -> int:
        """Raise NfsError for a negative return value (libnfs returns -errno or -1)."""
        if rc < 0:
            code = -rc if rc != -1 else errno.EIO
            text = self.error_text() or os.strerror(code)
            if "timed out" in text:  # libnfs reports its own RPC timeout as -EINTR
                code = errno.ETIMEDOUT
            raise NfsError(stage, code, text)
        return rc

    def _live(self) -> int:
        if not self.ctx:
            raise NfsError("closed", errno.EBADF, "context already destroyed")
        return self.ctx

    def mkdir(self, path: str, exist_ok: bool = True) -> None:
        """Create a directory; an existing one is fine with ``exist_ok``."""
        rc = self.lib.nfs_mkdir(self._live(), path.encode())
        if rc == -errno.EEXIST and exist_ok:
            return
        self._check("mkdir", rc)

    def write_file(self, path: str, data: bytes) -> None:
        """create(O_EXCL) + write all + fsync (COMMIT) + close, each checked; raises on any failure."""
        ctx = self._live()
        fh = ctypes.c_void_p()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._check("create", self.lib.nfs_create(ctx, path.encode(), flags, 0o644, ctypes.byref(fh)))
        if not fh.value:
            raise NfsError("create", errno.EIO, "nfs_create returned no file handle")
        buf = ctypes.create_string_buffer(data, len(data))
        base = ctypes.addressof(buf)
        offset = 0
        while offset < len(data):
            count = min(len(data) - offset, self.write_chunk)
            n = self._check("write", self.lib.nfs_pwrite(ctx, fh, offset, count, base + offset))
            if n == 0:
                raise NfsError("write", errno.EIO, f"short write: 0 bytes at offset {offset}")
            offset += n
        self._check("fsync", self.lib.nfs_fsync(ctx, fh))
        self._check("close", self.lib.nfs_close(ctx, fh))

    def read_file(self, path: str) -> bytes:
        """Whole file content via stat + open + pread loop + close, each checked."""
        ctx = self._live()
        st = NfsStat64()
        self._check("stat", self.lib.nfs_stat64(ctx, path.encode(), ctypes.byref(st)))
        fh = ctypes.c_void_p()
        self._check("open", self.lib.nfs_open(ctx, path.encode(), os.O_RDONLY, ctypes.byref(fh)))
        if not fh.value:
            raise NfsError("open", errno.EIO, "nfs_open returned no file handle")
        size = int(st.size)
        buf = ctypes.create_string_buffer(max(size, 1))
        base = ctypes.addressof(buf)
        offset = 0
        try:
            while offset < size:
                n = self._check("read", self.lib.nfs_pread(ctx, fh, offset, size - offset, base + offset))
                if n == 0:
                    break  # EOF earlier than stat said: the caller sees a short file
                offset += n
        finally:
            rc = self.lib.nfs_close(ctx, fh)
        self._check("close", rc)
        return buf.raw[:offset]

    def listdir(self, path: str) -> list[str]:
        """Names in a directory (without . and ..)."""
        ctx = self._live()
        handle = ctypes.c_void_p()
        self._check("opendir", self.lib.nfs_opendir(ctx, path.encode(), ctypes.byref(handle)))
        names: list[str] = []
        try:
            while True:
                entry = self.lib.nfs_readdir(ctx, handle)
                if not entry:
                    break
                name = (entry.contents.name or b"").decode(errors="replace")
                if name not in (".", ".."):
                    names.append(name)
        finally:
            self.lib.nfs_closedir(ctx, handle)
        return names

    def close(self) -> None:
        """Destroy the context (closes the socket); never talks to the server again."""
        if self.ctx:
            ctx, self.ctx = self.ctx, None
            self.lib.nfs_destroy_context(ctx)


# -- file naming --------------------------------------------------------------------------------


def content_for(seq: int, size: int) -> bytes:
    """Unique content: a readable header with the sequence number, then random bytes."""
    header = f"seq {seq}\n".encode()
    return header + os.urandom(max(0, size - len(header)))


def file_name(seq: int, data: bytes) -> str:
    """Name that carries the content's SHA-256, so a verifier needs only the name."""
    return f"w{seq:08d}-{hashlib.sha256(data).hexdigest()}"


def parse_name(name: str) -> tuple[int, str] | None:
    """(seq, sha256 hex) of a writer file name, None if it is not one."""
    match = NAME_RE.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None


def check_content(name: str, data: bytes) -> str | None:
    """None if ``data`` is what the writer wrote under ``name``, else what is wrong."""
    parsed = parse_name(name)
    if parsed is None:
        return "not a writer file name"
    seq, digest = parsed
    if hashlib.sha256(data).hexdigest() != digest:
        return f"sha256 mismatch ({len(data)} bytes read)"
    if not data.startswith(f"seq {seq}\n".encode()):
        return "header does not match the sequence number"
    return None


# -- child processes ------------------------------------------------------------------------------


class _Stopper:
    """Stop requests (SIGTERM or stdin EOF) that never interrupt an NFS call half way.

    A signal arriving inside libnfs's poll() makes the call fail with a spurious error; the
    flag lets the loop recognise such an error as "we were asked to stop", not as an outage.
    """

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_term)
        try:
            self.stdin_fd = sys.stdin.fileno()
        except (OSError, ValueError):
            self.stdin_fd = -1

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def poll(self) -> bool:
        """True once a stop was requested; notices a closed stdin (the parent went away)."""
        if not self.requested and self.stdin_fd >= 0:
            readable, _, _ = select.select([self.stdin_fd], [], [], 0)
            if readable and not os.read(self.stdin_fd, 4096):
                self.requested = True
        return self.requested


def _ready() -> None:
    try:
        time_ns = os.readlink("/proc/self/ns/time")
    except OSError:
        time_ns = "time:[none]"
    print(f"READY {time.monotonic():.9f} {time_ns}", flush=True)


def _report(seq: int, exc: NfsError) -> float:
    """One E line for a failed call; returns its time."""
    t = time.monotonic()
    print(f"E {seq} {t:.9f} {exc.stage} {exc.errno_name} {_one_line(exc.strerror or '')}", flush=True)
    return t


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def run_writer(args: argparse.Namespace, lib: LibNfs) -> int:
    """Write unique files until stopped; reconnect after every error."""
    stopper = _Stopper()
    _ready()
    directory = "/" + args.dir.strip("/")
    ctx: NfsContext | None = None
    seq = acked = errors = 0
    next_start = time.monotonic()
    while not stopper.poll():
        if ctx is None:
            t0 = time.monotonic()
            try:
                ctx = NfsContext(lib, args.server, args.export, args.version, args.timeout)
                ctx.mkdir(directory)
            except NfsError as exc:
                if ctx is not None:
                    ctx.close()
                    ctx = None
                if stopper.poll():
                    break
                errors += 1
                t = _report(seq, exc)
                time.sleep(max(0.0, args.retry_interval - (t - t0)))
                continue
            t1 = time.monotonic()
            print(f"C {t1:.9f} {t1 - t0:.9f}", flush=True)
        delay = next_start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        seq += 1
        data = content_for(seq, args.size)
        name = file_name(seq, data)
        t_start = time.monotonic()
        next_start = t_start + args.interval
        try:
            ctx.write_file(f"{directory}/{name}", data)
        except NfsError as exc:
            ctx.close()
            ctx = None
            if stopper.poll():
                break
            errors += 1
            t = _report(seq, exc)
            # A server that answers every call with an error (NFS4ERR_GRACE) must not get a
            # reconnect storm: every new context is a new NFSv4 client record on its disk.
            next_start = max(next_start, t + args.retry_interval)
            continue
        acked += 1
        print(f"A {seq} {t_start:.9f} {time.monotonic():.9f} {name}", flush=True)
    if ctx is not None:
        ctx.close()
    with contextlib.suppress(BrokenPipeError):
        print(f"END {acked} {errors}", flush=True)
    return 0


def _names_from_stdin() -> Iterator[str]:
    for line in sys.stdin:
        name = line.strip()
        if name:
            yield name


def run_verifier(args: argparse.Namespace, lib: LibNfs) -> int:
    """Read back every named file; a transport error gets a fresh context and a retry."""
    _ready()
    directory = "/" + args.dir.strip("/")
    deadline = time.monotonic() + args.deadline
    ctx: NfsContext | None = None
    ok = checked = 0

    def with_context(op: Callable[[NfsContext], T]) -> T:
        """Run op, reconnecting on errors other than "no such file" until the deadline."""
        nonlocal ctx
        while True:
            try:
                if ctx is None:
                    ctx = NfsContext(lib, args.server, args.export, args.version, args.timeout)
                return op(ctx)
            except NfsError as exc:
                # ENOENT of the file itself is final; of the export (mount) it is a server not ready yet.
                if (exc.errno == errno.ENOENT and exc.stage != "mount") or time.monotonic() >= deadline:
                    raise
                if ctx is not None:
                    ctx.close()
                    ctx = None
                time.sleep(args.retry_interval)

    for name in _names_from_stdin():
        checked += 1
        try:
            data = with_context(functools.partial(NfsContext.read_file, path=f"{directory}/{name}"))
        except NfsError as exc:
            kind = "MISSING" if exc.errno == errno.ENOENT else "ERROR"
            print(f"V {kind} {name} {exc.stage} {exc.errno_name} {_one_line(exc.strerror or '')}", flush=True)
            continue
        problem = check_content(name, data)
        if problem is None:
            ok += 1
            print(f"V OK {name} {len(data)}", flush=True)
        else:
            print(f"V CORRUPT {name} {_one_line(problem)}", flush=True)
    try:
        listed = len(with_context(functools.partial(NfsContext.listdir, path=directory)))
    except NfsError:
        listed = -1
    print(f"L {listed}", flush=True)
    if ctx is not None:
        ctx.close()
    print(f"END {ok} {checked}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the writer or the verifier."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=("write", "verify"))
    parser.add_argument("server")
    parser.add_argument("--export", default="/export", help="NFSv4 pseudo path or NFSv3 export path")
    parser.add_argument("--version", type=int, choices=(NFS_V3, NFS_V4), default=NFS_V4)
    parser.add_argument("--dir", default="writer", help="directory inside the export")
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between file starts")
    parser.add_argument("--timeout", type=float, default=1.0, help="libnfs RPC timeout (whole seconds)")
    parser.add_argument("--retry-interval", type=float, default=0.05, help="pause after a failure")
    parser.add_argument("--deadline", type=float, default=60.0, help="verifier: give up retrying after")
    args = parser.parse_args(argv)
    lib = LibNfs()
    if args.mode == "write":
        return run_writer(args, lib)
    return run_verifier(args, lib)


if __name__ == "__main__":
    sys.exit(main())
