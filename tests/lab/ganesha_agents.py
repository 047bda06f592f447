"""Two failover-agents serving NFS through nfs-ganesha on one shared disk: the netns storage lab.

Each node has its own mount namespace (``NodeNamespace``) and the agent runs inside it, so the
mount, the NFS state folder and ganesha it starts are the node's own, exactly as on a server.
The shared ext4 on a loop device stands in for DRBD (see ganesha.py); the agent's chain is
mount -> nfs_state -> nfs -> vip.  ``crash(node)`` cuts the node's link and kills its whole
mount namespace after an ext4 shutdown without log flush (a power cut); ``stop(node)`` is the
admin's ``systemctl stop``: SIGTERM to the agent, which releases in order.

``guarded=True`` adds what a shared disk needs when the nodes can be partitioned: the client as
the witness ([track], fast defaults), the peer channel with heartbeats ([peer], a fresh secret)
and the bounded release ([guard]; self-fencing is recorded in ``fence-NODE.log``, never real).
Without DRBD the mount is what two nodes must never hold at once, so the agent holds a takeover's
mount back until the silent peer's isolation bound has passed.

Used by tests/test_ganesha_failover.py, the demo and bench/nfs_outage.py.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Any

from tests.lab.agent import AgentProc, render_agent_conf
from tests.lab.ganesha import NodeNamespace, SharedDisk, node_namespace, power_cut
from tests.lab.netns import CLIENT_IP, NetnsLab, wait_until

EXPORT = "export"
STATE = "ganesha-recovery"
SERVING_LOG = re.compile(r"became MASTER: .*\(([\d.]+) ms after the transition\)")
FAST_VRRP: dict[str, Any] = {"version": 3, "advert_interval": 0.1}


def guard_conf(lab: NetnsLab, node: str, peer: str) -> str:
    """[track] (the client as witness), [peer] with heartbeats, [guard] with a recorded self-fence."""
    key = lab.workdir / "peer.key"
    if not key.exists():
        key.write_text(base64.b64encode(os.urandom(24)).decode() + "\n")
        key.chmod(0o600)
    return (f'[track]\nwitnesses = ["{CLIENT_IP}"]\n'
            f'[peer]\naddress = "{peer}"\nsecret_file = "{key}"\n'
            f'[guard]\nrelease_deadline = 1.0\nfence_record = "{lab.workdir / f"fence-{node}.log"}"\n')


def storage_conf(agent: AgentProc, disk: SharedDisk, run_dir: Path, *, versions: tuple[int, ...] = (4,),
                 grace: int | None = None, **vrrp: Any) -> str:
    """The agent's whole config: [vrrp], [filesystem] on the shared disk, [nfs] with ganesha."""
    text = render_agent_conf({"control_socket": str(agent.control_socket)}, **vrrp)
    text += (f'[filesystem]\ndevice = "{disk.dev}"\nmountpoint = "{disk.mountpoint}"\noptions = ["noatime"]\n'
             "kill_grace = 0.5\n")
    graceless = grace is None
    text += (f'[nfs]\nbackend = "ganesha"\nstate_dir = "{STATE}"\nversions = {list(versions)}\n'
             f"graceless = {'true' if graceless else 'false'}\ngrace_time = {grace or 10}\n"
             f"lease_time = {grace or 10}\nrun_dir = \"{run_dir}\"\nserver_scope = \"failover-lab\"\n"
             f'exports = [{{ path = "{disk.path(EXPORT)}", clients = "192.0.2.0/24", '
             'options = "rw,sync,no_root_squash,fsid=1" }]\n')
    text += "[monitor]\ninterval = 1.0\nmax_restarts = 1\nhold_down = 2.0\nstep_timeout = 15\n"
    return text


