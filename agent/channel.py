"""The agent's end of its one channel to the host: frames in, frames out.

Owns the channel's fd (non-blocking, in the agent's selector), the decoding of what arrives
(``protocol.Decoder``) into messages and stdin data for the agent, with a ``ProtocolError``
reply for a frame that cannot be read, and the buffer of frames the host has not read yet.

Flow control on the channel's side: while that buffer holds more than OUTBUF_HIGH bytes the
channel is ``congested`` and no process's output is read (``agent/streams.py`` asks); once
it is empty again, they are. A process whose host reader alone is behind (``flow``) is
``agent/streams.py``'s too.
"""

from __future__ import annotations

import errno
import os
import selectors
import time
from collections.abc import Callable

from agent import protocol as P

OUTBUF_HIGH = 4 << 20


class Channel:
    """The channel's fd in ``sel``: ``on_message(msg)`` for each request, ``on_stdin(stream,
    data)`` for each data frame, ``on_congestion()`` when ``congested`` changes; ``trace``,
    when given, sees each message sent."""

    def __init__(
        self,
        fd: int,
        sel: selectors.BaseSelector,
        on_message: Callable[[dict], None],
        on_stdin: Callable[[int, bytes], None],
        on_congestion: Callable[[], None],
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.fd = fd
        self.sel = sel
        self.on_message = on_message
        self.on_stdin = on_stdin
        self.on_congestion = on_congestion
        self.trace = trace
        self.decoder = P.Decoder()
        self.outbuf = bytearray()
        self.congested = False
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, self._on_ready)

    @property
    def pending(self) -> bool:
        """Whether frames wait for the host to read them."""
        return bool(self.outbuf)

    def send(self, frame: bytes) -> None:
        was_empty = not self.outbuf
        self.outbuf += frame
        if was_empty:
            self._flush()
        if self.outbuf and was_empty:
            self.sel.modify(self.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_ready)
        if len(self.outbuf) > OUTBUF_HIGH and not self.congested:
            self._congest(True)

    def send_msg(self, msg: dict) -> None:
        if self.trace is not None:
            self.trace(f"-> {msg}")
        self.send(P.encode_msg(msg))

    def _congest(self, congested: bool) -> None:
        self.congested = congested
        self.on_congestion()

    def _flush(self) -> None:
        while self.outbuf:
            try:
                n = os.write(self.fd, self.outbuf[: P.CHUNK * 4])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return
                raise
            del self.outbuf[:n]

    def _on_ready(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
            if not self.outbuf:
                self.sel.modify(self.fd, selectors.EVENT_READ, self._on_ready)
                if self.congested:
                    self._congest(False)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = os.read(self.fd, 256 * 1024)
        except BlockingIOError:
            return
        if not data:
            # virtio-serial reads EOF while no host end is connected: wait for it.
            time.sleep(0.05)
            return
        for item in self.decoder.feed(data):
            if isinstance(item, P.BadFrame):
                self.send_msg(P.error_reply(0, item.reason, "ProtocolError"))
            elif item.kind == P.MSG:
                self.on_message(item.message())
            else:
                self.on_stdin(item.stream, item.payload)
