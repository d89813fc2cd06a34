"""A container's OOM kill in the guest, told to the host cgroup where its clients look for it.

containerd's runc shim, conmon (podman) and so docker and the kubelet learn of an OOM kill from
the host's memory cgroup of the pid in ``--pid-file``: on cgroup v1 an eventfd registered on
its ``memory.oom_control`` (the shim then publishes ``/tasks/oom``, CRI says ``OOMKilled``,
docker sets ``State.OOMKilled``). hyperpy's container runs in the guest, and that cgroup holds
only the process proxy (and for a pod's first container the monitor and QEMU): the guest's
OOM kill never happens there. So the proxy, when the agent reports that the container's
guest cgroup counted an OOM kill (``memory.events`` ``oom_kill``), makes one real memory
cgroup OOM in that host cgroup before it exits, and the kernel notifies every listener:

1. a helper child (in the cgroup) waits; the proxy moves itself to the parent cgroup so
   that it can never be caught by what follows;
2. with the cgroup's OOM killer disabled (``oom_kill_disable``: an OOM there then pauses
   the allocating task instead of killing anything) its limit is set just above its usage;
3. the helper touches memory until it is over the limit: the kernel declares the OOM and
   signals every eventfd registered on the cgroup (the proxy's own among them);
4. the helper is killed (SIGKILL ends a task paused by the OOM), and the limit and the OOM
   killer switch are put back, within ``TIMEOUT`` seconds whatever happens.

Nothing is OOM-killed on the host. While the limit is low, another process of the cgroup
that allocates (for a pod's first container, QEMU and the monitor) waits for the helper's
release too: milliseconds, bounded by ``TIMEOUT``; pod members' cgroups hold only proxies.
What the clients see is honest in what they act on: the container was OOM-killed (in its
guest cgroup), and the event comes from the cgroup of the pid they were given. The guest
is untrusted and could claim an OOM falsely: it could then only mislabel its own
container's exit and pause its own pod's cgroup for at most ``TIMEOUT``.

cgroup v2 hosts: the shim reads ``memory.events``' ``oom_kill``, which only a real kill
raises; that is not done here yet (logged), as this was built on a v1 host.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import signal
import time

log = logging.getLogger(__name__)

MEMORY = "/sys/fs/cgroup/memory"
TIMEOUT = 2.0  # the longest the cgroup's limit stays lowered
MARGIN = 1 << 20  # above the usage: what others in the cgroup may still allocate meanwhile
PAGE = mmap.PAGESIZE


def memory_cgroup(pid: int | str = "self") -> str:
    """The v1 memory cgroup directory of ``pid``, or "" (v2 host, root cgroup, unreadable)."""
    from hyperpy import hostcgroup

    if hostcgroup.is_v2():
        return ""
    cg = hostcgroup.of_process(pid)
    return os.path.join(MEMORY, cg.rel) if cg is not None else ""


def _read(cg: str, name: str) -> str:
    with open(os.path.join(cg, name)) as f:
        return f.read()


def _write(cg: str, name: str, value: str) -> None:
    with open(os.path.join(cg, name), "w") as f:
        f.write(value)


def _oom_kill_disabled(cg: str) -> str:
    for line in _read(cg, "memory.oom_control").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill_disable":
            return value.strip()
    return "0"


def _helper(go: int) -> None:
    """The child: wait for the word, then touch memory until the kernel stops it."""
    try:
        os.read(go, 1)
        maps = []
        while True:
            m = mmap.mmap(-1, 16 * PAGE)
            for off in range(0, len(m), PAGE):
                m[off] = 1
            maps.append(m)
    finally:
        os._exit(0)


def report(cg: str | None = None) -> bool:
    """Make one memory cgroup OOM in ``cg`` (default: this process's v1 memory cgroup),
    leaving its limit and OOM-killer switch as they were; True if the kernel signalled it."""
    cg = memory_cgroup() if cg is None else cg
    if not cg:
        log.warning("OOM in the guest not reported to the host: no cgroup v1 memory cgroup")
        return False
    parent = os.path.dirname(cg)
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(go_w)
        _helper(go_r)
    os.close(go_r)
    efd = ctl = -1
    limit = disabled = None
    try:
        _write(parent, "cgroup.procs", str(os.getpid()))  # out of what is about to happen
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        ctl = os.open(os.path.join(cg, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        _write(cg, "cgroup.event_control", f"{efd} {ctl}")
        limit, disabled = _read(cg, "memory.limit_in_bytes").strip(), _oom_kill_disabled(cg)
        _write(cg, "memory.oom_control", "1")
        deadline = time.monotonic() + TIMEOUT
        while True:
            usage = int(_read(cg, "memory.usage_in_bytes"))
            try:
                _write(cg, "memory.limit_in_bytes", str(-(-(usage + MARGIN) // PAGE) * PAGE))
                break
            except OSError:  # EBUSY: the usage grew meanwhile
                if time.monotonic() > deadline:
                    raise
        os.write(go_w, b"g")
        ready, _, _ = select.select([efd], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            os.read(efd, 8)
            return True
        log.warning("OOM in the guest: the host cgroup %s did not report an OOM in %.0f s",
                    cg, TIMEOUT)  # fmt: skip
        return False
    except OSError as exc:
        log.warning("OOM in the guest not reported to the host cgroup %s: %s", cg, exc)
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        for name, value in (("memory.limit_in_bytes", limit), ("memory.oom_control", disabled)):
            if value is not None:
                try:
                    _write(cg, name, value)
                except OSError as exc:
                    log.error("could not restore %s of %s to %s: %s", name, cg, value, exc)
        os.waitpid(child, 0)
        for fd in (efd, ctl, go_w):
            if fd >= 0:
                os.close(fd)
