"""Throw-away network-namespace lab: a bridge, N nodes and a client on 192.0.2.0/24.

The integration tests, the demo and the benchmark need several "hosts" on one L2 segment
without VMs.  Each host is a network namespace whose ``eth0`` is one end of a veth pair;
the other end is a port of ``br0`` in a separate bridge namespace, so the host namespace of
the machine is never touched (no addresses, routes or bridges leak into it).

Layout for ``NetnsLab("t1", nodes=("a", "b"))``::

    t1-a       eth0 192.0.2.1/24  02:00:00:00:00:0a ──┐
    t1-b       eth0 192.0.2.2/24  02:00:00:00:00:0b ──┤ v-a, v-b, v-client: ports of br0
    t1-client  eth0 192.0.2.10/24 02:00:00:00:00:10 ──┘ in namespace t1-br

Only 192.0.2.0/24 (TEST-NET-1) is ever used, so no lab packet can be mistaken for, or
routed to, a real network.

Commands run in a namespace through ``nsenter --net=/run/netns/NS`` rather than
``ip netns exec``: the latter also unshares the mount namespace and remounts /sys, which
changes what a daemon sees (its pid files, /run) compared with production.  The flip side:
inside ``nsenter --net`` **/sys/class/net still shows the host's interfaces**, so link
state must be read via netlink (``ip -j link``), never from /sys.

Internally every bridge port is keyed by ``(member, dev)`` so that a second network
(``eth1`` of each node on another bridge) can be added later without changing the API:
the per-port methods already take ``dev``.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "BRIDGE",
    "CLIENT",
    "CLIENT_IP",
    "CLIENT_MAC",
    "NETNS_DIR",
    "PREFIXLEN",
    "Closing",
    "CommandError",
    "LabError",
    "LinkState",
    "NetnsLab",
    "ProcRef",
    "ci_bound",
    "node_ip",
    "node_mac",
    "pids_in_namespace",
    "pids_in_netns",
    "stop_process",
    "terminate_pids",
    "wait_until",
]

NETNS_DIR = Path("/run/netns")
SUBNET = ipaddress.IPv4Network("192.0.2.0/24")
PREFIXLEN = SUBNET.prefixlen
SUBNET6 = ipaddress.IPv6Network("2001:db8::/64")  # the documentation prefix, for `enable_ipv6`
CLIENT = "client"
BRIDGE = "br"
CLIENT_IP = "192.0.2.10"
CLIENT_MAC = "02:00:00:00:00:10"
BRIDGE_DEV = "br0"
DEFAULT_DEV = "eth0"
# MACs 02:00:00:00:00:0a..0f: a seventh node would collide with the client's ...:10.
MAX_NODES = 6

_PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# No "-" in member names: leftover detection relies on "{prefix}-{member}" being unambiguous.
# At most 13 characters so that the bridge-side port "v-{member}" fits IFNAMSIZ (15).
_MEMBER_RE = re.compile(r"[a-z0-9]{1,13}")
_REQUIRED_TOOLS = ("ip", "nsenter")


class LabError(RuntimeError):
    """The lab could not be built, queried or torn down."""


class CommandError(subprocess.CalledProcessError):
    """A lab command failed; unlike CalledProcessError its message carries stderr."""

    def __str__(self) -> str:
        detail = (self.stderr or "").strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}{': ' + detail if detail else ''}"


def node_ip(index: int) -> str:
    """Address of the node at ``index`` (0-based), kept as a function so tests can predict it."""
    return str(SUBNET.network_address + index + 1)


def node_mac(index: int) -> str:
    """MAC of the node at ``index``: a -> ...:0a, b -> ...:0b, readable in captures."""
    return f"02:00:00:00:00:{0x0A + index:02x}"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds; returns False on timeout instead of raising.

    Lab state (carrier, addresses, neighbour entries) changes asynchronously, so tests need a
    bounded poll rather than a fixed sleep.  The predicate is evaluated once more at the
    deadline so a slow predicate cannot make us miss the final state.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def ci_bound(expected: float) -> float:
    """A lab test's limit for something that takes ``expected`` s on a quiet machine.

    Twice that plus a second, so a loaded CI machine (2 cores, other labs' leftovers) passes
    while an order-of-magnitude mistake (a crash taken for a graceful leave, a missed timer)
    still fails; the tight figures are the benchmarks' (bench/), measured on a quiet machine.
    """
    return 2 * expected + 1.0


def require_root_and_tools(tools: Iterable[str] = _REQUIRED_TOOLS) -> None:
    """Fail early with a readable reason instead of a cryptic EPERM/ENOENT half way through."""
    if os.geteuid() != 0:
        raise LabError("the netns lab needs root (CAP_SYS_ADMIN for namespaces, CAP_NET_ADMIN for links)")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise LabError(f"the netns lab needs {', '.join(missing)} on PATH (Debian: iproute2, util-linux)")


# --------------------------------------------------------------------------------------------
# Process helpers.  Everything is signalled by PID (never by name) so that a lab can never hit
# processes of another lab, of the daemon under development or of the host.
# --------------------------------------------------------------------------------------------


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent PID, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


@dataclass(frozen=True)
class ProcRef:
    """A process that is not our child (e.g. keepalived's VRRP child), immune to PID reuse.

    We cannot ``wait()`` such a process, and once it dies its PID may be recycled; pairing
    the PID with its start time and signalling through a pidfd guarantees we never signal a
    stranger that inherited the number.
    """

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> ProcRef | None:
        """Reference to ``pid`` as it exists now, None if there is no such process."""
        stat = _read_stat(pid)
        return None if stat is None else cls(pid, stat[2])

    def state(self) -> str | None:
        """Kernel state letter (R, S, T, Z...), None once the process is gone or replaced."""
        stat = _read_stat(self.pid)
        if stat is None or stat[2] != self.start_time:
            return None
        return stat[0]

    def parent(self) -> int | None:
        """Current parent PID (1 or a subreaper once orphaned), None once gone or replaced."""
        stat = _read_stat(self.pid)
        if stat is None or stat[2] != self.start_time:
            return None
        return stat[1]

    def alive(self) -> bool:
        """Zombies count as dead: they no longer run and only wait for their parent to reap them."""
        return self.state() not in (None, "Z", "X")

    def send_signal(self, sig: int) -> bool:
        """Signal the process if it is still the same one; returns whether a signal was sent."""
        try:
            fd = os.pidfd_open(self.pid)
        except (ProcessLookupError, OSError):
            return False
        try:
            # The pidfd pins whatever process holds the PID now; check that it is still ours.
            if self.state() is None:
                return False
            signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)


def terminate_pids(refs: Iterable[ProcRef], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s, for processes we cannot wait() on.

    Waits until they no longer run (zombies of an exited parent may linger 1-3 s until PID 1
    reaps them; they hold no sockets or addresses any more, so that is good enough).
    """
    pending = [ref for ref in refs if ref.alive()]
    for ref in pending:
        ref.send_signal(signal.SIGTERM)
    if not wait_until(lambda: not any(ref.alive() for ref in pending), grace):
        for ref in pending:
            if ref.alive():
                ref.send_signal(signal.SIGKILL)
        wait_until(lambda: not any(ref.alive() for ref in pending), 2.0)


def stop_process(proc: subprocess.Popen[Any], grace: float = 2.0) -> int:
    """Stop one of our children politely, then firmly; always reaps it so no zombie remains."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def _stop_processes(procs: Sequence[subprocess.Popen[Any]], grace: float = 2.0) -> None:
    """Like stop_process for many at once: one shared grace period instead of one per process."""
    alive = [proc for proc in procs if proc.poll() is None]
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    for proc in procs:
        proc.wait()


def pids_in_namespace(kind: str, key: tuple[int, int]) -> list[int]:
    """PIDs (other than ours) whose namespace of `kind` ("net", "pid", "mnt") has inode `key`."""
    own = os.getpid()
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/{kind}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == key:
            pids.append(int(entry.name))
    return pids


def pids_in_netns(path: str | Path) -> list[int]:
    """PIDs whose network namespace is the one bound at ``path`` (same test as `ip netns pids`).

    Used to sweep up processes that escaped tracking (a daemon's forked child, a command that
    timed out) before deleting a namespace: `ip netns del` only removes the name, the
    namespace and its interfaces live on while any process is inside.
    """
    target = os.stat(path)
    return pids_in_namespace("net", (target.st_dev, target.st_ino))


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkState:
    """Link state as the namespace's own kernel reports it (flags as printed by `ip link`)."""

    operstate: str
    flags: frozenset[str]

    @property
    def admin_up(self) -> bool:
        """`ip link set DEV up` was done (IFF_UP)."""
        return "UP" in self.flags

    @property
    def carrier(self) -> bool:
        """The link has carrier (IFF_LOWER_UP), i.e. a cable and a live peer."""
        return "LOWER_UP" in self.flags


@dataclass(frozen=True)
class _Port:
    """One member interface and the bridge port that is its "cable"."""

    member: str
    dev: str
    bridge_ns: str
    bridge_port: str
    ip: str
    mac: str


class Closing:
    """`with` support for lab objects whose `close()` is their whole teardown."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NetnsLab(Closing):
    """Build the lab on construction; tear it all down on close() / leaving the ``with`` block.

    Construction first deletes namespaces left by a crashed earlier run with the same prefix
    (their names would clash), so a prefix should be unique per concurrently running lab.
    If construction fails half way, whatever was created is removed before the error
    propagates, because ``__exit__`` never runs for a constructor that raised.
    """

    def __init__(self, prefix: str, nodes: Sequence[str] = ("a", "b"), client: bool = True) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"lab prefix {prefix!r} must match {_PREFIX_RE.pattern}")
        nodes = tuple(nodes)
        if not nodes:
            raise ValueError("a lab needs at least one node")
        if len(nodes) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes (MAC ...:0a-...:0f), got {len(nodes)}")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node names in {nodes!r}")
        for node in nodes:
            if not _MEMBER_RE.fullmatch(node) or node in (BRIDGE, CLIENT):
                raise ValueError(f"node name {node!r} must match {_MEMBER_RE.pattern} and not be {BRIDGE!r}/{CLIENT!r}")
        require_root_and_tools()

        self.prefix = prefix
        # Scratch space for helpers (configs, logs, pid files); fixed name so a crashed run's
        # files are removed along with its namespaces.
        self.workdir = Path(tempfile.gettempdir()) / f"netns-lab-{prefix}"
        self.nodes: tuple[str, ...] = nodes
        self.has_client = client
        self._closed = False
        self._procs: list[subprocess.Popen[Any]] = []
        self._cleanups: list[Callable[[], None]] = []
        self._ports: dict[tuple[str, str], _Port] = {}
        bridge_ns = self.ns(BRIDGE)
        for index, node in enumerate(nodes):
            self._ports[(node, DEFAULT_DEV)] = _Port(
                node, DEFAULT_DEV, bridge_ns, f"v-{node}", node_ip(index), node_mac(index)
            )
        if client:
            self._ports[(CLIENT, DEFAULT_DEV)] = _Port(
                CLIENT, DEFAULT_DEV, bridge_ns, f"v-{CLIENT}", CLIENT_IP, CLIENT_MAC
            )

        atexit.register(self.close)
        try:
            self._purge_leftovers()
            self.workdir.mkdir(mode=0o700)
            self._build()
        except BaseException:
            self.close()
            raise

    # -- names ---------------------------------------------------------------------------------

    @property
    def members(self) -> tuple[str, ...]:
        """Nodes plus the client (if any): everything that has an eth0 on the bridge."""
        return (*self.nodes, CLIENT) if self.has_client else self.nodes

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace name this lab owns, bridge first."""
        return (self.ns(BRIDGE), *(self.ns(m) for m in self.members))

    def ns(self, name: str) -> str:
        """Namespace name of a node, the client or the bridge ("br")."""
        if name != BRIDGE and name not in self.members:
            raise KeyError(f"{name!r} is not a member of lab {self.prefix!r} (members: {self.members})")
        return f"{self.prefix}-{name}"

    def netns_path(self, name: str) -> str:
        """Bind-mount path of the namespace, as nsenter --net= and setns() want it."""
        return str(NETNS_DIR / self.ns(name))

    def ipv4(self, name: str, dev: str = DEFAULT_DEV) -> str:
        """The member's own (configured, not virtual) address, without prefix length."""
        return self._port(name, dev).ip

    def configured_mac(self, name: str, dev: str = DEFAULT_DEV) -> str:
        """The MAC the lab assigned, without asking the kernel."""
        return self._port(name, dev).mac

    def _port(self, name: str, dev: str) -> _Port:
        try:
            return self._ports[(name, dev)]
        except KeyError:
            raise KeyError(f"lab {self.prefix!r} has no interface {dev!r} on {name!r}") from None

    # -- running things inside -----------------------------------------------------------------

    def _nsenter(self, name: str, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a shell string")
        return ["nsenter", f"--net={self.netns_path(name)}", "--", *argv]

    def run(
        self,
        name: str,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 10,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a member's network namespace and capture its output.

        With ``check`` a failure raises CommandError, whose message includes stderr so a test
        log shows *why* (`ip` errors are otherwise lost).
        """
        self._ensure_open()
        cmd = self._nsenter(name, argv)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running command in a namespace; close() will stop and reap it.

        nsenter (without --fork) execs the command, so the returned PID is the command's own.
        """
        self._ensure_open()
        proc: subprocess.Popen[Any] = subprocess.Popen(self._nsenter(name, argv), **kwargs)
        self._procs = [p for p in self._procs if p.poll() is None]
        self._procs.append(proc)
        return proc

    def add_cleanup(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at close(), newest first, before processes are stopped.

        Helpers like the Keepalived wrapper register here so that a test that forgets them
        still leaves no process or temp directory behind.
        """
        self._cleanups.append(callback)

    # -- host-side ip(8) helpers -----------------------------------------------------------------

    def _ip(self, *args: str, ns: str | None = None, timeout: float = 10) -> str:
        cmd = ["ip", *(("-n", ns) if ns else ()), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise CommandError(result.returncode, cmd, result.stdout, result.stderr)
        return result.stdout

    def _ip_json(self, *args: str, ns: str) -> list[dict[str, Any]]:
        out = self._ip("-j", *args, ns=ns).strip()
        data: list[dict[str, Any]] = json.loads(out) if out else []
        return data

    # -- build / tear down ---------------------------------------------------------------------

    def _leftovers(self) -> list[str]:
        pattern = re.compile(re.escape(self.prefix) + r"-[a-z0-9]+")
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if pattern.fullmatch(n))

    def _purge_leftovers(self) -> None:
        """Remove namespaces of a crashed run with our prefix, and whatever still runs in them.

        Only names of the exact form "{prefix}-{member}" match, so prefix "t" never touches the
        namespaces of a lab with prefix "t-x".
        """
        leftovers = self._leftovers()
        if leftovers:
            self._delete_namespaces(leftovers)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _delete_namespaces(self, names: Sequence[str]) -> None:
        refs: list[ProcRef] = []
        for name in names:
            try:
                pids = pids_in_netns(NETNS_DIR / name)
            except OSError:
                continue
            refs.extend(ref for ref in map(ProcRef.of, pids) if ref is not None)
        terminate_pids(refs)
        failures: list[str] = []
        # Members before the bridge: deleting a member's namespace removes its veth pair.
        for name in sorted(names, key=lambda n: n.endswith(f"-{BRIDGE}")):
            if not (NETNS_DIR / name).exists():
                continue
            result = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, timeout=10)
            if result.returncode != 0 and (NETNS_DIR / name).exists():
                failures.append(f"{name}: {result.stderr.strip()}")
        if failures:
            raise LabError("could not delete namespaces: " + "; ".join(failures))

    def _build(self) -> None:
        bridge_ns = self.ns(BRIDGE)
        self._ip("netns", "add", bridge_ns)
        self._ip("link", "set", "lo", "up", ns=bridge_ns)
        # Nothing in the bridge namespace needs IPv6; without it the ports stay silent and
        # captures on br0 show only what the members send.
        self.run(BRIDGE, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
        self.run(BRIDGE, ["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"], check=False)
        self._ip("link", "add", BRIDGE_DEV, "type", "bridge", ns=bridge_ns)
        # No STP and no forward delay: a port forwards as soon as it is up, so set_link(up)
        # restores connectivity immediately. No multicast snooping: VRRP's 224.0.0.18 would be
        # flooded anyway (link-local), but snooping adds state that could surprise a test.
        self._ip(
            "link", "set", BRIDGE_DEV, "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
            ns=bridge_ns,
        )  # fmt: skip
        self._ip("link", "set", BRIDGE_DEV, "up", ns=bridge_ns)

        for member in self.members:
            ns = self.ns(member)
            port = self._port(member, DEFAULT_DEV)
            self._ip("netns", "add", ns)
            self._ip("link", "set", "lo", "up", ns=ns)
            self._ip("link", "add", port.bridge_port, "type", "veth", "peer", "name", port.dev, "netns", ns,
                     ns=bridge_ns)  # fmt: skip
            self._ip("link", "set", port.dev, "address", port.mac, ns=ns)
            self._ip("addr", "add", f"{port.ip}/{PREFIXLEN}", "dev", port.dev, ns=ns)
            self._ip("link", "set", port.dev, "up", ns=ns)
            self._ip("link", "set", port.bridge_port, "master", BRIDGE_DEV, "up", ns=bridge_ns)

        for member in self.members:
            self._wait_carrier(member)

    def _wait_carrier(self, member: str, timeout: float = 5.0) -> None:
        if not wait_until(lambda: self.link_state(member).carrier, timeout):
            raise LabError(f"{self.ns(member)}: eth0 got no carrier after build")

    def close(self) -> None:
        """Stop everything started in the lab and delete its namespaces; safe to call twice.

        Order matters: registered cleanups (which know how to stop their daemon gracefully)
        first, then tracked processes (SIGTERM, SIGKILL after 2 s, reaped), then a sweep for
        untracked processes still inside our namespaces, then `ip netns del`, and finally
        ``workdir`` (so logs are gone afterwards: read them before closing).
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        while self._cleanups:
            callback = self._cleanups.pop()
            try:
                callback()
            except Exception as exc:  # keep tearing down; report at the end
                errors.append(f"cleanup {callback!r}: {exc}")
        _stop_processes(self._procs)
        self._procs.clear()
        try:
            self._delete_namespaces([n for n in self.namespaces if (NETNS_DIR / n).exists()])
        except LabError as exc:
            errors.append(str(exc))
        shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.close)
        if errors:
            raise LabError(f"lab {self.prefix!r} teardown problems: " + " | ".join(errors))

    @property
    def closed(self) -> bool:
        """True once close() ran (namespaces are gone then)."""
        return self._closed

    def _ensure_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.prefix!r} is closed")

    # -- links ---------------------------------------------------------------------------------

    def link_state(self, name: str, dev: str = DEFAULT_DEV) -> LinkState:
        """Link state via netlink (see module docstring for why not /sys)."""
        info = self._ip_json("link", "show", "dev", dev, ns=self.ns(name))
        if not info:
            raise LabError(f"{self.ns(name)}: no interface {dev}")
        return LinkState(str(info[0].get("operstate", "UNKNOWN")), frozenset(info[0].get("flags", ())))

    def set_link(self, name: str, up: bool, dev: str = DEFAULT_DEV, wait: float = 2.0) -> None:
        """Pull or re-plug a member's cable.

        Sets the *bridge-side* veth end down/up. The member keeps its eth0 administratively
        UP, its addresses and routes, but loses carrier: `ip link` shows
        ``<NO-CARRIER,BROADCAST,MULTICAST,UP>`` with operstate DOWN (not LOWERLAYERDOWN, which
        the kernel reserves for stacked devices such as VLANs) and netlink emits an RTM_NEWLINK,
        which is exactly what a pulled cable looks like to a daemon. Frames sent meanwhile are
        dropped silently. The carrier change is synchronous in the veth driver; we still wait
        (up to ``wait`` s) until the member's kernel reports it so callers need no sleeps.
        """
        port = self._port(name, dev)
        self._ip("link", "set", port.bridge_port, "up" if up else "down", ns=port.bridge_ns)
        if wait > 0:

            def settled() -> bool:
                state = self.link_state(name, dev)
                return not state.admin_up or state.carrier == up

            if not wait_until(settled, wait, interval=0.005):
                raise LabError(f"{self.ns(name)}: {dev} carrier did not go {'up' if up else 'down'}")

    def set_bridged(self, name: str, bridged: bool, dev: str = DEFAULT_DEV) -> None:
        """Take the member's port off the bridge (or put it back) without touching carrier.

        The member's eth0 stays UP with carrier, but nothing it sends arrives anywhere and
        nothing reaches it: a dead switch or uplink beyond the NIC, which link monitoring
        cannot see and only reachability tracking can.
        """
        port = self._port(name, dev)
        where = ("master", BRIDGE_DEV) if bridged else ("nomaster",)
        self._ip("link", "set", port.bridge_port, *where, ns=port.bridge_ns)

    def set_iface(self, name: str, up: bool, dev: str = DEFAULT_DEV) -> None:
        """Set the member's own interface administratively down/up (`ip link set eth0 down`).

        Unlike set_link this is visible to the node as a local admin action: the prefix route
        disappears (addresses stay), sends fail with ENETUNREACH, and the bridge side loses
        carrier instead.
        """
        self._port(name, dev)
        self._ip("link", "set", dev, "up" if up else "down", ns=self.ns(name))

    # -- queries ------------------------------------------------------------------------------

    def addresses(self, name: str, dev: str = DEFAULT_DEV, ipv6: bool = False) -> set[str]:
        """IPv4 (or IPv6) addresses on ``dev`` as "a.b.c.d/len" (VIPs included, primary or secondary)."""
        info = self._ip_json("-6" if ipv6 else "-4", "addr", "show", "dev", dev, ns=self.ns(name))
        return {
            f"{addr['local']}/{addr['prefixlen']}"
            for link in info
            for addr in link.get("addr_info", ())
            if addr.get("family") == ("inet6" if ipv6 else "inet")
        }

    def has_address(self, name: str, ip: str, dev: str = DEFAULT_DEV) -> bool:
        """Whether ``ip`` (with or without "/len", either family) is on the member's interface."""
        bare = ipaddress.ip_address(ip.split("/", 1)[0])
        return any(ipaddress.ip_address(a.split("/", 1)[0]) == bare
                   for a in self.addresses(name, dev, ipv6=bare.version == 6))

    # -- IPv6 (documentation prefix 2001:db8::/64 and the link-local addresses) -------------------

    def ipv6(self, name: str) -> str:
        """The member's 2001:db8:: address (node index + 1, the client ::10), as `enable_ipv6` adds it."""
        return str(SUBNET6.network_address + int(ipaddress.IPv4Address(self.ipv4(name))) % 256)

    def link_local(self, name: str, dev: str = DEFAULT_DEV) -> str:
        """The member's fe80:: address (the kernel's, from the MAC: 02:..:0a gives fe80::ff:fe00:a)."""
        local = [a.split("/", 1)[0] for a in self.addresses(name, dev, ipv6=True) if a.startswith("fe80:")]
        if not local:
            raise LabError(f"{self.ns(name)}: {dev} has no link-local address")
        return local[0]

    def enable_ipv6(self, timeout: float = 10.0) -> None:
        """Give every member its 2001:db8::/64 address (no DAD) and wait until every link-local
        address has finished DAD (tentative ones cannot send: VRRPv3 adverts come from them)."""
        for member in self.members:
            self._ip("addr", "add", f"{self.ipv6(member)}/{SUBNET6.prefixlen}", "dev", DEFAULT_DEV, "nodad",
                     ns=self.ns(member))

        def settled() -> bool:
            for member in self.members:
                info = self._ip_json("-6", "addr", "show", "dev", DEFAULT_DEV, ns=self.ns(member))
                local = [a for link in info for a in link.get("addr_info", ()) if a.get("scope") == "link"]
                if not local or any(a.get("tentative") or a.get("dadfailed") for a in local):
                    return False
            return True

        if not wait_until(settled, timeout, interval=0.05):
            raise LabError(f"lab {self.prefix!r}: link-local addresses still tentative after {timeout:g} s")

    def neigh_mac(self, name: str, ip: str, dev: str = DEFAULT_DEV) -> str | None:
        """MAC the member would use for ``ip`` now; None if unknown, INCOMPLETE or FAILED.

        STALE/DELAY/PROBE entries still return their MAC: the kernel keeps sending to it.
        """
        entries = self._ip_json("neigh", "show", "to", ip, "dev", dev, ns=self.ns(name))
        for entry in entries:
            states = set(entry.get("state", ()))
            mac = entry.get("lladdr")
            if mac and not states & {"FAILED", "INCOMPLETE"}:
                return str(mac).lower()
        return None

    def flush_neigh(self, name: str, dev: str = DEFAULT_DEV) -> None:
        """Forget all neighbour entries, e.g. so a benchmark starts without a cached VIP MAC."""
        self._ip("neigh", "flush", "dev", dev, ns=self.ns(name))

    def mac(self, name: str, dev: str = DEFAULT_DEV) -> str:
        """The interface MAC as the kernel reports it."""
        info = self._ip_json("link", "show", "dev", dev, ns=self.ns(name))
        if not info:
            raise LabError(f"{self.ns(name)}: no interface {dev}")
        return str(info[0]["address"]).lower()

    def ping(self, name: str, ip: str, count: int = 1, timeout: float = 1.0) -> bool:
        """One-shot reachability check with iputils ping (the Pinger is for measurements)."""
        result = self.run(
            name,
            ["ping", "-n", "-q", "-c", str(count), "-W", f"{timeout:g}", "-i", "0.2", ip],
            check=False,
            timeout=count * (timeout + 0.2) + 5,
        )
        return result.returncode == 0
