"""ONC RPC NULL over TCP: the NFS server's health check, for both backends.

A live process proves little (ganesha can be stuck in its startup, kernel nfsd threads can
be zero); a NULL call answered with SUCCESS proves the RPC dispatcher runs and serves that
program and version, which is what a client needs. Encoding and checking the reply are pure
functions so garbage replies are tested without a server.
"""

from __future__ import annotations

import asyncio
import os
import struct

NFS_PROGRAM = 100003
NFS_PORT = 2049
_LAST_FRAGMENT = 0x80000000


class RpcError(Exception):
    pass


def null_call(xid: int, program: int, version: int) -> bytes:
    """A record-marked CALL of procedure 0 with AUTH_NONE credential and verifier."""
    body = struct.pack("!IIIIIIIIII", xid, 0, 2, program, version, 0, 0, 0, 0, 0)
    return struct.pack("!I", _LAST_FRAGMENT | len(body)) + body


def check_null_reply(xid: int, record: bytes) -> None:
    """Raise RpcError unless `record` (one reply, without its marker) accepts our call."""
    if len(record) < 24:
        raise RpcError(f"reply too short ({len(record)} bytes)")
    rxid, mtype, stat = struct.unpack("!III", record[:12])
    if rxid != xid or mtype != 1:
        raise RpcError(f"not a reply to our call (xid {'ok' if rxid == xid else 'differs'}, type {mtype})")
    if stat != 0:
        raise RpcError("call denied (MSG_DENIED)")
    (vlen,) = struct.unpack("!I", record[16:20])
    if vlen > 400 or len(record) < 24 + vlen:
        raise RpcError("malformed verifier in the reply")
    (accept,) = struct.unpack("!I", record[20 + vlen:24 + vlen])
    meaning = {1: "program unavailable", 2: "version not served", 3: "procedure unavailable",
               4: "garbage arguments", 5: "system error"}
    if accept != 0:
        raise RpcError(meaning.get(accept, f"accept_stat {accept}"))


async def null(host: str, port: int, program: int, version: int, timeout: float) -> None:
    """One NULL call; RpcError (or OSError, TimeoutError) says why the server did not answer."""
    xid = int.from_bytes(os.urandom(4), "big")

    async def exchange() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(null_call(xid, program, version))
            await writer.drain()
            (marker,) = struct.unpack("!I", await reader.readexactly(4))
            length = marker & ~_LAST_FRAGMENT
            if length > 65536:
                raise RpcError(f"reply fragment of {length} bytes is not a NULL reply")
            check_null_reply(xid, await reader.readexactly(length))
        except asyncio.IncompleteReadError:
            raise RpcError("connection closed before the reply") from None
        finally:
            writer.close()

    await asyncio.wait_for(exchange(), timeout)


async def nfs_answers(versions: tuple[int, ...], host: str = "127.0.0.1", port: int = NFS_PORT,
                      timeout: float = 2.0) -> str:
    """'' if every version answers NULL, else a sentence naming the first that did not."""
    for v in versions:
        try:
            await null(host, port, NFS_PROGRAM, v, timeout)
        except (RpcError, OSError, TimeoutError) as e:
            return f"NFSv{v} NULL call to {host}:{port} failed: {e or type(e).__name__}"
    return ""
