"""A container process's stdio on the agent's side of it.

Owns the agent's ends of one process's stdio: for a process without a terminal, the write
end of its stdin pipe (with a buffer of what the process has not read yet) and the read
ends of its stdout and stderr pipes; for one with a terminal, the pty master, which is its
stdin and its one output at once (``stdin_fd == master``). Reads its outputs into data
frames on the channel while neither the channel (``Channel.congested``) nor the process's
reader on the host (``paused``, the ``flow`` operation) is behind, writes what the host sends
to its stdin, and closes all of it in one place (:meth:`ProcessIO.close`).

An output that reaches end-of-file (a pty: EIO, every slave closed) is closed and sent as an
empty data frame. End-of-file on stdin closes the pipe; on a terminal it is a ^D.
"""

from __future__ import annotations

import errno
import os
import selectors

from agent import protocol as P
from agent.channel import Channel


class ProcessIO:
    """The stdio of process ``proc`` (its id on the wire) in the agent's selector."""

    def __init__(self, proc: int, chan: Channel) -> None:
        self.proc = proc
        self.chan = chan
        self.sel = chan.sel
        self.stdin_fd = -1
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.outputs: dict[int, int] = {}  # fd -> stream id
        self.master = -1
        self.paused = False  # its reader on the host is behind (OP_FLOW)

    def pipes(self, stdin_w: int, stdout_r: int, stderr_r: int) -> None:
        self.stdin_fd = stdin_w
        self.outputs[stdout_r] = P.stream_id(self.proc, P.STDOUT)
        self.outputs[stderr_r] = P.stream_id(self.proc, P.STDERR)

    def pty(self, master: int) -> None:
        self.master = self.stdin_fd = master
        self.outputs[master] = P.stream_id(self.proc, P.STDOUT)

    def start(self) -> None:
        """Non-blocking from now on, and read."""
        for fd in self.outputs:
            os.set_blocking(fd, False)
        self.watch()
        os.set_blocking(self.stdin_fd, False)

    def watch(self) -> None:
        """Read the outputs unless the channel or the host reader is behind."""
        want = not (self.chan.congested or self.paused)
        watched = self.sel.get_map()
        for fd in self.outputs:
            if want and fd not in watched:
                self.sel.register(fd, selectors.EVENT_READ, self._reader(fd))
            elif not want and fd in watched:
                self.sel.unregister(fd)

    def flow(self, pause: bool) -> None:
        self.paused = pause
        self.watch()

    def _reader(self, fd: int):  # noqa: ANN202
        def handler(mask: int) -> None:
            self._read(fd)

        return handler

    def _read(self, fd: int, drain: bool = False) -> None:
        while True:
            try:
                data = os.read(fd, P.CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:  # pty: every slave closed
                    data = b""
                else:
                    raise
            if not data:
                self._close_output(fd, send_eof=True)
                return
            for frame in P.encode_data(self.outputs[fd], data):
                self.chan.send(frame)
            if not drain:
                return

    def _close_output(self, fd: int, send_eof: bool) -> None:
        stream = self.outputs.pop(fd, None)
        if stream is None:
            return
        self._unwatch(fd)
        if send_eof:
            self.chan.send(P.encode(P.DATA, stream, b""))
        os.close(fd)
        if fd == self.master:  # it was the terminal's stdin too
            self.master = self.stdin_fd = -1

    def _unwatch(self, fd: int) -> None:
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def close(self, exited: bool) -> None:
        """Close every fd. ``exited``: the process has exited, so what its outputs still hold
        is sent, then end-of-file on each; otherwise (it is destroyed) they are dropped."""
        for fd in list(self.outputs):
            if exited:
                self._read(fd, drain=True)
            self._close_output(fd, send_eof=exited)
        if self.stdin_fd >= 0:  # a pipe (a pty master is closed as an output above)
            self._unwatch(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    # --- stdin --------------------------------------------------------------------------
    def write_stdin(self, data: bytes) -> None:
        """What the host sent to the process's stdin; empty: end-of-file."""
        if self.stdin_fd < 0 or self.stdin_eof:
            return  # closed: its stdin is discarded, as a closed pipe would
        if not data:
            self.stdin_eof = True
        else:
            self.stdin_buf += data
        self._write_stdin()

    def _write_stdin(self) -> None:
        fd = self.stdin_fd
        while self.stdin_buf:
            try:
                n = os.write(fd, self.stdin_buf[: P.CHUNK])
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the process closed its stdin
                self.stdin_buf.clear()
                break
            del self.stdin_buf[:n]
        tty = fd == self.master
        registered = self.sel.get_map().get(fd) if not tty else None
        if self.stdin_buf:
            if tty:
                return  # a pty master: written again when more input comes (rare: tty input)
            if registered is None:
                self.sel.register(fd, selectors.EVENT_WRITE, lambda _m: self._write_stdin())
            return
        if registered is not None:
            self.sel.unregister(fd)
        if self.stdin_eof:
            if tty:
                os.write(fd, b"\x04")  # a terminal's EOF is ^D
            else:
                os.close(fd)
                self.stdin_fd = -1
