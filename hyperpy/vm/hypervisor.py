"""The narrow interface between the sandbox monitor and whatever runs its VM.

Owns choosing the driver (``[vm] driver``) and what a driver offers the monitor. The device
plan is written once (``plan.build_spec``: a :class:`~hyperpy.vm.devices.VMSpec`); each
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
    set_memory(m)       the balloon's target, MiB; memory_mb(): where the guest is now

:class:`Capabilities` says what else a driver can do (templates need QMP on an fd and the
jail; vsock needs a host device QEMU opens itself). A :class:`Driver` is how the monitor
gets one: it checks the artifacts, probes the host (``prepare``), names the shape's
template (``template_key``) and makes the VM; :func:`connect_early` opens what a driver
needs from the host's network namespace. What a driver's VM leaves behind a killed monitor
is reaped by ``delete`` through ``vm/orphans.py``, the verbs' side of this interface (lean:
importing this module costs a hot verb ~35 ms).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hyperpy.errors import VMError
from hyperpy.vm import jail as J
from hyperpy.vm import plan, probes, qemu, template

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
    async def set_memory(self, memory_mb: int) -> None: ...
    async def memory_mb(self) -> int: ...

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


def connect_early(config: Config) -> Any:
    """What the driver must open before the monitor enters the pod's network namespace,
    in the host's: with [vm] driver = "remote", a TCP connection to the remote host, or
    None."""
    if config.vm.driver != "remote":
        return None
    from hyperpy.vm.ssh import tcp_connection

    return tcp_connection(config.remote)


class Driver:
    """Makes a pod's VM from its shape (share, image, NICs, size), one driver's way:
    ``Driver(...)`` checks that the guest's kernel and initrd exist, :meth:`prepare` probes
    the host for what its VMs use, :meth:`make` makes one."""

    def __init__(self, config: Config, state_dir: str, sock: Any = None) -> None:
        probes.check_artifacts(config.vm)
        self.config = config
        self.sock = sock  # the remote driver's TCP connection, made before the pod's netns
        self.name = config.vm.driver
        self.caps = CAPABILITIES[self.name]
        self.dir = state_dir
        self.accel = ""
        self.vsock_cid: int | None = None
        self.faithful = faithful_files(config)
        self.jail: J.Jail | None = None

    def prepare(self, exports: dict[str, str]) -> None:
        """Choose the accelerator and the agent channel, and plan the jail over the pod's
        exports. The remote driver's accelerator is the remote host's, probed there at
        launch: here it is only ``[vm] accel`` (``auto`` stands as tcg until then)."""
        cfg, config, state_dir = self.config.vm, self.config, self.dir
        if self.name == "remote":
            self.accel = "tcg" if cfg.accel == "auto" else cfg.accel
        else:
            self.accel = probes.choose_accel(cfg)
        if self.caps.vsock and (
            cfg.channel == "vsock" or (cfg.channel == "auto" and probes.vsock_usable())
        ):
            self.vsock_cid = 3 + (os.getpid() % 0x7FFFFFF0)
        if self.caps.jail and config.jail.enabled:
            devices: tuple[str, ...] = ("/dev/kvm",) if self.accel == "kvm" else ()
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

    @property
    def templates(self) -> bool:
        """Whether this pod's VM can start from a template (vsock-channel VMs cannot)."""
        return self.caps.templates and self.vsock_cid is None

    def template_key(self, shape: dict[str, Any]) -> str:
        """The key of the template of VMs of ``shape``: their command line as the jail sees
        it, without the pod's name or fds, and the files it runs (OSError: one is gone)."""
        cfg = self.config.vm
        keyspec = plan.build_spec(cfg, self.accel, plan.Placeholder(), jailed=True,
                                  templated=True, **shape)  # fmt: skip
        binary = shutil.which(keyspec.binary) or keyspec.binary
        return template.key(keyspec.argv(), (binary, cfg.kernel, cfg.initrd))

    def spec(self, shape: dict[str, Any], chans: Any) -> VMSpec:
        jailed = self.jail is not None
        templated = self.templates and self.config.template.enabled
        return plan.build_spec(self.config.vm, self.accel, chans, jailed=jailed, name=self.dir,
                               vsock_cid=self.vsock_cid, templated=templated,
                               **shape)  # fmt: skip

    def make(self, shape: dict[str, Any], memory: Memory | None = None,
             incoming: Incoming | None = None) -> VM:  # fmt: skip
        if self.name == "remote":
            from hyperpy.vm.remote import RemoteVM

            vcfg = self.config.vm
            placeholder = plan.Placeholder()
            placeholder.console_path = os.path.join(self.dir, "console.log")
            spec = plan.build_spec(vcfg, self.accel, placeholder, name=self.dir, **shape)
            return RemoteVM(spec, self.dir, self.config.remote, vcfg, self.sock)
        if self.name == "libvirt":
            from hyperpy.vm.libvirt import LibvirtVM

            vcfg = self.config.vm
            machine = dataclasses.replace(self.config.vm, machine=self.config.libvirt.machine)
            placeholder = plan.Placeholder()
            placeholder.console_path = os.path.join(self.dir, "console.log")
            spec = plan.build_spec(machine, self.accel, placeholder, name=self.dir, **shape)
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
