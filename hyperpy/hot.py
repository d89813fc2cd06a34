"""The hot verbs: state, start, kill, delete, ps and events --stats, on the raw state record.

containerd's runc shim runs these for every container it manages, so each is a short-lived
process whose cost is mostly its imports: this module keeps them to the standard library's
lean part, the record (:mod:`hyperpy.sandbox.record`), the lifecycle table
(:mod:`hyperpy.sandbox.model`) and the monitor's socket (:mod:`hyperpy.monitor_client`).
Hooks, the host cgroup, the share and logging are imported only when a container has them
or something is to be logged. :class:`hyperpy.runtime.Runtime` delegates these verbs here,
so the click CLI and the fast entry (:mod:`hyperpy.entry`) run the same code.
"""

from __future__ import annotations

import os
import time

from agent import protocol as P
from hyperpy.errors import ContainerNotFound, HyperpyError, UsageError
from hyperpy.monitor_client import MonitorClient, stopped_processes
from hyperpy.sandbox import model, record
from hyperpy.sandbox.model import Status

TYPE_CHECKING = False  # typing's (and collections.abc's) imports cost the hot verbs ~5 ms
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from hyperpy.hostcgroup import HostCgroup

# Called once before the first log record: the fast entry sets up --log only then.
before_logging: list[Callable[[], None]] = []


def _log() -> logging.Logger:
    import logging

    while before_logging:
        before_logging.pop()()
    return logging.getLogger("hyperpy.runtime")


def current_status(d: str, stored: str, monitor_pid: int, monitor_start: int = 0) -> Status:
    exited = os.path.exists(os.path.join(d, record.EXIT))
    alive = record.pid_alive(monitor_pid, monitor_start)
    return model.effective_status(Status(stored), exited, alive)


def _status(d: str, raw: dict) -> Status:
    return current_status(d, raw.get("status", Status.CREATING.value), *_monitor(raw))


def _monitor(raw: dict) -> tuple[int, int]:
    """The monitor's pid and start time, as recorded."""
    return raw.get("monitor_pid", 0), raw.get("monitor_start", 0)


def state(root: str, cid: str) -> dict:
    raw = record.read(root, cid)
    status = _status(record.state_dir(root, cid), raw)
    return {
        "ociVersion": "1.1.0",
        "id": raw["id"],
        "pid": raw.get("pid", 0) if status != Status.STOPPED else 0,
        "status": status.value,
        "bundle": raw["bundle"],
        "rootfs": raw["rootfs"],
        "created": raw["created"],
        "owner": raw.get("owner", ""),
        "annotations": raw.get("annotations", {}),
    }


def _check(root: str, cid: str, op: str) -> tuple[dict, str]:
    raw = record.read(root, cid)
    d = record.state_dir(root, cid)
    model.check(op, _status(d, raw), cid)
    return raw, d


def start(root: str, cid: str) -> None:
    with record.Lock(root, cid):
        raw, d = _check(root, cid, "start")
        run_hooks(raw, "startContainer", Status.CREATED)
        MonitorClient(d).request("start", cid=cid)
        raw["status"] = Status.RUNNING.value
        record.write_json_atomic(os.path.join(d, record.STATE), raw)
        run_hooks(raw, "poststart", Status.RUNNING)


def kill(root: str, cid: str, sig: int, all_: bool = False) -> None:
    raw, d = _check(root, cid, "kill-all" if all_ else "kill")
    if not all_:
        MonitorClient(d).request(P.OP_SIGNAL, cid=cid, proc=raw.get("init_proc", 0), signal=sig)
    elif _status(d, raw) != Status.STOPPED:
        MonitorClient(d).request(P.OP_SIGNAL, cid=cid, all=True, signal=sig)
    elif record.pid_alive(*_monitor(raw)):
        # As runc: --all on a stopped container succeeds.  Processes its init left in a
        # shared pid namespace get the signal while the VM still runs.
        try:
            MonitorClient(d, timeout=10).request(P.OP_SIGNAL, cid=cid, all=True, signal=sig)
        except HyperpyError as exc:
            _log().debug("kill --all of stopped %s: %s", cid, exc)


def ps(root: str, cid: str, guest: bool = True) -> tuple[list[int], list[dict]]:
    """(host pids, guest processes) of a container.

    The host pids are the process proxies, one per container process hyperpy started
    (init and each exec): callers of ``ps --format json`` (containerd's Pids, docker
    top) look them up on the host, where the guest's own pids mean nothing.  The guest
    processes (pid, ppid, uid, state, cmd in the guest) are what the table shows; without
    ``guest`` (``--format json``, which prints only the host pids) the guest is not asked.
    """
    raw, d = _check(root, cid, "ps")
    if _status(d, raw) == Status.STOPPED:
        return [], []
    procs = MonitorClient(d).request(P.OP_PS, cid=cid).get("processes", []) if guest else []
    marker = f"hyperpy.proxy\0{d}\0".encode()
    host = []
    for pid in cgroup(raw["host_cgroup"]).pids() if raw.get("host_cgroup") else [raw.get("pid", 0)]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker in f.read():
                    host.append(pid)
        except OSError:
            continue
    return host, procs


def stats(root: str, cid: str) -> dict:
    _, d = _check(root, cid, "events")
    return MonitorClient(d).request(P.OP_STATS, cid=cid)


def delete(root: str, cid: str, force: bool = False) -> None:
    with record.Lock(root, cid) as d:
        raw = record.read(root, cid)
        model.check("delete-force" if force else "delete", _status(d, raw), cid)
        destroy(d, raw)
        run_hooks(raw, "poststop", Status.STOPPED)
        record.remove(root, cid)


