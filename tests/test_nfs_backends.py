"""The NFS pieces the chain drives: the RPC NULL health check, the [nfs] config, the kernel backend.

The kernel backend runs for real in the user-mode-linux lab (tests/test_uml_storage.py) and
ganesha in the netns lab (tests/test_ganesha_failover.py); here the kernel backend's decisions
are checked against a folder standing in for /proc/fs/nfsd and a runner that records commands,
for the failures the labs cannot provoke on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from unittest.mock import ANY

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ConfigError, parse
from nfs.backend import NfsError
from nfs.exports import parse_export
from nfs.kernel import KernelBackend
from nfs.rpc import RpcError, check_null_reply, nfs_answers, null_call

BASE = '[vrrp]\ninterface = "eth0"\nvrid = 51\npriority = 100\nvips = ["192.0.2.100/24"]\n'
FS = '[filesystem]\ndevice = "/dev/drbd0"\nmountpoint = "/srv/nfs"\n'
EXPORTS = 'exports = [{ path = "/srv/nfs/data", clients = "192.0.2.0/24", options = "rw,sync,fsid=1" }]\n'


def reply(xid: int, stat: int = 0, accept: int = 0, vlen: int = 0) -> bytes:
    return struct.pack("!IIIII", xid, 1, stat, 0, vlen) + bytes(vlen) + struct.pack("!I", accept)


def test_null_call_is_a_record_marked_call_of_procedure_zero() -> None:
    call = null_call(0x01020304, 100003, 4)
    marker, xid, mtype, rpcvers, prog, vers, proc = struct.unpack("!IIIIIII", call[:28])
    assert marker == 0x80000000 | (len(call) - 4)
    assert (xid, mtype, rpcvers, prog, vers, proc) == (0x01020304, 0, 2, 100003, 4, 0)


def test_null_reply_checks() -> None:
    check_null_reply(7, reply(7))
    check_null_reply(7, reply(7, vlen=8))
    for bad, why in ((reply(8), "not a reply to our call"), (reply(7, stat=1), "denied"),
                     (reply(7, accept=2), "version not served"), (reply(7)[:10], "too short")):
        with pytest.raises(RpcError, match=why):
            check_null_reply(7, bad)


@given(st.binary(max_size=64))
def test_garbage_replies_raise_rpc_error_only(data: bytes) -> None:
    with contextlib.suppress(RpcError):  # anything else escaping is the failure
        check_null_reply(7, data)


def test_nfs_answers_names_the_version_and_address_when_nobody_listens() -> None:
    why = asyncio.run(nfs_answers((4,), host="127.0.0.1", port=9, timeout=1.0))
    assert why.startswith("NFSv4 NULL call to 127.0.0.1:9 failed")


def test_nfs_section_parses_and_puts_the_nfs_steps_in_the_chain() -> None:
    cfg = parse(BASE + '[drbd]\nresource = "r0"\n' + FS + "[nfs]\n" + EXPORTS)
    assert cfg.nfs is not None and cfg.nfs.backend == "kernel" and cfg.nfs.exports[0].fsid == "1"
    assert cfg.steps == ("drbd", "mount", "nfs_state", "nfs", "vip")
    assert cfg.state_path == "/srv/nfs/.nfs-state"
    vip_only = parse(BASE)
    assert vip_only.steps == ("vip",) and vip_only.nfs is None


@pytest.mark.parametrize(("text", "key", "needle"), [
    ("[nfs]\n" + EXPORTS, "nfs", "needs a [filesystem] section"),
    (FS + '[nfs]\nexports = [{ path = "/elsewhere", clients = "*", options = "fsid=1" }]\n', "nfs.exports[1]",
     "not on the replicated filesystem"),
    (FS + '[nfs]\nexports = [{ path = "/srv/nfs", clients = "*", options = "rw" }]\n', "nfs.exports[1]", "fsid"),
    (FS + "[nfs]\nexports = []\n", "nfs.exports", "non-empty"),
    (FS + '[nfs]\nbackend = "nfs-kernel"\n' + EXPORTS, "nfs.backend", "kernel, ganesha"),
    (FS + '[nfs]\nstate_dir = "../etc"\n' + EXPORTS, "nfs.state_dir", "relative path inside"),
    (FS + "[nfs]\ngrace_time = 5\n" + EXPORTS, "nfs.grace_time", "10 s at least"),
    (FS + '[nfs]\nbackend = "ganesha"\nlease_time = 300\n' + EXPORTS, "nfs.lease_time", "0..120"),
    (FS + '[nfs]\nbackend = "ganesha"\nexports = [{ path = "/srv/nfs", clients = "*", options = "fsid=1" }]\n',
     "nfs.state_dir", "inside the export"),
    (FS + '[nfs]\nserver_scope = "a b"\n' + EXPORTS, "nfs.server_scope", "letters, digits"),
    (FS + "[nfs]\nversions = [2]\n" + EXPORTS, "nfs.versions", "3..4"),
])  # fmt: skip
def test_nfs_section_errors_name_the_key(text: str, key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(BASE + text, "agent.toml")
    assert e.value.key == key and needle in str(e.value)


class Recorder:
    """Runs nothing: records argv and answers from a table of (argv prefix -> exit, stderr)."""

    def __init__(self, nfsd: Path, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.nfsd, self.answers = nfsd, answers or {}
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        for prefix, (code, err) in self.answers.items():
            if " ".join(argv).startswith(prefix):
                return code, "", err
        if "rpc.nfsd" in " ".join(argv):  # what the kernel does with the thread count
            (self.nfsd / "threads").write_text(argv[-1] + "\n")
        return 0, "", ""


class Helpers:
    """Starts a real long-running stand-in (sleep) for each nfs-utils daemon, and records argv."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.procs: list[asyncio.subprocess.Process] = []

    async def __call__(self, argv: list[str]) -> asyncio.subprocess.Process:
        self.started.append(argv)
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        self.procs.append(proc)
        return proc


