"""The terminal of a container process that asks for one (``process.terminal``).

Owns both ends of its handover, as runc's console socket does it: the container's setup
child opens a pty in the container's own devpts (so ttyname() inside names the container's
/dev/pts), makes the slave its controlling terminal and stdio (and /dev/console for a
container's init) and sends the master over a unix socket (:func:`open_in_container`); the
agent takes it (:func:`receive_master`). And the window size, the one packing of it: on the
slave from ``process.consoleSize``, on the master for ``winsize`` (:func:`set_winsize`).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from agent import linux
from agent.errors import SetupError

# <asm-generic/ioctls.h>: unlockpt() and ptsname() without libc.
TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """The terminal's size in characters (TIOCSWINSZ; the pixel fields 0)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def open_in_container(sock: int, process: dict, console: bool) -> None:
    """Open a pty in the container's devpts, send the master to the agent, make the slave
    our controlling terminal and stdio; for a container's init (``console``) the slave is
    also bound over /dev/console, as runc does."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(
            f"process.terminal is true but /dev/ptmx cannot be opened in the container "
            f"({exc.strerror}): mount devpts at /dev/pts (newinstance,ptmxmode=0666)",
            "/process/terminal",
        ) from exc
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
    n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
    slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
    user = process.get("user") or {}
    os.chown(slave, user.get("uid", 0), user.get("gid", 0))
    if console:
        try:
            if not os.path.exists("/dev/console"):
                open("/dev/console", "a").close()
            linux.mount(f"/dev/pts/{n}", "/dev/console", None, linux.MS_BIND)
        except OSError as exc:
            raise SetupError(
                f"cannot bind the terminal over /dev/console: {exc.strerror}", "/process/terminal"
            ) from exc
    if process.get("consoleSize"):
        size = process["consoleSize"]
        set_winsize(slave, size.get("height", 24), size.get("width", 80))
    with socket.socket(fileno=sock) as conn:
        socket.send_fds(conn, [b"M"], [master])
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def receive_master(sock: int, timeout: float = 30.0) -> int:
    """The pty master the child opened in the container, or -1 if setup failed first."""
    with socket.socket(fileno=sock) as conn:
        conn.settimeout(timeout)
        try:
            _, fds, _, _ = socket.recv_fds(conn, 16, 1)
        except OSError:
            return -1
    return fds[0] if fds else -1
