"""The monitor's end of the agent channel, and what it keeps for each process's proxy.

Owns :class:`AgentLink` (requests by id with a timeout each, the agent's events and DATA
frames dispatched to the monitor's callbacks; a garbled or failing frame is logged and
skipped, never the end of the pod) and :class:`Attachment` (a process's output sent to its
proxy, or kept up to ``PENDING_LIMIT`` until one attaches). Used by the monitor
(``hyperpy/monitor/``) only; the wire format is ``agent/protocol.py``'s.

Everything the guest sends is hostile input, and what it can make the monitor hold is
bounded: a frame is at most ``MAX_PAYLOAD`` (a larger length ends the pod, naming it: no
agent sends one, and skipping it would swallow what follows), the channel is read
``READ_SIZE`` bytes at a time and each frame handled as it is read (no event waits in a
queue), warnings about it are rate-limited, and a process's output held for its proxy is at
most ``OUTPUT_LIMIT`` whether or not the agent honours flow control. Towards the guest: a
proxy's stdin waits while ``SEND_HIGH`` bytes wait for the agent to read them, and a request
is refused while ``SEND_LIMIT`` do (a guest that stops reading its channel holds back its
own work, not the host's memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from agent import protocol as P
from hyperpy.errors import AgentError, HyperpyError, SpecError
from hyperpy.log import GuestWarnings

log = logging.getLogger("hyperpy.monitor")

AGENT_TIMEOUT = 60.0
PENDING_LIMIT = 8 << 20  # a process's output kept until its proxy attaches
# What the monitor holds for a proxy that reads slowly: above FLOW_HIGH the agent is asked
# to stop reading the process's output (OP_FLOW), below FLOW_LOW to go on. The process then
# blocks on its full pipe, as under runc, and no other process of the pod waits for it.
FLOW_HIGH = 1 << 20
FLOW_LOW = 256 << 10
# Output held for one proxy whatever the agent does: an agent that goes on sending after
# OP_FLOW (none of ours: at most its own 4 MiB channel buffer follows) has the rest dropped.
OUTPUT_LIMIT = 8 << 20
READ_SIZE = 256 << 10
SEND_HIGH = 1 << 20  # bytes waiting for the agent above which a proxy's stdin waits
SEND_LIMIT = 8 << 20  # ... above which a request is refused: the agent is not reading


class Attachment:
    """Frames for one process: sent to its proxy, or kept (up to PENDING_LIMIT) until one
    attaches. Once the exit went to a proxy, or the proxy left, nothing more is kept.
    ``flow(pause)`` asks the agent to stop or resume the process's output."""

    def __init__(self, flow: Callable[[bool], Awaitable[object]] | None = None) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.dropped = 0
        self.exit: dict | None = None
        self.done = False
        self.flow = flow
        self.paused: asyncio.Task | None = None
        self.overflow = 0  # bytes dropped because the agent ignored flow control

    def attach(self, writer: asyncio.StreamWriter) -> None:
        writer.transport.set_write_buffer_limits(high=FLOW_HIGH, low=FLOW_LOW)
        self.writer = writer

    def deliver(self, frame: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            if self.writer.transport.get_write_buffer_size() > OUTPUT_LIMIT:
                if not self.overflow:
                    log.warning(
                        "the agent sent a process's output past flow control: what "
                        "exceeds %d bytes for its proxy is dropped",
                        OUTPUT_LIMIT,
                    )
                self.overflow += len(frame)
                return
            self.writer.write(frame)
            if (
                self.flow is not None
                and self.paused is None
                and (self.writer.transport.get_write_buffer_size() > FLOW_HIGH)
            ):
                self.paused = asyncio.ensure_future(self._pause_until_drained(self.writer))
        elif self.done or self.pending_bytes + len(frame) > PENDING_LIMIT:
            self.dropped += len(frame)
        else:
            self.pending.append(frame)
            self.pending_bytes += len(frame)

    async def _pause_until_drained(self, writer: asyncio.StreamWriter) -> None:
        assert self.flow is not None
        try:
            for pause in (True, False):
                try:
                    await self.flow(pause)
                except HyperpyError as exc:
                    log.warning("flow control of a process's output failed: %s", exc)
                if pause:  # until the buffer is under FLOW_LOW (or the proxy left)
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.drain()
        finally:
            self.paused = None

    def finish(self, writer: asyncio.StreamWriter) -> None:
        """Send the exit (after what was kept) and close: the proxy's last frame."""
        assert self.exit is not None
        writer.write(P.encode_msg(self.exit))
        writer.close()
        self.done = True
        self.pending.clear()
        self.pending_bytes = 0


class AgentLink:
    """The host end of the agent channel: requests by id, events and DATA dispatched."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        writer.transport.set_write_buffer_limits(high=SEND_HIGH)
        self.next_id = 1
        self.waiting: dict[int, asyncio.Future] = {}
        self.owners: dict[int, str] = {}  # request id -> cid of a process it starts
        self.on_new_proc = lambda proc, cid: None
        self.on_event = lambda msg: None
        self.on_data = lambda stream, payload: None
        # set to why the channel ended: the agent closed it, or broke the protocol
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.warn = GuestWarnings(log)  # the monitor gives it its own

    async def pump(self) -> None:
        decoder = P.Decoder()
        why = "the guest agent closed its channel"
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, P.BadFrame) and item.fatal:
                        why = f"the guest agent broke the protocol ({item.reason})"
                        log.error("%s: the pod ends", why)
                        return
                    try:
                        if isinstance(item, P.BadFrame):
                            self.warn("bad frame from the agent: %s", item.reason)
                        elif item.kind == P.DATA:
                            self.on_data(item.stream, item.payload)
                        else:
                            self._on_msg(item.message())
                    except Exception as exc:  # noqa: BLE001 - one bad frame must not end the pod
                        self.warn("ignored a message from the agent that failed: %r", exc)
        finally:
            err = AgentError("the agent channel closed (the VM stopped or the agent died)")
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(err)
            self.waiting.clear()
            if not self.closed.done():
                self.closed.set_result(why)

    def _on_msg(self, msg: dict) -> None:
        if "event" in msg:
            self.on_event(msg)
            return
        fut = self.waiting.pop(msg.get("id", 0), None)
        owner = self.owners.pop(msg.get("id", 0), "")
        if owner and msg.get("ok") and isinstance(msg.get("proc"), int):
            # Before any later frame of this read is dispatched: the new process's output
            # may follow its reply in the same read.
            self.on_new_proc(msg["proc"], owner)
        if fut is None:
            if not msg.get("ok", True):
                self.warn("agent error without a request: %.200s", msg.get("error"))
            return
        if not fut.done():
            fut.set_result(msg)

    async def forward(self, frame: bytes) -> None:
        """Send a proxy's stdin frame; wait while SEND_HIGH bytes wait for the agent."""
        self.writer.write(frame)
        with contextlib.suppress(ConnectionError):  # the channel's end is pump's to tell
            await self.writer.drain()

    async def request(self, op: str, timeout: float = AGENT_TIMEOUT, **fields: object) -> dict:
        if self.closed.done():
            raise AgentError(f"cannot send {op!r}: the agent channel is closed")
        waiting = self.writer.transport.get_write_buffer_size()
        if waiting > SEND_LIMIT:
            raise AgentError(f"cannot send {op!r}: the agent has not read the {waiting} bytes "
                             "already sent to it")  # fmt: skip
        req_id = self.next_id
        self.next_id += 1
        if op in (P.OP_CREATE, P.OP_EXEC):
            self.owners[req_id] = str(fields["cid"])
        fut = asyncio.get_running_loop().create_future()
        self.waiting[req_id] = fut
        self.writer.write(P.encode_msg({"id": req_id, "op": op, **fields}))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.waiting.pop(req_id, None)
            self.owners.pop(req_id, None)
            raise AgentError(f"the agent did not answer {op!r} within {timeout:.0f}s") from None
        if not reply.get("ok"):
            if reply.get("kind") == "SpecError":
                raise SpecError(reply.get("error", ""), pointer=reply.get("pointer", ""))
            raise AgentError(f"the agent refused {op!r}: {reply.get('error')}")
        return reply
