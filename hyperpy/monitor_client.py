"""The CLI's side of a sandbox monitor's socket: one request, its reply, errors re-raised.

A monitor or QEMU stopped by a signal would never answer: a request says so at once instead
of waiting for its timeout (:func:`stopped_processes`, of the pids in the caller's record).

A monitor reports a failure as ``{"ok": false, "kind": ..., "error": ...}``; the kind maps
back onto hyperpy's exception tree (:mod:`hyperpy.errors`), so the CLI's exit code is the
same whether a check failed here or in the monitor.
"""

from __future__ import annotations

import os
import socket

from agent import protocol as P
from hyperpy.errors import (
    AgentError,
    HyperpyError,
    InvalidState,
    SpecError,
    UsageError,
    VMError,
)
from hyperpy.sandbox.record import MONITOR_SOCK, proc_state

TYPE_CHECKING = False  # typing's import costs the hot verbs
if TYPE_CHECKING:
    from hyperpy.sandbox.record import State

ERRORS = {
    cls.__name__: cls
    for cls in (HyperpyError, SpecError, AgentError, VMError, InvalidState, UsageError)
}
ERRORS.update({"BootTimeout": VMError, "KernelPanic": VMError, "ArtifactMissing": VMError})


def raise_remote(reply: dict) -> None:
    kind = reply.get("kind", "HyperpyError")
    cls = ERRORS.get(kind, HyperpyError)
    if cls is SpecError:
        raise SpecError(reply.get("error", ""), pointer=reply.get("pointer", ""))
    if kind == "ArtifactMissing":
        from hyperpy.errors import ArtifactMissing

        raise ArtifactMissing(reply.get("error", ""))
    raise cls(reply.get("error", "unknown error"))


def connect_unix(path: str) -> socket.socket:
    """Connect to a unix socket; a path longer than sun_path goes through its directory."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    if len(path.encode()) >= 100:
        fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sock.connect(f"/proc/self/fd/{fd}/{os.path.basename(path)}")
        finally:
            os.close(fd)
    else:
        sock.connect(path)
    return sock


class MonitorClient:
    """Synchronous requests to the sandbox monitor of the container ``st`` (its record, as
    the caller read it) in ``state_dir``, over the monitor's unix socket."""

    def __init__(self, state_dir: str, st: State, timeout: float = 60.0) -> None:
        self.path = os.path.join(state_dir, MONITOR_SOCK)
        self.st = st
        self.timeout = timeout

    def request(self, op: str, timeout: float | None = None, **fields: object) -> dict:
        if stopped := stopped_processes(self.st):
            raise VMError(
                f"the sandbox cannot answer: {stopped} is stopped (SIGSTOP?); resume it with "
                "kill -CONT, or end the sandbox with delete --force"
            )
        try:
            sock = connect_unix(self.path)
        except OSError as exc:
            raise VMError(f"the sandbox monitor is not reachable at {self.path}: {exc}") from exc
        with sock:
            sock.settimeout(timeout or self.timeout)
            try:
                sock.sendall(P.encode_msg({"id": 1, "op": op, **fields}))
                return self._reply(sock, op)
            except TimeoutError:
                raise VMError(f"the sandbox monitor did not answer {op!r} in time") from None
            except OSError as exc:  # it went away mid-request (a VM that stops)
                raise VMError(f"the sandbox monitor closed the connection during {op!r}: "
                              f"{exc.strerror}") from None  # fmt: skip

    @staticmethod
    def _reply(sock: socket.socket, op: str) -> dict:
        decoder = P.Decoder()
        while True:
            data = sock.recv(65536)
            if not data:
                raise VMError(f"the sandbox monitor closed the connection during {op!r}")
            for item in decoder.feed(data):
                if isinstance(item, P.Frame) and item.kind == P.MSG:
                    reply = item.message()
                    if reply.get("id") == 1:
                        if not reply.get("ok"):
                            raise_remote(reply)
                        return reply


def stopped_processes(st: State) -> str:
    """The sandbox's monitor or QEMU (the pids in ``st``) if stopped by a signal (they would
    never answer), as "the sandbox monitor (pid N)"; empty when neither is."""
    for what, pid in (("the sandbox monitor", st.monitor_pid), ("its QEMU", st.qemu_pid)):
        if isinstance(pid, int) and pid > 0 and proc_state(pid) in ("T", "t"):
            return f"{what} (pid {pid})"
    return ""
