"""The root-only control socket between `failoverctl` and a running agent.

One JSON object per line each way, one request per connection: simple enough to use with
`socat` in an emergency, strict enough that a malformed request gets an error answer and
never disturbs the daemon. The socket lives in a 0700 directory, is itself 0600, and the
server also checks the peer's uid (SO_PEERCRED) so a permissive umask cannot open it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    pass


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.is_socket() or self.path.exists():
            if _answers(self.path):
                raise ControlError(f"{self.path}: another agent is already listening there")
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid not in (0, os.getuid()):
                answer: dict[str, Any] = {"ok": False, "error": "permission denied"}
            else:
                answer = await self._answer(reader)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
            log.debug("control client went away: %s", e)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            request = parse_request(await asyncio.wait_for(reader.readline(), 5))
        except (ControlError, ValueError, asyncio.LimitOverrunError) as e:  # ValueError: a line over the limit
            return {"ok": False, "error": f"bad request: {e}"}
        try:
            return {"ok": True, **await self.handler(request)}
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # never let one request take the daemon down
            log.exception("control request %r failed", request.get("command"))
            return {"ok": False, "error": f"internal error: {e}"}


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line, apart from the socket so it can be fuzzed; ControlError is the only refusal."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as e:  # ValueError includes UnicodeDecodeError; nesting deeper than the stack
        raise ControlError(f"not JSON: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        raise ControlError("expected a JSON object with a 'command'")
    return request


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def request(path: str, command: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Blocking client used by failoverctl."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path} does not exist: is failover-agent running?") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root)") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e}") from None
        s.sendall(json.dumps({"command": command, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        raise ControlError(f"unreadable answer from the agent: {data[:200]!r}") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "request failed")))
    return answer
