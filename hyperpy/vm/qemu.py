"""One QEMU guest: build its spec, launch it, and stop it in stages (boot watching is
:mod:`hyperpy.vm.boot`'s).

Owns the QEMU process, its QMP connection (qemu.qmp), and its channels (:class:`Channels`):
the socketpairs of QMP and the agent channel and the console's pipe, read into the bounded
log of :mod:`hyperpy.vm.console` (QEMU inherits one end of each, so it never makes a socket
or file the host later opens by path). Used by the sandbox monitor inside
its asyncio loop. :class:`QemuVM` is an async context manager whose cleanup always runs:
QMP ``quit``, then SIGTERM, then SIGKILL (after QEMU's QEMUMachine). With a
:class:`~hyperpy.vm.jail.Jail`, QEMU starts through the jail wrapper, confined.

Also owns choosing the accelerator: KVM is used only when a probe guest really ran on it
(a device node is not enough: nested PVM hosts have /dev/kvm that cannot run guests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from agent.protocol import IMAGE_TAG
from hyperpy.config import VMConfig
from hyperpy.errors import ArtifactMissing, VMError
from hyperpy.vm import console
from hyperpy.vm import jail as J
from hyperpy.vm.boot import watch_boot
from hyperpy.vm.console import DEFAULT_MAX_BYTES, ConsolePipe
from hyperpy.vm.devices import (
    Console,
    Kernel,
    Machine,
    Nic,
    Qmp,
    Resources,
    Rng,
    SerialChannel,
    Share9p,
    VMSpec,
    VsockChannel,
)
from hyperpy.vm.share_local import LocalShare

if TYPE_CHECKING:
    from qemu.qmp import QMPClient

    from hyperpy.vm.jail import Jail

log = logging.getLogger(__name__)

# Fixed guest timing under TCG: a pinned TSC and no timer check avoid the calibration
# hangs seen on microvm; nokaslr keeps guest time deterministic under -icount.
BASE_CMDLINE = (
    "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 no_timer_check nokaslr "
    "i8042.noaux i8042.nokbd rdinit=/init"
)
KVM_PROBE_CACHE = "/run/hyperpy/kvm-probe.json"


class Channels:
    """The monitor's ends of QMP and the agent channel (socketpairs) and the console log;
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

    def close(self) -> None:
        self.close_vm_ends()
        for sock in (self.qmp, self.agent):
            if sock is not None:
                sock.close()
        self.console.close()


class Placeholder:
    """Stands for :class:`Channels` where only a VM's shape matters (a template's key)."""

    console_path = ""
    console_fd = qmp_fd = agent_fd = 0


def build_spec(
    cfg: VMConfig,
    accel: str,
    chans: Channels | Placeholder,
    *,
    share: str | None = None,
    image: str | None = None,
    vsock_cid: int | None = None,
    memory_mb: int | None = None,
    vcpus: int | None = None,
    initrd: str | None = None,
    jailed: bool = False,
    name: str = "",
    nics: tuple[tuple[int, str], ...] = (),
    faithful: bool = False,
) -> VMSpec:
    """The VMSpec of a sandbox; with ``jailed``, paths are those inside QEMU's jail. With
    ``faithful`` the image export is read-write ``passthrough`` (``[vm] files``)."""
    machine = Machine(cfg.machine, accel, cfg.icount, cfg.tcg_tb_size_mb)
    bus = machine.bus
    channel: SerialChannel | VsockChannel
    if vsock_cid is not None:
        channel = VsockChannel(vsock_cid, bus=bus)
    else:
        channel = SerialChannel(chans.agent_fd, bus=bus)
    params = [BASE_CMDLINE, channel.kernel_param()]
    params.append("hyperpy.debug=1" if cfg.verbose_console else "quiet")
    if cfg.kernel_params:
        params.append(cfg.kernel_params)
    devices: list[Rng | Share9p | Nic] = [Rng(bus)]
    if share:
        devices.append(Share9p(J.SHARE if jailed else share, bus=bus))
    if image:
        model, readonly = ("passthrough", False) if faithful else ("none", True)
        devices.append(Share9p(J.IMAGE if jailed else image, IMAGE_TAG, "share1", bus, model,
                               readonly=readonly))  # fmt: skip
    devices += [Nic(fd, mac, f"net{i}", bus) for i, (fd, mac) in enumerate(nics)]
    kernel = (J.KERNEL, J.INITRD) if jailed else (cfg.kernel, initrd or cfg.initrd)
    return VMSpec(
        binary=cfg.qemu,
        machine=machine,
        resources=Resources(vcpus or cfg.vcpus, memory_mb or cfg.memory_mb),
        kernel=Kernel(*kernel, " ".join(params)),
        console=Console(chans.console_path, chans.console_fd),
        qmp=Qmp(chans.qmp_fd),
        channel=channel,
        devices=tuple(devices),
        name=name,
    )


