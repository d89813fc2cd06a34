"""Typed QEMU devices: one frozen dataclass per device, each producing its own arguments.

Owns the mapping from what a sandbox needs (machine, memory, kernel, console, entropy, the
9p share, the NICs, the agent channel, QMP, the seccomp sandbox) to QEMU command-line arguments, and
nothing else: building argv is pure so tests compare lists instead of spawning QEMU (after
Kata's govmm). QMP, the agent channel and the console are file descriptors QEMU inherits
(``fd=N``, ``/dev/fdset``): QEMU opens no path the monitor later trusts.

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
    tb_size_mb: int = 0  # TCG's translation cache (0: QEMU's default)

    @property
    def bus(self) -> str:
        return "mmio" if self.type == "microvm" else "pci"

    def args(self) -> list[str]:
        if self.type == "microvm":
            machine = "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=off"
        else:
            machine = f"{self.type}"
        accel = self.accel
        if accel == "tcg" and self.tb_size_mb:
            accel += f",tb-size={self.tb_size_mb}"
        out = ["-M", machine, "-accel", accel]
        if self.accel == "kvm":
            out += ["-cpu", "host"]
        else:
            out += ["-cpu", "max"]
        if self.icount:
            out += ["-icount", "shift=0,sleep=off"]
        return out


@dataclass(frozen=True)
class Resources:
    """The pod's size (``vcpus`` online, ``memory_mb`` outside the balloon) and the VM's
    (``max_*``: what QEMU gets, so that a resize is a balloon and CPUs onlined in the
    guest, ``vm/sizing.py``; 0: the pod's size, no balloon)."""

    vcpus: int = 1
    memory_mb: int = 256
    max_vcpus: int = 0
    max_memory_mb: int = 0

    @property
    def cpus(self) -> int:
        return max(self.vcpus, self.max_vcpus)

    @property
    def ram_mb(self) -> int:
        return max(self.memory_mb, self.max_memory_mb)

    @property
    def balloon(self) -> bool:
        return self.max_memory_mb > 0

    def args(self, own_ram: bool = True) -> list[str]:
        """With a balloon and ``own_ram`` (no template's memory), the guest's RAM is a
        memfd: shmem gets no transparent huge pages, which QEMU asks for on anonymous RAM,
        where each page a guest of 2 GiB touches while it boots would hold 2 MiB of the
        host (~90 MiB of a cold pod's PSS, measured); and the balloon's discards punch
        holes in it."""
        out = ["-smp", str(self.cpus), "-m", f"{self.ram_mb}M"]
        if self.balloon and own_ram:
            out += ["-object", f"memory-backend-memfd,id=ram,size={self.ram_mb}M,share=on",
                    "-machine", "memory-backend=ram"]  # fmt: skip
        return out


@dataclass(frozen=True)
class Balloon:
    """virtio-balloon: holds the VM's memory past the pod's size (``vm/sizing.py``). No
    deflate-on-OOM: the guest's MemTotal is what the pod was given. Free page reporting:
    the guest hands back what it freed (2 MiB at a time), so what it touched while it
    booted in its full memory returns to the host (~50 MiB PSS of a cold pod with 2 GiB)."""

    bus: str = "mmio"
    # Off for VMs that templates make or restore: QEMU 7.2 discards the RAM of a private
    # file mapping by punching a hole in the file, which a template's sealed memfd refuses
    # (it logs each page), so a restored guest's free pages could not go back anyway.
    reporting: bool = True

    def args(self) -> list[str]:
        dev = _virtio("virtio-balloon", self.bus)
        report = "on" if self.reporting else "off"
        return ["-device", f"{dev},id=balloon0,free-page-reporting={report}"]


@dataclass(frozen=True)
class Kernel:
    path: str
    initrd: str
    cmdline: str

    def args(self) -> list[str]:
        return ["-kernel", self.path, "-initrd", self.initrd, "-append", self.cmdline]


@dataclass(frozen=True)
class Console:
    """The guest's serial console: written to the socket ``fd``, whose other end the monitor
    reads into ``log_path`` (hyperpy/vm/console.py)."""

    log_path: str
    fd: int

    def args(self) -> list[str]:
        return ["-chardev", f"socket,id=console,fd={self.fd}", "-serial", "chardev:console"]


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
    """A host directory shared with the guest over virtio-9p.

    The writable share is ``mapped-xattr`` (or ``mapped-file``): the owners, modes and special
    files the guest makes live in QEMU's metadata, never in the host's (a setuid file or a
    device node made in a container is a plain file owned by QEMU's uid on the host). The
    image share is ``none`` and ``readonly`` with ``[vm] files = "strict"``: real owners,
    modes and symlinks (which the mapped models cannot read), and QEMU refuses every write;
    ``passthrough`` with ``"faithful"``: what the guest makes gets its real owner, mode and
    type on the host, as a runc container leaves it (``vm/jail.py`` gives QEMU the file
    capabilities that takes)."""

    path: str
    tag: str = "hyperpy"
    id: str = "share0"
    bus: str = "mmio"
    model: str = "mapped-xattr"
    readonly: bool = False

    def args(self) -> list[str]:
        ro = ",readonly=on" if self.readonly else ""
        return [
            "-fsdev",
            f"local,id={self.id},path={self.path},security_model={self.model},multidevs=remap" + ro,
            "-device",
            f"{_virtio('virtio-9p', self.bus)},fsdev={self.id},mount_tag={self.tag}",
        ]


@dataclass(frozen=True)
class Nic:
    """A virtio-net NIC backed by a tap the monitor made in the pod's network namespace and
    hands over as ``fd`` (no vnet header, no vhost: QEMU needs no access to /dev/net/tun)."""

    fd: int
    mac: str
    id: str = "net0"
    bus: str = "mmio"

    def args(self) -> list[str]:
        return [
            "-netdev",
            f"tap,id={self.id},fd={self.fd},vhost=off",
            "-device",
            f"{_virtio('virtio-net', self.bus)},netdev={self.id},mac={self.mac}",
        ]


@dataclass(frozen=True)
class SerialChannel:
    """The agent channel as a named virtio-serial port on ``fd``, one end of a socketpair
    (or, on a remote host, on a unix socket QEMU listens on at ``path``)."""

    fd: int
    name: str = "agent"
    bus: str = "mmio"
    path: str = ""

    def args(self) -> list[str]:
        backend = f"path={self.path},server=on,wait=off" if self.path else f"fd={self.fd}"
        return [
            "-device",
            f"{_virtio('virtio-serial', self.bus)},id=vser0",
            "-chardev",
            f"socket,id=agentch,{backend}",
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
    """QMP on ``fd``, one end of a socketpair (the monitor holds the other)."""

    fd: int

    def args(self) -> list[str]:
        return [
            "-chardev",
            f"socket,id=qmp,fd={self.fd}",
            "-mon",
            "chardev=qmp,mode=control",
        ]


@dataclass(frozen=True)
class Memory:
    """Guest RAM in a VM template's memfd (``vm/template.py``), which QEMU opens through its
    inherited ``fd``. ``shared``: the template VM itself, whose guest writes the file; else a
    pod restored from it, mapped privately (copy-on-write: a page stays one copy on the host
    until a pod writes it). QEMU 7.2 sets the ``x-ignore-shared`` migration capability, which
    keeps that RAM out of the saved state, only over QMP (``vm/template.py``)."""

    fd: int
    size_mb: int
    shared: bool

    def args(self) -> list[str]:
        share = "on" if self.shared else "off"
        return [
            "-object",
            f"memory-backend-file,id=ram,size={self.size_mb}M,"
            f"mem-path=/proc/self/fd/{self.fd},share={share}",
            "-machine",
            "memory-backend=ram",
        ]


@dataclass(frozen=True)
class Incoming:
    """Start from a template's saved device state, read from ``fd``, instead of booting:
    ``defer``, so that QMP sets ``x-ignore-shared`` before ``migrate-incoming fd:N``."""

    fd: int

    def args(self) -> list[str]:
        return ["-incoming", "defer"]


BASE_ARGS = ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
# QEMU's seccomp filter: no obsolete syscalls, no setuid/setgid, no fork/exec, no
# scheduler or priority changes (as Kata and libvirt run it).
SANDBOX = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]


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
    devices: tuple[Rng | Share9p | Nic | Balloon, ...] = field(default_factory=tuple)
    name: str = ""  # the sandbox's state dir: what ps shows of a QEMU (it holds no paths)
    memory: Memory | None = None  # RAM in a template's memfd
    incoming: Incoming | None = None  # restored from a template's saved state

    def pass_fds(self) -> tuple[int, ...]:
        """The descriptors QEMU inherits: the console, QMP, the agent channel, the taps, a
        template's memory and saved state."""
        fds = [self.console.fd, self.qmp.fd, *(d.fd for d in self.devices if isinstance(d, Nic))]
        if isinstance(self.channel, SerialChannel):
            fds.append(self.channel.fd)
        fds += [part.fd for part in (self.memory, self.incoming) if part is not None]
        return tuple(fds)

    def argv(self) -> list[str]:
        out = [self.binary, *BASE_ARGS, *SANDBOX]
        if self.name:
            out += ["-name", "hyperpy:" + self.name.replace(",", ",,")]
        out += self.machine.args() + self.resources.args(own_ram=self.memory is None)
        for part in (self.kernel, self.console, self.qmp):
            out += part.args()
        for dev in self.devices:
            out += dev.args()
        out += self.channel.args()
        for extra in (self.memory, self.incoming):
            if extra is not None:
                out += extra.args()
        return out
