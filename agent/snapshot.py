"""The config the agent runs, kept under /run for `failoverctl cleanup` (the unit's ExecStopPost=).

After the agent died, cleanup must remove the VIPs the agent *held*, and those follow from the
config it ran, not from the file on disk: an admin may have edited the file since without a
reload, into other VIPs or into something invalid.  Reading the file then removes the wrong
addresses or nothing at all, and the dead node keeps answering for the VIP next to the peer.

So the agent writes the exact text it parsed (at start, before it can acquire anything, and at
each accepted reload, before the new config is applied) to a runtime file, and cleanup reads
that first, falling back to the file only when there is no snapshot.  The directory is systemd's
``$RUNTIME_DIRECTORY`` (the unit's RuntimeDirectory=, /run/failover-agent, set for ExecStart= and
ExecStopPost= alike and removed after the unit stopped, so a snapshot never outlives its run),
or /run/failover-agent outside systemd.  The file name hashes the config path, so agents with
different configs on one host (labs, a second pair) never read each other's snapshot; the path
is also recorded inside and checked.

A reload applies instance by instance (agent.daemon); one whose change is refused runs on with
its old config while the others take the new one. Its section is then in an older text only,
so the snapshot also holds the older texts instances still run (`older`), and cleanup removes the
VIPs of their instances too (a VIP no longer held is simply not there).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent import config as configmod

__all__ = ["DEFAULT_DIR", "CleanupSource", "Snapshot", "SnapshotError", "for_cleanup", "path_for", "read",
           "read_config", "runtime_dir", "write"]

DEFAULT_DIR = Path("/run/failover-agent")
_FORMAT = 1


class SnapshotError(Exception):
    """A snapshot exists but cannot be used (unreadable, corrupt, another config's, invalid)."""


@dataclass(frozen=True)
class Snapshot:
    """What the agent wrote: its config text, the control socket it listens on, when and why.

    The socket is recorded apart from the text because [agent] changes apply only at the next
    restart: after a reload that moved it, the text names a socket nobody listens on, and
    cleanup would take a live agent for a dead one.
    """

    path: Path
    config_file: str
    text: str
    control_socket: str
    pid: int
    reason: str
    written: float
    older: tuple[str, ...] = ()  # earlier texts some instance still runs (a reload refused for it)

    def config(self) -> configmod.ProcessConfig:
        """The running config, parsed as the agent parsed it (named after its file, for messages)."""
        return self._parse(self.text)

    def instances(self) -> tuple[configmod.Config, ...]:
        """Every instance that may hold something: the running config's, and those of `older` it lacks."""
        out = list(self.config().instances)
        for text in self.older:
            out += [c for c in self._parse(text).instances if _cleans(c) not in {_cleans(o) for o in out}]
        return tuple(out)

    def _parse(self, text: str) -> configmod.ProcessConfig:
        try:
            return configmod.parse_process(text, self.config_file)
        except configmod.ConfigError as e:  # a newer agent's format, or a damaged file
            raise SnapshotError(f"{self.path}: the snapshot does not parse: {e}") from None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.written))
        return f"snapshot {self.path}, written at {self.reason} by pid {self.pid} at {when}"


def _cleans(cfg: configmod.Config) -> tuple[object, ...]:
    """What cleanup acts on for an instance: two configs alike in these need one cleanup."""
    return cfg.name, cfg.vrrp.interface, cfg.vrrp.vips, cfg.drbd, cfg.agent.state_file


def runtime_dir() -> Path:
    """systemd's RUNTIME_DIRECTORY (its first entry), else /run/failover-agent."""
    first = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(first) if first else DEFAULT_DIR


def _key(config_file: str | Path) -> str:
    return os.path.abspath(config_file)


def path_for(config_file: str | Path, directory: Path | None = None) -> Path:
    """Where the snapshot of the agent running ``config_file`` lives."""
    digest = hashlib.sha256(_key(config_file).encode()).hexdigest()[:16]
    return (directory or runtime_dir()) / f"running-config-{digest}.json"


def read_config(path: str | Path) -> tuple[configmod.ProcessConfig, str]:
    """configmod.load_process plus the text it parsed: the snapshot must be what runs, not a second read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise configmod.ConfigError(str(path), "", f"cannot read: {e}") from None
    return configmod.parse_process(text, str(path)), text


def write(config_file: str | Path, text: str, reason: str, control_socket: str,
          directory: Path | None = None, older: tuple[str, ...] = ()) -> Path:
    """Atomically replace the snapshot (mode 0600: the text may hold auth_pass); returns its path."""
    path = path_for(config_file, directory)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    blob = json.dumps({"format": _FORMAT, "config_file": _key(config_file), "pid": os.getpid(),
                       "reason": reason, "written": time.time(), "control_socket": control_socket,
                       "text": text, "older": list(older)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read(config_file: str | Path, directory: Path | None = None) -> Snapshot | None:
    """The snapshot for ``config_file``; None if there is none, SnapshotError if it is unusable."""
    path = path_for(config_file, directory)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SnapshotError(f"{path}: cannot read: {e}") from None
    try:
        data = json.loads(raw)
        snap = Snapshot(path=path, config_file=str(data["config_file"]), text=str(data["text"]),
                        control_socket=str(data["control_socket"]), pid=int(data["pid"]),
                        reason=str(data["reason"]), written=float(data["written"]),
                        older=tuple(str(t) for t in data.get("older", ())))
    except (ValueError, TypeError, KeyError) as e:
        raise SnapshotError(f"{path}: not a snapshot: {e!r}") from None
    if snap.config_file != _key(config_file):  # a hash collision, or a file copied by hand
        raise SnapshotError(f"{path}: snapshot of {snap.config_file}, not of {_key(config_file)}")
    return snap


@dataclass(frozen=True)
class CleanupSource:
    """What `failoverctl cleanup` works from, and the line saying so (the journal keeps it)."""

    instances: tuple[configmod.Config, ...]  # what may hold VIPs; () when there is nothing to clean up
    control_socket: str  # where a live agent would answer
    note: str


def for_cleanup(config_file: str | Path, env: Mapping[str, str] = os.environ,
                directory: Path | None = None) -> CleanupSource:
    """The config a dead agent ran: its snapshot, else the file (ConfigError if that is invalid).

    Without a snapshot, systemd's EXIT_CODE=exited EXIT_STATUS=2 (set for ExecStopPost=) means
    the agent stopped on a config error before it could acquire anything, so neither the
    invalid file nor anything else needs reading.
    """
    try:
        snap = read(config_file, directory)
        if snap is not None:
            return CleanupSource(snap.instances(), snap.control_socket, f"cleanup uses the config the agent ran "
                                 f"({snap.describe()}), not {config_file} as it is now")
        note = f"no snapshot of a running config ({path_for(config_file, directory)}): cleanup reads {config_file}"
    except SnapshotError as e:
        note = f"ignoring an unusable running-config snapshot ({e}): cleanup reads {config_file}"
    else:
        if env.get("EXIT_CODE") == "exited" and env.get("EXIT_STATUS") == "2":
            return CleanupSource((), "", "the agent stopped on a config error before acquiring anything: "
                                           "nothing to clean up")
    cfg = configmod.load_process(config_file)
    return CleanupSource(cfg.instances, cfg.agent.control_socket, note)
