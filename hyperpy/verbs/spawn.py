"""Starting a container process's proxy (``python -m hyperpy.proxy``) and its pid file.

The proxy is a detached helper reporting one ready line (:func:`hyperpy.proc.spawn_ready`).
"""

from __future__ import annotations

import os
import sys

from hyperpy.proc import said_ok, spawn_ready


def spawn_proxy(
    d: str, proc: int, console_socket: str | None, stdio: bool, monitor_pid: int
) -> int:
    """Start the process proxy; with ``stdio`` it carries the caller's stdin/out/err.

    With a console socket the container's stdio is the pty, and the proxy must hold
    none of the caller's fds: the runc shim reads create's output until EOF.
    """
    flags = []
    if monitor_pid:  # the pod's network namespace: docker's hook finds it through our pid
        flags += ["--netns", f"/proc/{monitor_pid}/ns/net"]
    if console_socket:
        flags += ["--console-socket", os.path.abspath(console_socket)]

    def argv(ready_fd: int) -> list[str]:
        return [sys.executable, "-m", "hyperpy.proxy", d, str(proc), str(ready_fd), *flags]

    what = "the process proxy"
    # it outlives us: the runc shim (a subreaper) or `run` and `exec` reap it, by pid
    p, _ = spawn_ready(argv, what, 30, said_ok(what), stdio=stdio, disown=True)
    return p.pid


def write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)
