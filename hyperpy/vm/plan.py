"""The device plan of a pod's VM, for every driver: pure, no I/O.

Owns :func:`build_spec` (machine, memory, kernel and its command line, console, agent
channel, RNG, the two 9p exports, NICs: a :class:`~hyperpy.vm.devices.VMSpec`, which each
driver renders its own way) and the fixed part of the guest's command line. The
descriptors it names come from a :class:`ChannelFds`: the QEMU owner's channels
(``vm/qemu.py``), or a :class:`Placeholder` where only a VM's shape matters (a template's
key, the drivers whose QEMU is not a child of the monitor).
"""

from __future__ import annotations

from typing import Protocol

from agent.protocol import IMAGE_TAG
from hyperpy.config import VMConfig
from hyperpy.vm import jail as J
from hyperpy.vm import sizing
from hyperpy.vm.devices import (
    Balloon,
    Console,
    Kernel,
    Machine,
    Nic,
    Qmp,
    Rng,
    SerialChannel,
    Share9p,
    VMSpec,
    VsockChannel,
)

# Fixed guest timing under TCG: a pinned TSC and no timer check avoid the calibration
# hangs seen on microvm; nokaslr keeps guest time deterministic under -icount.
BASE_CMDLINE = (
    "console=ttyS0 reboot=t panic=-1 tsc_early_khz=2000000 no_timer_check nokaslr "
    "i8042.noaux i8042.nokbd rdinit=/init"
)


class ChannelFds(Protocol):
    """Where a VM's console goes and the descriptors QEMU inherits for its channels."""

    @property
    def console_path(self) -> str: ...
    @property
    def console_fd(self) -> int: ...
    @property
    def qmp_fd(self) -> int: ...
    @property
    def agent_fd(self) -> int: ...


class Placeholder:
    """Stands for the channels where only a VM's shape matters (a template's key)."""

    console_path = ""
    console_fd = qmp_fd = agent_fd = 0


def build_spec(
    cfg: VMConfig,
    accel: str,
    chans: ChannelFds,
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
    templated: bool = False,
) -> VMSpec:
    """The VMSpec of a sandbox; with ``jailed``, paths are those inside QEMU's jail. With
    ``faithful`` the image export is read-write ``passthrough`` (``[vm] files``); with
    ``templated`` the VM is one a template makes or restores (its balloon reports no free
    pages: ``devices.Balloon``)."""
    machine = Machine(cfg.machine, accel, cfg.icount, cfg.tcg_tb_size_mb)
    bus = machine.bus
    channel: SerialChannel | VsockChannel
    if vsock_cid is not None:
        channel = VsockChannel(vsock_cid, bus=bus)
    else:
        channel = SerialChannel(chans.agent_fd, bus=bus)
    resources = sizing.resources(cfg, memory_mb, vcpus)
    params = [BASE_CMDLINE, channel.kernel_param()]
    if resources.cpus > 1:
        params.append("maxcpus=1")  # the agent onlines the pod's vCPUs (vm/sizing.py)
    params.append("hyperpy.debug=1" if cfg.verbose_console else "quiet")
    if cfg.kernel_params:
        params.append(cfg.kernel_params)
    devices: list[Rng | Share9p | Nic | Balloon] = [Rng(bus)]
    if resources.balloon:
        devices.append(Balloon(bus, reporting=not templated))
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
        resources=resources,
        kernel=Kernel(*kernel, " ".join(params)),
        console=Console(chans.console_path, chans.console_fd),
        qmp=Qmp(chans.qmp_fd),
        channel=channel,
        devices=tuple(devices),
        name=name,
    )
