"""hyperpy's own configuration: a TOML file read into frozen dataclasses.

Owns where the configuration comes from (``$HYPERPY_CONFIG``, else
``/etc/hyperpy/config.toml`` if present, else the defaults), the defaults themselves, and
rejecting unknown keys and wrong types with the file and key named. A commented example is
``docs/config.example.toml``. ``hyperpy env`` prints the effective values as JSON.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from hyperpy.errors import ConfigError

DEFAULT_PATH = "/etc/hyperpy/config.toml"


def artifacts_dir() -> str:
    return os.environ.get("HYPERPY_ARTIFACTS", "/var/lib/hyperpy")


@dataclass(frozen=True)
class VMConfig:
    # who starts QEMU: "qemu" (hyperpy itself, jailed: vm/qemu.py) or "libvirt" (a
    # transient libvirt domain, QEMU as libvirt's unprivileged user: vm/libvirt.py)
    driver: str = "qemu"
    qemu: str = "qemu-system-x86_64"
    kernel: str = field(default_factory=lambda: os.path.join(artifacts_dir(), "vmlinux"))
    initrd: str = field(default_factory=lambda: os.path.join(artifacts_dir(), "initrd.img"))
    machine: str = "microvm"  # microvm | q35
    accel: str = "auto"  # auto (try KVM, fall back to TCG) | kvm | tcg
    channel: str = "auto"  # auto (vsock if /dev/vhost-vsock works) | serial | vsock
    vcpus: int = 1
    memory_mb: int = 256
    # Memory added to the container's limit for the guest kernel, agent and QEMU itself.
    overhead_mb: int = 160
    # The most `update` can grow a pod's VM to (docs/resize.md): vCPUs (0: the host's
    # CPUs) and memory in MiB (0: no growth past its boot size, and no balloon). The VM
    # boots with this much memory, a virtio balloon holding what the pod is not given; the
    # guest's page structures for it (1/64 of it) are in overhead_mb.
    max_vcpus: int = 0
    max_memory_mb: int = 2048
    boot_timeout: float = 60.0
    kernel_params: str = ""
    icount: bool = False
    verbose_console: bool = False
    # The guest's console log keeps the newest this many MiB (a ring of two files): what
    # the guest writes there is host memory on /run (hyperpy/vm/console.py).
    console_log_max_mb: int = 4
    # TCG's translation cache, MiB (0: QEMU's own limit). It fills as the guest runs new
    # code, and is most of a cold VM's QEMU overhead: 32 saves ~25 MiB per cold VM at no
    # measured start cost; 16 saves ~45 but slows a cold start by ~0.3 s, 8 doubles it.
    tcg_tb_size_mb: int = 32
    # How a container's files reach the host (hyperpy/share.py): "faithful" writes its root
    # and read-write volumes through to the host as runc does (9p passthrough: real owners,
    # modes, symlinks, set-id bits and device nodes); "strict" keeps the root's writes in
    # guest memory and what the guest makes in volumes in QEMU's xattrs (docs/files.md).
    # Only the qemu driver is faithful: libvirt's and the remote host's QEMU are strict.
    files: str = "faithful"


@dataclass(frozen=True)
class JailConfig:
    """QEMU's confinement (hyperpy/vm/jail.py)."""

    enabled: bool = True
    # QEMU of the pod whose monitor has pid P runs as uid and gid uid_base + P: pick a range
    # no account or subuid range of the host uses.
    uid_base: int = 2_000_000_000


@dataclass(frozen=True)
class NetworkConfig:
    """The pod's network (hyperpy/network.py)."""

    # NICs each VM boots with (microvm has no hotplug): at most this many interfaces of the
    # pod's network namespace reach the guest; a namespace with more fails at create.
    interfaces: int = 1


@dataclass(frozen=True)
class TemplateConfig:
    """VM templates (hyperpy/vm/template.py): pods start from a saved, booted VM."""

    enabled: bool = True
    # each template's keeper socket and metadata (its memory and state are memfds);
    # $HYPERPY_TEMPLATES sets the default (tests keep theirs apart)
    dir: str = field(
        default_factory=lambda: os.environ.get("HYPERPY_TEMPLATES", "/run/hyperpy/templates")
    )


