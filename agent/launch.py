"""Console-script entry points: make pyroute2's asyncio API available, then run the command.

``failover-agent`` and ``failoverctl`` start here rather than in agent.daemon / agent.cli so
that `vrrp.netlink.install()` runs before any module does ``from pyroute2 import
AsyncIPRoute``: Debian's python3-pyroute2 (0.7) has no AsyncIPRoute, PyPI's 0.9 has (then
install() does nothing).  Kept out of the ``agent`` package's __init__ so the sans-I/O core
never imports pyroute2.
"""

from __future__ import annotations

from vrrp import netlink


def daemon() -> int:
    netlink.install()
    from agent.daemon import main

    return main()


def ctl() -> int:
    netlink.install()
    from agent.cli import main

    return main()
