"""The narrow interface between the sandbox monitor and whatever runs its VM.

Owns choosing the driver (``[vm] driver``) and what a driver offers the monitor. The device
plan is written once (``qemu.build_spec``: a :class:`~hyperpy.vm.devices.VMSpec`); each
driver renders it: the direct driver to QEMU's argv (``vm/devices.py``, started jailed by
``vm/qemu.py``), the libvirt driver to a domain XML (``vm/domain.py``, ``vm/libvirt.py``),
the remote driver to QEMU's argv on another host (``vm/remote.py``, over SSH).

A :class:`VM` (``qemu.QemuVM`` or ``libvirt.LibvirtVM``) is what the monitor holds::

    launch()            start it; raises VMError naming what failed
    open_agent()        a stream to the agent channel (OSError: not yet)
    watch_boot(f, t)    wait for future f (hello) while failing fast on a panic or an exit
    exited()            why the VM is gone, or None;  ended(): wait for that
    pid, running        QEMU's host pid (0 if not on this host), and whether it runs
    shutdown(); close() stop it in stages, then release the monitor's ends
    check_binds(b)      the share binds as this driver's QEMU can serve them (or SpecError)
    share(p), unshare(c) make a container's files reach the guest, and take them back

:class:`Capabilities` says what else a driver can do (templates need QMP on an fd and the
jail; vsock needs a host device QEMU opens itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hyperpy.errors import VMError
from hyperpy.vm import jail as J
from hyperpy.vm import qemu

if TYPE_CHECKING:
    from hyperpy.config import Config
    from hyperpy.vm.devices import Incoming, Memory, VMSpec

DRIVERS = ("qemu", "libvirt")


class VM(Protocol):
    spec: VMSpec

    async def launch(self) -> None: ...
    async def open_agent(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...
    async def watch_boot(self, ready: asyncio.Future, timeout: float) -> None: ...
    def exited(self) -> str | None: ...
    async def wait_exit(self, timeout: float) -> None: ...
    def failure(self, what: str, cls: type[VMError] = VMError) -> VMError: ...
    async def ended(self) -> str: ...
    async def shutdown(self) -> None: ...
    def close(self) -> None: ...
    def check_binds(self, binds: list) -> list: ...
    async def share(self, plan: Any, state_dir: str) -> None: ...
    async def unshare(self, cid: str, state_dir: str) -> None: ...

    @property
    def console_path(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def running(self) -> bool: ...


@dataclass(frozen=True)
class Capabilities:
    templates: bool  # boot from a VM template (vm/template.py)
    vsock: bool  # the agent channel over vhost-vsock
    jail: bool  # QEMU in hyperpy's jail (vm/jail.py)
    nics: bool = True  # the pod's network namespace reaches the VM (taps on this host)
    # [vm] files = "faithful" (9p passthrough: QEMU sets real owners, so it needs CAP_CHOWN
    # and its kin on the host's files): libvirt's QEMU is an unprivileged user, and the
    # remote host serves copies
    faithful: bool = False


CAPABILITIES = {
    "qemu": Capabilities(templates=True, vsock=True, jail=True, faithful=True),
    "libvirt": Capabilities(templates=False, vsock=False, jail=False),
    "remote": Capabilities(templates=False, vsock=False, jail=False, nics=False),
}


def faithful_files(config: Config) -> bool:
    """Whether a pod's files write through to the host as runc's do (docs/files.md)."""
    return config.vm.files == "faithful" and CAPABILITIES[config.vm.driver].faithful


class Driver:
    """Makes a pod's VM from its shape (share, image, NICs, size), one driver's way."""

    def __init__(self, config: Config, state_dir: str, accel: str, vsock_cid: int | None,
                 exports: dict[str, str], sock: Any = None) -> None:  # fmt: skip
        self.config = config
        self.sock = sock  # the remote driver's TCP connection, made before the pod's netns
        self.name = config.vm.driver
        self.caps = CAPABILITIES[self.name]
        self.dir = state_dir
        self.accel = accel
        self.vsock_cid = vsock_cid if self.caps.vsock else None
        self.faithful = faithful_files(config)
        self.jail: J.Jail | None = None
        if self.caps.jail and config.jail.enabled:
            devices: tuple[str, ...] = ("/dev/kvm",) if accel == "kvm" else ()
            if self.vsock_cid is not None:
                devices += ("/dev/vhost-vsock",)
            self.jail = J.plan(
                root=os.path.join(state_dir, "jail"),
                uid=config.jail.uid_base + os.getpid(),
                parent=os.getpid(),
                qemu=config.vm.qemu,
                kernel=config.vm.kernel,
                initrd=config.vm.initrd,
                share=exports["shared"],
                image=exports["image"],
                devices=devices,
                faithful=self.faithful,
            )

    def spec(self, shape: dict[str, Any], chans: Any) -> VMSpec:
        jailed = self.jail is not None
        return qemu.build_spec(self.config.vm, self.accel, chans, jailed=jailed, name=self.dir,
                               vsock_cid=self.vsock_cid, **shape)  # fmt: skip

    def make(self, shape: dict[str, Any], memory: Memory | None = None,
             incoming: Incoming | None = None) -> VM:  # fmt: skip
        if self.name == "remote":
            from hyperpy.vm.remote import RemoteVM

            vcfg = self.config.vm
            placeholder = qemu.Placeholder()
            placeholder.console_path = os.path.join(self.dir, "console.log")
            spec = qemu.build_spec(vcfg, self.accel, placeholder, name=self.dir, **shape)
            return RemoteVM(spec, self.dir, self.config.remote, vcfg, self.sock)
        if self.name == "libvirt":
            from hyperpy.vm.libvirt import LibvirtVM

            vcfg = self.config.vm
            machine = dataclasses.replace(self.config.vm, machine=self.config.libvirt.machine)
            placeholder = qemu.Placeholder()
            placeholder.console_path = os.path.join(self.dir, "console.log")
            spec = qemu.build_spec(machine, self.accel, placeholder, name=self.dir, **shape)
            return LibvirtVM(spec, self.dir, self.config.libvirt, vcfg.kernel, vcfg.initrd,
                             vcfg.console_log_max_mb << 20)  # fmt: skip
        chans = qemu.Channels(self.dir, serial=self.vsock_cid is None,
                              console_max=self.config.vm.console_log_max_mb << 20)  # fmt: skip
        spec = dataclasses.replace(self.spec(shape, chans), memory=memory, incoming=incoming)
        return qemu.QemuVM(spec, self.dir, chans, self.jail)

    def report(self) -> dict[str, Any]:
        """What ``create`` records of how the VM runs."""
        jail = {"uid": self.jail.uid, "root": self.jail.root} if self.jail else None
        return {"driver": self.name, "jail": jail}