def delete_verb(root: str, cid: str, force: bool) -> None:
    """``delete``: with --force, a container that does not exist is not an error."""
    try:
        delete(root, cid, force)
    except ContainerNotFound:
        if not force:
            raise


def run_hooks(raw: dict, kind: str, status: Status) -> None:
    if not (raw.get("hooks") or {}).get(kind):
        return
    _log()  # hooks log their warnings
    from hyperpy import hooks

    state = {"ociVersion": "1.1.0", "id": raw["id"], "status": status.value,
             "pid": raw.get("pid", 0), "bundle": raw["bundle"],
             "annotations": raw.get("annotations", {})}  # fmt: skip
    hooks.run({"hooks": raw["hooks"]}, kind, state)


def destroy(d: str, raw: dict) -> None:
    """Stop the sandbox and everything it made; safe to call on a half-made one.

    A container that joined another's VM only leaves it: the VM stays for the others.
    """
    (monitor_pid, monitor_start), pid = _monitor(raw), raw.get("pid", 0)
    pid_start = raw.get("pid_start", 0)
    answering = (
        record.pid_alive(monitor_pid, monitor_start)
        and os.path.exists(os.path.join(d, "monitor.sock"))
        and not stopped_processes(d)
    )
    if answering:
        _kill_before_delete(d, raw)
    if raw.get("sandbox"):
        if answering:
            try:
                MonitorClient(d, timeout=10).request("remove", cid=raw["id"])
            except HyperpyError as exc:
                _log().warning(
                    "removing %s from sandbox %s failed: %s", raw["id"], raw["sandbox"], exc
                )
        if pid and record.pid_alive(pid, pid_start):
            record.wait_gone(pid, 3, pid_start)
            kill_hard(pid, d, pid_start)
        _remove_cgroup(raw)
        return
    if answering:
        try:
            MonitorClient(d, timeout=5).request("shutdown")
        except HyperpyError as exc:
            if not os.path.exists(os.path.join(d, record.EXIT)):
                _log().warning("monitor shutdown request failed: %s", exc)
            # else it is stopping by itself: every process of its VM has exited
        record.wait_gone(monitor_pid, 8, monitor_start)
    # A stopped monitor or QEMU is killed at once: SIGKILL reaches stopped processes.
    kill_hard(monitor_pid, d, monitor_start)
    kill_hard(raw.get("qemu_pid", 0), d, raw.get("qemu_start", 0))
    if (
        pid
        and record.pid_alive(pid, pid_start)
        and not os.path.exists(os.path.join(d, record.EXIT))
    ):
        record.wait_gone(pid, 5, pid_start)
    if os.path.exists(os.path.join(d, record.SHARE)):  # the monitor released it otherwise
        _log()
        from hyperpy import share

        share.release(d)
    if raw.get("driver") == "libvirt":
        from hyperpy.vm import view

        if view.remove_for(d):  # its monitor was killed: is its domain gone too?
            from hyperpy.config import load
            from hyperpy.launcher import with_site

            with_site()  # libvirt-python is in site-packages
            from hyperpy.vm.libvirt import destroy_by_name

            destroy_by_name(load().libvirt.uri, view.domain_name(d))
    _remove_cgroup(raw)


def _kill_before_delete(d: str, raw: dict) -> None:
    """SIGKILL a container still running, as runc's delete --force does: its processes
    report 137 (128 + SIGKILL) to their waiters, not the 255 of a VM that died."""
    if os.path.exists(os.path.join(d, record.EXIT)) or not raw.get("init_proc"):
        return
    try:
        MonitorClient(d, timeout=5).request(P.OP_SIGNAL, cid=raw["id"], all=True, signal=9)
    except HyperpyError as exc:
        _log().warning("cannot kill %s before deleting it: %s", raw["id"], exc)
        return
    deadline = time.monotonic() + 5
    while not os.path.exists(os.path.join(d, record.EXIT)) and time.monotonic() < deadline:
        time.sleep(0.02)


def _remove_cgroup(raw: dict) -> None:
    if raw.get("host_cgroup"):
        try:
            cgroup(raw["host_cgroup"]).remove()
        except OSError as exc:
            _log().warning("cannot remove the host cgroup %s: %s", raw["host_cgroup"], exc)


def cgroup(rel: str) -> HostCgroup:
    """The pod's host cgroup, ``host_cgroup`` of the record."""
    from hyperpy.hostcgroup import HostCgroup

    return HostCgroup(rel)


def kill_hard(pid: int, state_dir: str, start: int = 0) -> None:
    """SIGKILL ``pid`` if it is still ours: the process recorded (its start time) and its
    command line names ``state_dir`` (the monitor's and the proxies' arguments, QEMU's
    -name), so a reused pid is never hit."""
    if pid and record.cmdline_names(pid, state_dir) and record.kill(pid, 9, start):
        record.wait_gone(pid, 5, start)


def parse_signal(value: str) -> int:
    """runc's signal spellings: KILL, SIGKILL, 9, RTMIN+2; raises UsageError otherwise."""
    import signal

    v = value.strip().upper()
    if v.isdigit():
        num = int(v)
        if 0 < num < 65:
            return num
    else:
        name = v if v.startswith("SIG") else "SIG" + v
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
        if name.startswith("SIGRTMIN") or name.startswith("SIGRTMAX"):
            base = signal.SIGRTMIN if name.startswith("SIGRTMIN") else signal.SIGRTMAX
            off = name[8:]
            try:
                return int(base) + (int(off) if off else 0)
            except ValueError:
                pass
    raise UsageError(f"unknown signal {value!r}: use a name (TERM, SIGKILL) or a number (1-64)")
