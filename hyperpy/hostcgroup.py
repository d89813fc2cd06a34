"""The pod's cgroup on the host: where the monitor, QEMU and the process proxies live.

containerd reads a task's stats and OOM events from the cgroup of the pid in --pid-file, so
that cgroup must hold what the pod really costs: QEMU (the guest's memory and vCPUs), the
monitor and every proxy.  The container's limits are enforced inside the guest (the agent's
cgroup); the host cgroup gets a memory ceiling of the container's limit plus the VM's
overhead, so it can never OOM-kill the VM for a limit the guest already enforces.

CPU settings apply on both sides, as given: the guest confines the container, and the host
confines the threads that run it (QEMU's vCPUs).  The cpuset is written when the cgroup is
made, before QEMU starts in it; shares, quota and period (:meth:`HostCgroup.set_cpu`) once
the VM has booted, so the boot, the runtime's own work, is not throttled.  On v1 they are
``cpuset.cpus``/``cpuset.mems``, ``cpu.shares``, ``cpu.cfs_period_us`` and
``cpu.cfs_quota_us`` (period first, retried after the quota when the kernel refuses it, as
runc does); on v2 the guest's conversion (``agent.resources.translate``) gives the files.

Both layouts are handled: cgroup v2 (one hierarchy at /sys/fs/cgroup) and v1 (one
hierarchy per controller, /sys/fs/cgroup/<controller>), including the hybrid layout where a
cgroup2 tree is mounted at /sys/fs/cgroup/unified but holds no controllers.  With
``--systemd-cgroup`` the path is ``slice:prefix:name``; it is placed at the path systemd would
give it (``a-b.slice`` nests as ``a.slice/a-b.slice``, the unit is ``prefix-name.scope``)
by writing the cgroup files directly: hyperpy does not ask systemd over D-Bus to create a
transient scope (no systemd runs on the hosts this was written for), which a host with
systemd managing the same slice would want.
"""

from __future__ import annotations

import errno
import os
import time

from agent import cgroups as guest_cgroups
from agent import resources as guest_resources
from agent.errors import SetupError
from hyperpy.errors import CgroupError, SpecError

ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "cpuset", "blkio", "freezer", "devices")


def systemd_path(spec: str) -> str:
    """``slice:prefix:name`` → ``parent.slice/slice.slice/prefix-name.scope``.

    The guest lays out container cgroups the same way: the one implementation is
    ``agent.cgroups.systemd_path``; here its errors become the host's SpecError.
    """
    if len(spec.split(":")) != 3:
        raise SpecError(
            f"cgroupsPath {spec!r} is not in the systemd form slice:prefix:name "
            "(--systemd-cgroup was given)",
            "/linux/cgroupsPath",
        )
    try:
        return guest_cgroups.systemd_path(spec)
    except SetupError as exc:
        raise SpecError(str(exc), exc.pointer) from None


def relative_path(cgroups_path: str, cid: str, systemd: bool) -> str:
    """The cgroup below each hierarchy's root, as runc resolves cgroupsPath (the same
    resolution as the guest's, ``agent.cgroups.cgroup_dir``)."""
    if systemd:
        return systemd_path(cgroups_path or f"system.slice:hyperpy:{cid}")
    try:
        return guest_cgroups.cgroup_dir(cid, cgroups_path, root="/").lstrip("/")
    except SetupError as exc:
        raise SpecError(str(exc), exc.pointer) from None


def of_process(pid: int | str = "self", root: str = ROOT) -> HostCgroup | None:
    """The cgroup ``pid`` is in (its memory controller's on v1, where hyperpy puts a pod's
    processes at one path in every hierarchy), or None in the root cgroup."""
    want = "0" if is_v2(root) else "memory"
    for line in _read_text(f"/proc/{pid}/cgroup").splitlines():
        num, controllers, path = line.split(":", 2)
        if (want == "0" and num == "0") or want in controllers.split(","):
            rel = os.path.normpath("/" + path).lstrip("/")
            return HostCgroup(rel, root) if rel and rel != "." else None
    return None


