"""One QEMU guest: launch it, and stop it in stages (its device plan is
:mod:`hyperpy.vm.plan`'s, the host's probes :mod:`hyperpy.vm.probes`', boot watching
:mod:`hyperpy.vm.boot`'s).

Owns the QEMU process, its QMP connection (qemu.qmp), and its channels (:class:`Channels`):
the socketpairs of QMP and the agent channel, and the pipes of the console and of QEMU's
own stdout and stderr, each read into a bounded log of :mod:`hyperpy.vm.console`
(``console.log``, ``qemu.log``; QEMU inherits one end of each, so it never makes a socket
or file the host later opens by path). Used by the sandbox monitor inside
its asyncio loop. :class:`QemuVM` is an async context manager whose cleanup always runs:
QMP ``quit``, then SIGTERM, then SIGKILL (after QEMU's QEMUMachine). With a
:class:`~hyperpy.vm.jail.Jail`, QEMU starts through the jail wrapper, confined. It offers
the template snapshot step its narrow interface (``snapshot.Snapshottable``: ``command``,
``send_fd``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from typing import TYPE_CHECKING

from hyperpy.errors import VMError
from hyperpy.vm import balloon, console
from hyperpy.vm.boot import watch_boot
from hyperpy.vm.console import DEFAULT_MAX_BYTES, QEMU_LOG_MAX, ConsolePipe
from hyperpy.vm.devices import VMSpec, VsockChannel
from hyperpy.vm.share_local import LocalShare

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

    from hyperpy.vm.jail import Jail

log = logging.getLogger(__name__)


class Channels:
    """The monitor's ends of QMP and the agent channel (socketpairs), the console log and
    QEMU's stdout and stderr (``qemu.log``, a ring too: the guest can make QEMU print);
    QEMU inherits the other ends, which :meth:`close_vm_ends` closes here once it runs."""

    def __init__(
        self, workdir: str, serial: bool = True, console_max: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.console_path = os.path.join(workdir, "console.log")
        self.qmp, self._qmp_vm = socket.socketpair()
        self.agent: socket.socket | None = None
        self._agent_vm: socket.socket | None = None
        if serial:
            self.agent, self._agent_vm = socket.socketpair()
        self.console = ConsolePipe(self.console_path, console_max)
        self.stderr_path = os.path.join(workdir, "qemu.log")
        self.stderr = ConsolePipe(self.stderr_path, QEMU_LOG_MAX)

    @property
    def console_fd(self) -> int:
        return self.console.fd

    @property
    def qmp_fd(self) -> int:
        return self._qmp_vm.fileno()

    @property
    def agent_fd(self) -> int:
        return self._agent_vm.fileno() if self._agent_vm is not None else -1

    def close_vm_ends(self) -> None:
        for sock in (self._qmp_vm, self._agent_vm):
            if sock is not None:
                sock.close()
        self.console.close_vm_end()
        self.stderr.close_vm_end()

    def start(self) -> None:
        """Read the console and QEMU's output from now on (once QEMU has its ends)."""
        self.console.start()
        self.stderr.start()

    def drain(self) -> None:
        """Move what QEMU wrote to the logs now: its last lines, before they are read."""
        self.console.drain()
        self.stderr.drain()

    def close(self) -> None:
        self.close_vm_ends()
        for sock in (self.qmp, self.agent):
            if sock is not None:
                sock.close()
        self.console.close()
        self.stderr.close()


