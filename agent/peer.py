"""The peer channel's I/O: one UDP socket on the service address, requests and replies.

Requests are answered by a handler the instance provides (state, outdate); `ask` sends one
request to the configured peer and waits for the reply that names it. Anything that fails
authentication, freshness or replay checks is dropped, counted by reason and logged (at
most once a second per reason, so a flood cannot fill the journal). Replies are only
accepted from the configured peer's address for a request we have outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.config import Config
from agent.peerwire import Message, Rejected, ReplayGuard, decode, encode, load_secret, new_message

log = logging.getLogger("failover-agent")

Handler = Callable[[Message], Awaitable[dict[str, Any]]]
REPLY = {"state": "state-reply", "outdate": "outdate-reply"}


class PeerChannel(asyncio.DatagramProtocol):
    def __init__(self, own: str, peer: str, port: int, key: bytes, window: float, handler: Handler) -> None:
        self.own, self.peer, self.port = own, peer, port
        self.key = key
        self.guard = ReplayGuard(window)
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[str, asyncio.Future[Message]] = {}
        self.rejected: dict[str, int] = {}
        self._last_log: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.own, self.port))
        self.transport = transport

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        for fut in self.pending.values():
            fut.cancel()
        for task in self._tasks:
            task.cancel()

    def _reject(self, reason: str, detail: str, addr: tuple[str, int]) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(reason, 0.0) >= 1.0:
            self._last_log[reason] = now
            log.warning("peer channel: dropped a message from %s:%d (%s: %s; %d so far)", addr[0], addr[1], reason,
                        detail, self.rejected[reason])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != self.peer:
            self._reject("not_peer", f"only {self.peer} may talk to us", addr)
            return
        try:
            msg = decode(data, self.key, time.time(), self.guard)
        except Rejected as e:
            self._reject(e.reason, str(e).split(": ", 1)[-1], addr)
            return
        if msg.kind in REPLY:
            task = asyncio.ensure_future(self._answer(msg, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        fut = self.pending.get(msg.reply_to or "")
        if fut is None or fut.done():
            self._reject("unexpected", f"a {msg.kind} nobody asked for", addr)
            return
        fut.set_result(msg)

    async def _answer(self, msg: Message, addr: tuple[str, int]) -> None:
        try:
            body = await self.handler(msg)
        except Exception as e:  # a handler bug must not kill the channel; the asker sees a failure
            log.exception("peer channel: answering %s failed", msg.kind)
            body = {"result": "failed", "detail": str(e)}
        self._send(new_message(REPLY[msg.kind], self.own, time.time(), msg.nonce, body), addr)

    def _send(self, msg: Message, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(encode(msg, self.key), addr)

    async def ask(self, kind: str, timeout: float, body: dict[str, Any] | None = None) -> Message | None:
        """One request to the peer; its reply, or None when none came within `timeout`."""
        msg = new_message(kind, self.own, time.time(), body=body)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[msg.nonce] = fut
        try:
            self._send(msg, (self.peer, self.port))
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, OSError):
            return None
        finally:
            self.pending.pop(msg.nonce, None)
            with contextlib.suppress(asyncio.CancelledError):
                if not fut.done():
                    fut.cancel()


class PeerSetupError(Exception):
    """The peer channel cannot start (secret file missing or too open, port taken)."""


async def open_channel(cfg: Config, own: str, handler: Handler) -> PeerChannel | None:
    """The channel `cfg` asks for, listening on our address (None without `[peer]`)."""
    p = cfg.peer
    if p is None:
        return None
    try:
        key = load_secret(p.secret_file)
    except (OSError, ValueError) as e:
        raise PeerSetupError(f"{cfg.file}: peer.secret_file: {e}") from None
    channel = PeerChannel(own, str(p.address), p.port, key, p.window, handler)
    try:
        await channel.start()
    except OSError as e:
        raise PeerSetupError(f"{cfg.file}: peer.port: cannot listen on {own}:{p.port}: {e.strerror or e}") from None
    return channel
