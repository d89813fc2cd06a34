"""``monitor.sock``: the monitor's clients (the CLI and the process proxies), with the
agent's own framing (:mod:`agent.protocol`).

Owns the connections and what they may hold (at most ``MAX_CLIENTS``; incomplete frames
bounded in time and, over all clients, in bytes: the largest holder is dropped first), the
answer to each request (on the connection that sent it), and ``attach``: a proxy's
``attach {"proc": N}`` makes it that process's one proxy, which then gets the process's
output and exit and sends its stdin. What a request does is the monitor's
(:class:`Session`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from agent import protocol as P
from hyperpy.errors import HyperpyError, SpecError
from hyperpy.monitor.procs import Processes

log = logging.getLogger("hyperpy.monitor")

# monitor.sock's peers are hostile input: bounded connections, bounded bytes.
MAX_CLIENTS = 256
PARTIAL_FRAME_TIMEOUT = 10.0  # a client that leaves a frame incomplete this long is dropped
DECODE_BUDGET = 32 << 20  # incomplete frames held over all clients; the largest goes first


class Session(Protocol):
    """What the server asks of the monitor."""

    procs: Processes
    stop: asyncio.Event

    async def handle(self, msg: dict) -> dict: ...
    async def stdin(self, stream: int, payload: bytes) -> None: ...
    def orphaned(self, proc: int) -> None: ...
    def spawn(self, coro: Any) -> None: ...


class Server:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.clients: dict[asyncio.StreamWriter, P.Decoder] = {}

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self.clients) >= MAX_CLIENTS:
            refuse(writer, 0, f"too many connections to the monitor (limit {MAX_CLIENTS})")
            writer.close()
            return
        decoder = P.Decoder()
        self.clients[writer] = decoder
        attached: int | None = None
        partial_since = 0.0  # when the incomplete frame in the decoder began
        try:
            while True:
                timeout = None
                if decoder.buffered:
                    partial_since = partial_since or time.monotonic()
                    timeout = max(0.0, partial_since + PARTIAL_FRAME_TIMEOUT - time.monotonic())
                else:
                    partial_since = 0.0
                try:
                    data = await asyncio.wait_for(reader.read(256 * 1024), timeout)
                except TimeoutError:
                    log.warning("dropped a client that left a frame incomplete for %.0fs",
                                PARTIAL_FRAME_TIMEOUT)  # fmt: skip
                    break
                if not data:
                    break
                items = decoder.feed(data)
                partial_since = 0.0 if items else partial_since  # the next frame's clock: later
                self._hold_budget()
                for item in items:
                    if isinstance(item, P.BadFrame):
                        refuse(writer, 0, item.reason)
                        if item.fatal:
                            raise ConnectionAbortedError(item.reason)
                    elif item.kind == P.DATA:
                        if attached is not None and P.split_stream(item.stream)[0] == attached:
                            await self.session.stdin(item.stream, item.payload)
                    else:
                        msg = item.message()
                        try:
                            P.check_fields(msg)
                        except P.ProtocolError as exc:
                            refuse(writer, msg.get("id"), str(exc))
                            continue
                        if msg["op"] == "attach":
                            if self._attach(msg["proc"], writer, msg):
                                attached = msg["proc"]
                        else:
                            self.session.spawn(self._answer(msg, writer))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.clients.pop(writer, None)
            entry = self.session.procs.get(attached) if attached is not None else None
            att = entry.attachment if entry is not None else None
            if att is not None and att.writer is writer:
                att.writer = None
                att.done = True  # nobody reads its output any more
                if att.exit is None and not self.session.stop.is_set() and attached is not None:
                    self.session.orphaned(attached)
            writer.close()

    def _hold_budget(self) -> None:
        """Drop the clients holding the most incomplete-frame bytes while over budget."""
        total = sum(d.buffered for d in self.clients.values())
        while total > DECODE_BUDGET:
            writer, decoder = max(self.clients.items(), key=lambda kv: kv[1].buffered)
            log.warning("dropped a client holding %d bytes of an incomplete frame",
                        decoder.buffered)  # fmt: skip
            total -= decoder.buffered
            decoder.reset()
            self.clients.pop(writer, None)
            writer.transport.abort()

    def _attach(self, proc: int, writer: asyncio.StreamWriter, msg: dict) -> bool:
        """Make ``writer`` the one proxy of ``proc``; a second proxy is refused, so the exit
        always reaches the process's own proxy."""
        entry = self.session.procs.get(proc)
        if entry is None:
            refuse(writer, msg.get("id"), f"no process {proc} in this sandbox")
            return False
        att = entry.attachment
        if att.writer is not None and att.writer is not writer and not att.writer.is_closing():
            refuse(writer, msg.get("id"), f"process {proc} already has a proxy attached")
            return False
        att.attach(writer)
        writer.write(P.encode_msg(P.reply(msg)))
        for frame in att.pending:
            writer.write(frame)
        att.pending.clear()
        att.pending_bytes = 0
        if att.dropped:
            log.warning("process %d: %d bytes of output exceeded what is kept before its proxy "
                        "attached and were dropped", proc, att.dropped)  # fmt: skip
        if att.exit is not None:
            att.finish(writer)
        return True

    async def _answer(self, msg: dict, writer: asyncio.StreamWriter) -> None:
        try:
            result = await self.session.handle(msg)
            # An agent reply carries the agent's own request id: never the client's.
            out = P.reply(msg, **{k: v for k, v in result.items() if k not in ("id", "ok")})
        except SpecError as exc:
            out = P.error_reply(msg.get("id", 0), exc.message, "SpecError")
            out["pointer"] = exc.pointer
        except P.ProtocolError as exc:
            out = P.error_reply(msg.get("id", 0), str(exc), "ProtocolError")
        except HyperpyError as exc:
            out = P.error_reply(msg.get("id", 0), str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - every failure is answered
            log.exception("request %s failed", msg.get("op"))
            out = P.error_reply(msg.get("id", 0), f"{type(exc).__name__}: {exc}", "HyperpyError")
        if not writer.is_closing():
            writer.write(P.encode_msg(out))


def refuse(writer: asyncio.StreamWriter, req_id: object, error: str) -> None:
    req_id = req_id if isinstance(req_id, int) and not isinstance(req_id, bool) else 0
    writer.write(P.encode_msg(P.error_reply(req_id, error, "ProtocolError")))
