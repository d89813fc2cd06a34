"""The guest's console log on the host: a ring of two files, read across the turn."""

from __future__ import annotations

import asyncio
import os

from hyperpy.vm import console


def _sizes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + ".1") if os.path.exists(p))


def test_the_ring_keeps_the_newest_and_stays_bounded(tmp_path):
    path = str(tmp_path / "console.log")
    log = console.ConsoleLog(path, 256 << 10)
    for i in range(5000):  # ~ 20 times the bound
        log.write(b"line %06d " % i + b"A" * 1000 + b"\n")
        assert _sizes(path) <= 256 << 10
    log.close()
    assert console.tail(path, 1).startswith("line 004999 ")
    # a tail longer than the current file is topped up from the previous one
    with open(path, "wb"):
        pass
    with open(path + ".1", "rb") as f:
        last_of_previous = f.read().splitlines()[-1].decode()
    assert console.tail(path, 2).splitlines()[-1] == last_of_previous


def test_a_new_log_starts_empty_and_without_a_stale_half(tmp_path):
    path = str(tmp_path / "console.log")
    (tmp_path / "console.log.1").write_text("old pod\n")
    (tmp_path / "console.log").write_text("older\n")
    console.ConsoleLog(path).close()
    assert console.tail(path) == "(console log is empty)"
    assert console.tail(str(tmp_path / "none.log")) == "(no console log)"


def test_the_panic_scan_follows_a_rotation(tmp_path):
    path = str(tmp_path / "console.log")
    log = console.ConsoleLog(path, 128 << 10)
    log.write(b"x" * (60 << 10))
    pos, panicked = console.scan_for_panic(path, 0)
    assert (pos, panicked) == (60 << 10, False)
    log.write(b"y" * (10 << 10) + b"Kernel panic - not syncing: VFS\n")  # turns the ring
    assert os.path.getsize(path) < pos
    assert console.scan_for_panic(path, pos)[1]
    log.close()


def test_the_pipe_never_blocks_its_writer(tmp_path):
    """QEMU's end is non-blocking: with nobody reading, a write fails at once (QEMU's
    serial port then drops the character) instead of stalling the guest; what was written
    reaches the log once the monitor reads."""
    pipe = console.ConsolePipe(str(tmp_path / "console.log"), 1 << 20)
    try:
        written = 0
        while True:
            try:
                written += os.write(pipe.fd, b"A" * 4096)
            except BlockingIOError:
                break
        assert 0 < written <= 8 << 20  # the socket's buffers

        async def drain() -> None:
            pipe.start()
            await asyncio.sleep(0.1)
            pipe.close_vm_end()
            await asyncio.sleep(0.1)

        asyncio.run(drain())
    finally:
        pipe.close()
    assert os.path.getsize(tmp_path / "console.log") == written


def test_daemon_logs_and_guest_warnings_are_bounded(tmp_path):
    """monitor.log and proxy.log keep DAEMON_LOG_MAX in two files; warnings about what the
    guest sent are the first 20 and then every 1000th."""
    import logging

    from hyperpy import log as hlog

    path = str(tmp_path / "monitor.log")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        hlog.to_file(path, "%(message)s")
        warn = hlog.GuestWarnings(logging.getLogger("hyperpy.test"))
        for i in range(30000):
            warn("bad frame %d from the guest", i)
        for h in root.handlers:
            h.flush()
        lines = open(path).read().splitlines()
        assert len(lines) == 20 + 30 and lines[-1].endswith("(guest warning 30000)"), lines[-3:]
        for i in range(20000):
            logging.getLogger("hyperpy.test").warning("line %d %s", i, "y" * 200)
        for h in root.handlers:
            h.flush()
        assert _sizes(path) <= hlog.DAEMON_LOG_MAX + 4096
        assert open(path).read().splitlines()[-1].startswith("line 19999 ")
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


WRITER = """
import os, select, sys
for fd in (1, 2):  # QEMU's stdout and stderr, one socket
    os.set_blocking(fd, False)
for i in range(30000):
    line = b"qemu-system-x86_64: warning: line %06d " % i + b"W" * 100 + b"\\n"
    while line:
        try:
            line = line[os.write(2, line):]
        except BlockingIOError:
            select.select([], [2], [])
os.write(1, b"the last line\\n")
"""


def test_qemus_own_output_is_a_ring_the_monitor_drains(tmp_path):
    """QEMU's stdout and stderr (qemu.log) go to a socket the monitor reads into a ring of
    QEMU_LOG_MAX: a writer that prints several times that leaves the newest in the log."""
    import sys

    from hyperpy.vm import qemu

    chans = qemu.Channels(str(tmp_path))
    path = chans.stderr_path

    async def run() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, stdout=chans.stderr.fd, stderr=chans.stderr.fd
        )
        chans.close_vm_ends()
        chans.start()
        assert await proc.wait() == 0
        while chans.stderr.drain():  # until EOF: every end of the writer's is closed
            await asyncio.sleep(0.01)

    try:
        asyncio.run(run())
    finally:
        chans.close()
    assert path == str(tmp_path / "qemu.log") and os.path.exists(path + ".1")
    assert _sizes(path) <= console.QEMU_LOG_MAX
    assert console.tail(path, 2).splitlines() == [
        "qemu-system-x86_64: warning: line 029999 " + "W" * 100,
        "the last line",
    ]
