"""The process proxy: the host process that stands for one container process.

Its pid is what ``--pid-file`` names, so the runc shim (or ``hyperpy run``) waits on it.
It carries the stdio fds it was started with (the caller's pipes or fifos) or, with a
console socket, a host pty whose master it sends over that socket in one SCM_RIGHTS message.
It relays stdin to the guest (EOF included) and stdout/stderr back, forwards every signal it
can catch to its container process, forwards window-size changes, and exits with the
process's status: 128+N when killed by signal N, 255 with a logged reason when the VM or the
agent died. It never exits 0 for a process that did not exit 0. When the agent says the
container's init ends OOM-killed, it first makes the host cgroup report an OOM, where the
shim, conmon and docker look for one (:mod:`hyperpy.hostoom`).

Run as ``python -m hyperpy.proxy STATE_DIR PROC READY_FD [--console-socket PATH]``; it writes
one line to READY_FD once attached (and the console fd sent), then closes it.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time

from agent import protocol as P
from hyperpy.log import to_file
from hyperpy.monitor_client import connect_unix
from hyperpy.sandbox.record import MONITOR_SOCK

log = logging.getLogger("hyperpy.proxy")

# Every signal the shim or a user may send is forwarded; not the ones the kernel raises
# for a fault of this process, nor the job-control and child signals it needs itself.
NOT_FORWARDED = {
    signal.SIGKILL,
    signal.SIGSTOP,
    signal.SIGCHLD,
    signal.SIGWINCH,
    signal.SIGPIPE,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCONT,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
}
FORWARDED = [s for s in signal.Signals if s not in NOT_FORWARDED]
VM_GONE_STATUS = 255
# Output held for our stdout/stderr beyond which the monitor's socket is no longer read.
PENDING_HIGH = 1 << 20
# After an OOM told to the host cgroup: time for the listeners' event loops (the runc shim's
# epoller, conmon's) to publish it before they reap this process and publish its exit.
OOM_GRACE = 0.1


def send_console(console_socket: str, master: int) -> None:
    """Hand the pty master to whoever listens on the console socket (runc's protocol)."""
    sock = connect_unix(console_socket)
    try:
        sock.sendmsg(
            [b"/dev/ptmx"],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, master.to_bytes(4, sys.byteorder))],
        )
    finally:
        sock.close()


