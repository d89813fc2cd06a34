"""The guest's serial console on the host: a bounded log, and what reads it.

The guest writes its console as fast as it likes (a privileged container can ``mknod`` the
serial port and flood it; a misbehaving guest kernel floods it with printk), and the log
lives in the state directory, on /run by default: host memory. So the log is a ring of two
files that together hold at most ``[vm] console_log_max_mb``: ``console.log`` takes what
arrives; once it holds half the bound it becomes ``console.log.1`` (replacing the older
half) and a new ``console.log`` begins. The newest output is always kept, and readers (the
panic scan during boot, the error tails quoted to the user) read the current file and, when
it is short, the end of the previous one.

For the direct driver the console reaches the host through a socketpair the monitor reads
(:class:`ConsolePipe`): QEMU's socket chardev writes without blocking, and its serial port
retries a few times and then drops characters that cannot go out (as a UART without flow
control does), so a monitor that falls behind never stalls the guest or grows a buffer.
(Not a pipe behind ``-chardev file``: QEMU would make its end blocking and ftruncate it.)
The remote driver writes what its SSH channel carries through the same :class:`ConsoleLog`,
and libvirt's QEMU connects its serial port to a socket the monitor listens on
(:class:`ConsoleListener`) instead of writing a file itself, which nothing would bound.

QEMU's own stdout and stderr (``qemu.log``) are a ring of the same kind, of
``QEMU_LOG_MAX``: the guest can make QEMU print (virtio and 9p warnings), so the direct
driver gives QEMU a :class:`ConsolePipe` for them, and the remote driver relays the remote
QEMU's stderr into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

DEFAULT_MAX_BYTES = 4 << 20
QEMU_LOG_MAX = 1 << 20  # qemu.log: what QEMU itself prints, quoted when a VM fails
CHUNK = 65536
PANIC_MARKERS = (b"Kernel panic", b"---[ end Kernel panic")


class ConsoleLog:
    """Append-only writer of a ring of two files of at most ``max_bytes`` together."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.half = max(CHUNK, max_bytes // 2)
        self.fd = os.open(path, _FLAGS, 0o640)
        self.size = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".1")

    def write(self, data: bytes) -> None:
        while data:
            if self.size >= self.half:
                self._rotate()
            part = data[: self.half - self.size]
            os.write(self.fd, part)
            self.size += len(part)
            data = data[len(part) :]

    def _rotate(self) -> None:
        os.rename(self.path, self.path + ".1")
        os.close(self.fd)
        self.fd = os.open(self.path, _FLAGS, 0o640)
        self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_APPEND


class ConsoleReader:
    """The monitor's end of a console stream socket, read into a :class:`ConsoleLog` in the
    running event loop."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.log = ConsoleLog(path, max_bytes)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, sock: socket.socket) -> None:
        """Read ``sock`` from now on (in the running loop). Never shut down our writing
        side: QEMU takes that EOF as its console disconnected."""
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self.drain)

    def drain(self) -> bool:
        """Move what the socket holds to the log now; False once QEMU closed its end."""
        if self._sock is None:
            return False
        while True:
            try:
                data = self._sock.recv(CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                data = b""
            if not data:
                self._stop_reading()
                return False
            self.log.write(data)

    def _stop_reading(self) -> None:
        if self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._loop = None

    def close(self) -> None:
        if self._sock is not None:
            self.drain()  # what QEMU wrote last: a panic's lines
            self._stop_reading()
            self._sock.close()
            self._sock = None
        self.log.close()


class ConsolePipe(ConsoleReader):
    """The direct driver's console (and QEMU's stdout and stderr): a socketpair whose end
    ``fd`` QEMU inherits; that end never blocks, so QEMU drops what a monitor that falls
    behind has no room for rather than stall."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(path, max_bytes)
        self._ours, self._theirs = socket.socketpair()
        self._theirs.setblocking(False)  # QEMU drops characters rather than wait for us
        self.fd = self._theirs.fileno()

    def start(self) -> None:
        """Read from now on (once QEMU has its end)."""
        self.attach(self._ours)

    def close_vm_end(self) -> None:
        if self.fd >= 0:
            self._theirs.close()
            self.fd = -1

    def close(self) -> None:
        self.close_vm_end()
        if self._sock is None:
            self._ours.close()
        super().close()


class ConsoleListener(ConsoleReader):
    """The libvirt driver's console: a unix socket in the pod's view that libvirt's QEMU
    connects to as it starts (``<serial type='unix'><source mode='connect'>``), readable
    and writable by QEMU's group only; the first connection is the console, and the
    socket is then removed."""

    def __init__(self, path: str, sock_path: str, gid: int,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:  # fmt: skip
        super().__init__(path, max_bytes)
        self.sock_path = sock_path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)
        self._listener.bind(sock_path)
        os.chown(sock_path, 0, gid)
        os.chmod(sock_path, 0o660)
        self._listener.listen(1)
        self._listener.setblocking(False)
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._close_listener()
        self.attach(conn)

    def _close_listener(self) -> None:
        if self._listener.fileno() >= 0:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing registered
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)

    def close(self) -> None:
        self._close_listener()
        super().close()


def read_end(path: str, limit: int) -> bytes:
    """The last ``limit`` bytes of the log: of the current file, topped up from the previous."""
    data = b""
    for name in (path, path + ".1"):
        try:
            with open(name, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - (limit - len(data))))
                data = f.read() + data
        except OSError:
            continue
        if len(data) >= limit:
            break
    return data


def tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a console log (or of any log), for an error message."""
    if not (os.path.exists(path) or os.path.exists(path + ".1")):
        return "(no console log)"
    text = read_end(path, 8192).decode("utf-8", "replace").replace("\r", "")
    return "\n".join(text.splitlines()[-lines:]) or "(console log is empty)"


def scan_for_panic(path: str, pos: int) -> tuple[int, bool]:
    """(new position, whether a panic marker is in the log after ``pos``); a rotated log
    (shorter than ``pos``) is read again from its start."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < pos:
                pos = 0
            start = max(0, pos - 32)  # overlap: a marker may straddle two reads
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return pos, False
    return start + len(data), any(m in data for m in PANIC_MARKERS)
