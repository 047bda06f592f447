"""Prometheus text exposition of the agent's status, on a local address (off by default).

Rendered from the same status dict `failoverctl status --json` shows, so the two can never
disagree; the HTTP side is the least that Prometheus needs (GET, one response, close).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

STATES = ("INITIALIZE", "BACKUP", "MASTER", "FAULT")


def _labels(**kv: object) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in kv.items())
    return "{" + inner + "}"


def render(status: dict[str, Any]) -> str:
    """Every per-instance series carries an `instance` label (its name) beside vrid and interface."""
    lines: list[str] = []
    blocks = status["instances"]

    def metric(name: str, kind: str, help_: str, sample: Callable[[dict[str, str], dict[str, Any]],
                                                                     list[tuple[str, float]]]) -> None:
        lines.append(f"# HELP failover_agent_{name} {help_}")
        lines.append(f"# TYPE failover_agent_{name} {kind}")
        for iname, block in blocks.items():
            inst = block["instance"]
            base = {"instance": iname, "vrid": str(inst["vrid"]), "interface": inst["interface"]}
            lines.extend(f"failover_agent_{name}{labels} {value:g}" for labels, value in sample(base, block))

    def one(key: str) -> Callable[[dict[str, str], dict[str, Any]], list[tuple[str, float]]]:
        return lambda base, b: [(_labels(**base), float(b["instance"][key]))]

    def counter(key: str) -> Callable[[dict[str, str], dict[str, Any]], list[tuple[str, float]]]:
        return lambda base, b: [(_labels(**base), b["instance"]["counters"][key])]

    metric("state", "gauge", "1 for the current VRRP state",
           lambda base, b: [(_labels(**base, state=s), 1.0 if b["instance"]["state"] == s else 0.0) for s in STATES])
    metric("priority", "gauge", "priority advertised now", one("priority"))
    metric("maintenance", "gauge", "1 while maintenance mode is on", one("maintenance"))
    metric("vips_held", "gauge", "1 while this node holds the VIPs", one("vips_held"))
    metric("transitions_total", "counter", "VRRP state changes", counter("transitions"))
    metric("became_master_total", "counter", "times this node became master", counter("became_master"))
    metric("faults_total", "counter", "failures that put the instance in FAULT", counter("faults"))
    metric("adverts_sent_total", "counter", "VRRP adverts sent", counter("adverts_sent"))
    metric("adverts_received_total", "counter", "VRRP adverts accepted", counter("adverts_received"))
    metric("drops_total", "counter", "received packets dropped, by reason",
           lambda base, b: [(_labels(**base, reason=r), n)
                            for r, n in sorted(b["instance"]["counters"]["drops"].items())])
    metric("step_duration_ms", "gauge", "duration of the last run of each acquire/release step",
           lambda base, b: [(_labels(**base, step=s), ms) for s, ms in sorted(b.get("steps", {}).items())])
    return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, listen: str, status: Callable[[], dict[str, Any]]) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host, int(port)
        self.status = status
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            with contextlib.suppress(Exception):
                while (await asyncio.wait_for(reader.readline(), 5)).strip():
                    pass  # headers
            if request.split(b" ")[:1] == [b"GET"]:
                body = render(self.status()).encode()
                head = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            else:
                body, head = b"", b"HTTP/1.0 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
            writer.write(head + body)
            await writer.drain()
        except (ConnectionError, TimeoutError) as e:
            log.debug("metrics client went away: %s", e)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
