"""The version, defined once: ``[project] version`` in pyproject.toml.

Installed (pip, the Debian package): read from the distribution's metadata.  Run from a source
tree that was never installed (the nspawn lab's bind mount): read from pyproject.toml beside
the packages.  Neither: "0+unknown", never an exception.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "failover-agent"


def version() -> str:
    """This failover-agent's version, e.g. "0.1.0"."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        with pyproject.open("rb") as f:
            project = tomllib.load(f).get("project", {})
        if project.get("name") == DISTRIBUTION and isinstance(project.get("version"), str):
            return str(project["version"])  # a source tree: its own version, even if another is installed
    except (OSError, tomllib.TOMLDecodeError):
        pass
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = version()
