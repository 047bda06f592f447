"""The peer channel's messages, sans I/O: authenticated, fresh and used once.

Two agents ask each other two things over the service network: "what is your state?" and
"outdate your DRBD disk"; and each sends the other a heartbeat on every network they share
(its silence makes the other take over). All of them change what a node may do with the data,
so a message counts only if it carries a valid HMAC-SHA256 of its bytes under the shared secret (forgery), was
made within `window` seconds of our clock (staleness: an old capture cannot be replayed
after the window), and its nonce was not seen within the window (replay inside the window).
There is deliberately no message that asks a node to promote: the channel can only ever
make a node give up data, never take it.

Layout of a datagram: 32 bytes HMAC-SHA256 over the rest, then a UTF-8 JSON object.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KINDS",
    "MAC_LEN",
    "MAX_DATAGRAM",
    "MIN_SECRET",
    "Message",
    "Rejected",
    "ReplayGuard",
    "decode",
    "encode",
    "load_secret",
    "new_message",
]

KINDS = ("state", "state-reply", "outdate", "outdate-reply", "heartbeat")
MAX_DATAGRAM = 4096
MAC_LEN = 32
MIN_SECRET = 16


class Rejected(Exception):
    """Why a datagram was not accepted; `reason` is one of forged, stale, replayed, malformed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Message:
    kind: str
    sender: str  # the sender's service address, as it says
    ts: float  # the sender's wall clock
    nonce: str
    reply_to: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


def new_message(kind: str, sender: str, now: float, reply_to: str | None = None,
                body: dict[str, Any] | None = None) -> Message:
    return Message(kind, sender, now, os.urandom(12).hex(), reply_to, dict(body or {}))


def encode(msg: Message, key: bytes) -> bytes:
    payload = json.dumps({"v": 1, "kind": msg.kind, "from": msg.sender, "ts": msg.ts, "nonce": msg.nonce,
                          "re": msg.reply_to, "body": msg.body}, separators=(",", ":")).encode()
    if len(payload) + MAC_LEN > MAX_DATAGRAM:
        raise ValueError("peer message too large")
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


class ReplayGuard:
    """Nonces seen within the window; forgets them once their timestamps are out of it anyway."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.seen: dict[str, float] = {}

    def check_and_remember(self, nonce: str, ts: float, now: float) -> None:
        if abs(now - ts) > self.window:
            raise Rejected("stale", f"timestamp {ts - now:+.1f} s off our clock, outside +-{self.window:g} s "
                                    "(clocks out of sync, or a captured message played back)")
        if nonce in self.seen:
            raise Rejected("replayed", f"nonce {nonce} was already used")
        if len(self.seen) > 10_000 or any(t < now - 2 * self.window for t in self.seen.values()):
            self.seen = {n: t for n, t in self.seen.items() if t >= now - 2 * self.window}
        self.seen[nonce] = ts


def decode(data: bytes, key: bytes, now: float, guard: ReplayGuard) -> Message:
    """The message if authentic, fresh and new; Rejected otherwise (never anything else)."""
    if len(data) <= MAC_LEN or len(data) > MAX_DATAGRAM:
        raise Rejected("malformed", f"{len(data)} bytes")
    mac, payload = data[:MAC_LEN], data[MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise Rejected("forged", "HMAC does not match the shared secret")
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError; nesting deeper than the stack
        raise Rejected("malformed", "not JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        raise Rejected("malformed", "not a version 1 message")
    kind, sender, ts, nonce = obj.get("kind"), obj.get("from"), obj.get("ts"), obj.get("nonce")
    reply_to, body = obj.get("re"), obj.get("body")
    if kind not in KINDS or not isinstance(sender, str) or not isinstance(nonce, str) or not 8 <= len(nonce) <= 64:
        raise Rejected("malformed", f"bad kind, sender or nonce ({kind!r})")
    when = _timestamp(ts)
    if not (reply_to is None or isinstance(reply_to, str)) or not isinstance(body, dict):
        raise Rejected("malformed", "bad reply reference or body")
    guard.check_and_remember(nonce, when, now)
    return Message(kind, sender, when, nonce, reply_to, body)


def _timestamp(value: object) -> float:
    """A finite float: JSON also reads NaN, Infinity and integers beyond a float's range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected("malformed", "bad timestamp")
    try:
        ts = float(value)
    except OverflowError:
        raise Rejected("malformed", "bad timestamp") from None
    if not math.isfinite(ts):
        raise Rejected("malformed", "bad timestamp")
    return ts


def load_secret(path: str, owner: int = 0) -> bytes:
    """The shared secret; refused unless the file is root's own (`owner`: for tests) and private (0600 or stricter)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != owner:
            raise PermissionError(f"{path} must be owned by {'root' if owner == 0 else f'uid {owner}'} "
                                  f"(uid {st.st_uid})")
        if st.st_mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
        secret = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(secret) < MIN_SECRET:
        raise ValueError(f"{path} holds {len(secret)} bytes; use at least {MIN_SECRET} "
                         "(e.g. head -c 32 /dev/urandom | base64)")
    return secret
