"""keepalived 2.2.7 as an interop peer and reference implementation inside a NetnsLab.

Facts this module is built on (all observed on keepalived 2.2.7 / Debian 12):

* ``keepalived -n`` does not daemonize: the process we start *is* the parent (nsenter
  without --fork execs it, so ``Popen.pid`` is its PID).  The parent forks one VRRP child
  (PID in the ``-r`` file); checker (``-c``) and BFD (``-b``) children exist only when the
  config has virtual_server / bfd sections, so those pid files usually never appear.
  The parent respawns a child that dies.
* SIGKILL of the parent alone is **not** a crash: the VRRP child notices its parent's death,
  shuts down gracefully, sends a priority-0 advert and removes the VIPs.  SIGKILL of the
  child alone makes the parent respawn it.  A realistic crash therefore needs: SIGSTOP the
  parent (no respawn), SIGKILL every child, SIGKILL the parent.  The VIPs then stay on the
  interface and adverts stop at once, as after a kernel panic of the daemon's host.
* ``keepalived -t`` exits non-zero (5) on *warnings* too, e.g. when it rewrites a value
  (auth_pass longer than 8, non-integer v2 advert_int, nopreempt with state MASTER), and it
  checks that the interface exists, so configs are validated inside the lab namespace.
* Sub-second ``advert_int`` needs VRRPv3: ``vrrp_version 3`` in global_defs (or ``version 3``
  in the instance); in v2 keepalived rounds to whole seconds with a warning.  v3 has no
  authentication; keepalived ignores it with a warning.
* The config must contain ``script_user root`` + ``enable_script_security`` or ``-t`` fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.lab.netns import Closing, LabError, NetnsLab, ProcRef, terminate_pids, wait_until

__all__ = [
    "Keepalived",
    "check_keepalived_conf",
    "keepalived_version",
    "render_keepalived_conf",
    "require_keepalived",
]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
_AUTH_RE = re.compile(r"[!-~]{1,8}")  # printable, no spaces: keepalived truncates beyond 8
_STATE_RE = re.compile(r"\((?P<name>[^)]+)\) Entering (?P<state>[A-Z]+) STATE")


def require_keepalived() -> str:
    """Path of keepalived, or a LabError that says how to get it (tests must not skip)."""
    path = shutil.which("keepalived")
    if path is None:
        raise LabError("keepalived is not installed: apt-get install -y --no-install-recommends keepalived")
    return path


def _fmt_seconds(value: float) -> str:
    return f"{value:g}"


def render_keepalived_conf(
    *,
    name: str,
    interface: str,
    vrid: int,
    priority: int,
    advert_int: float,
    version: int = 2,
    vips: Sequence[str],
    auth_pass: str = "",
    nopreempt: bool = False,
    preempt_delay: float = 0,
    unicast_src: str | None = None,
    unicast_peers: Sequence[str] = (),
    state: str = "BACKUP",
    garp_master_delay: int | None = None,
    garp_master_repeat: int | None = None,
) -> str:
    """A complete keepalived.conf with one vrrp_instance called ``name``.

    Combinations that keepalived would silently rewrite (and ``-t`` would flag) raise
    ValueError here, so an interop test never runs against a config other than the one it
    meant.  ``name`` is both the router_id and the instance name that appears in the log.
    """
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"name {name!r} must match {_NAME_RE.pattern}")
    if not _IFNAME_RE.fullmatch(interface):
        raise ValueError(f"interface {interface!r} is not a valid interface name")
    if not 1 <= vrid <= 255:
        raise ValueError(f"vrid {vrid} out of range 1..255")
    if not 1 <= priority <= 255:
        raise ValueError(f"priority {priority} out of range 1..255")
    if version == 2:
        if advert_int != int(advert_int) or not 1 <= advert_int <= 255:
            raise ValueError(f"VRRPv2 advert_int must be whole seconds 1..255, got {advert_int}")
    elif version == 3:
        centis = advert_int * 100
        if abs(centis - round(centis)) > 1e-6 or not 1 <= round(centis) <= 4095:
            raise ValueError(f"VRRPv3 advert_int must be 0.01..40.95 in steps of 0.01, got {advert_int}")
        if auth_pass:
            raise ValueError("VRRPv3 has no authentication (keepalived would ignore auth_pass)")
    else:
        raise ValueError(f"VRRP version must be 2 or 3, got {version}")
    if auth_pass and not _AUTH_RE.fullmatch(auth_pass):
        raise ValueError("auth_pass must be 1..8 printable characters without spaces")
    state = state.upper()
    if state not in ("MASTER", "BACKUP"):
        raise ValueError(f"state must be MASTER or BACKUP, got {state!r}")
    if not 0 <= preempt_delay <= 1000:
        raise ValueError(f"preempt_delay {preempt_delay} out of range 0..1000")
    if nopreempt and preempt_delay:
        raise ValueError("preempt_delay is meaningless with nopreempt (keepalived resets it)")
    if state == "MASTER" and (nopreempt or preempt_delay):
        raise ValueError("nopreempt/preempt_delay need state BACKUP (keepalived clears them for MASTER)")
    if not vips:
        raise ValueError("at least one VIP is required")
    vip_lines = [str(ipaddress.ip_interface(vip)) if "/" in vip else str(ipaddress.ip_address(vip)) for vip in vips]
    peers = [str(ipaddress.ip_address(peer)) for peer in unicast_peers]
    if unicast_src is not None:
        unicast_src = str(ipaddress.ip_address(unicast_src))
    for label, value in (("garp_master_delay", garp_master_delay), ("garp_master_repeat", garp_master_repeat)):
        if value is not None and not 0 <= value <= 255:
            raise ValueError(f"{label} {value} out of range 0..255")

    lines = ["global_defs {", f"    router_id {name}"]
    if version == 3:
        lines.append("    vrrp_version 3")
    lines += [
        "    script_user root",
        "    enable_script_security",
        "}",
        "",
        f"vrrp_instance {name} {{",
        f"    state {state}",
        f"    interface {interface}",
        f"    virtual_router_id {vrid}",
        f"    priority {priority}",
        f"    advert_int {_fmt_seconds(advert_int)}",
    ]
    if nopreempt:
        lines.append("    nopreempt")
    if preempt_delay:
        lines.append(f"    preempt_delay {_fmt_seconds(preempt_delay)}")
    if garp_master_delay is not None:
        lines.append(f"    garp_master_delay {garp_master_delay}")
    if garp_master_repeat is not None:
        lines.append(f"    garp_master_repeat {garp_master_repeat}")
    if auth_pass:
        lines += ["    authentication {", "        auth_type PASS", f"        auth_pass {auth_pass}", "    }"]
    if unicast_src is not None:
        lines.append(f"    unicast_src_ip {unicast_src}")
    if peers:
        lines += ["    unicast_peer {", *(f"        {peer}" for peer in peers), "    }"]
    lines += ["    virtual_ipaddress {", *(f"        {vip}" for vip in vip_lines), "    }", "}", ""]
    return "\n".join(lines)


def check_keepalived_conf(lab: NetnsLab, node: str, config: str) -> str:
    """Run ``keepalived -t`` on ``config`` inside ``node``'s namespace; returns its output.

    Inside the namespace because -t rejects a config whose interface does not exist, and the
    host's interfaces say nothing about the lab's.  Raises LabError with keepalived's
    complaint, which is far more useful in a failing test than "exit status 5".
    """
    require_keepalived()
    with tempfile.TemporaryDirectory(prefix="keepalived-check-") as tmp:
        path = Path(tmp) / "keepalived.conf"
        path.write_text(config)
        result = lab.run(node, ["keepalived", "-t", "-f", str(path)], check=False)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise LabError(f"keepalived -t rejected the config (exit {result.returncode}): {output}\n{config}")
    return output


class Keepalived(Closing):
    """One keepalived instance in one lab node, with its own config, log and pid files.

    Separate pid files per instance are essential: every namespace shares the host's /run,
    and keepalived refuses to start when its default pid file names a live process.
    """

    def __init__(self, lab: NetnsLab, node: str, config: str, *, workdir: str | Path | None = None) -> None:
        require_keepalived()
        lab.ns(node)  # validates the node name early
        self.lab = lab
        self.node = node
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix=f"keepalived-{node}-", dir=lab.workdir)) if workdir is None else Path(workdir)
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.workdir / "keepalived.conf"
        self.log_path = self.workdir / "keepalived.log"
        self.pid_file = self.workdir / "keepalived.pid"
        self.vrrp_pid_file = self.workdir / "vrrp.pid"
        self.checkers_pid_file = self.workdir / "checkers.pid"
        self.bfd_pid_file = self.workdir / "bfd.pid"
        self.conf_path.write_text(config)
        self.proc: subprocess.Popen[Any] | None = None
        self._children: dict[int, ProcRef] = {}
        self._closed = False
        lab.add_cleanup(self.close)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Keepalived:
        """Start and wait until the VRRP child exists (so adverts are about to flow)."""
        if self.running:
            raise LabError(f"keepalived in {self.node} already running (pid {self.pid})")
        for path in (self.pid_file, self.vrrp_pid_file, self.checkers_pid_file, self.bfd_pid_file):
            path.unlink(missing_ok=True)  # stale files from a kill() make keepalived refuse to start
        self._children.clear()
        # -G: no syslog. Without a syslog daemon (no /dev/log, as on this lab host) keepalived's
        # syslog(3) falls back to writing every line to /dev/console (LOG_CONS, set with -l): a
        # serial console takes a few hundred lines a second, and under a flood of bogus packets
        # (one log line each) keepalived would spend its time waiting on the serial port. -l
        # still logs everything to stdout, which is what the lab reads.
        argv = [
            "keepalived", "-n", "-l", "-D", "-G",
            "-f", str(self.conf_path),
            "-p", str(self.pid_file),
            "-r", str(self.vrrp_pid_file),
            "-c", str(self.checkers_pid_file),
            "-b", str(self.bfd_pid_file),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = self.lab.popen(self.node, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc

        def started() -> bool:
            if proc.poll() is not None:
                return True
            return self._read_pid(self.pid_file) == proc.pid and self._refresh_children(only_vrrp=True)

        if not wait_until(started, timeout) or proc.poll() is not None:
            code = proc.poll()
            self.kill()
            raise LabError(
                f"keepalived in {self.lab.ns(self.node)} did not start "
                f"({'exit ' + str(code) if code is not None else 'timeout'}):\n{self.log()}"
            )
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """Graceful shutdown (SIGTERM): keepalived sends priority 0 and removes its VIPs."""
        proc = self.proc
        if proc is None:
            return None
        self._refresh_children()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        terminate_pids(self._children.values())
        return proc.wait()

    def kill(self) -> None:
        """Simulate a crash: no priority-0 advert, VIPs stay, adverts stop (see module doc)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)  # a stopped parent can neither respawn nor clean up
            self._refresh_children()
            for child in self._children.values():
                child.send_signal(signal.SIGKILL)
            proc.kill()
        proc.wait()
        # Orphaned children may stay zombies until PID 1 reaps them; alive() ignores zombies.
        if not wait_until(lambda: not any(c.alive() for c in self._children.values()), 2.0, interval=0.002):
            raise LabError(f"keepalived children {sorted(self._children)} survived SIGKILL")

    def close(self) -> None:
        """Stop if still running and remove the temp dir we created (inside lab.workdir); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    # -- inspection ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the keepalived parent (== the process we started)."""
        return None if self.proc is None else self.proc.pid

    @property
    def vrrp_pid(self) -> int | None:
        """PID of the VRRP child as written to its pid file (None if not running)."""
        return self._read_pid(self.vrrp_pid_file)

    @property
    def running(self) -> bool:
        """The parent process is alive (its children may be respawning)."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything keepalived printed (-l -D: detailed log to the console)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """First match of ``pattern`` in the log within ``timeout`` s, else None."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def check() -> bool:
            match = regex.search(self.log())
            if match:
                found.append(match)
            return match is not None

        wait_until(check, timeout, interval=0.05)
        return found[0] if found else None

    def state(self) -> str | None:
        """Last VRRP state keepalived logged (MASTER, BACKUP, FAULT), None before the first."""
        matches = _STATE_RE.findall(self.log())
        return matches[-1][1] if matches else None

    def wait_state(self, state: str, timeout: float) -> bool:
        """Poll the log until keepalived reports ``state``."""
        return wait_until(lambda: self.state() == state.upper(), timeout, interval=0.05)

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _read_pid(path: Path) -> int | None:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def _refresh_children(self, only_vrrp: bool = False) -> bool:
        """Record the current child processes; True if the VRRP child is known and alive.

        Pid files name the roles; the kernel's children list of the parent catches a child
        whose pid file is not written yet.  A PID is adopted only while our parent is alive and
        is its parent: after a kill() the pid files are stale and their numbers may already
        belong to unrelated processes.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        files = [self.vrrp_pid_file] if only_vrrp else [self.vrrp_pid_file, self.checkers_pid_file, self.bfd_pid_file]
        pids = {pid for pid in map(self._read_pid, files) if pid is not None}
        if not only_vrrp:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        for pid in pids - self._children.keys():
            ref = ProcRef.of(pid)
            if ref is not None and ref.parent() == proc.pid:
                self._children[pid] = ref
        vrrp = self._read_pid(self.vrrp_pid_file)
        return vrrp is not None and vrrp in self._children and self._children[vrrp].alive()


def keepalived_version() -> str:
    """First line of ``keepalived --version`` (it prints to stderr), for test diagnostics."""
    result = subprocess.run([require_keepalived(), "--version"], capture_output=True, text=True, timeout=10)
    text = (result.stderr or result.stdout).strip()
    return text.splitlines()[0] if text else ""