class Proxy:
    def __init__(self, state_dir: str, proc: int, console_socket: str | None) -> None:
        self.dir = state_dir
        self.proc = proc
        self.console_socket = console_socket
        self.sock = connect_unix(os.path.join(state_dir, MONITOR_SOCK))
        self.sel = selectors.DefaultSelector()
        self.decoder = P.Decoder()
        self.out = bytearray()
        self.tty = -1  # our end of the host pty (the slave) when a console socket is used
        self.in_fd = 0
        self.outs = {P.STDOUT: 1, P.STDERR: 2}
        self.pending: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.status: int | None = None
        self.oom = False  # the agent counted an OOM kill in the container's cgroup
        self.next_id = 1
        self.stdin_open = True

    def setup(self) -> None:
        if self.console_socket:
            import termios
            import tty

            master, slave = os.openpty()
            tty.setraw(slave, termios.TCSANOW)
            if os.getsid(0) != os.getpid():
                os.setsid()
            import fcntl

            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            send_console(self.console_socket, master)
            os.close(master)
            self.tty = slave
            self.in_fd = slave
            self.outs = {P.STDOUT: slave, P.STDERR: slave}
            self.pending = {slave: bytearray()}
            signal.signal(signal.SIGWINCH, lambda *_: self._winsize())
        self._send_msg({"op": "attach", "proc": self.proc})
        for sig in FORWARDED:
            try:
                signal.signal(sig, self._on_signal)
            except (OSError, ValueError):
                continue
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, "sock")
        try:
            os.set_blocking(self.in_fd, False)
            self.sel.register(self.in_fd, selectors.EVENT_READ, "fd")
        except (OSError, ValueError):
            # stdin closed, or not pollable (a regular file works with plain reads)
            self._read_stdin_blocking()
        if self.tty >= 0:
            self._winsize()

    def _read_stdin_blocking(self) -> None:
        try:
            while True:
                data = os.read(self.in_fd, P.CHUNK)
                if not data:
                    break
                self._send_data(data)
        except OSError:
            pass
        self._send_data(b"")
        self.stdin_open = False

    def _send_msg(self, msg: dict) -> None:
        msg.setdefault("id", self.next_id)
        self.next_id += 1
        self.out += P.encode_msg(msg)

    def _send_data(self, data: bytes) -> None:
        for frame in P.encode_data(P.stream_id(self.proc, P.STDIN), data):
            self.out += frame

    def _on_signal(self, signum: int, frame: object) -> None:
        self._send_msg({"op": P.OP_SIGNAL, "proc": self.proc, "signal": signum})

    def _winsize(self) -> None:
        import fcntl
        import struct
        import termios

        if self.tty < 0:
            return
        raw = fcntl.ioctl(self.tty, termios.TIOCGWINSZ, b"\0" * 8)
        rows, cols, _, _ = struct.unpack("HHHH", raw)
        if rows and cols:
            self._send_msg({"op": P.OP_WINSIZE, "proc": self.proc, "rows": rows, "cols": cols})

    def run(self) -> int:
        while self.status is None or any(self.pending.values()):
            self._flush_sock()
            # Behind on our own output: stop reading the monitor, which then asks the agent
            # to hold the process's output (its flow control), so nothing grows here.
            behind = sum(len(b) for b in self.pending.values()) > PENDING_HIGH
            mask = (0 if behind else selectors.EVENT_READ) | (
                selectors.EVENT_WRITE if self.out else 0
            )
            registered = self.sock in self.sel.get_map()
            if mask and registered:
                self.sel.modify(self.sock, mask, "sock")
            elif mask:
                self.sel.register(self.sock, mask, "sock")
            elif registered:
                self.sel.unregister(self.sock)
            for fd in {self.in_fd, *self.pending}:
                self._set_interest(fd)
            try:
                events = self.sel.select(timeout=5.0)
            except InterruptedError:
                continue
            for key, ev in events:
                if key.data == "sock":
                    if ev & selectors.EVENT_READ and not self._read_sock():
                        if self.status is None:
                            log.error("proxy %s: the monitor went away", self.proc)
                            self.status = VM_GONE_STATUS
                        self.pending = {k: bytearray() for k in self.pending}
                else:
                    if ev & selectors.EVENT_READ and key.fd == self.in_fd:
                        self._read_stdin()
                    if ev & selectors.EVENT_WRITE:
                        self._write_out(key.fd)
        return self.status

    def _set_interest(self, fd: int) -> None:
        """Register ``fd`` for what it needs now: stdin reads, and writes of pending output."""
        mask = selectors.EVENT_WRITE if self.pending.get(fd) else 0
        if fd == self.in_fd and self.stdin_open and len(self.out) < PENDING_HIGH:
            mask |= selectors.EVENT_READ  # not while the monitor is behind: it holds no more
        registered = fd in self.sel.get_map()
        if mask and registered:
            self.sel.modify(fd, mask, "fd")
        elif mask:
            try:
                os.set_blocking(fd, False)
                self.sel.register(fd, mask, "fd")
            except (OSError, ValueError):
                self.pending[fd] = bytearray()  # not pollable: nothing can be written
        elif registered:
            self.sel.unregister(fd)

    def _flush_sock(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                return
            except OSError:
                self.out.clear()
                return
            del self.out[:n]

    def _read_sock(self) -> bool:
        try:
            data = self.sock.recv(256 * 1024)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        for item in self.decoder.feed(data):
            if isinstance(item, P.BadFrame):
                log.warning("proxy: bad frame from monitor: %s", item.reason)
            elif item.kind == P.DATA:
                _, fd = P.split_stream(item.stream)
                out_fd = self.outs.get(fd)
                if out_fd is not None and item.payload:
                    self.pending[out_fd] += item.payload
                    self._write_out(out_fd)
            else:
                msg = item.message()
                if msg.get("event") == P.EV_EXIT:
                    self.status = int(msg.get("status", VM_GONE_STATUS))
                    self.oom = msg.get("oom") is True
                    if msg.get("reason"):
                        log.error("container process %s: %s", self.proc, msg["reason"])
                elif msg.get("ok") is False:
                    log.warning("proxy: monitor refused a request: %s", msg.get("error"))
        return True

    def _write_out(self, fd: int) -> None:
        buf = self.pending[fd]
        while buf:
            try:
                n = os.write(fd, buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                buf.clear()  # EPIPE: nobody reads; drop, as a closed pipe would
                return
            del buf[:n]

    def _read_stdin(self) -> None:
        try:
            data = os.read(self.in_fd, P.CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._send_data(data)
            return
        if self.tty >= 0:
            return  # no EOF from a terminal's hangup: the console's owner decides
        self._send_data(b"")
        self.stdin_open = False


def main() -> None:
    args = sys.argv[1:]
    console = None
    if "--console-socket" in args:
        i = args.index("--console-socket")
        console = args[i + 1]
        del args[i : i + 2]
    netns = ""
    if "--netns" in args:  # the pod's network namespace: where docker's hook looks for it
        i = args.index("--netns")
        netns = args[i + 1]
        del args[i : i + 2]
    state_dir, proc, ready_fd = args[0], int(args[1]), int(args[2])
    to_file(os.path.join(state_dir, "proxy.log"),
            "%(asctime)s %(levelname)s proxy[%(process)d]: %(message)s")  # fmt: skip
    try:
        if netns:
            from hyperpy.network import enter

            enter(netns)
        proxy = Proxy(state_dir, proc, console)
        proxy.setup()
    except Exception as exc:  # noqa: BLE001 - reported to the caller through READY_FD
        os.write(ready_fd, f"error: {exc}\n".encode())
        os._exit(VM_GONE_STATUS)
    os.write(ready_fd, b"ok\n")
    os.close(ready_fd)
    try:
        status = proxy.run()
        if proxy.oom:  # before the exit, so the shim has the OOM event first (docker needs it)
            from hyperpy import hostoom

            log.info("container process %s: OOM-killed in the guest; reported: %s",
                     proc, hostoom.report())  # fmt: skip
            time.sleep(OOM_GRACE)
    except Exception:  # noqa: BLE001
        log.exception("proxy failed")
        status = VM_GONE_STATUS
    os._exit(status & 0xFF)


if __name__ == "__main__":
    main()