def kernel(tmp_path: Path, answers: dict[str, tuple[int, str]] | None = None,
           helpers: Helpers | None = None) -> tuple[KernelBackend, Recorder]:
    nfsd = tmp_path / "nfsd"
    nfsd.mkdir()
    for name, value in (("threads", "0"), ("nfsv4gracetime", "90"), ("nfsv4leasetime", "90"),
                        ("unlock_filesystem", ""), ("unlock_ip", "")):
        (nfsd / name).write_text(value + "\n")
    text = BASE + FS + f'[nfs]\nexports_file = "{tmp_path}/exports"\nversions = [4]\nserver_scope = "ha"\n' + EXPORTS
    cfg = parse(text)
    assert cfg.nfs is not None
    runner = Recorder(nfsd, answers)
    backend = KernelBackend(cfg.nfs, "/srv/nfs", runner, notify_name="192.0.2.100", nfsd=nfsd,
                            spawn=helpers or Helpers())
    backend.spawn_waiting = no_waiting  # rpc.nfsd started ahead: only where a test asks for it
    return backend, runner


async def no_waiting(argv: list[str]) -> asyncio.subprocess.Process:
    raise FileNotFoundError(2, "not in this test")


def test_kernel_start_failure_undoes_what_it_started_and_names_the_command(tmp_path: Path) -> None:
    helpers = Helpers()
    backend, runner = kernel(tmp_path, {"unshare --uts": (1, "rpc.nfsd: unable to set any sockets for nfsd")},
                             helpers)
    with pytest.raises(NfsError, match=r"starting nfsd.*unable to set any sockets"):
        asyncio.run(backend.start(5.0))
    assert helpers.started == [["rpc.mountd", "-F", "-N", "3"]]
    assert all(p.returncode is not None for p in helpers.procs), "rpc.mountd left running after the failure"
    assert (tmp_path / "nfsd" / "nfsv4gracetime").read_text() == "10\n"  # written before the start
    assert not (tmp_path / "exports").exists(), "the exports of a failed start stay behind"
    assert (tmp_path / "nfsd" / "unlock_filesystem").read_text() == "/srv/nfs\n"
    assert ["exportfs", "-u", "192.0.2.0/24:/srv/nfs/data"] in runner.calls


def test_kernel_helper_that_cannot_start_is_a_clear_failure(tmp_path: Path) -> None:
    async def missing(argv: list[str]) -> asyncio.subprocess.Process:
        raise FileNotFoundError(2, "No such file or directory")

    backend, _ = kernel(tmp_path)
    backend.spawn = missing
    with pytest.raises(NfsError, match=r"starting rpc\.mountd: No such file or directory"):
        asyncio.run(backend.start(5.0))


def test_kernel_start_refuses_an_nfsd_started_by_someone_else(tmp_path: Path) -> None:
    backend, runner = kernel(tmp_path)
    (tmp_path / "nfsd" / "threads").write_text("8\n")
    with pytest.raises(NfsError, match="already runs with 8 threads"):
        asyncio.run(backend.start(5.0))
    assert runner.calls == []