def check_artifacts(cfg: VMConfig) -> None:
    for what, path in (("kernel", cfg.kernel), ("initrd", cfg.initrd)):
        if not os.path.exists(path):
            raise ArtifactMissing(
                f"the guest {what} {path} does not exist: run `make kernel initrd` "
                f"(or set [vm] {what} in the hyperpy config)"
            )


def choose_accel(cfg: VMConfig, bare_initrd: str | None = None) -> str:
    if cfg.accel != "auto":
        return cfg.accel
    return "kvm" if kvm_usable(cfg, bare_initrd) else "tcg"


def kvm_usable(cfg: VMConfig, bare_initrd: str | None = None, timeout: float = 10.0) -> bool:
    """Boot the bare initrd under KVM once per host boot; cache the answer in /run."""
    if not os.path.exists("/dev/kvm"):
        return False
    mtime = os.path.getmtime(cfg.kernel) if os.path.exists(cfg.kernel) else 0
    key = f"{cfg.qemu}|{cfg.kernel}|{mtime}"
    try:
        with open(KVM_PROBE_CACHE) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return bool(cached["usable"])
    except (OSError, ValueError, KeyError):
        pass
    initrd = bare_initrd or os.path.join(os.path.dirname(cfg.initrd), "initrd-bare.img")
    usable = False
    detail = ""
    if os.path.exists(initrd) and os.path.exists(cfg.kernel):
        argv = [
            cfg.qemu,
            *"-nodefaults -no-user-config -display none -no-reboot".split(),
            *Machine(cfg.machine, "kvm").args(),
            "-m",
            "128M",
            "-kernel",
            cfg.kernel,
            "-initrd",
            initrd,
            "-append",
            BASE_CMDLINE + " quiet",
            "-serial",
            "none",
        ]
        start = time.monotonic()
        try:
            res = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
            usable = res.returncode == 0
            detail = res.stderr.decode(errors="replace")[-300:]
        except subprocess.TimeoutExpired:
            detail = f"the probe guest did not finish within {timeout}s"
        except OSError as exc:
            detail = str(exc)
        log.debug("KVM probe: usable=%s in %.2fs %s", usable, time.monotonic() - start, detail)
    else:
        detail = "no bare initrd to probe with"
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(KVM_PROBE_CACHE), exist_ok=True)
        tmp = f"{KVM_PROBE_CACHE}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"key": key, "usable": usable, "detail": detail}, f)
        os.rename(tmp, KVM_PROBE_CACHE)
    return usable


def vsock_usable() -> bool:
    try:
        fd = os.open("/dev/vhost-vsock", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


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
        self.stderr_path = os.path.join(workdir, "qemu.log")

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
        with open(self.stderr_path, "wb") as err:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    close_fds=True,
                    pass_fds=self.spec.pass_fds(),
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise VMError(f"cannot run {argv[0]}: {exc}; install qemu-system-x86") from exc
            finally:
                self.chans.close_vm_ends()
        self.chans.console.start()
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

    def failure(self, what: str, cls: type[VMError] = VMError) -> VMError:
        self.chans.console.drain()  # its last lines, before they are quoted
        stderr = ""
        with contextlib.suppress(OSError), open(self.stderr_path, "rb") as f:
            stderr = f.read()[-2000:].decode(errors="replace").strip()
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
        self.chans.console.drain()  # what it wrote last is in the log before anyone reads it
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