def is_v2(root: str = ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


class HostCgroup:
    """One pod's cgroup in every hierarchy this host has."""

    def __init__(self, rel: str, root: str = ROOT) -> None:
        self.rel = rel
        self.root = root
        if is_v2(root):
            self.dirs = [os.path.join(root, rel)]
        else:
            self.dirs = [
                os.path.join(root, c, rel)
                for c in V1_CONTROLLERS
                if os.path.isdir(os.path.join(root, c))
            ]

    def create(self, memory_limit: int | None = None, cpu: dict | None = None) -> None:
        """Make the cgroup; ``cpu`` (OCI ``linux.resources.cpu``) gives its cpuset."""
        try:
            self._create(memory_limit)
        except OSError as exc:
            raise CgroupError(
                f"cannot create the pod's host cgroup {self.rel} ({exc}): hyperpy needs a "
                "writable cgroup hierarchy (run as root; check /sys/fs/cgroup is mounted rw)"
            ) from exc
        cpuset = {k: cpu[k] for k in ("cpus", "mems") if cpu and cpu.get(k)}
        if cpuset:
            self._apply_cpu(cpuset)

    def _create(self, memory_limit: int | None) -> None:
        for d in self.dirs:
            os.makedirs(d, exist_ok=True)
            cpuset_top = os.path.join(self.root, "cpuset")
            if d.startswith(cpuset_top + "/"):
                _inherit_cpuset(d, cpuset_top)
        if memory_limit:
            self._write_memory(memory_limit)

    def set_cpu(self, cpu: dict) -> None:
        """Shares, quota, period and cpuset of OCI ``linux.resources.cpu``, as given."""
        keys = ("shares", "quota", "period", "cpus", "mems")
        self._apply_cpu({k: cpu[k] for k in keys if cpu.get(k) is not None})

    def _apply_cpu(self, cpu: dict) -> None:
        if not cpu:
            return
        if is_v2(self.root):
            try:
                writes = guest_resources.translate({"cpu": cpu})
            except SetupError as exc:
                raise SpecError(str(exc), exc.pointer) from None
            for name, value, _ in writes:
                path = os.path.join(self.dirs[0], name)
                if os.path.exists(path):  # a controller not delegated here: not ours to set
                    self._write_cpu(path, value)
            return
        for d in self.dirs:
            if d.startswith(os.path.join(self.root, "cpuset") + "/"):
                for key in ("cpus", "mems"):
                    if cpu.get(key):
                        self._write_cpu(os.path.join(d, f"cpuset.{key}"), str(cpu[key]))
            elif d.startswith(os.path.join(self.root, "cpu") + "/"):
                self._set_v1_cpu(d, cpu)

    def _set_v1_cpu(self, d: str, cpu: dict) -> None:
        if cpu.get("shares"):
            self._write_cpu(os.path.join(d, "cpu.shares"), str(cpu["shares"]))
        period, quota = cpu.get("period") or 0, cpu.get("quota") or 0
        retry = False
        if period:
            try:
                _write(os.path.join(d, "cpu.cfs_period_us"), str(period))
            except OSError as exc:
                # a period below the current one can exceed the parent's bandwidth until
                # the quota is lowered too: runc retries it after the quota
                if exc.errno != errno.EINVAL or not quota:
                    path = os.path.join(d, "cpu.cfs_period_us")
                    raise self._cpu_error(path, period, exc) from exc
                retry = True
        if quota:
            self._write_cpu(os.path.join(d, "cpu.cfs_quota_us"), str(quota))
            if retry:
                self._write_cpu(os.path.join(d, "cpu.cfs_period_us"), str(period))

    def _write_cpu(self, path: str, value: str) -> None:
        try:
            _write(path, value)
        except OSError as exc:
            raise self._cpu_error(path, value, exc) from exc

    @staticmethod
    def _cpu_error(path: str, value: object, exc: OSError) -> CgroupError:
        return CgroupError(
            f"cannot write {value} to {path} ({exc.strerror}) in the pod's host cgroup, where "
            "QEMU's vCPUs run: check /linux/resources/cpu against the host's limits "
            "(the parent cgroup's cpuset and CPU bandwidth)"
        )

    def set_memory_limit(self, limit: int) -> None:
        """The pod's memory ceiling, when its VM is resized (``monitor/resize.py``)."""
        try:
            self._write_memory(limit)
        except OSError as exc:
            raise CgroupError(
                f"cannot set the memory ceiling of {self.rel} to {limit}: {exc}"
            ) from None

    def _write_memory(self, limit: int) -> None:
        for d in self.dirs:
            for name in ("memory.max", "memory.limit_in_bytes"):
                path = os.path.join(d, name)
                if os.path.exists(path):
                    _write(path, str(limit))

    def add(self, *pids: int, charges: bool = False) -> None:
        """Move processes in (threads follow: cgroup.procs moves the whole process); with
        ``charges``, on a v1 kernel that still moves them, their memory's charges come along
        (otherwise, and always on v2, only what they allocate afterwards is charged here)."""
        for d in self.dirs:
            move = os.path.join(d, "memory.move_charge_at_immigrate")
            before = _read_text(move) if charges and os.path.exists(move) else ""
            if before:
                try:
                    _write(move, "3")  # anonymous and file pages
                except OSError:  # EINVAL: the kernel no longer moves charges (6.x)
                    before = ""
            try:
                for pid in pids:
                    if pid > 0:
                        try:
                            _write(os.path.join(d, "cgroup.procs"), str(pid))
                        except OSError as exc:
                            if exc.errno != errno.ESRCH:
                                raise CgroupError(f"cannot move pid {pid} into {d}: {exc}") from exc
            finally:
                if before:
                    _write(move, before)

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    out.update(int(x) for x in f.read().split())
            except OSError:
                continue
        return sorted(out)

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir the pod's cgroups (after its processes exited) and empty parents we made."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            parent = os.path.dirname(d)
            top = os.path.join(self.root, d[len(self.root) :].lstrip("/").split("/")[0])
            while parent.startswith(top + "/") and parent != top:
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _inherit_cpuset(d: str, top: str) -> None:
    """v1 cpuset cgroups start empty and refuse tasks: fill cpus and mems top-down."""
    levels = []
    while d != top and d.startswith(top + "/"):
        levels.append(d)
        d = os.path.dirname(d)
    for level in reversed(levels):
        for name in ("cpuset.cpus", "cpuset.mems"):
            path = os.path.join(level, name)
            try:
                with open(path) as f:
                    if f.read().strip():
                        continue
                with open(os.path.join(os.path.dirname(level), name)) as f:
                    _write(path, f.read().strip())
            except OSError:
                continue


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