def test_kernel_start_with_no_server_answering_is_a_failure_and_stops_nfsd(tmp_path: Path) -> None:
    backend, runner = kernel(tmp_path)
    with pytest.raises(NfsError, match="does not answer: NFSv4 NULL call"):
        asyncio.run(backend.start(1.5))  # nothing listens on 127.0.0.1:2049 here
    assert ["unshare", "--uts", "sh", "-c", ANY, "sh", "ha", "-N", "3", "8"] in runner.calls  # scope = UTS name
    assert ["rpc.nfsd", "0"] in runner.calls and not backend.running()


def test_kernel_stop_that_leaves_threads_is_an_error(tmp_path: Path) -> None:
    backend, _ = kernel(tmp_path, {"rpc.nfsd 0": (0, "")})
    (tmp_path / "nfsd" / "threads").write_text("8\n")
    with pytest.raises(NfsError, match="still has 8 threads"):
        asyncio.run(backend.stop(5.0))


def test_kernel_reconfigure_re_exports_and_sets_threads_live_without_stopping(tmp_path: Path) -> None:
    backend, runner = kernel(tmp_path)
    (tmp_path / "nfsd" / "threads").write_text("8\n")  # serving
    new = replace(backend.cfg, threads=16, grace_time=30, exports=(*backend.cfg.exports, parse_export(
        {"path": "/srv/nfs/more", "clients": "192.0.2.0/24", "options": "rw,sync,fsid=2"}, "/srv/nfs")))
    detail = asyncio.run(backend.reconfigure(new, 5.0))
    assert runner.calls == [["exportfs", "-r"]], "no stop, no restart: the exports are re-read in place"
    assert "/srv/nfs/more" in (tmp_path / "exports").read_text()
    assert (tmp_path / "nfsd" / "threads").read_text() == "16\n" and backend.running()
    assert "2 export(s)" in detail and "16 threads" in detail and "next start" in detail


def test_kernel_reconfigure_while_stopped_only_keeps_the_settings_for_the_next_start(tmp_path: Path) -> None:
    backend, runner = kernel(tmp_path)
    detail = asyncio.run(backend.reconfigure(replace(backend.cfg, threads=4), 5.0))
    assert runner.calls == [] and backend.cfg.threads == 4 and "when it starts" in detail


