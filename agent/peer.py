"""The peer channel's I/O: one UDP socket, requests and replies, heartbeats on every path.

Requests are answered by a handler the instance provides (state, outdate); `ask` sends one
request to the peer, on the path it was last heard on, and waits for the reply that names it.
`beat` sends one heartbeat to each of the peer's addresses (`[peer] addresses`); each one that
arrives is handed on with the address it came from, so the node knows the peer is alive on
which path. Anything that fails
authentication, freshness or replay checks is dropped, counted by reason and logged (at
most once a second per reason, so a flood cannot fill the journal). Replies are only
accepted from the configured peer's addresses for a request we have outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.actions import SendHeartbeat
from agent.config import Config
from agent.events import PeerHeard
from agent.peerwire import Message, Rejected, ReplayGuard, decode, encode, load_secret, new_message

log = logging.getLogger("failover-agent")

Handler = Callable[[Message], Awaitable[dict[str, Any]]]
OnBeat = Callable[[PeerHeard], None]
REPLY = {"state": "state-reply", "outdate": "outdate-reply"}


def heard(path: str, body: dict[str, Any]) -> PeerHeard:
    """A heartbeat's body as the node's event; what is missing or mistyped reads as unknown."""
    bound = body.get("bound")
    seconds = float(bound) if isinstance(bound, float) or (type(bound) is int and abs(bound) < 1000) else 0.0
    restart = body.get("restarting")
    restarting = float(restart) if isinstance(restart, (int, float)) and 0 < restart <= 60 else 0.0
    return PeerHeard(path, str(body.get("vrrp", ""))[:16], body.get("holding") is not False,
                     body.get("hears") is not False, seconds if 0 <= seconds <= 600 else 0.0, restarting)


class PeerChannel(asyncio.DatagramProtocol):
    def __init__(self, own: str, peers: tuple[str, ...], port: int, key: bytes, window: float, handler: Handler,
                 on_beat: OnBeat = lambda _: None) -> None:
        self.own, self.peers, self.port = own, peers, port
        self.peer = peers[0]  # the service address: requests go there unless another path is fresher
        self.on_beat = on_beat
        self.last_heard: dict[str, float] = {}
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
        # one path: our service address; more: every address, so each network's heartbeats arrive
        local = self.own if len(self.peers) == 1 else "0.0.0.0"
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(local, self.port))
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
        if addr[0] not in self.peers:
            self._reject("not_peer", f"only {', '.join(self.peers)} may talk to us", addr)
            return
        try:
            msg = decode(data, self.key, time.time(), self.guard)
        except Rejected as e:
            self._reject(e.reason, str(e).split(": ", 1)[-1], addr)
            return
        self.last_heard[addr[0]] = time.monotonic()
        if msg.kind == "heartbeat":
            self.on_beat(heard(addr[0], msg.body))
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

    def beat(self, a: SendHeartbeat) -> None:
        """One heartbeat on every path (a nonce each: every copy is a message of its own)."""
        body: dict[str, Any] = {"vrrp": a.vrrp, "holding": a.holding, "hears": a.hears_peer, "bound": a.bound}
        if a.restarting:
            body["restarting"] = a.restarting
        for path in self.peers:
            try:
                self._send(new_message("heartbeat", self.own, time.time(), body=body), (path, self.port))
            except OSError as e:  # a path without a route (its link is down): the others still carry
                self._reject("send_failed", f"heartbeat to {path}: {e.strerror or e}", (path, self.port))

    def best_path(self) -> str:
        """The service address, unless another path was heard from more recently."""
        if not self.last_heard:
            return self.peer
        return max(self.peers, key=lambda p: (self.last_heard.get(p, -1.0), p == self.peer))

    async def ask(self, kind: str, timeout: float, body: dict[str, Any] | None = None) -> Message | None:
        """One request to the peer; its reply, or None when none came within `timeout`."""
        msg = new_message(kind, self.own, time.time(), body=body)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[msg.nonce] = fut
        try:
            self._send(msg, (self.best_path(), self.port))
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


async def open_channel(cfg: Config, own: str, handler: Handler, on_beat: OnBeat = lambda _: None) -> PeerChannel | None:
    """The channel `cfg` asks for, listening on our address (None without `[peer]`)."""
    p = cfg.peer
    if p is None:
        return None
    try:
        key = load_secret(p.secret_file)
    except (OSError, ValueError) as e:
        raise PeerSetupError(f"{cfg.file}: peer.secret_file: {e}") from None
    paths = (str(p.address), *(str(a) for a in p.paths if a != p.address))
    channel = PeerChannel(own, paths, p.port, key, p.window, handler, on_beat)
    try:
        await channel.start()
    except OSError as e:
        raise PeerSetupError(f"{cfg.file}: peer.port: cannot listen on {own}:{p.port}: {e.strerror or e}") from None
    return channel
