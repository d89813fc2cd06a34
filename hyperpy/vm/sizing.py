"""A pod's VM size: what its containers need, the most it may grow to, and the steps of a
resize. Pure, no I/O (docs/resize.md).

The VM boots with its maximum (``[vm] max_vcpus``, ``[vm] max_memory_mb``): the guest's
kernel onlines one vCPU (``maxcpus=1``) and the agent the rest the pod needs; a virtio
balloon holds the memory the pod is not given, so the guest's ``MemTotal`` is its size. A
resize moves the balloon and onlines or offlines vCPUs; nothing is hotplugged, so it works
on microvm (no ACPI, no PCI hotplug) and on a VM restored from a template, whose key no
longer depends on the pod's size.

A pod's size follows its containers: memory is ``[vm] memory_mb`` or, if they have limits,
their sum plus ``[vm] overhead_mb``; vCPUs are ``[vm] vcpus`` or what their CPU quotas add
up to, and at least one more than the highest CPU a cpuset names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from agent import resources as guest_resources
from hyperpy.config import VMConfig
from hyperpy.vm.devices import Resources

MIB = 1 << 20
QEMU_OVERHEAD_MB = 256  # QEMU's own memory, over the guest's, in the pod's host ceiling


@dataclass(frozen=True)
class Size:
    memory_mb: int
    vcpus: int


class TooBig(ValueError):
    """A size past the VM's maximum; ``pointer`` is the LinuxResources field that asked."""

    def __init__(self, message: str, pointer: str) -> None:
        super().__init__(message)
        self.pointer = pointer


def quota_vcpus(cpu: dict) -> int:
    """The vCPUs a CFS quota uses (0: no quota)."""
    quota = cpu.get("quota") or 0
    period = cpu.get("period") or guest_resources.DEFAULT_CPU_PERIOD
    return -(-quota // period) if quota > 0 else 0


def cpuset_vcpus(cpu: dict) -> int:
    """One more than the highest CPU the cpuset names (the guest numbers vCPUs from 0)."""
    from hyperpy.preflight import id_list

    ids = id_list(cpu["cpus"], "/linux/resources/cpu/cpus", "") if cpu.get("cpus") else set()
    return max(ids) + 1 if ids else 0


def need(resources: Iterable[dict], memory_mb: int, vcpus: int, overhead_mb: int,
         host_cpus: int | None = None) -> Size:  # fmt: skip
    """The size a pod whose containers have ``resources`` (their LinuxResources) needs,
    with the configured defaults ``memory_mb`` and ``vcpus``. A quota past the host's CPUs
    counts as the host's CPUs: runc's container could use no more."""
    host_cpus = host_cpus or os.cpu_count() or 1
    limits = quotas = cpuset = 0
    for res in resources:
        limit = (res.get("memory") or {}).get("limit") or 0
        if limit > 0:
            limits += -(-limit // MIB)
        cpu = res.get("cpu") or {}
        quotas += quota_vcpus(cpu)
        cpuset = max(cpuset, cpuset_vcpus(cpu))
    memory = max(memory_mb, limits + overhead_mb) if limits else memory_mb
    return Size(memory, max(vcpus, min(quotas, host_cpus), cpuset))


def maximum(boot: Size, max_memory_mb: int, max_vcpus: int, host_cpus: int | None = None) -> Size:
    """The most a VM that boots at ``boot`` can grow to: the configured maximum (0: the
    host's CPUs, and for memory the boot size), never less than the boot size."""
    vcpus = max_vcpus or host_cpus or os.cpu_count() or 1
    return Size(max(boot.memory_mb, max_memory_mb), max(boot.vcpus, vcpus))


def resources(cfg: VMConfig, memory_mb: int | None, vcpus: int | None) -> Resources:
    """The VM's resources for a pod that boots at this size (None: the configured one)."""
    boot = Size(memory_mb or cfg.memory_mb, vcpus or cfg.vcpus)
    most = maximum(boot, cfg.max_memory_mb, cfg.max_vcpus)
    return Resources(boot.vcpus, boot.memory_mb, most.vcpus,
                     most.memory_mb if cfg.max_memory_mb else 0)  # fmt: skip


def merge(current: dict, update: dict) -> dict:
    """LinuxResources after ``update`` (runc's: each field given replaces the one before;
    a memory limit of -1 or 0 is no limit)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in current.items()}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def check(want: Size, most: Size, config_path: str) -> None:
    """TooBig naming the field if ``want`` is past ``most``."""
    if want.memory_mb > most.memory_mb:
        raise TooBig(
            f"the pod's containers would need a VM of {want.memory_mb} MiB (their memory "
            f"limits plus [vm] overhead_mb), past the {most.memory_mb} MiB this pod's VM "
            f"booted able to reach: raise [vm] max_memory_mb in {config_path} for new pods, "
            "or ask for less",
            "/memory/limit",
        )
    if want.vcpus > most.vcpus:
        raise TooBig(
            f"the pod's containers would need {want.vcpus} vCPUs (their CPU quotas and "
            f"cpusets), past the {most.vcpus} this pod's VM booted with: raise [vm] "
            f"max_vcpus in {config_path} for new pods, or ask for less",
            "/cpu",
        )


@dataclass(frozen=True)
class Step:
    """One step of a resize, in order: ``ceiling`` (the host cgroup's memory), ``memory``
    (the balloon), ``vcpus`` (online in the guest), ``guest`` (the container's cgroup)."""

    kind: str
    value: int = 0


def steps(now: Size, want: Size) -> list[Step]:
    """What a resize from ``now`` to ``want`` does, in order: what grows grows before the
    guest's cgroup gets the new limits, what shrinks shrinks after, once the container's
    cgroup (its memory limit, its cpuset) no longer holds it."""
    out: list[Step] = []
    if want.memory_mb > now.memory_mb:
        out += [Step("ceiling", want.memory_mb), Step("memory", want.memory_mb)]
    if want.vcpus > now.vcpus:
        out.append(Step("vcpus", want.vcpus))
    out.append(Step("guest"))
    if want.vcpus < now.vcpus:
        out.append(Step("vcpus", want.vcpus))
    if want.memory_mb < now.memory_mb:
        out += [Step("memory", want.memory_mb), Step("ceiling", want.memory_mb)]
    return out