def test_kernel_prepare_loads_mounts_and_starts_rpcbind_ahead_and_start_does_not_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nfs.kernel

    running: set[str] = set()
    monkeypatch.setattr(nfs.kernel, "_helper_running", lambda name: name in running)
    backend, runner = kernel(tmp_path)
    backend.cfg = replace(backend.cfg, versions=(3, 4))
    nfsd = tmp_path / "nfsd"
    (nfsd / "threads").unlink()  # a backup after boot: nfsd not loaded, its filesystem not mounted

    async def kernel_side(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        runner.calls.append(list(argv))
        if argv[:3] == ["mount", "-t", "nfsd"]:
            (nfsd / "threads").write_text("0\n")
        if argv[0] == "rpcbind":
            running.add("rpcbind")
        return 0, "", ""

    backend.runner = kernel_side
    detail = asyncio.run(backend.prepare(5.0))
    assert runner.calls == [["modprobe", "nfsd"], ["mount", "-t", "nfsd", "nfsd", str(nfsd)], ["rpcbind", "-w"]]
    assert "nfsd module loaded" in detail and "rpcbind started" in detail
    assert not (tmp_path / "exports").exists(), "nothing exported ahead: the data is not there"
    assert (nfsd / "nfsv4gracetime").read_text() == "90\n", "grace and lease are the start's to write"
    assert "nothing left" in asyncio.run(backend.prepare(5.0))
    runner.calls.clear()
    with pytest.raises(NfsError):
        asyncio.run(backend.start(1.5))  # nothing answers NFS here; what it ran is what counts
    assert ["modprobe", "nfsd"] not in runner.calls and ["rpcbind", "-w"] not in runner.calls
    assert runner.calls[0] == ["exportfs", "-r"]


def test_kernel_start_runs_nfsdcld_on_the_state_folder_when_installed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import nfs.kernel

    monkeypatch.setattr(nfs.kernel, "_helper_running", lambda name: False)
    monkeypatch.setattr(nfs.kernel, "_pipefs", lambda: None)
    helpers = Helpers()
    backend, runner = kernel(tmp_path, helpers=helpers)
    backend.which = lambda name: f"/usr/sbin/{name}"
    backend.pipefs_dir = str(tmp_path / "pipefs")
    assert "rpc_pipefs mounted on" in asyncio.run(backend.prepare(5.0))
    assert ["mount", "-t", "rpc_pipefs", "sunrpc", str(tmp_path / "pipefs")] in runner.calls
    with pytest.raises(NfsError):
        asyncio.run(backend.start(1.5))  # nothing answers NFS here; what it started is what counts
    assert ["nfsdcld", "-F", "-p", str(tmp_path / "pipefs")] in helpers.started
    assert ["rpc.mountd", "-F", "-N", "3"] in helpers.started
    assert all(p.returncode is not None for p in helpers.procs), "stopped with nfsd: they hold the state folder"
    backend.which = lambda name: None  # not installed: nfsd falls back to nfsdcltrack by itself
    helpers.started.clear()
    with pytest.raises(NfsError):
        asyncio.run(backend.start(1.5))
    assert helpers.started == [["rpc.mountd", "-F", "-N", "3"]]


def test_kernel_start_serves_without_nfsdcld_if_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nfs.kernel

    monkeypatch.setattr(nfs.kernel, "_helper_running", lambda name: False)
    monkeypatch.setattr(nfs.kernel, "_pipefs", lambda: "/run/rpc_pipefs")
    started: list[list[str]] = []

    async def spawn(argv: list[str]) -> asyncio.subprocess.Process:
        started.append(argv)
        if argv[0] != "nfsdcld":
            return await asyncio.create_subprocess_exec("sleep", "30")
        proc = await asyncio.create_subprocess_exec("false")  # an nfsdcld that gave up at once
        await proc.wait()
        return proc

    backend, _ = kernel(tmp_path, {"unshare --uts": (1, "stop here")})
    backend.spawn = spawn
    backend.which = lambda name: f"/usr/sbin/{name}"
    with pytest.raises(NfsError, match="stop here"):  # got as far as starting nfsd's threads
        asyncio.run(backend.start(5.0))
    assert ["nfsdcld", "-F", "-p", "/run/rpc_pipefs"] in started
    assert "nfsdcld exited" in ", ".join(backend._laps)


def test_kernel_rpc_nfsd_started_ahead_runs_only_when_told_with_the_same_arguments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nfs.kernel

    monkeypatch.setattr(nfs.kernel, "_helper_running", lambda name: True)
    backend, runner = kernel(tmp_path)
    ran = tmp_path / "ran"

    async def waiting(argv: list[str]) -> asyncio.subprocess.Process:
        # stands in for `unshare --uts sh -c SCRIPT ...`: waits for its line, then records its argv
        return await asyncio.create_subprocess_exec(
            "sh", "-c", 'read -r _ && echo "$@" >"$0" && echo 8 >"$1"', str(ran), str(tmp_path / "nfsd" / "threads"),
            *argv[4:], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)

    async def scenario() -> None:
        backend.spawn_waiting = waiting
        assert "rpc.nfsd waiting" in await backend.prepare(5.0)
        await asyncio.sleep(0.2)
        assert not ran.exists(), "started ahead, but nothing may run before the takeover says so"
        with contextlib.suppress(NfsError):  # nothing answers NFS here
            await backend.start(1.5)
        assert ran.exists() and "sh ha -N 3 8" in ran.read_text()
        assert not any(c[0] == "unshare" for c in runner.calls), "the process started ahead was used"
        # stopped: a backup again, armed again; a reload that changes the threads makes it stale
        assert backend._armed is not None and backend._armed[1].returncode is None
        backend.cfg = replace(backend.cfg, threads=4)
        ran.unlink()
        (tmp_path / "nfsd" / "threads").write_text("0\n")
        with contextlib.suppress(NfsError):
            await backend.start(1.5)
        assert ["unshare", "--uts", "sh", "-c", ANY, "sh", "ha", "-N", "3", "4"] in runner.calls
        assert not ran.exists()
        armed = backend._armed
        backend.disarm()
        if armed is not None:
            await armed[1].wait()  # killed: ends without running rpc.nfsd
        assert not ran.exists()

    asyncio.run(scenario())


def test_kernel_waits_for_nfsdcld_to_watch_for_nfsds_pipe(tmp_path: Path) -> None:
    import sys

    backend, _ = kernel(tmp_path)

    async def scenario() -> list[str]:
        # an "nfsdcld" that does its database work (0.3 s), then sets up its inotify watch
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import ctypes, time; time.sleep(0.3); ctypes.CDLL(None).inotify_init(); "
            "time.sleep(30)")
        t0 = time.monotonic()
        await backend._cld_ready(proc)
        took = time.monotonic() - t0
        proc.kill()
        await proc.wait()
        assert 0.2 < took < 1.9, took
        return backend._laps

    assert "nfsdcld ready" in ", ".join(asyncio.run(scenario()))
