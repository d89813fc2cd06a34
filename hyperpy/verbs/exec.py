"""``exec``: a new process in a container, its proxy in the foreground or detached; and
the wait for a proxy both ``exec`` and ``run`` end with (:func:`wait_exit`).

Owns making the process from exec's flags (:class:`ProcessFlags`: ``--process FILE``, or
the command and the flags over the bundle's process, as runc does; ``oci/process.py``
converts), so the command lines only parse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hyperpy.errors import UsageError
from hyperpy.monitor_client import MonitorClient
from hyperpy.sandbox import record
from hyperpy.verbs import cgroup
from hyperpy.verbs.spawn import spawn_proxy, write_pid_file
from hyperpy.verbs.state import checked


@dataclass
class ExecOptions:
    console_socket: str | None = None
    pid_file: str | None = None
    detach: bool = False


@dataclass
class ProcessFlags:
    """What exec runs: the process in ``process_file``, or ``args`` with the other flags
    over the process of the container's bundle."""

    process_file: str | None = None
    args: tuple[str, ...] = ()
    tty: bool = False
    cwd: str | None = None
    env: tuple[str, ...] = ()
    user: str | None = None
    additional_gids: tuple[int, ...] = ()
    no_new_privs: bool = False
    caps: tuple[str, ...] = ()


def process_of(root: str, cid: str, flags: ProcessFlags) -> tuple[dict, str]:
    """The process ``flags`` make, and where it came from (for errors)."""
    from hyperpy.oci import process as oci_process

    if flags.process_file:
        process = oci_process.from_file(flags.process_file, flags.caps)
        return process, f"--process {flags.process_file}"
    if not flags.args:
        raise UsageError("exec needs a command (or --process FILE)")
    for name in flags.caps:  # before the bundle is read: a bad flag is the caller's to fix
        oci_process.check_cap(name)
    st = record.load(root, cid)
    from hyperpy.oci.validate import load_bundle

    process = oci_process.from_flags(
        load_bundle(st.bundle).get("process") or {},
        list(flags.args),
        tty=flags.tty,
        cwd=flags.cwd,
        env=flags.env,
        user=flags.user,
        additional_gids=flags.additional_gids,
        no_new_privs=flags.no_new_privs,
        caps=flags.caps,
    )
    return process, "exec's arguments"


def exec_process(root: str, cid: str, flags: ProcessFlags, opts: ExecOptions) -> int:
    """Run the process ``flags`` make in the container, as ``opts`` say."""
    from hyperpy import preflight

    process, source = process_of(root, cid, flags)
    console_socket, pid_file, detach = opts.console_socket, opts.pid_file, opts.detach
    st, d, _ = checked(root, cid, "exec")
    if process.get("terminal") and not console_socket and detach:
        raise UsageError("exec with a terminal and --detach needs --console-socket")
    if pid_file:
        preflight.pid_file(pid_file)
    if console_socket:
        preflight.console_socket(console_socket)
    preflight.process_fits(process, source)
    reply = MonitorClient(d, st).request("exec", cid=cid, process=process)
    pid = spawn_proxy(d, reply["proc"], console_socket, not console_socket, st.monitor_pid)
    cgroup(st.host_cgroup).add(pid)
    if pid_file:
        write_pid_file(pid_file, pid)
    if detach:
        return 0
    return wait_exit(pid)


def wait_exit(pid: int) -> int:
    """Wait for our child ``pid``; its exit status as a shell gives it (128+N if killed)."""
    _, status = os.waitpid(pid, 0)  # retried on EINTR by Python itself (PEP 475)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