class QemuVM(LocalShare):
    """A running guest. ``async with QemuVM(spec, workdir, chans) as vm:`` launches QEMU."""

    def __init__(
        self, spec: VMSpec, workdir: str, chans: Channels, jail: Jail | None = None
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.chans = chans
        self.jail = jail
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None
        self.stderr_path = chans.stderr_path

    async def __aenter__(self) -> QemuVM:
        await self.launch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def launch(self) -> None:
        argv = self.spec.argv()
        if self.jail is not None:
            argv = self.jail.wrap(argv)
        log.info("launching QEMU: %s", " ".join(argv))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=self.chans.stderr.fd,
                stderr=self.chans.stderr.fd,
                close_fds=True,
                pass_fds=self.spec.pass_fds(),
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise VMError(f"cannot run {argv[0]}: {exc}; install qemu-system-x86") from exc
        finally:
            self.chans.close_vm_ends()
        self.chans.start()
        try:
            await self._connect_qmp()
        except VMError:
            await self.shutdown()
            raise

    async def _connect_qmp(self, timeout: float = 10.0) -> None:
        from qemu.qmp import QMPClient

        client = QMPClient("hyperpy")
        try:
            await asyncio.wait_for(client.connect(self.chans.qmp), timeout)
        except Exception as exc:  # noqa: BLE001 - QEMU's stderr says why
            with contextlib.suppress(Exception):
                await client.disconnect()
            if self.proc is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 1.0)
            if self.proc is not None and self.proc.returncode is not None:
                raise self.failure(
                    f"QEMU exited during start-up (status {self.proc.returncode})"
                ) from None
            raise self.failure(f"QMP did not answer within {timeout}s ({exc!r})") from None
        self.qmp = client

    async def command(self, cmd: str, args: dict | None = None) -> object:
        """One QMP command (the template snapshot step's)."""
        assert self.qmp is not None
        return await self.qmp.execute(cmd, args)

    async def set_memory(self, memory_mb: int) -> None:
        """The balloon's target: the guest's memory outside it (``vm/sizing.py``)."""
        await balloon.set_target(self.command, memory_mb)

    async def memory_mb(self) -> int:
        return await balloon.actual(self.command)

    def send_fd(self, fd: int) -> None:
        """Hand QEMU ``fd`` with the next QMP command (``getfd`` names it)."""
        assert self.qmp is not None
        self.qmp.send_fd_scm(fd)

    def failure(self, what: str, cls: type[VMError] = VMError) -> VMError:
        self.chans.drain()  # its last lines, before they are quoted
        stderr = console.read_end(self.stderr_path, 2000).decode(errors="replace").strip()
        return cls(
            f"{what}.\nQEMU command: {' '.join(self.spec.argv())}\n"
            f"QEMU stderr: {stderr or '(empty)'}\n"
            f"console log ({self.spec.console.log_path}), last lines:\n"
            f"{console.tail(self.spec.console.log_path)}"
        )

    async def watch_boot(self, ready: asyncio.Future, timeout: float) -> None:
        await watch_boot(self, ready, timeout)

    @property
    def console_path(self) -> str:
        return self.spec.console.log_path

    def exited(self) -> str | None:
        """Why QEMU is gone, or None while it runs."""
        if self.proc is None or self.proc.returncode is None:
            return None
        self.chans.drain()  # what it wrote last is in the logs before anyone reads them
        rc = self.proc.returncode
        return f"QEMU killed by signal {-rc}" if rc < 0 else f"QEMU exit status {rc}"

    async def wait_exit(self, timeout: float) -> None:
        if self.proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def ended(self) -> str:
        """Why the VM ended, once it has."""
        await self.wait()
        return self.exited() or "QEMU exited"

    async def open_agent(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the agent channel (OSError while vsock does not answer yet)."""
        channel = self.spec.channel
        if isinstance(channel, VsockChannel):
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(
                    sock, (channel.guest_cid, channel.port)
                )
            except OSError:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock)
        assert self.chans.agent is not None
        return await asyncio.open_connection(sock=self.chans.agent)

    def close(self) -> None:
        """Close the monitor's ends of the channels (after :meth:`shutdown`)."""
        self.chans.close()

    def check_binds(self, binds: list) -> list:
        """All of them: the jailed QEMU reads and writes with CAP_DAC_OVERRIDE."""
        return binds

    async def shutdown(self, grace: float = 3.0) -> None:
        """QMP quit, then SIGTERM, then SIGKILL; always disconnects QMP."""
        proc = self.proc
        if self.qmp is not None:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.qmp.execute("quit"), grace)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.qmp.disconnect(), grace)
            self.qmp = None
        if proc is None:
            return
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if proc.returncode is not None:
                break
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)


def _die_with_parent() -> None:
    """In QEMU's child before exec: SIGKILL it if the monitor dies, so no VM outlives it."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
