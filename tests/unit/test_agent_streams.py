"""The agent's channel and a process's stdio on it (agent/channel.py, agent/streams.py),
on a socketpair for the channel and real pipes and ptys for the process."""

from __future__ import annotations

import os
import pty
import selectors
import socket
from collections.abc import Iterator

import pytest

from agent import protocol as P
from agent.channel import Channel
from agent.streams import ProcessIO


@pytest.fixture
def chan() -> Iterator[tuple[Channel, socket.socket]]:
    ours, host = socket.socketpair()
    sel = selectors.DefaultSelector()
    c = Channel(ours.fileno(), sel, lambda m: None, lambda s, d: None, lambda: None)
    yield c, host
    sel.close()
    ours.close()
    host.close()


def received(host: socket.socket) -> list[tuple[int, bytes]]:
    host.setblocking(False)
    data = b""
    try:
        while chunk := host.recv(1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    return [(f.stream, f.payload) for f in P.Decoder().feed(data) if isinstance(f, P.Frame)]


@pytest.fixture
def piped(chan) -> Iterator[tuple[ProcessIO, int, int, int]]:
    """Process 3's io on pipes, started; and the process's ends: stdin, stdout, stderr."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    io = ProcessIO(3, chan[0])
    io.pipes(in_w, out_r, err_r)
    io.start()
    yield io, in_r, out_w, err_w
    io.close(exited=False)
    for fd in (in_r, out_w, err_w):
        if is_open(fd):
            os.close(fd)


@pytest.fixture
def tty(chan) -> Iterator[tuple[ProcessIO, int]]:
    """Process 1's io on a pty master, started; and the slave."""
    master, slave = pty.openpty()
    io = ProcessIO(1, chan[0])
    io.pty(master)
    io.start()
    yield io, slave
    io.close(exited=False)
    os.close(slave)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_pipes_exited_sends_what_is_left_then_eof_and_closes_all(chan, piped) -> None:
    c, host = chan
    io, _, out_w, err_w = piped
    ours = (io.stdin_fd, *io.outputs)
    os.write(out_w, b"left")
    for fd in (out_w, err_w):
        os.close(fd)
    io.close(exited=True)
    assert received(host) == [
        (P.stream_id(3, P.STDOUT), b"left"),
        (P.stream_id(3, P.STDOUT), b""),
        (P.stream_id(3, P.STDERR), b""),
    ]
    assert not any(is_open(fd) for fd in ours)
    assert io.stdin_fd == -1 and not io.outputs and not any(fd in c.sel.get_map() for fd in ours)


def test_a_pty_master_is_stdin_and_output_and_closed_once(chan, tty) -> None:
    _, host = chan
    io, _ = tty
    master = io.master
    assert io.stdin_fd == master and master in io.outputs
    io.close(exited=False)  # destroyed: nothing sent
    assert received(host) == []
    assert not is_open(master)
    assert io.stdin_fd == io.master == -1
    io.close(exited=False)  # again: nothing left to close


def test_stdin_eof_on_a_terminal_is_ctrl_d_and_keeps_the_master(tty) -> None:
    io, _ = tty
    io.write_stdin(b"")
    assert io.stdin_eof and io.stdin_fd == io.master and is_open(io.master)


def test_stdin_eof_on_a_pipe_closes_it_and_later_input_is_dropped(piped) -> None:
    io, in_r, _, _ = piped
    in_w = io.stdin_fd
    io.write_stdin(b"abc")
    io.write_stdin(b"")
    assert os.read(in_r, 10) == b"abc" and os.read(in_r, 10) == b""
    assert io.stdin_fd == -1 and not is_open(in_w)
    io.write_stdin(b"more")  # gone: discarded


def test_a_congested_channel_stops_reading_outputs_until_it_drains(chan, piped) -> None:
    c, _ = chan
    io = piped[0]
    c.on_congestion = io.watch
    out_r = next(iter(io.outputs))
    assert out_r in c.sel.get_map()
    c._congest(True)
    assert out_r not in c.sel.get_map()
    c._congest(False)
    assert out_r in c.sel.get_map()
    io.flow(True)
    assert out_r not in c.sel.get_map()