@dataclass(frozen=True)
class LibvirtConfig:
    """The libvirt driver (hyperpy/vm/libvirt.py), used when [vm] driver = "libvirt"."""

    uri: str = "qemu:///system"
    # libvirt has no microvm: q35 (PCIe; NICs on reserved root ports) or pc (i440fx)
    machine: str = "q35"


@dataclass(frozen=True)
class RemoteConfig:
    """The remote driver (hyperpy/vm/remote.py), used when [vm] driver = "remote": the
    pod's VM runs on this host, reached over SSH."""

    host: str = ""
    port: int = 22
    user: str = "root"
    key_file: str = "/etc/hyperpy/remote_key"
    # strict host-key checking against this file: an unknown or changed key is refused
    known_hosts: str = "/etc/hyperpy/known_hosts"
    workdir: str = "/var/lib/hyperpy-remote"  # hyperpy's files on the remote host
    # the remote host stops a VM whose node has not been heard from for this long
    watchdog_s: float = 30.0
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class Config:
    vm: VMConfig = field(default_factory=VMConfig)
    jail: JailConfig = field(default_factory=JailConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_path() -> str:
    """The configuration file this process reads (it may not exist: the defaults)."""
    return os.environ.get("HYPERPY_CONFIG") or DEFAULT_PATH


def load(path: str | None = None) -> Config:
    path = path or config_path()
    if not os.path.exists(path):
        if path != DEFAULT_PATH:
            raise ConfigError(f"{path}: configuration file not found (set by HYPERPY_CONFIG)")
        return Config()
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    return from_dict(raw, path)


def from_dict(raw: dict[str, Any], path: str = "<config>") -> Config:
    sections: dict[str, type] = {
        "vm": VMConfig,
        "jail": JailConfig,
        "network": NetworkConfig,
        "template": TemplateConfig,
        "libvirt": LibvirtConfig,
        "remote": RemoteConfig,
    }
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"{path}: unknown section [{name}]; known: {sorted(sections)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        values[name] = _section(sections[name], value, f"{path}: [{name}]")
    return Config(**values)


def _section(cls: type, raw: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {sorted(fields)}")
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: {key} must be {expected.__name__}, got {type(value).__name__}"
            )
    choices = {
        "driver": ("qemu", "libvirt", "remote"),
        "machine": ("microvm", "q35") if cls is VMConfig else ("q35", "pc"),
        "accel": ("auto", "kvm", "tcg"),
        "channel": ("auto", "serial", "vsock"),
        "files": ("faithful", "strict"),
    }
    for key, allowed in choices.items():
        if key in raw and raw[key] not in allowed:
            raise ConfigError(f"{where}: {key} must be one of {allowed}, got {raw[key]!r}")
    if cls is VMConfig and raw.get("driver", "qemu") != "qemu" and raw.get("channel") == "vsock":
        raise ConfigError(f"{where}: channel = \"vsock\" is the qemu driver's; with driver = "
                          f"\"{raw['driver']}\" the agent channel is virtio-serial")  # fmt: skip
    if cls is RemoteConfig:
        if raw.get("watchdog_s", 30.0) < 6:
            raise ConfigError(f"{where}: watchdog_s must be at least 6 (the node pings every "
                              f"2 s), got {raw['watchdog_s']}")  # fmt: skip
        if raw.get("connect_timeout", 10.0) <= 0:
            raise ConfigError(f"{where}: connect_timeout must be positive")
        workdir = raw.get("workdir", "/")
        if not workdir.startswith("/") or any(c in workdir for c in ", \t\n'\""):
            raise ConfigError(
                f"{where}: workdir must be an absolute path without commas, "
                f"quotes or spaces (it goes into QEMU's options), got {workdir!r}"
            )
    if cls is NetworkConfig and not 1 <= raw.get("interfaces", 1) <= 8:
        raise ConfigError(f"{where}: interfaces must be from 1 to 8, got {raw['interfaces']}")
    return cls(**raw)
