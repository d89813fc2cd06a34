"""Typed QEMU devices: one frozen dataclass per device, each producing its own arguments.

Owns the mapping from what a sandbox needs (machine, memory, kernel, console, entropy, the
9p share, the agent channel, QMP) to QEMU command-line arguments, and nothing else: building
argv is pure so tests compare lists instead of spawning QEMU (after Kata's govmm).

``bus`` is ``"mmio"`` on the microvm machine (virtio-*-device) and ``"pci"`` on q35
(virtio-*-pci).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _virtio(name: str, bus: str) -> str:
    return f"{name}-device" if bus == "mmio" else f"{name}-pci"


@dataclass(frozen=True)
class Machine:
    """Machine type and accelerator. microvm: no ACPI (its default hangs TCG boots here)."""

    type: str = "microvm"
    accel: str = "tcg"
    icount: bool = False  # deterministic guest time for benchmarks

    @property
    def bus(self) -> str:
        return "mmio" if self.type == "microvm" else "pci"

    def args(self) -> list[str]:
        if self.type == "microvm":
            machine = "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=off"
        else:
            machine = f"{self.type}"
        out = ["-M", machine, "-accel", self.accel]
        if self.accel == "kvm":
            out += ["-cpu", "host"]
        else:
            out += ["-cpu", "max"]
        if self.icount:
            out += ["-icount", "shift=0,sleep=off"]
        return out


@dataclass(frozen=True)
class Resources:
    vcpus: int = 1
    memory_mb: int = 256

    def args(self) -> list[str]:
        return ["-smp", str(self.vcpus), "-m", f"{self.memory_mb}M"]


@dataclass(frozen=True)
class Kernel:
    path: str
    initrd: str
    cmdline: str

    def args(self) -> list[str]:
        return ["-kernel", self.path, "-initrd", self.initrd, "-append", self.cmdline]


@dataclass(frozen=True)
class Console:
    """The guest's serial console, written to a log file."""

    log_path: str

    def args(self) -> list[str]:
        return [
            "-chardev",
            f"file,id=console,path={self.log_path}",
            "-serial",
            "chardev:console",
        ]


@dataclass(frozen=True)
class Rng:
    """virtio-rng from the host's urandom: Python in the guest aborts without entropy."""

    bus: str = "mmio"

    def args(self) -> list[str]:
        return [
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            f"{_virtio('virtio-rng', self.bus)},rng=rng0",
        ]


@dataclass(frozen=True)
class Share9p:
    """A host directory shared with the guest over virtio-9p."""

    path: str
    tag: str = "hyperpy"
    id: str = "share0"
    bus: str = "mmio"

    def args(self) -> list[str]:
        return [
            "-fsdev",
            f"local,id={self.id},path={self.path},security_model=passthrough,multidevs=remap",
            "-device",
            f"{_virtio('virtio-9p', self.bus)},fsdev={self.id},mount_tag={self.tag}",
        ]


@dataclass(frozen=True)
class SerialChannel:
    """The agent channel as a named virtio-serial port on a host unix socket (server)."""

    socket_path: str
    name: str = "agent"
    bus: str = "mmio"

    def args(self) -> list[str]:
        return [
            "-device",
            f"{_virtio('virtio-serial', self.bus)},id=vser0",
            "-chardev",
            f"socket,id=agentch,path={self.socket_path},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=agentch,name={self.name},bus=vser0.0",
        ]

    def kernel_param(self) -> str:
        return f"hyperpy.channel=serial:{self.name}"


@dataclass(frozen=True)
class VsockChannel:
    """The agent channel over vhost-vsock: needs /dev/vhost-vsock on the host."""

    guest_cid: int
    port: int = 1024
    bus: str = "mmio"

    def args(self) -> list[str]:
        return ["-device", f"{_virtio('vhost-vsock', self.bus)},guest-cid={self.guest_cid}"]

    def kernel_param(self) -> str:
        return f"hyperpy.channel=vsock:{self.port}"


@dataclass(frozen=True)
class Qmp:
    socket_path: str

    def args(self) -> list[str]:
        return [
            "-chardev",
            f"socket,id=qmp,path={self.socket_path},server=on,wait=off",
            "-mon",
            "chardev=qmp,mode=control",
        ]


BASE_ARGS = ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]


@dataclass(frozen=True)
class VMSpec:
    """Everything one guest is made of; ``argv()`` is the whole QEMU command line."""

    binary: str
    machine: Machine
    resources: Resources
    kernel: Kernel
    console: Console
    qmp: Qmp
    channel: SerialChannel | VsockChannel
    devices: tuple[Rng | Share9p, ...] = field(default_factory=tuple)

    def argv(self) -> list[str]:
        out = [self.binary, *BASE_ARGS]
        for part in (self.machine, self.resources, self.kernel, self.console, self.qmp):
            out += part.args()
        for dev in self.devices:
            out += dev.args()
        out += self.channel.args()
        return out