class GaneshaAgents:
    """Nodes a (priority 150) and b (100) of ``lab``, each with an agent; nothing started yet."""

    def __init__(self, lab: NetnsLab, *, versions: tuple[int, ...] = (4,), grace: int | None = None,
                 priorities: dict[str, int] | None = None, guarded: bool = False, disk_mb: int = 128,
                 **vrrp: Any) -> None:
        self.lab = lab
        self.disk = SharedDisk(lab, size_mb=disk_mb)  # ext4: one inode per 16 KiB, one per written file
        self.priorities = priorities or {"a": 150, "b": 100}
        self.ns: dict[str, NodeNamespace] = {n: node_namespace(lab, n) for n in self.priorities}
        first = next(iter(self.ns.values()))
        self.disk.mount(first)
        first.run(["mkdir", "-p", self.disk.path(EXPORT)])
        self.disk.unmount(first)
        self.agents: dict[str, AgentProc] = {}
        settings = {**FAST_VRRP, **vrrp}
        for node, prio in self.priorities.items():
            agent = AgentProc(lab, node, lab.workdir, priority=prio, **settings)
            agent.spawn = self._spawner(node)
            text = storage_conf(agent, self.disk, lab.workdir / f"ganesha-{node}", versions=versions, grace=grace,
                                priority=prio, **settings)
            if guarded:
                (other,) = [n for n in self.priorities if n != node]
                text += guard_conf(lab, node, lab.ipv4(other))
            agent.write_config(text)
            lab.add_cleanup(agent.close)
            self.agents[node] = agent

    def _spawner(self, node: str) -> Any:
        def spawn(argv: list[str], **kwargs: Any) -> Any:
            ns = self.ns[node]
            ns.start()  # after a crash: the node "reboots" with a fresh namespace
            return ns.popen(argv, **kwargs)

        return spawn

    def start(self, first: str = "a", timeout: float = 20.0) -> None:
        """Start every agent, ``first`` alone until it serves (so it is the master)."""
        self.agents[first].start()
        self.wait_serving(first, timeout)
        for node, agent in self.agents.items():
            if node != first:
                agent.start()

    def phase(self, node: str) -> str | None:
        agent = self.agents[node]
        if not agent.alive:
            return None
        try:
            return str(agent.status()["instance"]["phase"])
        except (AssertionError, KeyError, ValueError):
            return None

    def wait_serving(self, node: str, timeout: float) -> float:
        t0 = time.monotonic()
        if not wait_until(lambda: self.phase(node) == "SERVING", timeout, interval=0.02):
            raise AssertionError(f"{node} does not serve after {timeout:g} s:\n{self.agents[node].log()[-4000:]}")
        return time.monotonic() - t0

    def serving(self) -> list[str]:
        return [n for n in self.agents if self.phase(n) == "SERVING"]

    def crash(self, node: str) -> float:
        """Power cut (ganesha.power_cut): every process frozen, cable pulled, ext4 shut down, all killed.

        Returns seconds until the disk is free for the peer.
        """
        t0 = time.monotonic()
        power_cut(self.lab, self.disk, self.ns[node])
        proc = self.agents[node].proc
        if proc is not None:
            proc.wait(5)
        return time.monotonic() - t0

    def reboot(self, node: str) -> None:
        """Bring a crashed node back: link up, fresh namespace, agent started (it joins as backup)."""
        self.lab.set_link(node, True)
        self.agents[node].start()

    def stop(self, node: str, timeout: float = 30.0) -> float:
        """Graceful stop (SIGTERM): returns seconds until the agent exited."""
        code, took = self.agents[node].terminate(timeout)
        if code != 0:
            raise AssertionError(f"agent on {node} exited with {code}:\n{self.agents[node].log()[-3000:]}")
        return took

    def acquire_ms(self, node: str) -> float:
        """MASTER to VIP added on ``node``'s last takeover, as the agent logged it."""
        found = SERVING_LOG.findall(self.agents[node].log())
        if not found:
            raise AssertionError(f"{node} never logged becoming MASTER:\n{self.agents[node].log()[-3000:]}")
        return float(found[-1])
