"""The remote driver: a pod's VM runs on another host, reached over SSH (``[vm] driver =
"remote"``, ``[remote]``), as Kata's peer pods do for nodes without usable KVM.

The node keeps the OCI CLI, the monitor and the proxies; the remote host needs only sshd,
``python3`` and QEMU. Owns, per pod:

- the SSH connection (``vm/ssh.py``), whose TCP socket the monitor opens before it enters
  the pod's network namespace;
- the artifacts in the remote cache, and hyperpy's remote side (``vm/remote_side.py``);
- ``WORKDIR/pods/<name>/`` there: ``image/`` (containers' rootfs and read-only mounts,
  copied as tar streams when each container is created) and ``shared/`` (empty: a
  read-write bind mount cannot be kept in step with the node, and is refused);
- exec channels: *control* runs ``remote_side.py run`` (QEMU's console comes back on
  its stdout into the local console.log, QEMU's stderr into qemu.log, each a bounded
  ring (``vm/console.py``; SSH's channel windows bound what waits on the way); the node writes
  ``ping`` every ``PING_EVERY`` seconds and ``stop`` to end it; the remote side stops QEMU
  when the pings stop for ``[remote] watchdog_s`` and removes the pod's directory);
  *agent* and, to stop the VM, *qmp* run ``remote_side.py relay`` to QEMU's unix sockets,
  bridged here to socketpairs, so the monitor talks to the agent and to QMP exactly as
  it does locally.

The VM has no NIC: the pod's network is on the node. A connection that drops ends the pod
as a dead VM does (status 255).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING, Any

from hyperpy.errors import SpecError, VMError
from hyperpy.vm import balloon, ssh
from hyperpy.vm.boot import watch_boot
from hyperpy.vm.console import QEMU_LOG_MAX, ConsoleLog
from hyperpy.vm.console import tail as console_tail
from hyperpy.vm.devices import (
    BASE_ARGS,
    SANDBOX,
    Balloon,
    Machine,
    Rng,
    SerialChannel,
    Share9p,
)
from hyperpy.vm.ending import Ending
from hyperpy.vm.plan import BASE_CMDLINE
from hyperpy.vm.view import view_name

if TYPE_CHECKING:
    from hyperpy import share
    from hyperpy.config import RemoteConfig, VMConfig
    from hyperpy.vm.devices import VMSpec

log = logging.getLogger(__name__)

PING_EVERY = 2.0
# connecting, a first copy of kernel and initrd (34 MiB), a first KVM probe there (30 s)
LAUNCH_TIMEOUT = 180.0
# the read-write files docker binds into every container: copied (the container writes
# its copy; the node's file does not change)
RUNTIME_FILES = ("resolv.conf", "hosts", "hostname")
SIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote_side.py")


def remote_argv(spec: VMSpec, poddir: str, kernel: str, initrd: str) -> list[str]:
    """QEMU's argv on the remote host: the device plan with remote paths, the console on
    stdout (relayed to the node), the agent channel and QMP on unix sockets in the pod's
    directory (each tunnelled over SSH when used), and no NIC."""
    out = [spec.binary, *BASE_ARGS, *SANDBOX]
    out += spec.machine.args() + spec.resources.args()
    out += ["-kernel", kernel, "-initrd", initrd, "-append", spec.kernel.cmdline]
    out += ["-serial", "stdio"]
    for dev in spec.devices:
        if isinstance(dev, Share9p):
            sub = "shared" if dev.tag == "hyperpy" else "image"
            out += dataclasses.replace(dev, path=f"{poddir}/{sub}").args()
        elif isinstance(dev, Rng | Balloon):
            out += dev.args()
    assert isinstance(spec.channel, SerialChannel)
    out += dataclasses.replace(spec.channel, path=f"{poddir}/agent.sock").args()
    out += ["-chardev", f"socket,id=qmp,path={poddir}/qmp.sock,server=on,wait=off",
            "-mon", "chardev=qmp,mode=control"]  # fmt: skip
    return out


def _relay(recv: Any, path: str, max_bytes: int) -> None:
    """What ``recv`` gives, into a ring of ``max_bytes`` at ``path``, until the channel ends."""
    ring = ConsoleLog(path, max_bytes)
    try:
        while data := recv(65536):
            ring.write(data)
    finally:
        ring.close()


def remote_accel(client: Any, workdir: str, vcfg: VMConfig, kernel: str) -> str:
    """The accelerator the remote host would use: ``[vm] accel``, or with ``auto`` KVM only
    if a probe guest (the bare initrd) boots on it there, asked once per kernel and the
    answer kept in the remote work directory."""
    if vcfg.accel != "auto":
        return vcfg.accel
    answer = f"/run/hyperpy-remote-kvm-{os.path.basename(kernel)}"  # once per boot there
    try:
        return ssh.run(client, ["cat", answer]).decode().strip() or "tcg"
    except ssh.RemoteError:
        pass
    bare = os.path.join(os.path.dirname(vcfg.initrd), "initrd-bare.img")
    accel = "tcg"
    if os.path.exists(bare):
        initrd = ssh.cached(client, workdir, bare)
        probe = [vcfg.qemu, *BASE_ARGS, *Machine(vcfg.machine, "kvm").args(), "-m", "128M",
                 "-kernel", kernel, "-initrd", initrd, "-append", BASE_CMDLINE + " quiet",
                 "-serial", "none"]  # fmt: skip
        script = f"test -w /dev/kvm && timeout 10 {ssh.shlex.join(probe)}"
        try:
            ssh.run(client, ["sh", "-c", script], timeout=30)
            accel = "kvm"
        except ssh.RemoteError:
            pass
    ssh.run(client, ["sh", "-c", f"echo {accel} > {ssh.shlex.quote(answer)}"])
    return accel


class RemoteVM(Ending):
    """A pod VM on the remote host; the same surface as ``qemu.QemuVM``."""

    def __init__(self, spec: VMSpec, workdir: str, cfg: RemoteConfig, vcfg: VMConfig,
                 sock: socket.socket | None) -> None:  # fmt: skip
        self.spec = spec
        self.workdir = workdir
        self.cfg = cfg
        self.vcfg = vcfg
        self.kernel, self.initrd = vcfg.kernel, vcfg.initrd
        self.sock = sock
        # short (QEMU's agent socket path must fit sun_path: ids are up to 64 characters)
        # and new each launch (a directory a killed run left is swept, never reused)
        self.poddir = f"{cfg.workdir}/pods/{view_name(workdir)}-{secrets.token_hex(3)}"
        self.client: Any = None
        self._side = ""  # the remote side's path in the remote cache
        self.control: Any = None
        self.agent_ends: tuple[socket.socket, socket.socket] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.console_path = os.path.join(workdir, "console.log")
        self.stderr_path = os.path.join(workdir, "qemu.log")
        self.pid = 0  # QEMU is not on this host

    # --- start ----------------------------------------------------------------------
    async def launch(self) -> None:
        self.loop = self._begin()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._start), LAUNCH_TIMEOUT)
        except TimeoutError:
            await self.shutdown()
            raise self.failure(f"starting the VM on {ssh.where(self.cfg)} took too long") from None
        except VMError as exc:
            await self.shutdown()
            raise self.failure(str(exc)) from None

    def _start(self) -> None:
        try:
            self._start_there()
        except ssh.SSH_ERRORS as exc:
            raise ssh.RemoteError(f"starting the VM on {ssh.where(self.cfg)}: {exc!r}") from None

    def _start_there(self) -> None:
        self.client = ssh.connect(self.cfg, self.sock)
        self.sock = None  # paramiko's now
        kernel = ssh.cached(self.client, self.cfg.workdir, self.kernel)
        initrd = ssh.cached(self.client, self.cfg.workdir, self.initrd)
        side = ssh.cached(self.client, self.cfg.workdir, SIDE, ".py")
        self._side = side
        accel = remote_accel(self.client, self.cfg.workdir, self.vcfg, kernel)
        self.spec = dataclasses.replace(
            self.spec, machine=dataclasses.replace(self.spec.machine, accel=accel)
        )
        argv = remote_argv(self.spec, self.poddir, kernel, initrd)
        log.info("starting QEMU on %s: %s", ssh.where(self.cfg), " ".join(argv))
        chan = self.client.get_transport().open_session(timeout=self.cfg.connect_timeout)
        watchdog = str(self.cfg.watchdog_s)
        chan.exec_command(ssh.shlex.join(["python3", side, "run", self.poddir, watchdog, "--",
                                          *argv]))  # fmt: skip
        self.control = chan
        self.relays = [threading.Thread(target=t, name=t.__name__, daemon=True)
                       for t in (self._console, self._stderr)]  # fmt: skip
        for t in self.relays:
            t.start()
        for target in (self._wait, self._ping):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()

    def _console(self) -> None:
        _relay(self.control.recv, self.console_path, self.vcfg.console_log_max_mb << 20)

    def _stderr(self) -> None:
        _relay(self.control.recv_stderr, self.stderr_path, QEMU_LOG_MAX)  # QEMU's warnings

    def _wait(self) -> None:
        rc = self.control.recv_exit_status()  # -1: no status (the connection went away)
        for t in self.relays:  # the console's last lines first: a panic is told as one
            t.join(2.0)
        transport = self.client.get_transport() if self.client is not None else None
        if rc == -1 and (transport is None or not transport.is_active()):
            why = f"the SSH connection to {ssh.where(self.cfg)} dropped"
        elif rc == -1:
            why = f"the remote side on {self.cfg.host} was killed"
        else:
            why = f"QEMU on {self.cfg.host} exited with status {rc}"
        log.info("%s", why)
        self._gone(why)

    def _ping(self) -> None:
        while self.stopped is not None and not self.stopped.done():
            client = self.client
            try:
                self.control.sendall(b"ping\n")
            except (OSError, EOFError):
                self._gone(f"the SSH connection to {ssh.where(self.cfg)} dropped")
                return
            transport = client.get_transport() if client is not None else None
            if transport is None or not transport.is_active():
                self._gone(f"the SSH connection to {ssh.where(self.cfg)} dropped")
                return
            threading.Event().wait(PING_EVERY)

    def _gone(self, why: str) -> None:
        if self.loop is not None and self.stopped is not None:
            self.loop.call_soon_threadsafe(self._set_stopped, why)

    # --- the surface the monitor uses -------------------------------------------------
    async def open_agent(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.agent_ends is None:
            self.agent_ends = await asyncio.to_thread(self._tunnel, "agent.sock")
        return await asyncio.open_connection(sock=self.agent_ends[0])

    def _tunnel(self, name: str) -> tuple[socket.socket, socket.socket]:
        """A socketpair whose first end reaches QEMU's unix socket ``name`` in the pod's
        directory there, through an exec channel running the remote side's relay."""
        try:
            chan = self.client.get_transport().open_session(timeout=self.cfg.connect_timeout)
            chan.exec_command(ssh.shlex.join(["python3", self._side, "relay",
                                              f"{self.poddir}/{name}"]))  # fmt: skip
        except ssh.SSH_ERRORS as exc:
            raise ssh.RemoteError(f"tunnelling {name} over SSH: {exc!r}") from None
        mine, theirs = socket.socketpair()

        def up() -> None:  # monitor -> QEMU
            with contextlib.suppress(OSError, EOFError):
                while data := theirs.recv(65536):
                    chan.sendall(data)
            with contextlib.suppress(OSError, EOFError):
                chan.shutdown_write()

        def down() -> None:  # QEMU -> monitor
            with contextlib.suppress(OSError, EOFError):
                while data := chan.recv(65536):
                    theirs.sendall(data)
            with contextlib.suppress(OSError):
                theirs.shutdown(socket.SHUT_WR)

        for target in (up, down):
            threading.Thread(target=target, name=f"{name}-{target.__name__}", daemon=True).start()
        return mine, theirs

    async def command(self, cmd: str, args: dict | None = None, timeout: float = 10.0) -> object:
        """One QMP command, tunnelled over SSH as the agent channel is."""
        from qemu.qmp import QMPClient

        ends = None
        client = QMPClient("hyperpy-remote")
        try:
            ends = await asyncio.wait_for(asyncio.to_thread(self._tunnel, "qmp.sock"), timeout)
            await asyncio.wait_for(client.connect(ends[0]), timeout)
            return await asyncio.wait_for(client.execute(cmd, args), timeout)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout)
            for end in ends or ():
                end.close()

    async def set_memory(self, memory_mb: int) -> None:
        await balloon.set_target(self.command, memory_mb)

    async def memory_mb(self) -> int:
        return await balloon.actual(self.command)

    async def _quit(self, timeout: float) -> bool:
        """QMP ``quit``: QEMU ends cleanly."""
        try:
            await self.command("quit", None, timeout)
            log.info("QMP quit sent to QEMU on %s", self.cfg.host)
            return True
        except Exception as exc:  # noqa: BLE001 - the remote side's stop is the fallback
            log.warning("QMP quit over SSH failed (%r): stopping through the remote side", exc)
            return False

    async def watch_boot(self, ready: asyncio.Future, timeout: float) -> None:
        await watch_boot(self, ready, timeout)

    @property
    def running(self) -> bool:
        return self.control is not None and self.exited() is None

    def failure(self, what: str, cls: type[VMError] = VMError) -> VMError:
        return cls(
            f"{what}.\nremote host {ssh.where(self.cfg)}, pod directory {self.poddir}\n"
            f"QEMU stderr ({self.stderr_path}): {console_tail(self.stderr_path, 10)}\n"
            f"console log ({self.console_path}), last lines:\n{console_tail(self.console_path)}"
        )

    async def shutdown(self, grace: float = 10.0) -> None:
        """In stages: QMP ``quit``; ``stop`` to the remote side (SIGTERM, then SIGKILL);
        then close the connection. The remote side removes the pod's directory once QEMU
        is gone. If the connection is gone, the remote watchdog does all of it."""
        if self.control is not None and self.exited() is None:
            if await self._quit(3.0):
                await self.wait_exit(3.0)
        if self.control is not None and self.exited() is None:
            with contextlib.suppress(OSError, EOFError, TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(self.control.sendall, b"stop\n"), grace)
            await self.wait_exit(grace)
        if self.client is not None:  # the remote side removes it; a killed one did not
            with contextlib.suppress(VMError, TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(
                    ssh.run, self.client, ["rm", "-rf", self.poddir], grace), grace)  # fmt: skip
        for end in self.agent_ends or ():
            end.close()
        self.agent_ends = None
        if self.client is not None:
            await asyncio.to_thread(self.client.close)
            self.client = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._set_stopped(f"the VM on {self.cfg.host} was stopped")

    def close(self) -> None:
        """Nothing more: :meth:`shutdown` closed the channels."""

    # --- files ------------------------------------------------------------------------
    def check_binds(self, binds: list[share.Bind]) -> list[share.Bind]:
        """Read-only binds are copied; so are docker's read-write resolv.conf, hosts and
        hostname (what the container writes to its copy stays there); any other
        read-write bind cannot be kept in step with the node and is refused."""
        out = []
        for b in binds:
            if b.readonly:
                out.append(b)
            elif not b.is_dir and os.path.basename(b.source) in RUNTIME_FILES:
                log.warning("%s: copied to the remote host; its changes stay there", b.source)
                out.append(dataclasses.replace(b, readonly=True))
            else:
                where = b.target.split("/")
                pointer = f"/mounts/{where[2]}/source" if where[1:2] == ["mounts"] else ""
                raise SpecError(
                    f'read-write bind mount of {b.source}: with [vm] driver = "remote" the '
                    "VM runs on another host, where changes could not come back to this one; "
                    "mount it read-only (it is copied), or use a memory volume (tmpfs)",
                    pointer=pointer,
                )
        return out

    async def share(self, plan: share.Plan, state_dir: str) -> None:
        """Copy the container's rootfs and read-only mounts into the pod's directory there."""
        for b in plan.binds:  # the exports' layout, as the guest's spec names it
            dest = f"{self.poddir}/{b.export}/{b.target}"
            await asyncio.to_thread(ssh.put_tree, self.client, b.source, dest)

    async def unshare(self, cid: str, state_dir: str) -> None:
        await asyncio.to_thread(ssh.run, self.client, ["rm", "-rf", f"{self.poddir}/image/{cid}",
                                                        f"{self.poddir}/shared/{cid}"])  # fmt: skip


def probe(vcfg: VMConfig, cfg: RemoteConfig) -> str:
    """``hyperpy check``'s line: the connection, the remote QEMU and python3, and the
    accelerator the remote host would use (RemoteError says what failed)."""
    client = ssh.connect(cfg)
    try:
        qemu_version = ssh.run(client, [vcfg.qemu, "--version"]).decode().splitlines()[0]
        python = ssh.run(client, ["python3", "--version"]).decode().strip()
        kernel = ssh.cached(client, cfg.workdir, vcfg.kernel)
        accel = remote_accel(client, cfg.workdir, vcfg, kernel)
    finally:
        client.close()
    return f"{ssh.where(cfg)}: {qemu_version}; {python}; accelerator there: {accel}"
