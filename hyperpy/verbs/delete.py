"""``delete``: the container and what it made go (its VM, or its place in a pod's VM).

:func:`destroy` is also what a failed create undoes with. Its path through the state
directory goes one way: is the monitor answering (its socket, its pid and QEMU's from
the record), kill what still runs and wait for init's exit, leave the pod or shut the VM
down, kill what is left, then release the share, what the VM's driver left behind
(``vm/orphans.py``) and the host cgroup.
"""

from __future__ import annotations

import os
import time

from agent import protocol as P
from hyperpy.errors import ContainerNotFound, HyperpyError
from hyperpy.monitor_client import MonitorClient, stopped_processes
from hyperpy.sandbox import model, record
from hyperpy.sandbox.model import Status
from hyperpy.sandbox.record import State
from hyperpy.verbs import cgroup, log
from hyperpy.verbs.state import run_hooks, status
from hyperpy.vm import orphans


def delete(root: str, cid: str, force: bool = False) -> None:
    """The verb: with ``force``, a container that does not exist is not an error."""
    try:
        remove(root, cid, force)
    except ContainerNotFound:
        if not force:
            raise


def remove(root: str, cid: str, force: bool = False) -> None:
    """Delete ``cid``, which must exist."""
    with record.Lock(root, cid) as d:
        st = record.load(root, cid)
        model.check("delete-force" if force else "delete", status(d, st), cid)
        destroy(d, st)
        run_hooks(st, "poststop", Status.STOPPED)
        record.remove(root, cid)


def destroy(d: str, st: State) -> None:
    """Stop the sandbox and everything it made; safe to call on a half-made one.

    A container that joined another's VM only leaves it: the VM stays for the others.
    """
    answering = (
        record.pid_alive(*st.monitor)
        and os.path.exists(os.path.join(d, record.MONITOR_SOCK))
        and not stopped_processes(st)
    )
    exited = _kill_before_delete(d, st) if answering else False
    if st.sandbox:
        _leave(d, st, answering)
    else:
        _stop_vm(d, st, answering, exited)
    _remove_cgroup(st)


def _kill_before_delete(d: str, st: State) -> bool:
    """SIGKILL a container still running, as runc's delete --force does: its processes
    report 137 (128 + SIGKILL) to their waiters, not the 255 of a VM that died. Whether
    its init has exited (exit.json) by the end."""
    exit_json = os.path.join(d, record.EXIT)
    if os.path.exists(exit_json):
        return True
    if not st.init_proc:
        return False
    try:
        MonitorClient(d, st, timeout=5).request(P.OP_SIGNAL, cid=st.id, all=True, signal=9)
    except HyperpyError as exc:
        log().warning("cannot kill %s before deleting it: %s", st.id, exc)
        return False
    deadline = time.monotonic() + 5
    while not (exited := os.path.exists(exit_json)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return exited


def _leave(d: str, st: State, answering: bool) -> None:
    """A pod member: out of the VM, its proxy gone; the VM stays."""
    if answering:
        try:
            MonitorClient(d, st, timeout=10).request("remove", cid=st.id)
        except HyperpyError as exc:
            log().warning("removing %s from sandbox %s failed: %s", st.id, st.sandbox, exc)
    if st.pid and record.pid_alive(st.pid, st.pid_start):
        record.wait_gone(st.pid, 3, st.pid_start)
        kill_hard(st.pid, d, st.pid_start)


def _stop_vm(d: str, st: State, answering: bool, exited: bool) -> None:
    """The VM's owner: the monitor shut down (or killed), then what it left behind."""
    if answering:
        try:
            MonitorClient(d, st, timeout=5).request("shutdown")
        except HyperpyError as exc:
            exited = exited or os.path.exists(os.path.join(d, record.EXIT))
            if not exited:
                log().warning("monitor shutdown request failed: %s", exc)
            # else it is stopping by itself: every process of its VM has exited
        record.wait_gone(st.monitor_pid, 8, st.monitor_start)
    # A stopped monitor or QEMU is killed at once: SIGKILL reaches stopped processes.
    kill_hard(st.monitor_pid, d, st.monitor_start)
    kill_hard(st.qemu_pid, d, st.qemu_start)
    # the monitor is gone: nothing writes exit.json any more
    if st.pid and record.pid_alive(st.pid, st.pid_start):
        if not (exited or os.path.exists(os.path.join(d, record.EXIT))):
            record.wait_gone(st.pid, 5, st.pid_start)
    if os.path.exists(os.path.join(d, record.SHARE)):  # the monitor released it otherwise
        log()
        from hyperpy import share

        share.release(d)
    orphans.reap(d, st.driver)  # what the driver's VM left, if its monitor was killed


def _remove_cgroup(st: State) -> None:
    if st.host_cgroup:
        try:
            cgroup(st.host_cgroup).remove()
        except OSError as exc:
            log().warning("cannot remove the host cgroup %s: %s", st.host_cgroup, exc)


def kill_hard(pid: int, state_dir: str, start: int = 0) -> None:
    """SIGKILL ``pid`` if it is still ours: the process recorded (its start time) and its
    command line names ``state_dir`` (the monitor's and the proxies' arguments, QEMU's
    -name), so a reused pid is never hit."""
    if pid and record.cmdline_names(pid, state_dir) and record.kill(pid, 9, start):
        record.wait_gone(pid, 5, start)
