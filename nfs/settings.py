"""What the NFS backends are told to serve: the `[nfs]` section, as the nfs package's own type.

agent.config parses and validates the TOML and builds this value; the backends read it.
It lives here, not in agent, so that nfs imports nothing from the agent (the layering rule
tests/test_core_purity.py checks): nfs can then be used, and tested, without the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfs.exports import Export


@dataclass(frozen=True)
class NfsConfig:
    exports: tuple[Export, ...]
    backend: str = "kernel"
    state_dir: str = ".nfs-state"
    grace_time: int = 10
    lease_time: int = 10
    versions: tuple[int, ...] = (3, 4)
    server_scope: str = "failover-agent"
    # kernel backend
    service: str = "direct"
    threads: int = 8
    state_target: str = "/var/lib/nfs"
    exports_file: str = "/etc/exports.d/failover-agent.exports"
    # ganesha backend
    graceless: bool = False
    run_dir: str = "/run/failover-agent/ganesha"
    ganesha_binary: str = "ganesha.nfsd"
