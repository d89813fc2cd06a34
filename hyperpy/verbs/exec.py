"""``exec``: a new process in a container, its proxy in the foreground or detached; and
the wait for a proxy both ``exec`` and ``run`` end with (:func:`wait_exit`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hyperpy.errors import UsageError
from hyperpy.monitor_client import MonitorClient
from hyperpy.verbs import cgroup
from hyperpy.verbs.spawn import spawn_proxy, write_pid_file
from hyperpy.verbs.state import checked


@dataclass
class ExecOptions:
    console_socket: str | None = None
    pid_file: str | None = None
    detach: bool = False
    source: str = "exec"  # where the process came from, in errors (--process FILE, ...)


def exec_process(root: str, cid: str, process: dict, opts: ExecOptions) -> int:
    """Run ``process`` in the container, as ``opts`` say."""
    from hyperpy import preflight

    console_socket, pid_file, detach = opts.console_socket, opts.pid_file, opts.detach
    st, d, _ = checked(root, cid, "exec")
    if process.get("terminal") and not console_socket and detach:
        raise UsageError("exec with a terminal and --detach needs --console-socket")
    if pid_file:
        preflight.pid_file(pid_file)
    if console_socket:
        preflight.console_socket(console_socket)
    preflight.process_fits(process, opts.source)
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
