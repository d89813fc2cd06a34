"""The snapshot step of VM templates: save a booted template VM, restore a pod's VM from it.

Owns the QMP sequences and their timeouts: **save** (boot a VM whose RAM is a memfd QEMU maps
shared to the agent's ``ready`` event, ``stop`` it, save its device state with the
``x-ignore-shared`` capability, so RAM stays in the memfd, into a second memfd, quit it, seal
both) and **restore** (QEMU with the same devices, RAM mapped privately from the template's
memfd, ``-incoming defer`` and ``migrate-incoming`` from the state, then ``cont``). The
catalog of templates (keys, keepers, locks) is ``vm/template.py``'s.

It speaks to the VM only through :class:`Snapshottable`, which ``qemu.QemuVM`` implements.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from agent import protocol as P
from hyperpy.errors import VMError
from hyperpy.vm import balloon, keeper
from hyperpy.vm.devices import Incoming, Memory

log = logging.getLogger("hyperpy.vm.template")

MIGRATION_TIMEOUT = 30.0
QMP_TIMEOUT = 10.0
IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


class Snapshottable(Protocol):
    """What a VM offers the snapshot step: QMP commands, a descriptor handed to QEMU, the
    agent channel, the boot watch, and the staged stop."""

    @property
    def pid(self) -> int: ...
    @property
    def running(self) -> bool: ...

    async def command(self, cmd: str, args: dict | None = None) -> object: ...
    def send_fd(self, fd: int) -> None: ...
    async def open_agent(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...
    async def watch_boot(self, ready: asyncio.Future, timeout: float) -> None: ...
    def failure(self, what: str, cls: type[VMError] = VMError) -> VMError: ...
    async def shutdown(self) -> None: ...
    def close(self) -> None: ...


# Launches a VM of the pod's shape with this memory (and saved state): the monitor's.
Launcher = Callable[[Memory, Incoming | None], Awaitable[Snapshottable]]


async def build(launch: Launcher, memory_mb: int, timeout: float,
                balloon_mb: int = 0) -> tuple[int, int]:  # fmt: skip
    """Boot a template VM to agent ready and save it: (memory memfd, state memfd), sealed.
    With ``balloon_mb``, its balloon holds all but that much (a pod of that size then
    starts with nothing to move)."""
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    mem = os.memfd_create("hyperpy-template-ram", flags)
    state = os.memfd_create("hyperpy-template-state", flags)
    try:
        os.ftruncate(mem, memory_mb << 20)
        vm = await launch(Memory(mem, memory_mb, shared=True), None)
        try:
            _into_template_cgroup(vm)

            def command(cmd: str, args: dict | None) -> Awaitable[object]:
                return _qmp(vm, cmd, args)

            if balloon_mb:
                await balloon.set_target(command, balloon_mb)
            await _guest_ready(vm, timeout)
            if balloon_mb:
                await balloon.settle(lambda: balloon.actual(command), balloon_mb)
            await _qmp(vm, "stop")
            await _qmp(vm, "migrate-set-capabilities", IGNORE_SHARED)
            vm.send_fd(state)
            await _qmp(vm, "getfd", {"fdname": "template-state"})
            await _qmp(vm, "migrate", {"uri": "fd:template-state"})
            await _migrated(vm)
        except VMError:
            raise
        except Exception as exc:  # noqa: BLE001 - QMP's errors: say which step failed
            raise vm.failure(f"saving the template VM failed: {exc!r}") from None
        finally:
            await vm.shutdown()
            vm.close()
        for fd in (mem, state):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, keeper.seals())
        os.lseek(state, 0, os.SEEK_SET)
    except BaseException:
        os.close(mem)
        os.close(state)
        raise
    return mem, state


async def restore(mem: int, state: int, launch: Launcher, memory_mb: int) -> Snapshottable:
    """A pod's VM, running, from a template's memory and state (the caller closes them)."""
    # A description of its own: the keeper's is shared by every pod, and so its offset.
    own = os.open(f"/proc/self/fd/{state}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        vm = await launch(Memory(mem, memory_mb, shared=False), Incoming(own))
    finally:
        os.close(own)
    try:
        await _qmp(vm, "migrate-set-capabilities", IGNORE_SHARED)
        await _qmp(vm, "migrate-incoming", {"uri": f"fd:{own}"})
        await _migrated(vm)
        await _qmp(vm, "cont")
    except BaseException as exc:
        await vm.shutdown()
        vm.close()
        if isinstance(exc, VMError):
            raise
        if isinstance(exc, Exception):
            raise vm.failure(f"restoring from the template failed: {exc!r}") from None
        raise
    return vm


def _into_template_cgroup(vm: Snapshottable) -> None:
    """The template VM's memory is the template's, not the first pod's: charge it there."""
    from hyperpy.hostcgroup import HostCgroup

    try:
        cgroup = HostCgroup(keeper.CGROUP)
        cgroup.create()
        if vm.pid:
            cgroup.add(vm.pid)
    except Exception as exc:  # noqa: BLE001 - accounting only
        log.warning("the template VM stays in the pod's cgroup: %s", exc)


async def _guest_ready(vm: Snapshottable, timeout: float) -> None:
    """Wait for the template guest's ``ready`` event (its agent then waits for hello)."""
    reader, writer = await vm.open_agent()
    ready = asyncio.get_running_loop().create_future()

    async def read() -> None:
        decoder = P.Decoder()
        try:
            while not ready.done():
                data = await reader.read(65536)
                if not data:
                    raise VMError("the template guest closed its agent channel")
                for item in decoder.feed(data):
                    if isinstance(item, P.Frame) and item.kind == P.MSG:
                        if item.message().get("event") == P.EV_READY:
                            ready.set_result(True)
        except Exception as exc:  # noqa: BLE001 - the boot waiter says it
            if not ready.done():
                ready.set_exception(exc)

    task = asyncio.ensure_future(read())
    try:
        await vm.watch_boot(ready, timeout)
        ready.result()
    finally:
        task.cancel()
        writer.close()  # the transport first: the socket is closed under it otherwise


async def _qmp(vm: Snapshottable, cmd: str, args: dict | None = None) -> object:
    try:
        return await asyncio.wait_for(vm.command(cmd, args), QMP_TIMEOUT)
    except TimeoutError:
        raise vm.failure(f"QMP {cmd} got no answer within {QMP_TIMEOUT:.0f}s") from None


async def _migrated(vm: Snapshottable) -> None:
    """Wait for the migration (out or in) to complete; fail if it fails or QEMU exits."""
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    while True:
        info = await _qmp(vm, "query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status == "failed" or not vm.running:
            why = info.get("error-desc", "") if isinstance(info, dict) else ""
            raise vm.failure(f"the template migration ended as {status or 'QEMU exited'}"
                             + (f": {why}" if why else ""))  # fmt: skip
        if time.monotonic() > deadline:
            raise vm.failure(f"the template migration took over {MIGRATION_TIMEOUT:.0f}s")
        await asyncio.sleep(0.005)
