"""The pod's VM size while it runs: the vCPUs its guest has online, the memory outside the
balloon, and the host cgroup's memory ceiling (docs/resize.md).

Owns the steps of ``vm/sizing.py`` against a running pod: the guest's vCPUs through the
agent's ``resize``, the balloon through the driver (``set_memory``, ``memory_mb``), the
ceiling on the pod's host cgroup, and the container's own cgroup through the agent's
``update`` between them. A size past the VM's maximum is refused before anything changes.
The pod's size follows its containers: each one's LinuxResources are kept here from its
``create`` and every ``update``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent import protocol as P
from hyperpy.config import Config, config_path
from hyperpy.errors import CgroupError, UsageError, VMError
from hyperpy.sandbox.store import write_json_atomic
from hyperpy.vm import balloon, sizing
from hyperpy.vm.sizing import Size

log = logging.getLogger("hyperpy.monitor")

# What the guest keeps free when the balloon is inflated past the new size's need (the
# page cache it is then left; the container's own limit already holds it).
HEADROOM_MB = 32

Request = Callable[..., Awaitable[dict]]


class Sizer:
    """One pod's size, from the one its VM booted at (``vm.spec.resources``). ``request``
    is the agent's (``AgentLink.request``)."""

    def __init__(self, config: Config, vm: Any, request: Request, state_dir: str,
                 ceiling_cgroup: str | None, returns_memory: bool = True) -> None:  # fmt: skip
        self.cfg = config.vm
        self.vm = vm
        self.record = os.path.join(state_dir, "vm.json")  # beside monitor.sock, for `state`
        self.request = request
        res = vm.spec.resources
        self.now = Size(res.memory_mb, res.vcpus)
        self.most = Size(res.ram_mb, res.cpus)  # without a balloon: the boot size
        self.ceiling_cgroup = ceiling_cgroup  # the pod's host cgroup, if create gave it one
        # whether what the balloon takes is the host's again: not in a VM restored from a
        # template (QEMU 7.2 cannot discard a private file mapping's pages: vm/devices.py
        # Balloon), whose host ceiling then stays where it is, or QEMU would be OOM-killed
        self.returns_memory = returns_memory
        self.containers: dict[str, dict] = {}  # cid -> its LinuxResources
        self.lock = asyncio.Lock()
        self.last: dict[str, float] = {}  # the last resize's timings, ms

    # --- the pod's size -----------------------------------------------------------------
    def want(self, containers: dict[str, dict]) -> Size:
        cfg = self.cfg
        return sizing.need(containers.values(), cfg.memory_mb, cfg.vcpus, cfg.overhead_mb)

    async def start(self) -> None:
        """The boot size in a fresh guest: its vCPUs online, the balloon at its target
        (a restored VM's is the template's)."""
        if self.most.vcpus > 1:
            await self.request(P.OP_RESIZE, vcpus=self.now.vcpus)
        if self.vm.spec.resources.balloon:
            await self.vm.set_memory(self.now.memory_mb)
            t = time.monotonic()
            await balloon.settle(self.vm.memory_mb, self.now.memory_mb)
            self.last = {"balloon_at_start": round((time.monotonic() - t) * 1e3, 1)}
        write_json_atomic(self.record, self.report())

    async def join(self, cid: str, resources: dict) -> None:
        """Container ``cid`` is being made in this pod: grow the VM to what the pod needs
        with it (never shrink: another container's create may be under way)."""
        async with self.lock:
            others = dict(self.containers)
            others[cid] = resources
            need = self.want(others)
            # runc would run it: past the VM's maximum, the pod gets the maximum
            want = Size(min(max(need.memory_mb, self.now.memory_mb), self.most.memory_mb),
                        min(max(need.vcpus, self.now.vcpus), self.most.vcpus))  # fmt: skip
            if want != need and need != self.now:
                log.warning("container %s: the pod would need %s, the VM can grow to %s",
                            cid, need, self.most)  # fmt: skip
            await self._run(want, None)
            self.containers[cid] = resources

    def leave(self, cid: str) -> None:
        """Container ``cid`` was deleted; the VM keeps its size until the next update."""
        self.containers.pop(cid, None)

    async def update(self, cid: str, resources: dict) -> None:
        """``update`` of container ``cid``: the VM resized around its cgroup's new limits."""
        async with self.lock:
            merged = dict(self.containers)
            merged[cid] = sizing.merge(self.containers.get(cid, {}), resources)
            want = self.want(merged)
            try:
                sizing.check(want, self.most, config_path())
            except sizing.TooBig as exc:
                raise UsageError(f"update: LinuxResources#{exc.pointer}: {exc}") from None

            async def guest() -> None:
                await self.request(P.OP_UPDATE, cid=cid, resources=resources)

            await self._run(want, guest)
            self.containers[cid] = merged[cid]

    # --- the steps ----------------------------------------------------------------------
    async def _run(self, want: Size, guest: Callable[[], Awaitable[None]] | None) -> None:
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        for step in sizing.steps(self.now, want):
            t = time.monotonic()
            if step.kind == "guest" and guest is not None:
                await guest()
            elif step.kind == "vcpus":
                await self._vcpus(step.value)
            elif step.kind == "memory":
                await self._memory(step.value)
            elif step.kind == "ceiling":
                # before the balloon deflates (growing), or after it gave back what it could
                grow = step.value > self.now.memory_mb
                self._ceiling(max(step.value, self.now.memory_mb), grow)
            timings[step.kind] = round((time.monotonic() - t) * 1e3, 1)
        timings["total"] = round((time.monotonic() - t0) * 1e3, 1)
        self.last = timings
        write_json_atomic(self.record, self.report())
        log.info("the VM is %d MiB, %d vCPUs (%s ms)", self.now.memory_mb, self.now.vcpus,
                 timings)  # fmt: skip

    async def _vcpus(self, n: int) -> None:
        if self.most.vcpus <= 1:
            return
        reply = await self.request(P.OP_RESIZE, vcpus=n)
        online = reply.get("online")
        if not isinstance(online, list) or len(online) != n:
            raise VMError(f"the guest has vCPUs {online!r:.60} online, not {n}")
        self.now = Size(self.now.memory_mb, n)

    async def _memory(self, target: int) -> None:
        if not self.vm.spec.resources.balloon or target == self.now.memory_mb:
            return
        if target < self.now.memory_mb:
            # never below what the guest uses now (its cgroups already shrank)
            total_kb, avail_kb = _meminfo(await self.request(P.OP_RESIZE))
            used_mb = (total_kb - avail_kb) >> 10
            free_floor = self.now.memory_mb - (avail_kb >> 10)
            floor = max(used_mb, free_floor) + HEADROOM_MB
            if floor > target:
                log.info("the guest uses %d MiB: the balloon stops at %d, not %d",
                         used_mb, min(floor, self.now.memory_mb), target)  # fmt: skip
                target = min(floor, self.now.memory_mb)
        await self.vm.set_memory(target)
        actual = await balloon.settle(self.vm.memory_mb, target)
        if target < self.now.memory_mb and actual > target + 2:  # it kept more (libvirt
            # rounds to its own units: within 2 MiB is the target); never more than it had,
            # whatever the guest reports: the host ceiling follows this
            target = min(actual, self.now.memory_mb)
        self.now = Size(target, self.now.vcpus)

    def _ceiling(self, memory_mb: int, grow: bool) -> None:
        if self.ceiling_cgroup is None or not (grow or self.returns_memory):
            return
        from hyperpy.hostcgroup import HostCgroup

        limit = (memory_mb + sizing.QEMU_OVERHEAD_MB) << 20
        try:
            HostCgroup(self.ceiling_cgroup).set_memory_limit(limit)
        except CgroupError as exc:
            if grow:
                raise
            log.warning("the pod's host ceiling stays where it was: %s", exc)

    def report(self) -> dict[str, int]:
        """The VM's size, for ``state`` and ``events --stats``."""
        return {"memory_mb": self.now.memory_mb, "vcpus": self.now.vcpus,
                "max_memory_mb": self.most.memory_mb, "max_vcpus": self.most.vcpus}  # fmt: skip


def _meminfo(reply: dict) -> tuple[int, int]:
    """MemTotal and MemAvailable (KiB) from the agent's ``resize`` reply: what the guest
    says, checked (it is the guest's word, and only sets how far the balloon inflates)."""
    total, avail = reply.get("mem_total_kb"), reply.get("mem_available_kb")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (total, avail)):
        raise VMError(f"the guest's memory report is not two sizes: {reply!r:.80}")
    assert isinstance(total, int) and isinstance(avail, int)
    return total, min(avail, total)
