"""``pyroute2.AsyncIPRoute`` on every pyroute2 the agent runs with, 0.9 (PyPI) and 0.7 (Debian).

The agent is written against pyroute2 0.9's asyncio API (``AsyncIPRoute``).  Debian ships only
pyroute2 0.7 (bookworm 0.7.2, trixie 0.7.7, sid 0.8.1), which has the synchronous ``IPRoute``
and no ``AsyncIPRoute``.  Every module of ours imports ``AsyncIPRoute`` from here: pyroute2's
own on 0.9 and later, `IPRouteAdapter` on the older ones.

The adapter covers exactly what the agent uses: ``async with``, ``link("get", ...)``,
``addr("dump"|"add"|"del", ...)``, ``bind(groups=...)`` and ``async for msg in get()`` (one
datagram's messages per call, as in 0.9).  Requests are short netlink round trips (~0.5 ms)
and run on the event loop's thread; ``get()`` waits for the socket with ``loop.add_reader``,
so it never blocks the loop.  Messages come wrapped in `Message`: 0.7.2's ``msg.get("address")``
returns None (it iterates the string's characters as a path of nested attributes), so the
wrapper looks up fields and attributes by their short names itself, as 0.9's ``get`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import pyroute2

__all__ = ["AsyncIPRoute", "IPRouteAdapter", "Message"]


class Message:
    """A 0.7 netlink message read like a 0.9 one: ``msg["flags"]`` and ``msg.get("address")``."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Any) -> None:
        self._msg = msg

    def __getitem__(self, key: str) -> Any:
        return self._msg[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A header field (index, flags, prefixlen, event...) or an attribute by its short name."""
        msg = self._msg
        if key in msg:
            return msg[key] if msg[key] is not None else default
        value = msg.get_attr(msg.name2nla(key) if msg.prefix else key.upper())
        return default if value is None else value

    def __repr__(self) -> str:
        return f"Message({self._msg!r})"


class IPRouteAdapter:
    """The subset of 0.9's ``AsyncIPRoute`` the agent uses, over 0.7's synchronous ``IPRoute``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._ipr: Any = None

    async def __aenter__(self) -> IPRouteAdapter:
        self._ipr = pyroute2.IPRoute(*self._args, **self._kwargs)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _sync(self) -> Any:
        if self._ipr is None:
            raise RuntimeError("IPRouteAdapter used outside 'async with'")
        return self._ipr

    async def link(self, command: str, **kwargs: Any) -> list[Any]:
        return [Message(m) for m in self._sync().link(command, **kwargs)]

    async def addr(self, command: str, **kwargs: Any) -> list[Any]:
        return [Message(m) for m in self._sync().addr(command, **kwargs)]

    async def bind(self, groups: int = 0, **kwargs: Any) -> None:
        self._sync().bind(groups=groups, **kwargs)

    async def get(self) -> AsyncIterator[Any]:
        """The messages of the next datagram(s) the kernel sends to a bound socket."""
        ipr = self._sync()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = ipr.fileno()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        for msg in ipr.get():
            yield Message(msg)


#: what the agent opens netlink with: pyroute2's own where it has one, else the adapter
AsyncIPRoute: Any = getattr(pyroute2, "AsyncIPRoute", IPRouteAdapter)
