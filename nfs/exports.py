"""NFS exports from our config, rendered for kernel nfsd (exports(5)) and for nfs-ganesha.

Both nodes must export the same filesystem under the same identity, or clients get ESTALE
after a failover: kernel exports therefore require an explicit `fsid=` (the default is
derived from the device number, which differs between nodes), and ganesha exports get a
fixed Export_Id. Rendering is pure so both backends and the tests share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class ExportError(ValueError):
    pass


_CLIENT = re.compile(r"^[A-Za-z0-9.*?:/_@-]+$")
_PATH = re.compile(r"^/[A-Za-z0-9._/+@:-]*$")  # no quotes, spaces or braces: it goes into two config syntaxes
_OPTION = re.compile(r"^[A-Za-z0-9_]+(=[A-Za-z0-9_.:/@-]+)?$")


@dataclass(frozen=True)
class Export:
    path: str
    clients: str
    options: tuple[str, ...]

    @property
    def fsid(self) -> str:
        return next(o.split("=", 1)[1] for o in self.options if o.startswith("fsid="))

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def parse_export(raw: Mapping[str, Any], mountpoint: str) -> Export:
    """One `exports = [{ path, clients, options }]` entry, checked; ExportError names the field."""
    unknown = set(raw) - {"path", "clients", "options"}
    if unknown:
        raise ExportError(f"unknown field(s) {', '.join(sorted(unknown))} (known: path, clients, options)")
    path, clients, options = raw.get("path"), raw.get("clients"), raw.get("options", "rw,sync,no_subtree_check")
    if not isinstance(path, str) or not _PATH.match(path):
        raise ExportError(f"path must be an absolute path of letters, digits and ._/+@:-, got {path!r}")
    top = mountpoint.rstrip("/")
    if path != top and not path.startswith(top + "/"):
        raise ExportError(f"path {path} is not on the replicated filesystem {mountpoint}")
    if not isinstance(clients, str) or not clients or not _CLIENT.match(clients):
        raise ExportError(f"clients must be a host, network or wildcard, got {clients!r}")
    if not isinstance(options, str):
        raise ExportError(f"options must be a string like 'rw,sync,fsid=1', got {options!r}")
    opts = tuple(o.strip() for o in options.split(",") if o.strip())
    bad = [o for o in opts if not _OPTION.match(o)]
    if bad:
        raise ExportError(f"options contain {', '.join(bad)!s}, which is not an export option")
    if not any(o.startswith("fsid=") for o in opts):
        raise ExportError("options need an explicit fsid= (the same on both nodes, or clients get ESTALE "
                          "after a failover)")
    return Export(path, clients, opts)


def render_kernel(exports: Iterable[Export]) -> str:
    """exports(5) lines for `exportfs -ra` (put in /etc/exports.d/failover-agent.exports)."""
    lines = ["# written by failover-agent; changes are overwritten"]
    lines += [f"{e.path} {e.clients}({','.join(e.options)})" for e in exports]
    return "\n".join(lines) + "\n"


def render_ganesha(exports: Iterable[Export], recovery_root: str, grace: int, lease: int, graceless: bool,
                   nfs_versions: tuple[int, ...] = (3, 4), server_scope: str = "failover-agent") -> str:
    """A complete ganesha.conf: recovery records on the replicated disk, one EXPORT per entry.

    Both nodes render the same text from the same config, so Export_Id (the file handle's
    export part) and Server_Scope match and clients reclaim their state after a takeover.
    """
    if not _PATH.match(recovery_root):
        raise ExportError(f"recovery root {recovery_root!r} is not a plain absolute path")
    protocols = ", ".join(str(v) for v in sorted(set(nfs_versions)))
    blocks = [
        "# written by failover-agent; changes are overwritten",
        "NFS_CORE_PARAM {",
        f"    Protocols = {protocols};",
        "    Enable_NLM = false;",
        "    Enable_RQUOTA = false;",
        "    Enable_UDP = false;",
        "    Mount_Path_Pseudo = true;",
        "}",
        "NFSv4 {",
        f"    Graceless = {'true' if graceless else 'false'};",
        f"    Grace_Period = {grace};",
        f"    Lease_Lifetime = {lease};",
        "    RecoveryBackend = fs;",
        f'    RecoveryRoot = "{recovery_root}";',
        f'    Server_Scope = "{server_scope}";',
        "}",
        "NFS_KRB5 { Active_krb5 = false; }",
    ]
    for i, e in enumerate(exports, 1):
        export_id = int(e.fsid) if e.fsid.isdigit() and 0 < int(e.fsid) < 65535 else i
        access = "RO" if e.read_only else "RW"
        blocks += [
            "EXPORT {",
            f"    Export_Id = {export_id};",
            f'    Path = "{e.path}";',
            f'    Pseudo = "{e.path}";',
            f"    Protocols = {protocols};",
            "    Transports = TCP;",
            "    Access_Type = None;",
            f"    Squash = {'No_Root_Squash' if 'no_root_squash' in e.options else 'Root_Squash'};",
            "    SecType = sys;",
            "    FSAL { Name = VFS; }",
            f"    CLIENT {{ Clients = {e.clients}; Access_Type = {access}; }}",  # a client list, never quoted
            "}",
        ]
    return "\n".join(blocks) + "\n"
